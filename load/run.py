"""`giftstream load run`: drive RUNNING workers at a target rate, measure, verify against ground truth, report.

It produces seeded synthetic traffic (load/generator.py) into the gifts topic at a target rate (paced by the
wall clock, batches per partition keyed by creator_id like stream.kafka_io.produce_session; load/producing.py)
for a duration. The records are generated and packed into producer batches before the clock starts
(--generate-live: while producing): generating costs ~10 µs of CPU per record and packing ~1.5 µs, which
would be taken from the workers and the broker on the same machine (a real load comes from other machines).
Meanwhile it polls, every ~25 ms (--poll-interval), the workers' consumer group committed offsets
(AIOKafkaAdminClient.list_consumer_group_offsets) and the topic's end offsets (a consumer's end_offsets).

Measurements:
  * throughput: committed events/s (the group's committed offsets over time; load/timeline.py);
  * consumer lag over time: end offsets - committed offsets, summed over partitions;
  * end-to-end latency of every produced record: the time its offset was first seen committed minus the
    wall-clock time its batch was handed to the producer (load/latency.py).
Verification (after the group has caught up): load/verify.py.
The report (report.json, report.md, rate.png, lag.png, latency.png; load/report.py) goes to --out.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import gc
import itertools
import sys
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from load.latency import LatencyTracker, percentiles
from load.producing import PacedProducer, Shipment
from load.report import write_report
from load.timeline import Point, series
from load.verify import verify


@dataclass
class RunOptions:
    rate: float | None  # None = as fast as possible
    duration: float
    out: Path
    poll_interval: float = 0.025
    warmup: float = 3.0  # seconds of commit time left out of the steady-state latency figures
    drain_timeout: float = 60.0
    # Generate (and address) the records while producing instead of before the clock starts: constant memory,
    # but ~10 µs of the harness's CPU per record during the measured run (it shares the machine).
    generate_live: bool = False
    verify: bool = True
    quiet: bool = False
    partitions: int = 6  # for topics that do not exist yet
    extra: dict[str, Any] = field(default_factory=dict)  # recorded in the report's config


class Progress:
    """One refreshed line on stderr (off when stderr is not a TTY or with --quiet)."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self._last = 0.0

    def show(self, text: str, force: bool = False) -> None:
        now = time.monotonic()
        if not self.enabled or (not force and now - self._last < 0.25):
            return
        self._last = now
        sys.stderr.write("\r\x1b[2K" + text)
        sys.stderr.flush()

    def done(self) -> None:
        if self.enabled:
            sys.stderr.write("\n")
            sys.stderr.flush()


async def run_load(cfg: Any, policy: Any, records: Iterator[bytes], opts: RunOptions) -> dict[str, Any]:
    """Drive the running workers of cfg.group_id, measure, verify, write the report; returns it."""
    from aiokafka import AIOKafkaConsumer, TopicPartition
    from aiokafka.admin import AIOKafkaAdminClient
    from aiokafka.errors import KafkaError

    from stream.kafka_io import bulk_producer
    from stream.topics import create_topics

    await create_topics(cfg, opts.partitions)  # missing ones only
    topic = cfg.topics.gifts
    sec = cfg.kafka_security()
    # linger 0: PacedProducer hands over whole batches, lingering would only delay them (and their stamps
    # are taken before the hand-off, so a linger is counted in every record's latency).
    producer = bulk_producer(cfg, linger_ms=0)
    consumer = AIOKafkaConsumer(bootstrap_servers=cfg.bootstrap_servers, isolation_level="read_committed",
                                enable_auto_commit=False, **sec)
    admin = AIOKafkaAdminClient(bootstrap_servers=cfg.bootstrap_servers, **sec)
    await producer.start()
    await consumer.start()
    await admin.start()
    tracker = LatencyTracker()
    points: list[Point] = []
    progress = Progress(enabled=not opts.quiet and sys.stderr.isatty())
    try:
        partitions = len(await producer.partitions_for(topic))
        tps = [TopicPartition(topic, p) for p in range(partitions)]

        coordinator: list[int] = []

        async def committed_offsets() -> dict[int, int]:
            # list_consumer_group_offsets looks the group coordinator up on every call unless told it: one more
            # round trip per poll. Look it up once, and again after an error (it moved).
            if not coordinator:
                coordinator.append(await admin.find_coordinator(cfg.group_id))
            try:
                got = await admin.list_consumer_group_offsets(cfg.group_id, coordinator[0], tps)
            except KafkaError:
                coordinator[0] = await admin.find_coordinator(cfg.group_id)
                got = await admin.list_consumer_group_offsets(cfg.group_id, coordinator[0], tps)
            return {tp.partition: (o.offset if o is not None and o.offset >= 0 else 0)
                    for tp, o in got.items() if tp.topic == topic}

        t0 = [time.monotonic()]  # the run's clock starts when producing does (below)
        clock = lambda: time.monotonic() - t0[0]  # noqa: E731
        pp = PacedProducer(producer, topic, partitions, opts.rate, on_batch=tracker.sent, clock=clock,
                           native_batches=not opts.generate_live)
        if opts.generate_live:
            shipments: Iterable[Shipment] = pp.shipments(pp.address(records))
            generation = {"traffic_generation": "live, while producing"}
        else:
            started = time.monotonic()
            # Generated, addressed and packed into producer batches before the clock starts (see PacedProducer):
            # the run only hands batches over. About 0.6 KiB per record, held until sent.
            shipments = list(pp.shipments(pp.address(records)))
            _return_freed_memory()
            # Many held objects: a full collection in the run would walk them all and stall the poller, whose
            # stamps are the latency measurement. They live until sent: freeze them.
            gc.freeze()
            packed = sum(n for shipment in shipments for _, _, n in shipment)
            generation = {"traffic_generation": f"before the run: {packed:,} records generated and packed in "
                                                f"{time.monotonic() - started:.1f} s"}
            progress.show(f"generated {packed:,} records", force=True)
        base_end = {tp.partition: o for tp, o in (await consumer.end_offsets(tps)).items()}
        base_committed = await committed_offsets()
        t0[0] = time.monotonic()
        producing_done = asyncio.Event()
        last_send: list[float] = []

        def committed_in_run(c: dict[int, int]) -> int:
            return sum(max(0, c.get(p, 0) - max(base_end[p], base_committed.get(p, 0))) for p in range(partitions))

        async def stamped_committed() -> tuple[dict[int, int], float]:
            c = await committed_offsets()
            return c, clock()

        async def poll_once() -> tuple[int, int]:
            # Committed and end offsets side by side; the committed offsets are stamped when they arrive.
            (c, t), end_offsets = await asyncio.gather(stamped_committed(), consumer.end_offsets(tps))
            for p, off in c.items():
                tracker.committed(p, off, t)
            ends = {tp.partition: o for tp, o in end_offsets.items()}
            lag = sum(max(0, ends[p] - c.get(p, 0)) for p in range(partitions))
            points.append(Point(t, pp.sent, committed_in_run(c), sum(ends[p] - base_end[p] for p in ends), lag))
            return lag, sum(ends[p] - base_end[p] for p in ends)

        async def tick(last: float) -> float:
            # Polls start every poll_interval (not poll_interval after the previous poll ended), so a poll's
            # own round trips do not stretch the resolution; after a slow poll the next one starts at once.
            nxt = max(last + opts.poll_interval, clock())
            await asyncio.sleep(nxt - clock())
            return nxt

        async def poller() -> None:
            started = clock()
            while not producing_done.is_set():
                await poll_once()
                _show(progress, points, tracker, "producing")
                started = await tick(started)

        poll_task = asyncio.create_task(poller())
        try:
            sent = await pp.run(shipments, duration=opts.duration)
        finally:
            last_send.append(clock())
            producing_done.set()
            await poll_task
        # Drain: keep polling until the group has committed everything this run produced.
        drained_at = None
        started = clock()
        while clock() - last_send[0] < opts.drain_timeout:
            lag, _ = await poll_once()
            _show(progress, points, tracker, "draining")
            if lag == 0 and tracker.pending_records() == 0:
                drained_at = clock()
                break
            started = await tick(started)
        _show(progress, points, tracker, "drained" if drained_at is not None else "NOT drained", force=True)
        progress.done()
    finally:
        await admin.close()
        await consumer.stop()
        await producer.stop()

    lat = percentiles(tracker.samples)
    lat["records"] = tracker.measured_records()
    # The same after the warm-up (the first batches also pay for metadata, coordinator lookups and the first
    # transactions of six producers): the steady state. Both are reported.
    steady = percentiles([s for s in tracker.samples if s.committed_at >= opts.warmup])
    commit_points = [p for p in points if p.committed > 0]
    first = next((p for p in points if p.committed > 0), None)
    s = series(points, tracker.samples)
    results: dict[str, Any] = {
        "produced": sent,
        "produce_seconds": round(last_send[0], 3),
        "produce_rate": sent / last_send[0] if last_send[0] else None,
        "committed": points[-1].committed if points else 0,
        "throughput": ((commit_points[-1].committed - first.committed) / (commit_points[-1].t - first.t)
                       if first and commit_points[-1].t > first.t else None),
        "peak_throughput": max((r for r in s["committed_per_s"] if r is not None), default=None),
        "max_lag": max((p.lag for p in points), default=None),
        "final_lag": points[-1].lag if points else None,
        "drained": drained_at is not None,
        "drain_s": round(drained_at - last_send[0], 3) if drained_at is not None else None,
        "latency_s": lat,
        "latency_after_warmup_s": steady,
        # The latency resolution: a record is stamped at the first poll that sees it committed.
        "poll_period_s": _poll_period(points),
    }
    config = {"rate": opts.rate or "max", "duration_s": opts.duration, "topic": topic, "partitions": partitions,
              "group": cfg.group_id, "bootstrap": cfg.bootstrap_servers, "poll_interval_s": opts.poll_interval,
              "warmup_s": opts.warmup, **generation,
              "policy_version": policy.version, **opts.extra}
    if not opts.verify:
        verification: dict[str, Any] = {"passed": None, "checks": [], "reason": "skipped (--no-verify)"}
    elif drained_at is None:
        verification = {"passed": False, "checks": [], "reason": f"the group did not catch up within "
                        f"{opts.drain_timeout} s of the last send (final lag {results['final_lag']}): "
                        "are the workers running, with this config's group and topics?"}
    else:
        verification = await verify(cfg, policy)
    report = {"config": config, "results": results, "verification": verification, "series": s}
    report["files"] = {k: str(v) for k, v in write_report(opts.out, report).items()}
    return report


def _return_freed_memory() -> None:
    """Give the C heap's free pages back to the OS (glibc's malloc_trim). Generating leaves ~1.8 KiB per
    record of freed but still mapped heap (orjson's buffers, the generator's working objects): 6 GB of
    resident memory for 3.3M records, on the machine whose broker and workers are being measured."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: nothing to trim this way
        pass


def _poll_period(points: list[Point]) -> dict[str, float] | None:
    """Median and max time between successive committed-offset polls."""
    gaps = sorted(b.t - a.t for a, b in itertools.pairwise(points))
    return {"p50": round(gaps[len(gaps) // 2], 4), "max": round(gaps[-1], 4)} if gaps else None


def _show(progress: Progress, points: list[Point], tracker: LatencyTracker, phase: str, force: bool = False) -> None:
    if not progress.enabled or not points:
        return
    last = points[-1]
    ref = next((p for p in reversed(points) if last.t - p.t >= 1.0), points[0])
    dt = (last.t - ref.t) or 1.0
    recent = [s for s in tracker.samples[-2000:] if s.committed_at >= last.t - 5]
    p99 = percentiles(recent, (99,))["p99"]
    progress.show(f"[{last.t:6.1f}s {phase}] sent {last.produced:,} ({(last.produced - ref.produced) / dt:,.0f}/s)"
                  f"  committed {(last.committed - ref.committed) / dt:,.0f}/s  lag {last.lag:,}"
                  f"  p99 {'n/a' if p99 is None else f'{p99:.3f}s'}", force=force)
