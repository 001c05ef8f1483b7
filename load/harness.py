"""Load harness: drive RUNNING workers at a target rate, measure, verify against ground truth, report.

`giftstream load run` produces seeded synthetic traffic (load/generator.py) into the gifts topic at a target
rate (paced by the wall clock, batches per partition keyed by creator_id like stream.kafka.session_io.produce_session)
for a duration. The records are generated and packed into producer batches before the clock starts
(--generate-live: while producing): generating costs ~10 µs of CPU per record and packing ~1.5 µs, which
would be taken from the workers and the broker on the same machine (a real load comes from other machines).
Meanwhile it polls, every ~25 ms (--poll-interval), the workers' consumer group committed offsets
(AIOKafkaAdminClient.list_consumer_group_offsets) and the topic's end offsets (a consumer's end_offsets).

Measurements:
  * throughput: committed events/s (the group's committed offsets over time);
  * consumer lag over time: end offsets - committed offsets, summed over partitions;
  * end-to-end latency of every produced record: the time its offset was first seen committed minus the
    wall-clock time its batch was handed to the producer. The worker commits the offsets in the same
    transaction as the notices, window totals and changelog of the batch, so this is the latency to
    committed outputs. Resolution: one poll interval (a record is stamped at the first poll that sees it
    committed, so latencies are overstated by up to one interval, half of it on average).
Verification (after the group has caught up), against what an independent computation says:
  * the offline replay (stream.runtime.replay.replay, same partition count) of the topic's records, read back
    partition by partition: live notices byte-identical to the replay's, notice ids unique (no duplicate
    notice), per-creator balances restored from the changelog equal to the replay's;
  * the naive ground truth (load/ground_truth.py, shares no code with the engine): the changelog state with
    every open streak timed out and every window closed (end_of_stream) gives the same per-creator
    balances as the ground truth.
The report (report.json, report.md, rate.png, lag.png, latency.png) goes to --out.
"""

from __future__ import annotations

import asyncio
import bisect
import ctypes
import ctypes.util
import functools
import gc
import itertools
import math
import sys
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import orjson

from stream.kafka.routing import PartitionCache

# ---------------------------------------------------------------------------------------------- latency


@dataclass
class LatencySample:
    committed_at: float  # seconds since the run started
    latency: float  # seconds
    records: int


class LatencyTracker:
    """Per-record latency from batch send times and the group's committed offsets over time (pure).

    sent(p, base, count, t): records [base, base + count) of partition p were handed to the producer at t.
    committed(p, offset, t): at t the group's committed offset of p was `offset` (records < offset done).
    Either may come first for a record (a producer ack can arrive after the commit poll saw its offsets):
    a batch registered below the committed offset is stamped with the first poll that covered it."""

    def __init__(self) -> None:
        self.samples: list[LatencySample] = []
        self._pending: dict[int, deque[list[float]]] = {}  # p -> [base, end, send_time] in offset order
        self._committed: dict[int, int] = {}
        self._history: dict[int, tuple[list[int], list[float]]] = {}  # p -> (committed offsets, times)

    def sent(self, partition: int, base: int, count: int, send_time: float) -> None:
        if count <= 0:
            return
        end = base + count
        offsets, times = self._history.get(partition, ([], []))
        # Records already covered by a poll: each at the first poll whose offset passed it.
        while base < end and offsets and base < offsets[-1]:
            i = bisect.bisect_right(offsets, base)  # first poll with committed offset > base
            upto = min(end, offsets[i])
            self.samples.append(LatencySample(times[i], max(0.0, times[i] - send_time), upto - base))
            base = upto
        if base < end:
            q = self._pending.setdefault(partition, deque())
            q.append([base, end, send_time])
            if len(q) > 1 and q[-2][0] > base:  # out of order (never with one idempotent producer): re-sort
                self._pending[partition] = deque(sorted(q))

    def committed(self, partition: int, offset: int, t: float) -> None:
        if offset <= self._committed.get(partition, -1):
            return
        self._committed[partition] = offset
        offsets, times = self._history.setdefault(partition, ([], []))
        offsets.append(offset)
        times.append(t)
        q = self._pending.get(partition)
        while q and q[0][0] < offset:
            base, end, send_time = q[0]
            upto = min(end, offset)
            self.samples.append(LatencySample(t, max(0.0, t - send_time), int(upto - base)))
            if end > offset:
                q[0][0] = offset
                break
            q.popleft()

    def pending_records(self) -> int:
        return int(sum(end - base for q in self._pending.values() for base, end, _ in q))

    def measured_records(self) -> int:
        return sum(s.records for s in self.samples)


def percentiles(samples: list[LatencySample], qs: tuple[float, ...] = (50, 90, 99)) -> dict[str, float | None]:
    """Record-weighted percentiles (nearest rank) of the samples' latencies, and the max."""
    total = sum(s.records for s in samples)
    out: dict[str, float | None] = {f"p{q:g}": None for q in qs}
    out["max"] = None
    if not total:
        return out
    ordered = sorted(samples, key=lambda s: s.latency)
    for q in qs:
        rank = max(1, math.ceil(q / 100 * total))
        seen = 0
        for s in ordered:
            seen += s.records
            if seen >= rank:
                out[f"p{q:g}"] = s.latency
                break
    out["max"] = ordered[-1].latency
    return out


# ---------------------------------------------------------------------------------------------- timeline


@dataclass
class Point:
    t: float  # seconds since the run started
    produced: int  # records handed to the producer by this run
    committed: int  # records of this run's range committed by the group (sum over partitions)
    end: int  # records in the topic since this run's baseline (end offsets)
    lag: int  # end offsets - committed offsets (whole topic)


def series(points: list[Point], samples: list[LatencySample], step: float = 1.0) -> dict[str, list]:
    """Per-`step` series for the plots: produced and committed rates, lag, latency p50/p99 of the records
    committed in that step."""
    if not points:
        return {"t": [], "produced_per_s": [], "committed_per_s": [], "lag": [], "latency_p50": [],
                "latency_p99": []}
    horizon = points[-1].t
    n = max(1, math.ceil(horizon / step))
    t, prod, comm, lag, p50, p99 = [], [], [], [], [], []
    by_bucket: dict[int, list[LatencySample]] = {}
    for s in samples:
        by_bucket.setdefault(min(n - 1, int(s.committed_at // step)), []).append(s)
    times = [p.t for p in points]
    for b in range(n):
        lo, hi = b * step, (b + 1) * step
        i0 = max(0, bisect.bisect_right(times, lo) - 1)
        i1 = max(0, bisect.bisect_right(times, hi) - 1)
        a, z = points[i0], points[i1]
        dt = z.t - a.t
        t.append(round(hi, 3))
        # A rate over less than half a step (the tail of the run) would be mostly noise: left out.
        prod.append((z.produced - a.produced) / dt if dt >= step / 2 else None)
        comm.append((z.committed - a.committed) / dt if dt >= step / 2 else None)
        lag.append(z.lag)
        pc = percentiles(by_bucket.get(b, []), (50, 99))
        p50.append(pc["p50"])
        p99.append(pc["p99"])
    return {"t": t, "produced_per_s": prod, "committed_per_s": comm, "lag": lag, "latency_p50": p50,
            "latency_p99": p99}


# ---------------------------------------------------------------------------------------------- report


def write_report(out_dir: str | Path, report: dict[str, Any]) -> dict[str, Path]:
    """report.json, report.md and three PNG plots (matplotlib, Agg backend) from a report dict with a
    `series` entry as made by series()."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / "report.json", "markdown": out / "report.md", "rate": out / "rate.png",
             "lag": out / "lag.png", "latency": out / "latency.png"}
    paths["json"].write_bytes(orjson.dumps(report, option=orjson.OPT_INDENT_2 | orjson.OPT_NON_STR_KEYS) + b"\n")
    s = report.get("series") or series([], [])
    t = s["t"]

    def plot(path: Path, title: str, ylabel: str, lines: list[tuple[str, list]]) -> None:
        fig, ax = plt.subplots(figsize=(8, 3.6), dpi=100)
        for label, ys in lines:
            xs = [x for x, y in zip(t, ys, strict=False) if y is not None]
            ax.plot(xs, [y for y in ys if y is not None], label=label, linewidth=1.4)
        ax.set_title(title)
        ax.set_xlabel("seconds since start")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        if lines:
            ax.legend(loc="best", fontsize=8)
        fig.tight_layout()
        fig.savefig(path, format="png")
        plt.close(fig)

    plot(paths["rate"], "Throughput", "events/s", [("produced", s["produced_per_s"]),
                                                  ("committed by the group", s["committed_per_s"])])
    plot(paths["lag"], "Consumer lag (end offsets - committed offsets)", "records", [("lag", s["lag"])])
    plot(paths["latency"], "End-to-end latency to committed outputs (per second of commit time)", "seconds",
         [("p50", s["latency_p50"]), ("p99", s["latency_p99"])])
    paths["markdown"].write_text(markdown(report))
    return paths


def _fmt(v: Any, unit: str = "") -> str:
    if v is None:
        return "n/a"
    if isinstance(v, float):
        return f"{v:,.3f}{unit}" if abs(v) < 100 else f"{v:,.0f}{unit}"
    if isinstance(v, int):
        return f"{v:,}{unit}"
    return f"{v}{unit}"


def markdown(report: dict[str, Any]) -> str:
    c, r = report.get("config", {}), report.get("results", {})
    lat = r.get("latency_s", {})
    steady = r.get("latency_after_warmup_s") or {}
    v = report.get("verification", {})
    lines = [
        "# giftstream load run",
        "",
        f"Target rate **{c.get('rate')}** events/s for {_fmt(c.get('duration_s'))} s into `{c.get('topic')}` "
        f"({c.get('partitions')} partitions), consumer group `{c.get('group')}`, broker {c.get('bootstrap')}.",
        "",
        "| measure | value |",
        "|---|---:|",
        f"| events produced | {_fmt(r.get('produced'))} |",
        f"| produce rate (achieved) | {_fmt(r.get('produce_rate'), ' /s')} |",
        f"| committed events | {_fmt(r.get('committed'))} |",
        f"| throughput (committed events/s, first to last commit) | {_fmt(r.get('throughput'), ' /s')} |",
        f"| peak committed events/s (1 s) | {_fmt(r.get('peak_throughput'), ' /s')} |",
        f"| max consumer lag | {_fmt(r.get('max_lag'))} |",
        f"| final consumer lag | {_fmt(r.get('final_lag'))} |",
        f"| latency p50 | {_fmt(lat.get('p50'), ' s')} |",
        f"| latency p90 | {_fmt(lat.get('p90'), ' s')} |",
        f"| latency p99 | {_fmt(lat.get('p99'), ' s')} |",
        f"| latency max | {_fmt(lat.get('max'), ' s')} |",
        f"| latency p50 / p90 / p99 after the first {_fmt(c.get('warmup_s'))} s (steady state) | "
        f"{_fmt(steady.get('p50'), ' s')} / {_fmt(steady.get('p90'), ' s')} / {_fmt(steady.get('p99'), ' s')} |",
        f"| records with a latency | {_fmt(lat.get('records'))} |",
        f"| committed-offset poll period (median / max) | {_fmt((r.get('poll_period_s') or {}).get('p50'), ' s')} / "
        f"{_fmt((r.get('poll_period_s') or {}).get('max'), ' s')} |",
        f"| drained in (after the last send) | {_fmt(r.get('drain_s'), ' s')} |",
        "",
        f"Latency = time the record's offset was first seen committed by the group (polled every "
        f"{_fmt(c.get('poll_interval_s'))} s) - time its batch was handed to the producer; the worker commits "
        "offsets in the same transaction as the batch's outputs, so it is the latency to committed outputs. "
        "It is overstated by up to one poll period (half of one on average).",
        "",
        f"## Verification: {'PASSED' if v.get('passed') else 'FAILED' if v.get('checks') else 'skipped'}",
        "",
    ]
    if v.get("checks"):
        lines += ["| check | result | detail |", "|---|---|---|"]
        lines += [f"| {ch['name']} | {'ok' if ch['passed'] else 'FAIL'} | {ch['detail']} |" for ch in v["checks"]]
    else:
        lines.append(v.get("reason", "verification was not run"))
    lines += ["", "## Plots", "", "![rate](rate.png)", "", "![lag](lag.png)", "", "![latency](latency.png)", ""]
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------- producing


# A record ready to send: (key, partition, value).
Addressed = tuple[bytes | None, int, bytes]


def address(records: Iterable[bytes], partitions: int | PartitionCache) -> Iterator[Addressed]:
    """Each record with its key (creator_id; None for a record without one) and the partition Kafka's default
    partitioner gives that key (keyless records go to partition 0), lazily."""
    from stream.kafka.session_io import key_of

    partition_of = partitions if isinstance(partitions, PartitionCache) else PartitionCache(partitions)
    for raw in records:
        key, _ = key_of(raw)
        yield (None, 0, raw) if key is None else (key, partition_of[key], raw)


# One tick's records packed into producer batches: (partition, batch, records in it), in sending order.
Shipment = list[tuple[int, Any, int]]


class PacedProducer:
    """Sends records keyed by creator_id to the partition Kafka's default partitioner picks (keyless ones to
    partition 0) at `rate` records/s of wall time (None = as fast as the producer takes them). Every batch's
    (partition, base offset, count, send time) goes to on_batch when the broker acks it.

    The records go in shipments (`shipments`): one tick's worth (rate * tick records; max_chunk at max rate)
    packed into one producer batch per partition, sent when the clock reaches the tick. `run` takes them
    lazily (each packed when it is due: a plain load) or packed ahead (a measured run packs all of them before
    its clock starts: packing costs ~1.5 µs of the harness's Python per record, CPU that the workers and the
    broker on the same machine would lose). With `native_batches` the batches are stream._native's
    RecordBatchBuilder (no Python per record when they are built, CRC in hardware), stamped when sent."""

    def __init__(self, producer: Any, topic: str, partitions: int, rate: float | None,
                 on_batch: Callable[[int, int, int, float], None] | None = None, tick: float = 0.01,
                 clock: Callable[[], float] = time.monotonic, native_batches: bool = False,
                 max_batch_bytes: int = 1 << 20) -> None:
        self.producer, self.topic, self.partitions, self.rate = producer, topic, partitions, rate
        self.on_batch, self.tick, self.clock = on_batch, tick, clock
        self.sent = 0
        self._partition_of = PartitionCache(partitions)
        self._pending: set[asyncio.Future] = set()
        self._native = None
        if native_batches:
            from stream._native import RecordBatchBuilder

            self._native = RecordBatchBuilder
        self._max_batch_bytes = max_batch_bytes

    def address(self, records: Iterable[bytes]) -> Iterator[Addressed]:
        return address(records, self._partition_of)

    def shipments(self, records: Iterable[Addressed], max_chunk: int = 20_000) -> Iterator[Shipment]:
        """The records cut into ticks and packed, lazily."""
        size = max_chunk if self.rate is None else max(1, round(self.rate * self.tick))
        it = iter(records)
        while chunk := list(itertools.islice(it, size)):
            yield self.pack(chunk)

    def pack(self, chunk: Iterable[Addressed]) -> Shipment:
        """Records into producer batches, a batch per partition (more when one fills), in sending order."""
        out: list[list] = []
        current: dict[int, list] = {}  # partition -> its open entry [partition, batch, records]
        for key, p, raw in chunk:
            entry = current.get(p)
            if entry is None or not self._add(entry[1], key, raw):
                entry = current[p] = [p, self._new_batch(), 0]
                out.append(entry)
                self._add(entry[1], key, raw)  # a fresh batch takes its first record
            entry[2] += 1
        return [(p, batch, n) for p, batch, n in out]

    def _new_batch(self) -> Any:
        if self._native is None:
            return self.producer.create_batch()
        return self._native(self._max_batch_bytes, False, 0, capacity=0)  # stamped when sent

    def _add(self, batch: Any, key: bytes | None, raw: bytes) -> bool:
        if self._native is None:
            return batch.append(key=key, value=raw, timestamp=None) is not None
        return batch.add(key, raw)

    async def _ship(self, shipment: Shipment) -> None:
        t = self.clock()
        now_ms = int(time.time() * 1000)
        for p, batch, count in shipment:
            if self._native is not None:
                batch.set_timestamp(now_ms)
            fut = await self.producer.send_batch(batch, self.topic, partition=p)
            self._pending.add(fut)
            fut.add_done_callback(functools.partial(self._acked, p, count, t))
            self.sent += count

    def _acked(self, p: int, count: int, t: float, f: asyncio.Future) -> None:
        self._pending.discard(f)
        if self.on_batch is not None and not f.cancelled() and f.exception() is None:
            self.on_batch(p, f.result().offset, count, t)

    async def run(self, shipments: Iterable[Shipment], duration: float | None = None,
                  stop: asyncio.Event | None = None) -> int:
        """Send until the shipments run out, `duration` seconds pass or `stop` is set; returns records sent."""
        start = self.clock()
        for shipment in shipments:
            if self.rate is not None:  # due once the clock has reached its last record
                due = (self.sent + sum(n for _, _, n in shipment)) / self.rate
                wait = due - (self.clock() - start)
                if wait > 0:
                    await asyncio.sleep(wait)
            if (stop is not None and stop.is_set()) or (duration is not None and self.clock() - start >= duration):
                break
            await self._ship(shipment)
            await asyncio.sleep(0)  # let the poller run
        if self._pending:
            await asyncio.gather(*list(self._pending), return_exceptions=True)
        return self.sent


def traffic_config(args: Any, rate: float | None = None) -> Any:
    """A TrafficConfig from the shared generator flags (see load/cli.py)."""
    from load.generator import TrafficConfig

    kw: dict[str, Any] = dict(seed=args.seed, events=args.events, creators=args.creators, senders=args.senders,
                              duplicate_rate=args.duplicate_rate, late_rate=args.late_rate,
                              malformed_rate=args.malformed_rate, streak_missing_end_rate=args.missing_end_rate,
                              burst_multiplier=args.burst_multiplier, burst_start_frac=args.burst_start,
                              burst_duration_frac=args.burst_duration)
    if args.event_rate is not None:
        kw["rate_per_s"] = float(args.event_rate)
    elif rate:
        kw["rate_per_s"] = float(rate)  # event time advances like wall time
    return TrafficConfig(**kw)


async def produce_to_kafka(cfg: Any, records: Iterator[bytes], rate: float | None, topic: str | None = None,
                           progress: Callable[[int], None] | None = None) -> tuple[int, float]:
    """`load generate --to-kafka`: paced production, no measuring. Returns (records, seconds)."""
    from stream.kafka.session_io import bulk_producer

    topic = topic or cfg.topics.gifts
    producer = bulk_producer(cfg, linger_ms=5)
    await producer.start()
    try:
        partitions = len(await producer.partitions_for(topic))
        pp = PacedProducer(producer, topic, partitions, rate)
        started = time.monotonic()
        stop = asyncio.Event()

        async def report() -> None:
            last = 0
            while not stop.is_set():
                await asyncio.sleep(0.5)
                if progress:
                    progress(pp.sent - last)
                last = pp.sent

        reporter = asyncio.create_task(report())
        try:
            n = await pp.run(pp.shipments(pp.address(records)))
        finally:
            stop.set()
            await reporter
        if progress:
            progress(0)
        return n, time.monotonic() - started
    finally:
        await producer.stop()


# ---------------------------------------------------------------------------------------------- verification


@dataclass
class Check:
    name: str
    passed: bool
    detail: str


async def verify(cfg: Any, policy: Any) -> dict[str, Any]:
    """Compare what the group committed with the offline replay and the independent ground truth."""
    from load.ground_truth import expected
    from stream.engine import model
    from stream.engine.reference import Outputs, PartitionEngine
    from stream.kafka.session_io import read_topic
    from stream.runtime.replay import replay
    from stream.state.changelog import restore_state

    started = time.monotonic()
    t = cfg.topics
    per_partition = await read_topic(cfg, t.gifts)
    partitions = len(per_partition)
    # Partition by partition in offset order: each partition's subsequence is exactly what its worker saw.
    records = [m.value or b"" for p in sorted(per_partition) for m in per_partition[p]]
    # The offline side runs the Python reference engine: the live workers run the compiled one by default, so
    # this also checks one implementation against the other.
    offline = replay(records, policy, partitions=partitions, engine="python")
    checks: list[Check] = []

    live_notices = [m.value for ms in (await read_topic(cfg, t.notices)).values() for m in ms]
    want_notices = [model.encode(n) for n in offline.outputs.notices]
    ids = [model.decode_notice(n).notice_id for n in live_notices]
    dup = len(ids) - len(set(ids))
    same = sorted(live_notices) == sorted(want_notices)
    checks.append(Check("notices equal the offline replay's (byte for byte)", same,
                        f"{len(live_notices):,} live, {len(want_notices):,} offline"))
    checks.append(Check("no duplicate notice (unique notice ids)", dup == 0,
                        f"{len(set(ids)):,} unique ids, {dup:,} duplicates"))

    changelog = await read_topic(cfg, t.changelog)
    live_state = {}
    closed_balances: dict[str, int] = {}
    for p, msgs in changelog.items():
        state, _ = restore_state((m.key, m.value) for m in msgs)
        live_state.update({cid: s.balance for cid, s in state.creators.items()})
        engine = PartitionEngine(policy, p, state, t.gifts, partitions=partitions, owners=PartitionCache(partitions))
        engine.end_of_stream(Outputs())  # time out open streaks, as the ground truth counts them
        closed_balances.update({cid: s.balance for cid, s in engine.state.creators.items()})
    want_balances = {cid: s.balance for e in offline.engines.values() for cid, s in e.state.creators.items()}
    diff = {c for c in live_state.keys() | want_balances.keys() if live_state.get(c, 0) != want_balances.get(c, 0)}
    checks.append(Check("changelog balances equal the offline replay's", not diff,
                        f"{len(live_state):,} creators, {sum(live_state.values()) // 1000:,} diamonds"
                        + (f"; {len(diff)} differ, e.g. {sorted(diff)[:3]}" if diff else "")))

    rates = {r: rp.diamonds_per_coin for r, rp in policy.regions.items()}
    truth = expected(records, rates, partitions, policy.max_future_ms, policy.dedupe_horizon_ms,
                     policy.max_record_bytes)
    truth_b = {c: b for c, b in truth["balances"].items() if b}
    live_b = {c: b for c, b in closed_balances.items() if b}
    diff = {c for c in truth_b.keys() | live_b.keys() if truth_b.get(c) != live_b.get(c)}
    checks.append(Check("balances (streaks timed out) equal the independent ground truth", not diff,
                        f"{len(truth_b):,} creators, {sum(truth_b.values()) // 1000:,} diamonds, "
                        f"{truth['accepted']:,} accepted events"
                        + (f"; {len(diff)} differ, e.g. {sorted(diff)[:3]}" if diff else "")))
    return {"passed": all(c.passed for c in checks), "checks": [asdict(c) for c in checks],
            "records": len(records), "partitions": partitions, "seconds": round(time.monotonic() - started, 2)}


# ---------------------------------------------------------------------------------------------- run


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

    from stream.kafka.session_io import bulk_producer
    from stream.kafka.topics import create_topics

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
