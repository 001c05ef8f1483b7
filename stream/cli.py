"""The `giftstream` command line."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from importlib import resources
from pathlib import Path
from typing import Any

from stream.config import settings_help
from stream.engine.policy import PolicyError, load_policy
from stream.live_clients.cli import register as register_live_clients

DEMO_SESSION = "demo-session.jsonl.gz"
DEMO_ACCOUNTS = "demo-accounts.jsonl"  # the creator accounts of the demo session's creators


def _default_session() -> Path:
    return Path(str(resources.files("stream.data").joinpath(DEMO_SESSION)))


def _session(args: argparse.Namespace):
    """The replay's inputs: a recorded session directory (--session), or the gifts file (the bundled demo by
    default, with its accounts) and the payouts and accounts files given."""
    from stream.engine.order import Input
    from stream.kafka.session_files import read_accounts, read_session, session_path
    from stream.runtime.replay import Session

    payouts, accounts = args.payouts, args.accounts
    if args.session:
        if args.file:
            raise SystemExit("giftstream replay: give a session FILE or --session DIR, not both")
        path = session_path(args.session, Input.GIFTS)
        if path is None:
            raise SystemExit(f"giftstream replay: {args.session} holds no gifts.jsonl(.gz)")
        payouts = payouts or session_path(args.session, Input.PAYOUTS)
        accounts = accounts or session_path(args.session, Input.ACCOUNTS)
    else:
        path = Path(args.file) if args.file else _default_session()
    if accounts is None and not args.file and not args.session:
        bundled = resources.files("stream.data").joinpath(DEMO_ACCOUNTS)
        accounts = str(bundled) if bundled.is_file() else None
    return path, Session(read_session(path), read_session(payouts) if payouts else [],
                         read_accounts(accounts) if accounts else [])


def _recording(args: argparse.Namespace):
    """The recording FILE names (stream.kafka.recording), or None when FILE is a plain session file (or absent)."""
    from stream.kafka.recording import is_recording, read_recording

    if not args.file or not is_recording(args.file):
        return None
    if args.session or args.payouts or args.accounts:
        raise SystemExit("giftstream replay: a recording holds its payouts and accounts; give no --session, "
                         "--payouts or --accounts with it")
    recording = read_recording(args.file)
    if args.partitions is not None and args.partitions != recording.partitions():
        raise SystemExit(f"giftstream replay: {args.file} was recorded over {recording.partitions()} partitions; "
                         "its records are replayed where they were (leave --partitions out)")
    if not recording.complete:
        print(f"giftstream replay: {args.file} has no trailer: the recording was cut short; replaying what it holds",
              file=sys.stderr)
    return recording


def _utc(ms: int) -> str:
    import datetime

    return datetime.datetime.fromtimestamp(ms / 1000, datetime.UTC).strftime("%Y-%m-%d %H:%M")


def cmd_replay(args: argparse.Namespace) -> int:
    import json

    from tqdm import tqdm

    from stream.engine.order import Input
    from stream.runtime.replay import replay, replay_recording, write_outputs

    policy = load_policy(args.policy)
    recording = _recording(args)
    if recording is not None:
        print(f"replaying {len(recording):,} recorded records from {args.file} with policy {policy.version}, each "
              f"on its recorded partition of {recording.partitions()}", file=sys.stderr)
        with tqdm(total=len(recording), unit="rec", unit_scale=True, disable=args.quiet, file=sys.stderr,
                  mininterval=0.2) as bar:
            result = replay_recording(recording, policy, batch_size=args.batch_size, final=args.end_of_session,
                                      progress=bar.update)
    else:
        path, records = _session(args)
        partitions = args.partitions or 6
        extra = f" (+ {len(records.payouts):,} payouts, {len(records.accounts):,} account records)" \
            if records.merged else ""
        print(f"replaying {len(records.gifts):,} records from {path}{extra} with policy {policy.version} "
              f"over {partitions} partitions", file=sys.stderr)
        with tqdm(total=len(records), unit="ev", unit_scale=True, disable=args.quiet, file=sys.stderr,
                  mininterval=0.2) as bar:
            result = replay(records, policy, partitions=partitions, batch_size=args.batch_size,
                            final=args.end_of_session, source=f"file:{path.name}", progress=bar.update,
                            topics={Input.PAYOUTS: f"file:{Path(args.payouts).name}" if args.payouts else "payouts",
                                    Input.ACCOUNTS: "creator-accounts"})
    if args.out:
        paths = write_outputs(result, args.out)
        print(f"wrote {', '.join(str(p) for p in paths.values())}", file=sys.stderr)
    if not args.quiet:
        for n in sorted(result.outputs.notices, key=lambda n: n.notice_id)[: args.show]:
            print(f"NOTICE {n.notice_id:<28} {n.region} {n.account_status:<9} balance "
                  f"{n.balance_milli_diamonds // 1000:>9,} diamonds  gross ${n.gross_cents / 100:>9,.2f}  "
                  f"service fee ${n.service_fee_cents / 100:>8,.2f}  {n.payout_method} fee "
                  f"${n.method_fee_cents / 100:>6,.2f}  net ${n.net_cents / 100:>9,.2f}"
                  + ("  (sent by an account update)" if n.trigger == "account" else ""))
        if len(result.outputs.notices) > args.show:
            print(f"... and {len(result.outputs.notices) - args.show} more notices")
        top = sorted(result.outputs.window_totals, key=lambda w: -w.milli_diamonds)[: args.show]
        for w in top:
            print(f"WINDOW {w.window:<14} {w.creator_id:<22} {_utc(w.window_start)} .. {_utc(w.window_end)} "
                  f"{w.milli_diamonds // 1000:>9,} diamonds in {w.credits:,} gifts")
    print(json.dumps(result.summary, indent=2))
    return 0


def _worker_config(args: argparse.Namespace):
    from stream.config import load_config

    return load_config(getattr(args, "config", None), bootstrap_servers=getattr(args, "bootstrap", None))


def _check_kafka(cfg, log_json: bool = False) -> None:
    """Fail in seconds with a clear cause (bad password, untrusted certificate, wrong listener, unreachable
    advertised broker) instead of aiokafka's "Unable to bootstrap" or endless metadata retries: exit code 3."""
    import asyncio

    from stream.kafka.connect import ConnectionCheckError, check_connection

    try:
        asyncio.run(check_connection(cfg))
    except ConnectionCheckError as e:
        if log_json:  # the worker's logs are JSON lines; say it there too
            import logging

            logging.getLogger("stream.cli").error("cannot start: Kafka connection check failed",
                                                  extra={"error": str(e), "bootstrap": cfg.bootstrap_servers})
        print(f"giftstream: cannot use Kafka: {e}", file=sys.stderr)
        raise SystemExit(3) from None


def cmd_replay_to_kafka(args: argparse.Namespace) -> int:
    import asyncio

    from tqdm import tqdm

    from stream.engine.order import Input
    from stream.kafka.session_io import produce_recording, produce_session
    from stream.kafka.topics import input_topics

    cfg = _worker_config(args)
    _check_kafka(cfg)
    speed = None if args.speed == "max" else float(args.speed)
    recording = _recording(args)
    if recording is not None:
        if args.topic:
            raise SystemExit("giftstream replay --to-kafka: a recording goes to the config's input topics; "
                             "give no --topic with it")
        with tqdm(total=len(recording), unit="rec", unit_scale=True, disable=args.quiet, file=sys.stderr) as bar:
            sent = asyncio.run(produce_recording(recording, cfg, speed, bar.update))
        t = input_topics(cfg.topics)
        print(f"produced {', '.join(f'{n:,} records to {t[k]}' for k, n in sent.items() if n)} from {args.file}, "
              f"each to its recorded partition, at {cfg.bootstrap_servers}", file=sys.stderr)
        return 0
    path, session = _session(args)
    with tqdm(total=len(session), unit="rec", unit_scale=True, disable=args.quiet, file=sys.stderr) as bar:
        # The accounts and payouts first, unpaced: each record's timestamp (its own time) decides the order the
        # worker merges them in, not when it was produced.
        if session.accounts:
            asyncio.run(produce_session([a.value for a in session.accounts], cfg, None, None, bar.update,
                                        Input.ACCOUNTS, [a.key for a in session.accounts],
                                        [a.ts for a in session.accounts]))
        if session.payouts:
            asyncio.run(produce_session(session.payouts, cfg, None, None, bar.update, Input.PAYOUTS))
        sent = asyncio.run(produce_session(session.gifts, cfg, args.topic, speed, bar.update))
    print(f"produced {sent:,} records from {path} to {args.topic or cfg.topics.gifts}"
          + (f", {len(session.payouts):,} to {cfg.topics.payouts}" if session.payouts else "")
          + (f", {len(session.accounts):,} to {cfg.topics.accounts}" if session.accounts else "")
          + f" at {cfg.bootstrap_servers}", file=sys.stderr)
    return 0


def _time_ms(text: str | None) -> int | None:
    """Epoch milliseconds, or an ISO 8601 time (UTC when it names no zone)."""
    import datetime

    if text is None:
        return None
    if text.isdigit():
        return int(text)
    t = datetime.datetime.fromisoformat(text)
    return int((t if t.tzinfo else t.replace(tzinfo=datetime.UTC)).timestamp() * 1000)


def _offset_ranges(specs: list[str]):
    """--offsets INPUT:PARTITION=FIRST..END (either side may be left out) -> {(input, partition): (first, end)}."""
    from stream.kafka.recording import INPUT_NAMES

    inputs = {name: kind for kind, name in INPUT_NAMES.items()}
    ranges = {}
    for spec in specs:
        try:
            where, span = spec.split("=")
            name, part = where.rsplit(":", 1)
            lo, hi = span.split("..")
            ranges[(inputs[name], int(part))] = (int(lo) if lo else None, int(hi) if hi else None)
        except (ValueError, KeyError):
            raise SystemExit(f"giftstream record: --offsets {spec!r} is not INPUT:PARTITION=FIRST..END with INPUT "
                             f"one of {', '.join(inputs)}") from None
    return ranges


def cmd_record(args: argparse.Namespace) -> int:
    import asyncio

    from tqdm import tqdm

    from stream.kafka.session_io import record

    cfg = _worker_config(args)
    _check_kafka(cfg)
    with tqdm(unit="rec", unit_scale=True, disable=args.quiet, file=sys.stderr) as bar:
        header, n = asyncio.run(record(cfg, args.file, _time_ms(args.since), _time_ms(args.until),
                                       _offset_ranges(args.offsets), bar.update))
    print(f"recorded {n:,} committed records of {', '.join(i.topic for i in header.inputs.values())} to "
          f"{args.file}", file=sys.stderr)
    return 0


def cmd_topics(args: argparse.Namespace) -> int:
    import asyncio

    from stream.kafka.topics import create_topics, delete_topics, parse_retention

    cfg = _worker_config(args)
    _check_kafka(cfg)
    if args.action == "delete":
        asyncio.run(delete_topics(cfg))
        print("deleted giftstream topics", file=sys.stderr)
        return 0
    if args.replication_factor is not None and args.replication_factor < 1:
        raise SystemExit(f"giftstream topics: --replication-factor {args.replication_factor} < 1")
    from aiokafka.errors import KafkaError

    try:
        created = asyncio.run(create_topics(cfg, args.partitions, parse_retention(args.retention),
                                            args.replication_factor))
    except KafkaError as e:  # e.g. a replication factor above the brokers there are
        raise SystemExit(f"giftstream topics: {e}") from None
    print(f"created {', '.join(created) or 'nothing (all topics exist)'}", file=sys.stderr)
    return 0


def cmd_worker(args: argparse.Namespace) -> int:
    import asyncio
    import signal

    from stream.service.http import serve_worker
    from stream.service.logs import setup_logging

    setup_logging(args.log_level)
    cfg = _worker_config(args)
    if args.at_least_once:
        cfg.exactly_once = False
    if args.http_port is not None:
        cfg.http_port = args.http_port
    policy = load_policy(args.policy or cfg.policy)
    _check_kafka(cfg, log_json=True)

    async def main() -> None:
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await serve_worker(cfg, policy, stop, worker_id=args.worker_id)

    asyncio.run(main())
    return 0


def cmd_policy_check(args: argparse.Namespace) -> int:
    policy = load_policy(args.policy)
    print(f"policy {policy.version} from {policy.source}: {len(policy.regions)} regions, windows "
          f"{', '.join(w.name for w in policy.windows)}, grace {policy.grace_ms} ms: OK")
    return 0


def _kafka_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--bootstrap", help="Kafka bootstrap servers (default 127.0.0.1:19092 or the config's)")
    p.add_argument("--config", help="worker config TOML (see `giftstream worker --help`)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="giftstream",
        description="Exactly-once processing of live-stream gift events into diamond balances, "
                    "windowed tallies and payout-eligible notices.",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("replay", help="run a recording or a session file (JSONL, .gz ok) through the engine offline",
                       description="Run a session through the engine with no broker. A recording's records go to "
                                   "the partitions and offsets they were on, so every output matches the live run "
                                   "byte for byte. A session file's records are routed to partitions like Kafka's "
                                   "default partitioner, so notices match a live run on a topic with the same "
                                   "partition count fed by `replay --to-kafka`.")
    p.add_argument("file", nargs="?", help=f"a recording (`giftstream record`) or a session file of gift records, "
                                           f"one per line (default: the bundled {DEMO_SESSION})")
    p.add_argument("--session", metavar="DIR", help="a session directory of gifts.jsonl, payouts.jsonl and "
                                                    "creator-accounts.jsonl (.gz ok)")
    p.add_argument("--payouts", help="payouts made (JSONL, .gz ok): one payout record per line")
    p.add_argument("--accounts", help="creator accounts (JSONL, .gz ok): one account record per line, "
                                      '{"tombstone": "<creator id>", "ts": <ms>} for a closed one (default with '
                                      "the bundled session: its accounts)")
    p.add_argument("--policy", help="policy TOML file (default: the built-in policy)")
    p.add_argument("--partitions", type=int, help="partitions to simulate (default 6; a recording's own)")
    p.add_argument("--batch-size", type=int, default=20_000, help="records per engine batch")
    p.add_argument("--out", help="directory for payout-notices.jsonl, creator-window-totals.jsonl, "
                                 "gifts-late.jsonl, gifts-dlq.jsonl and summary.json")
    p.add_argument("--end-of-session", action="store_true",
                   help="after the last record, time out open streaks and close every window")
    p.add_argument("--show", type=int, default=10, help="notices and window totals to print")
    p.add_argument("--quiet", action="store_true", help="no progress bar, only the summary")
    p.add_argument("--to-kafka", action="store_true", help="produce the session to Kafka instead")
    p.add_argument("--speed", default="max", help="with --to-kafka: 'max' or N times the event-time pace")
    p.add_argument("--topic", help="with --to-kafka: target topic (default: the gifts topic)")
    _kafka_args(p)
    p.set_defaults(func=lambda a: cmd_replay_to_kafka(a) if a.to_kafka else cmd_replay(a))

    p = sub.add_parser("topics", help="create (or delete) the topics giftstream uses")
    p.add_argument("action", choices=["create", "delete"])
    p.add_argument("--partitions", type=int, default=6, help="partitions of every topic (default 6)")
    p.add_argument("--retention", default="7d", help="retention of non-compacted topics (default 7d)")
    p.add_argument("--replication-factor", type=int, metavar="N",
                   help="copies of every partition (default: min(3, brokers in the cluster)); with 3 or more "
                        "every topic gets min.insync.replicas=2")
    _kafka_args(p)
    p.set_defaults(func=cmd_topics)

    p = sub.add_parser("worker", help="run the streaming worker (consumer group member, exactly-once)",
                       description="Consume `gifts`, `payouts` and `creator-accounts` (merged in one order by "
                                   "record timestamp), keep per-creator state, emit notices, "
                                   "window totals, late gifts and dead letters in one transaction per batch.",
                       epilog=settings_help(), formatter_class=argparse.RawDescriptionHelpFormatter)
    _kafka_args(p)
    p.add_argument("--policy", help="policy TOML file (default: the config's, else the built-in policy)")
    p.add_argument("--worker-id", default="worker", help="client id shown in logs and the group")
    p.add_argument("--http-port", type=int, help="serve /metrics /healthz /readyz /creators/ID here")
    p.add_argument("--at-least-once", action="store_true", help="no transactions (for comparison only)")
    p.add_argument("--log-level", default="INFO")
    p.set_defaults(func=cmd_worker)

    p = sub.add_parser("record", help="record the committed records of gifts, payouts and creator-accounts",
                       description="Write the three inputs' committed records (read_committed, up to the end they "
                                   "have when the recording starts) to a recording: every record's topic, "
                                   "partition, offset, key, timestamp and its type, headers and exact value bytes. "
                                   "`giftstream replay FILE` replays it offline as the live worker ran it, "
                                   "`replay FILE --to-kafka` produces it again.")
    p.add_argument("file", help="the recording to write (.gz ok)")
    p.add_argument("--since", help="gifts and payouts with a Kafka timestamp at or after this (epoch ms or ISO 8601, "
                                   "UTC unless it says); creator-accounts is a table and is recorded from its start")
    p.add_argument("--until", help="records with a Kafka timestamp before this (epoch ms or ISO 8601)")
    p.add_argument("--offsets", action="append", default=[], metavar="INPUT:P=FIRST..END",
                   help="record offsets [FIRST, END) of that partition instead (either side may be left out), e.g. "
                        "gifts:0=1000..2000; repeatable")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    _kafka_args(p)
    p.set_defaults(func=cmd_record)

    p = sub.add_parser("policy", help="validate a policy file")
    p.add_argument("policy", nargs="?", help="policy TOML file (default: the built-in policy)")
    p.set_defaults(func=cmd_policy_check)
    register_live_clients(sub)
    register_load = load_kit()
    if register_load is not None:
        register_load(sub)
    return parser


def load_kit() -> Callable[[Any], None] | None:
    """The load kit's command registration; None without it: load/ comes with a checkout (pip install -e .),
    not with the runtime image's wheel. Only the kit's absence is tolerated, not an error inside it."""
    try:
        from load.cli import register
    except ModuleNotFoundError as e:
        if e.name != "load":
            raise
        return None
    return register


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except PolicyError as e:
        print(f"giftstream: {e}", file=sys.stderr)
        return 2
    except ValueError as e:  # configuration errors carry the setting's name
        print(f"giftstream: {e}", file=sys.stderr)
        return 2
    except FileNotFoundError as e:
        print(f"giftstream: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
