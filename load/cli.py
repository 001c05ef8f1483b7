"""`giftstream load ...`: generate traffic, drive running workers (run), compare native vs Faust (compare),
benchmark production-size state (state-scale)."""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from dataclasses import asdict
from pathlib import Path


def _rate(text: str) -> float | None:
    if text == "max":
        return None
    value = float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError("--rate must be > 0 or 'max'")
    return value


def _traffic_args(p: argparse.ArgumentParser, events_default: int | None) -> None:
    g = p.add_argument_group("traffic (load/generator.py TrafficConfig)")
    g.add_argument("--events", type=int, default=events_default,
                   help="records to generate" + (f" (default {events_default:,})" if events_default else
                                                 " (default: rate x duration, or 2,000,000 with --rate max)"))
    g.add_argument("--seed", type=int, default=1)
    g.add_argument("--creators", type=int, default=200)
    g.add_argument("--senders", type=int, default=20_000)
    g.add_argument("--duplicate-rate", type=float, default=0.005, help="exact resends (same event_id)")
    g.add_argument("--late-rate", type=float, default=0.003, help="gifts whose ts is late_by_ms old")
    g.add_argument("--malformed-rate", type=float, default=0.002, help="bad records of every kind")
    g.add_argument("--missing-end-rate", type=float, default=0.02, help="streaks whose final event never comes")
    g.add_argument("--burst-multiplier", type=float, default=25.0, help="viral burst: x usual traffic (<= 1: off)")
    g.add_argument("--burst-start", type=float, default=0.4, help="burst start, fraction of the span")
    g.add_argument("--burst-duration", type=float, default=0.08, help="burst length, fraction of the span")
    g.add_argument("--event-rate", type=float, default=None,
                   help="records per second of EVENT time (default: --rate, else 1000)")


def _kafka_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="worker config TOML (bootstrap, group_id, [topics]) as given to the workers")
    p.add_argument("--bootstrap", help="Kafka bootstrap servers (default: the config's or 127.0.0.1:19092)")
    p.add_argument("--topic", help="gifts topic (default: the config's)")


def _cfg(args: argparse.Namespace):
    from stream.config import load_config

    cfg = load_config(args.config, bootstrap_servers=args.bootstrap)
    if getattr(args, "group", None):
        cfg.group_id = args.group
    if args.topic:
        cfg.topics.gifts = args.topic
    return cfg


def cmd_generate(args: argparse.Namespace) -> int:
    import asyncio

    from tqdm import tqdm

    from load.generator import generate, write_jsonl
    from load.producing import produce_to_kafka, traffic_config

    rate = args.rate
    traffic = traffic_config(args, rate)
    quiet = args.quiet or not sys.stderr.isatty()
    with tqdm(total=traffic.events, unit="ev", unit_scale=True, disable=quiet, file=sys.stderr,
              mininterval=0.25) as bar:
        if args.to_kafka:
            cfg = _cfg(args)
            from stream.kafka.topics import create_topics

            asyncio.run(create_topics(cfg, args.partitions))  # missing topics only
            n, seconds = asyncio.run(produce_to_kafka(cfg, generate(traffic), rate, progress=bar.update))
            print(json.dumps({"topic": cfg.topics.gifts, "bootstrap": cfg.bootstrap_servers, "records": n,
                              "seconds": round(seconds, 3), "rate": round(n / seconds) if seconds else None,
                              "target_rate": rate or "max"}))
            return 0
        if not args.out:
            print("giftstream load generate: give --out FILE (.jsonl or .jsonl.gz) or --to-kafka", file=sys.stderr)
            return 2
        stats = write_jsonl(args.out, traffic, progress=bar.update)
    print(json.dumps({"file": str(args.out), **stats.to_dict()}, default=str))
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    import asyncio
    from dataclasses import replace

    from load.generator import generate, generate_inputs
    from load.producing import traffic_config
    from load.run import LoadRun, RunOptions
    from stream.engine.policy import load_policy

    cfg = _cfg(args)
    policy = load_policy(args.policy or cfg.policy)
    if args.events is None:
        args.events = 2_000_000 if args.rate is None else math.ceil(args.rate * args.duration)
    traffic = traffic_config(args, args.rate)
    if args.accounts:
        traffic = replace(traffic, accounts=True, payout_rate=args.payout_rate)
    opts = RunOptions(rate=args.rate, duration=args.duration, out=Path(args.out), poll_interval=args.poll_interval,
                      warmup=args.warmup,
                      drain_timeout=args.drain_timeout, generate_live=args.generate_live,
                      verify=not args.no_verify, quiet=args.quiet,
                      partitions=args.partitions,
                      extra={"traffic": {k: v for k, v in asdict(traffic).items() if k != "regions"}})
    records = generate_inputs(traffic) if args.accounts else generate(traffic)
    if args.chaos:
        try:
            chaos = _chaos(args, cfg, opts)
        except ValueError as e:  # an unknown kind, a plan that does not fit the duration
            print(f"giftstream load run --chaos: {e}", file=sys.stderr)
            return 2
        report = asyncio.run(_chaos_run(chaos, cfg, policy, records, opts))
    else:
        report = asyncio.run(LoadRun(cfg, policy, records, opts).run())
    r, v = report["results"], report["verification"]
    lat = r["latency_s"]

    def f(x: float | None) -> str:
        return "n/a" if x is None else f"{x:.3f}s"

    print(f"produced {r['produced']:,} at {r['produce_rate'] or 0:,.0f}/s; committed {r['committed']:,} "
          f"({(r['throughput'] or 0):,.0f}/s); max lag {r['max_lag']:,}; latency p50 {f(lat['p50'])} "
          f"p90 {f(lat['p90'])} p99 {f(lat['p99'])} max {f(lat['max'])}", file=sys.stderr)
    if r.get("produced_to"):
        print("also produced " + ", ".join(f"{n:,} to {topic}" for topic, n in r["produced_to"].items()),
              file=sys.stderr)
    steady = r.get("latency_after_warmup_s") or {}
    print(f"steady state (after the first {args.warmup:g} s): latency p50 {f(steady.get('p50'))} "
          f"p90 {f(steady.get('p90'))} p99 {f(steady.get('p99'))} max {f(steady.get('max'))}", file=sys.stderr)
    for ch in v.get("checks", []):
        print(f"  {'ok  ' if ch['passed'] else 'FAIL'} {ch['name']}: {ch['detail']}", file=sys.stderr)
    if not v.get("checks"):
        print(f"  verification: {v.get('reason')}", file=sys.stderr)
    if report.get("chaos"):
        from load.chaos import fmt_s

        c = report["chaos"]
        print(f"faults: {c['healed']} of {len(c['faults'])} healed; p99 outside the fault windows "
              f"{fmt_s((c['latency_outside_faults_s'] or {}).get('p99'))}", file=sys.stderr)
        for kind, k in c["by_kind"].items():
            print(f"  {kind}: {k['faults']} faults, {k['healed']} healed, recovery p50 {fmt_s(k['recovery_p50_s'])}"
                  f" max {fmt_s(k['recovery_max_s'])}", file=sys.stderr)
    print(f"report: {report['files']['markdown']}", file=sys.stderr)
    print(json.dumps({"results": r, "verification": {"passed": v.get("passed")}}, default=str))
    if v.get("passed") is False:
        return 1
    return 0


def _chaos(args: argparse.Namespace, cfg, opts):
    """The chaos of `load run --chaos` (its plan made, nothing started yet); the run's options follow it."""
    import logging

    from load.chaos import Chaos, ChaosOptions, kinds_arg
    from load.cluster import Cluster, SingleNode

    # The run's own clients retry through the faults it makes; aiokafka's complaints about them are expected.
    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)
    brokers = Cluster(args.kafka_nodes) if args.kafka_nodes > 1 else SingleNode()
    if args.kafka_nodes > 1 and not args.bootstrap and not args.config:
        cfg.bootstrap_servers = brokers.bootstrap
    chaos_opts = ChaosOptions(kinds=kinds_arg(args.chaos), faults=args.faults, duration=opts.duration,
                              workers=args.workers, seed=args.chaos_seed if args.chaos_seed is not None else args.seed,
                              session_timeout_ms=args.session_timeout_ms, out=opts.out / "workers",
                              worker_args=tuple(args.worker_arg or ()))
    chaos = Chaos(cfg, brokers, chaos_opts)
    opts.extra["chaos"] = {k: getattr(chaos_opts, k) for k in ("faults", "workers", "seed", "session_timeout_ms")}
    opts.extra["chaos"]["kinds"] = [k.value for k in chaos_opts.kinds]
    opts.extra["chaos"]["brokers"] = args.kafka_nodes
    # Generated while producing: constant memory over a long soak, and batches built as they are sent, which grow
    # while a broker is away (load.producing.OrderedProducer) where packed ones would queue up one at a time.
    opts.generate_live = True
    return chaos


async def _chaos_run(chaos, cfg, policy, records, opts) -> dict:
    """`load run --chaos`: topics first, then the workers the run starts, then the load with its faults."""
    from load.run import LoadRun
    from stream.kafka.topics import create_topics

    await create_topics(cfg, opts.partitions)
    try:
        await chaos.start()
        return await LoadRun(cfg, policy, records, opts, chaos=chaos).run()
    finally:
        await chaos.stop()


def cmd_compare(args: argparse.Namespace) -> int:
    import asyncio

    from load.harness_compare import compare

    asyncio.run(compare(args.events, args.partitions, args.bootstrap or "127.0.0.1:19092", args.batch,
                        args.take, args.runners.split(","), args.timeout))
    return 0


def cmd_state_scale(args: argparse.Namespace) -> int:
    import asyncio

    from load.state_scale import PHASES, StateScaleOptions, run_state_scale, table
    from stream.engine.policy import load_policy

    phases = tuple(p for p in args.phases.split(",") if p)
    unknown = [p for p in phases if p not in PHASES]
    if unknown:
        print(f"giftstream load state-scale: unknown phase(s) {', '.join(unknown)} (known: {', '.join(PHASES)})",
              file=sys.stderr)
        return 2
    opts = StateScaleOptions(creators=args.creators, partitions=args.partitions, phases=phases, rate=args.rate,
                             session_timeout_ms=args.session_timeout_ms, phase_timeout_s=args.phase_timeout,
                             hold_s=args.hold, out=Path(args.out), bootstrap=args.bootstrap, seed=args.seed,
                             keep_topics=args.keep_topics, prefix=args.prefix or "",
                             worker_args=tuple(args.worker_arg or ()), checkpoints=args.checkpoints,
                             quiet=args.quiet)
    policy = load_policy(args.policy)

    async def main() -> dict:
        # SIGTERM cancels the run like Ctrl-C does: its cleanup stops the workers and deletes the topics.
        import signal

        task = asyncio.current_task()
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
        return await run_state_scale(opts, policy)

    try:
        report = asyncio.run(main())
    except asyncio.CancelledError:
        print("giftstream load state-scale: terminated; workers stopped, topics deleted", file=sys.stderr)
        return 143
    print(table(report))
    print(f"report: {report['files']['markdown']}", file=sys.stderr)
    return 0 if report.get("phases") and all(p["settled"] for p in report["phases"]) else 1


def register(subparsers: argparse._SubParsersAction) -> None:
    load = subparsers.add_parser("load", help="traffic generation, load runs and benchmarks",
                                 description="Synthetic traffic, load runs against running workers, and the "
                                             "native-vs-Faust drain comparison.")
    sub = load.add_subparsers(dest="load_command", required=True)

    p = sub.add_parser("generate", help="seeded synthetic traffic to a file (JSONL/.gz) or into Kafka",
                       description="Seeded, skewed, bursty traffic with streaks, duplicates, late and bad "
                                   "records. Equal flags give byte-identical output.")
    _traffic_args(p, 100_000)
    p.add_argument("--out", help="output file (.jsonl or .jsonl.gz)")
    p.add_argument("--to-kafka", action="store_true", help="produce into Kafka instead of a file")
    p.add_argument("--rate", type=_rate, default=None, help="with --to-kafka: records/s of wall time, or 'max'")
    p.add_argument("--partitions", type=int, default=6, help="with --to-kafka: for topics that do not exist yet")
    p.add_argument("--quiet", action="store_true")
    _kafka_args(p)
    p.set_defaults(func=cmd_generate)

    p = sub.add_parser("run", help="drive RUNNING workers at a rate; measure throughput, lag, latency; verify",
                       description="Produce traffic at --rate for --duration into the gifts topic of the "
                                   "workers' config (--accounts: with payouts and creator accounts into theirs), "
                                   "poll the group's committed offsets, then verify the "
                                   "outputs against the offline replay and the independent ground truth. "
                                   "Start the workers first (giftstream worker --config SAME.toml).")
    p.add_argument("--rate", type=_rate, default=5_000.0, help="records/s of wall time, or 'max' (default 5000)")
    p.add_argument("--duration", type=float, default=30.0, help="seconds of producing (default 30)")
    p.add_argument("--out", default="out/load", help="report directory (default out/load)")
    p.add_argument("--group", help="the workers' consumer group (default: the config's group_id)")
    p.add_argument("--policy", help="the workers' policy TOML (default: the config's, else built-in)")
    p.add_argument("--partitions", type=int, default=6, help="for topics that do not exist yet")
    p.add_argument("--poll-interval", type=float, default=0.025,
                   help="committed-offset poll (s); the latency resolution (default 0.025)")
    p.add_argument("--drain-timeout", type=float, default=60.0, help="wait for the group to catch up (s)")
    p.add_argument("--warmup", type=float, default=3.0,
                   help="seconds of commit time left out of the steady-state latency (reported beside the whole)")
    p.add_argument("--no-verify", action="store_true", help="skip the ground-truth verification")
    p.add_argument("--generate-live", action="store_true",
                   help="generate records while producing (constant memory, ~10 µs of CPU per record during "
                        "the run) instead of all of them before the clock starts (default; ~0.6 KiB per record)")
    p.add_argument("--quiet", action="store_true", help="no live progress line")
    p.add_argument("--accounts", action="store_true",
                   help="also produce creator accounts (the ones older than the first gift before the run) and "
                        "payouts, interleaved with the gifts at the rate, to the config's accounts and payouts "
                        "topics; verify them too (load.generator.generate_inputs)")
    p.add_argument("--payout-rate", type=float, default=0.002, help="with --accounts: payouts per gift record")
    c = p.add_argument_group("chaos (load/chaos.py): faults at seeded times while the load flows")
    c.add_argument("--chaos", metavar="KINDS",
                   help="inject faults: all, or a comma-separated subset of worker-kill, worker-term, worker-stop, "
                        "broker-kill, worker-add. The run starts its own workers (--workers) with the config")
    c.add_argument("--faults", type=int, default=10, help="faults over the run, the kinds in turn (default 10)")
    c.add_argument("--workers", type=int, default=2, help="with --chaos: workers the run starts (default 2)")
    c.add_argument("--chaos-seed", type=int, default=None, help="the fault plan's seed (default: --seed)")
    c.add_argument("--session-timeout-ms", type=int, default=6_000,
                   help="with --chaos: the workers' session timeout; worker-stop pauses past it (default 6000)")
    c.add_argument("--kafka-nodes", type=int, default=int(os.environ.get("KAFKA_NODES", "1")),
                   help="with --chaos: 1 = the single node (make kafka-up), 3 = the loopback cluster "
                        "(KAFKA_NODES=3 make kafka-up), whose broker-kill takes the node leading most gifts partitions")
    c.add_argument("--worker-arg", action="append", help="with --chaos: extra `giftstream worker` flag (repeatable)")
    _kafka_args(p)
    _traffic_args(p, None)
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("compare", help="drain one pre-loaded topic with the native worker and Faust",
                       description="Pre-load a topic, then drain it, each in its own process and group: bare "
                                   "aiokafka (ceiling), native worker exactly-once on/off, Faust per-event and "
                                   "take(); prints events/s and the native/Faust ratios.")
    p.add_argument("--events", type=int, default=300_000)
    p.add_argument("--partitions", type=int, default=6)
    p.add_argument("--batch", type=int, default=50_000, help="native/bare getmany max_records")
    p.add_argument("--take", type=int, default=10_000, help="Faust take_events batch size")
    p.add_argument("--runners", default="bare,native-eos,native-alo,faust-events,faust-take",
                   help="comma-separated subset of bare,native-eos,native-alo,faust-events,faust-take")
    p.add_argument("--timeout", type=float, default=600.0, help="per-runner drain timeout (s)")
    p.add_argument("--bootstrap", help="Kafka bootstrap servers (default 127.0.0.1:19092)")
    p.set_defaults(func=cmd_compare)

    p = sub.add_parser("state-scale", help="production-size state: restart, add a worker, remove a worker",
                       description="Build the state of N creators straight into a fresh changelog topic, then "
                                   "start `giftstream worker` processes on it (restart, add a second, remove it) "
                                   "with a trickle of gifts flowing; measures time to ready, the longest commit "
                                   "gap, RSS and the changelog's size. Its topics and group are its own (ss-<random>) "
                                   "and deleted afterwards. Exit 1 when a phase did not settle.")
    p.add_argument("--creators", type=int, default=1_000_000, help="creators of state (default 1,000,000)")
    p.add_argument("--partitions", type=int, default=6, help="partitions of every topic (default 6)")
    p.add_argument("--phases", default=",".join(("restart", "add", "remove")),
                   help="comma-separated phases, in order (default restart,add,remove)")
    p.add_argument("--rate", type=float, default=2000.0, help="gifts/s to creators of the state during the phases")
    p.add_argument("--session-timeout-ms", type=int, default=10_000, help="the workers' session_timeout_ms")
    p.add_argument("--phase-timeout", type=float, default=600.0,
                   help="seconds a phase may take to settle before it is reported as not settled (default 600)")
    p.add_argument("--hold", type=float, default=10.0, help="seconds of steady running after a phase settles")
    p.add_argument("--out", default="out/state-scale", help="report directory; the workers' configs and logs too")
    p.add_argument("--bootstrap", default="127.0.0.1:19092", help="Kafka bootstrap servers")
    p.add_argument("--policy", help="policy TOML (default: the built-in policy)")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--prefix", help="topic/group suffix instead of ss-<random>")
    p.add_argument("--keep-topics", action="store_true", help="do not delete the run's topics at the end")
    p.add_argument("--worker-arg", action="append", help="extra `giftstream worker` flag (repeatable)")
    p.add_argument("--checkpoints", action="store_true",
                   help="give each worker a state_dir (<out>/state-<name>): a phase list like restart,add,remove,"
                        "restart then measures a restart from local checkpoints")
    p.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    p.set_defaults(func=cmd_state_scale)
