"""`giftstream load compare`: the native worker and the Faust runner drain the same pre-loaded topic.

One pre-loaded gifts topic; each runner in its own process and consumer group (and its own output topics),
timed by load/drain.py's drain_with_process (steady state: from the first commit seen to the backlog
committed). Runners:
  bare          bare aiokafka getmany + commit loop, no processing (the ceiling)
  native-eos    `giftstream worker`, exactly-once (transactions, read_committed, changelog)
  native-alo    `giftstream worker --at-least-once` settings (no transactions; still writes the changelog)
  faust-events  stream/runtime/faust_app.py, Faust's normal per-event path (stream.events(), one engine call each)
  faust-take    stream/runtime/faust_app.py with stream.take_events(N, within=0.2) batches
Faust runs at-least-once with no changelog (see stream/runtime/faust_app.py), i.e. it does LESS work than
native-eos; the ratios are reported against both native modes. Peak RSS of each runner process (VmHWM) is
read from /proc while it runs.
"""

from __future__ import annotations

import asyncio
import os
import sys
import tempfile
from dataclasses import replace
from pathlib import Path

from load.drain import (
    DrainResult,
    bare_consumer_argv,
    cleanup,
    drain_with_process,
    native_worker_argv,
    preload,
    realistic_session,
    unique_config,
    with_group,
    worker_config_file,
)
from stream.config import Topics, WorkerConfig
from stream.kafka.topics import create_topics

RUNNERS = ("bare", "native-eos", "native-alo", "faust-events", "faust-take")
NAMES = {"bare": "bare aiokafka consume (ceiling)", "native-eos": "native worker, exactly-once",
         "native-alo": "native worker, at-least-once", "faust-events": "Faust, per-event (stream.events())",
         "faust-take": "Faust, take_events() batches"}


def faust_argv(config: Path, cfg: WorkerConfig, mode: str, take: int) -> list[str]:
    return [sys.executable, "-m", "stream.runtime.faust_app", "worker", "--config", str(config),
            "--group", cfg.group_id,
            "--mode", mode, "--take", str(take), "--log-level", "warning"]


def _peak_rss_mb(marker: str) -> float | None:
    """VmHWM of this process's children whose command line contains marker (the unique group id)."""
    me = os.getpid()
    best = None
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/stat") as f:
                if int(f.read().rsplit(")", 1)[1].split()[1]) != me:
                    continue
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                if marker.encode() not in f.read():
                    continue
            with open(f"/proc/{pid}/status") as f:
                for line in f:
                    if line.startswith("VmHWM:"):
                        kb = int(line.split()[1])
                        best = max(best or 0.0, kb / 1024)
        except (OSError, ValueError, IndexError):
            continue
    return best


async def _drain_measuring_rss(name: str, cfg: WorkerConfig, argv: list[str], events: int,
                               timeout: float) -> DrainResult:
    peak: list[float] = []
    done = asyncio.Event()

    async def watch() -> None:
        while not done.is_set():
            rss = _peak_rss_mb(cfg.group_id)
            if rss:
                peak.append(rss)
            await asyncio.sleep(0.2)

    watcher = asyncio.create_task(watch())
    try:
        result = await drain_with_process(name, cfg, argv, events, timeout)
    finally:
        done.set()
        await watcher
    return replace(result, peak_rss_mb=max(peak) if peak else None)


async def compare(events: int, partitions: int, bootstrap: str, batch: int, take: int,
                  runners: list[str], timeout: float = 600) -> list[DrainResult]:
    unknown = set(runners) - set(RUNNERS)
    if unknown:
        raise ValueError(f"unknown runners {sorted(unknown)} (known: {', '.join(RUNNERS)})")
    cfg = unique_config(bootstrap, "cmp")
    records = realistic_session(events)
    print(f"pre-loading {len(records):,} events into {cfg.topics.gifts} ({partitions} partitions) ...", flush=True)
    seconds = await preload(cfg, records, partitions)
    print(f"  produced in {seconds:.1f} s ({len(records) / seconds:,.0f}/s)", flush=True)
    results: list[DrainResult] = []
    used = [cfg]
    try:
        with tempfile.TemporaryDirectory() as tmp:
            for r in runners:
                c = with_group(cfg, r)
                # Each runner writes its outputs to its own topics; they share only the gifts topic.
                c.topics = Topics(**{k: (v if k == "gifts" else f"{v}-{r}") for k, v in vars(c.topics).items()})
                if r != "bare":
                    await create_topics(c, partitions)
                    used.append(c)
                config = worker_config_file(c, Path(tmp) / f"{c.group_id}.toml", exactly_once=(r != "native-alo"),
                                            batch_max_records=batch)
                if r == "bare":
                    argv = bare_consumer_argv(c, batch)
                elif r.startswith("native"):
                    argv = native_worker_argv(config)
                else:
                    argv = faust_argv(config, c, r.split("-", 1)[1], take)
                res = await _drain_measuring_rss(NAMES[r], c, argv, len(records), timeout)
                results.append(res)
                print(f"  {res.name}: {res.events_per_second:,.0f} events/s, peak RSS "
                      f"{res.peak_rss_mb or 0:,.0f} MB", flush=True)
    finally:
        for c in used:  # the runs share the gifts topic: delete only at the very end
            await cleanup(c)
    print()
    print(table(results, len(records), partitions, batch, take))
    return results


def table(results: list[DrainResult], events: int, partitions: int, batch: int, take: int) -> str:
    by = {r.name: r for r in results}
    ceiling = by.get(NAMES["bare"])
    lines = [f"| runner ({events:,} events, {partitions} partitions, native batch {batch:,}, Faust take {take:,}) "
             "| events/s | share of bare ceiling | wall incl. start-up | peak RSS |", "|---|---:|---:|---:|---:|"]
    for r in results:
        has_ceiling = ceiling is not None and ceiling.events_per_second > 0
        share = f"{r.events_per_second / ceiling.events_per_second:.0%}" if has_ceiling else "n/a"
        rss = f"{r.peak_rss_mb:,.0f} MB" if r.peak_rss_mb else "n/a"
        lines.append(f"| {r.name} | {r.events_per_second:,.0f} | {share} | {r.total_seconds:.1f} s | {rss} |")
    lines.append("")
    for native in ("native-eos", "native-alo"):
        for faust in ("faust-events", "faust-take"):
            a, b = by.get(NAMES[native]), by.get(NAMES[faust])
            if a and b and b.events_per_second:
                lines.append(f"{NAMES[native]} / {NAMES[faust]}: {a.events_per_second / b.events_per_second:.1f}x")
    return "\n".join(lines)
