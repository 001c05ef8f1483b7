"""Issue 16: the drain of one worker over 6, 24, 48, 96 partitions, with what grows with the partition count.

Same drain as `giftstream load compare` (load/drain.py: one pre-loaded gifts topic per partition count, each
runner in its own process and group, timed from the first commit seen to the backlog committed), plus, sampled
every second while the runner drains: its TCP connections to the broker (ss), its CPU and the broker's, and for
the native worker its /metrics (partition batches = transactions) and the Kafka requests it sent by type
(load/counting_worker.py). Runs are interleaved: rep 1 over every partition count, then rep 2, ...

  python -m load.partitions_drain --events 2000000 --partitions 6,24,48,96 --reps 2 \
      --extra 96:100,96:200 --out /tmp/partitions-drain

--extra P:MS adds a native-eos run over P partitions with commit_interval_ms=MS after the reps.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from aiokafka.admin import AIOKafkaAdminClient

from load.drain import (
    ROOT,
    bare_consumer_argv,
    free_port,
    preload,
    realistic_session,
    stop_process,
    unique_config,
    wait_committed,
    with_group,
    worker_config_file,
)
from stream.config import Topics, WorkerConfig
from stream.kafka.session_io import end_offsets
from stream.kafka.topics import create_topics, delete_topics, topic_specs

BROKER_PORT = 19092
TICK = 1.0 / os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) * TICK
    except (OSError, IndexError, ValueError):
        return None


def broker_pid() -> int | None:
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as f:
                    if b"kafka.Kafka" in f.read():
                        return int(pid)
            except OSError:
                pass
    return None


def connections(pid: int) -> int:
    out = subprocess.run(["ss", "-tnpH", "state", "established", f"( dport = :{BROKER_PORT} )"],
                         capture_output=True, text=True).stdout
    return sum(1 for line in out.splitlines() if f"pid={pid}," in line)


def scrape(port: int) -> dict[str, float]:
    want = ("giftstream_batch_size_count", "giftstream_events_in_total", "giftstream_transactions_aborted_total",
            "giftstream_assigned_partitions", "giftstream_restoring_partitions")
    try:
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2).read().decode()
    except OSError:
        return {}
    got = {}
    for line in text.splitlines():
        name, _, value = line.partition(" ")
        if name in want:
            got[name] = float(value)
    return got


def read_counts(path: Path) -> dict[str, dict]:
    try:
        snap = json.loads(path.read_text())
        return {"counts": snap["counts"], "waited_s": snap.get("waited_s", {})}
    except (OSError, ValueError, KeyError):
        return {}


async def drain(name: str, cfg: WorkerConfig, argv: list[str], events: int, timeout: float,
                http_port: int | None, counts_path: Path | None, kafka_pid: int | None, partitions: int = 0) -> dict:
    ends = await end_offsets(cfg, cfg.topics.gifts)
    admin = AIOKafkaAdminClient(bootstrap_servers=cfg.bootstrap_servers)
    await admin.start()
    samples: list[dict] = []
    started = time.perf_counter()
    log = tempfile.TemporaryFile()  # noqa: SIM115
    proc = subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=log,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    stop = asyncio.Event()

    async def sampler() -> None:
        while not stop.is_set():
            s = {"t": time.perf_counter(), "conns": await asyncio.to_thread(connections, proc.pid),
                 "cpu": cpu_seconds(proc.pid), "broker_cpu": cpu_seconds(kafka_pid) if kafka_pid else None}
            if http_port:
                s["metrics"] = await asyncio.to_thread(scrape, http_port)
            if counts_path:
                s["requests"] = read_counts(counts_path)
            samples.append(s)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 1.0)

    sampling = asyncio.create_task(sampler())
    try:
        first, first_done, finished = await wait_committed(name, admin, cfg, ends, events, proc, log, started,
                                                           timeout)
    finally:
        stop.set()
        await sampling
        stop_process(proc, log)
        await admin.close()
    seconds = finished - first
    steady = [s for s in samples if first <= s["t"] <= finished]
    res = {"runner": name, "events": events - first_done, "seconds": round(seconds, 3),
           "events_per_s": round((events - first_done) / seconds) if seconds else 0,
           "total_seconds": round(finished - started, 3), "samples": len(steady),
           "conns_max": max((s["conns"] for s in samples), default=0),
           "conns_median_steady": sorted(s["conns"] for s in steady)[len(steady) // 2] if steady else None}
    if len(steady) >= 2:
        a, b = steady[0], steady[-1]
        dt = b["t"] - a["t"]
        if a["cpu"] is not None and b["cpu"] is not None:
            res["worker_cpu_pct"] = round(100 * (b["cpu"] - a["cpu"]) / dt)
        if a["broker_cpu"] is not None and b["broker_cpu"] is not None:
            res["broker_cpu_pct"] = round(100 * (b["broker_cpu"] - a["broker_cpu"]) / dt)
        ma, mb = a.get("metrics") or {}, b.get("metrics") or {}
        if "giftstream_batch_size_count" in ma and "giftstream_batch_size_count" in mb:
            txns = mb["giftstream_batch_size_count"] - ma["giftstream_batch_size_count"]
            ev = mb["giftstream_events_in_total"] - ma["giftstream_events_in_total"]
            res["txn_per_s"] = round(txns / dt, 1)
            res["events_per_txn"] = round(ev / txns) if txns else None
            res["aborted"] = mb.get("giftstream_transactions_aborted_total", 0)
        ra, rb = (a.get("requests") or {}).get("counts", {}), (b.get("requests") or {}).get("counts", {})
        wa, wb = (a.get("requests") or {}).get("waited_s", {}), (b.get("requests") or {}).get("waited_s", {})
        if rb:
            res["requests_per_s"] = {k: round((rb[k] - ra.get(k, 0)) / dt, 1) for k in sorted(rb)
                                     if rb[k] - ra.get(k, 0) > 0}
            res["request_ms_avg"] = {k: round(1000 * (wb.get(k, 0) - wa.get(k, 0)) / (rb[k] - ra.get(k, 0)), 1)
                                     for k in sorted(rb) if rb[k] - ra.get(k, 0) > 0}
    # The native worker starts one producer per partition (InitProducerId, a first transaction) before that
    # partition runs: the drain above counts from the first partition's commit. Also give the rate from the
    # moment every partition runs (all `partitions` tasks running, none restoring) to the last sample.
    ready = [s for s in samples if (s.get("metrics") or {}).get("giftstream_assigned_partitions", 0) >= partitions
             and (s.get("metrics") or {}).get("giftstream_restoring_partitions", 1) == 0]
    if ready:
        res["all_running_after_s"] = round(ready[0]["t"] - started, 1)
        res["all_running_after_first_commit_s"] = round(ready[0]["t"] - first, 1)
        a, b = ready[0], [s for s in samples if s["t"] <= finished][-1]
        ev = b["metrics"].get("giftstream_events_in_total", 0) - a["metrics"].get("giftstream_events_in_total", 0)
        if b["t"] > a["t"]:
            res["events_per_s_all_running"] = round(ev / (b["t"] - a["t"]))
            res["events_all_running"] = int(ev)
    return res


async def delete_outputs(cfg: WorkerConfig) -> None:
    """The run's own topics (every one but the shared gifts topic)."""
    admin = AIOKafkaAdminClient(bootstrap_servers=cfg.bootstrap_servers)
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        names = [s.name for s in topic_specs(cfg, 1) if s.name in existing and s.name != cfg.topics.gifts]
        if names:
            await admin.delete_topics(names)
    finally:
        await admin.close()


async def run_one(base: WorkerConfig, partitions: int, runner: str, tag: str, events: int, batch: int,
                  commit_interval_ms: int, timeout: float, tmp: Path, kafka_pid: int | None) -> dict:
    c = with_group(base, f"{runner}-{tag}")
    c.topics = Topics(**{k: (v if k == "gifts" else f"{v}-{runner}-{tag}") for k, v in vars(c.topics).items()})
    if runner == "bare":
        argv, port, counts = bare_consumer_argv(c, batch), None, None
    else:
        await create_topics(c, partitions)
        port = free_port()
        counts = tmp / f"{c.group_id}.requests.json"
        config = worker_config_file(c, tmp / f"{c.group_id}.toml", exactly_once=True, batch_max_records=batch,
                                    http_port=port, commit_interval_ms=commit_interval_ms)
        argv = [sys.executable, "-m", "load.counting_worker", str(counts), "worker", "--config", str(config),
                "--log-level", "WARNING"]
    try:
        res = await drain(runner, c, argv, events, timeout, port, counts, kafka_pid, partitions)
    finally:
        if runner != "bare":
            await delete_outputs(c)
    res.update(partitions=partitions, tag=tag, commit_interval_ms=commit_interval_ms if runner != "bare" else None,
               at=time.strftime("%H:%M:%S"))
    return res


async def main_async(a: argparse.Namespace) -> None:
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    results_path = out / "results.jsonl"
    parts = [int(p) for p in a.partitions.split(",")]
    extra = [tuple(int(x) for x in e.split(":")) for e in a.extra.split(",") if e]
    kafka_pid = broker_pid()
    t0 = time.perf_counter()
    records = realistic_session(a.events)
    print(f"generated {len(records):,} events in {time.perf_counter() - t0:.1f} s", flush=True)
    bases: dict[int, WorkerConfig] = {}
    try:
        for p in sorted(set(parts) | {p for p, _ in extra}):
            bases[p] = unique_config(a.bootstrap, f"pd{p}")
            seconds = await preload(bases[p], records, p)
            print(f"pre-loaded {bases[p].topics.gifts} ({p} partitions) in {seconds:.1f} s", flush=True)
        n = len(records)
        del records
        plan = [(rep, p, r, 0) for rep in range(1, a.reps + 1) for p in parts for r in a.runners.split(",")]
        plan += [(0, p, "native-eos", ms) for p, ms in extra]
        with tempfile.TemporaryDirectory() as tmp:
            for rep, p, runner, ms in plan:
                tag = f"r{rep}" + (f"-ci{ms}" if ms else "")
                res = await run_one(bases[p], p, runner, tag, n, a.batch, ms, a.timeout, Path(tmp), kafka_pid)
                res["rep"] = rep
                with results_path.open("a") as f:
                    f.write(json.dumps(res) + "\n")
                print(json.dumps({k: v for k, v in res.items() if k not in ("requests_per_s", "request_ms_avg")}),
                      flush=True)
                if "requests_per_s" in res:
                    print("   requests/s:", json.dumps(res["requests_per_s"]), flush=True)
                    print("   ms/request:", json.dumps(res["request_ms_avg"]), flush=True)
    finally:
        for cfg in bases.values():
            await delete_topics(cfg)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--events", type=int, default=2_000_000)
    p.add_argument("--partitions", default="6,24,48,96")
    p.add_argument("--reps", type=int, default=2)
    p.add_argument("--runners", default="bare,native-eos")
    p.add_argument("--extra", default="", help="P:MS,... native-eos over P partitions, commit_interval_ms=MS")
    p.add_argument("--batch", type=int, default=50_000)
    p.add_argument("--timeout", type=float, default=600.0)
    p.add_argument("--bootstrap", default="127.0.0.1:19092")
    p.add_argument("--out", default="/tmp/partitions-drain")
    a = p.parse_args()
    asyncio.run(main_async(a))


if __name__ == "__main__":
    main()
