"""`giftstream load state-scale`: production-size state, then restart, add a worker, remove a worker (issue 16).

Why: a worker that owns millions of creators must restore them within the group's patience; the drain and
latency benchmarks start from empty state and say nothing about that. This benchmark:

1. builds the state of N creators straight into a fresh changelog topic, without a worker: gift events are
   generated offline (every creator gets a balance, one or two open window panes, about 1.4 streaks and about
   five dedupe ids, the production mix of issue 16), run through the offline engine of their partition
   (track_changes=True, drained every batch like the worker does) and the changelog records written to the
   changelog partition of the same number with a plain producer;
2. runs the phases with a trickle of gifts (--rate) to creators of that state flowing all the time:
   restart (one worker starts on the whole state), add (a second worker joins), remove (the second worker is
   SIGTERM'd). Workers are `giftstream worker` processes with a config TOML of their own: the benchmark only
   uses the worker's command line, its logs and its HTTP endpoints (/readyz), so it measures any version;
3. measures per phase the time to ready, the time until every partition commits again, the longest commit
   gap (the longest time a gifts partition with lag saw no committed offset move; sampled every 0.5 s),
   expulsions and rebalances seen in the logs, peak and steady RSS of every worker, and the changelog size
   (records and bytes on the broker's disk, DescribeLogDirs), and writes report.json and report.md.

A phase that does not settle within --phase-timeout is reported as such (settled: false, with what /readyz
said last), never as a crash of the benchmark. Every process it starts is stopped at the end (SIGTERM, then
SIGKILL), and its topics are deleted unless --keep-topics.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import sys
import time
import uuid
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import orjson
from aiokafka.protocol.api import Request, RequestStruct, Response
from aiokafka.protocol.types import Array, Boolean, Int16, Int32, Int64, Schema, String

from load.workers import WorkerProc
from stream.config import Topics, WorkerConfig
from stream.engine.policy import Policy
from stream.kafka.routing import PartitionCache, partition_for

PHASES = ("restart", "add", "remove")
REGIONS = ("US", "US", "US", "GB", "DE", "FR", "BR", "MX", "ID", "JP", "KR")  # US-heavy, every one eligible
SPAN_MS = 110 * 60_000  # event time of the built state: inside the 2 h dedupe horizon, so no id expires
ACTIVE_MS = 360_000  # a creator's gifts fall within 6 min: one to three 5-min panes, 1.6 on average
BUILD_BATCH = 50_000  # events per engine batch (the worker's batch_max_records): one drain per batch
SAMPLE_OFFSETS_S = 0.5
SAMPLE_RSS_S = 0.2


# ---------------------------------------------------------------------------------------------- options


@dataclass
class StateScaleOptions:
    """Everything a run depends on (recorded in the report)."""

    creators: int = 1_000_000
    partitions: int = 6
    phases: tuple[str, ...] = PHASES
    rate: float = 2000.0  # trickle of gifts/s during the phases
    session_timeout_ms: int = 10_000
    phase_timeout_s: float = 600.0  # a phase that has not settled by then is reported as not settled
    hold_s: float = 10.0  # steady time after a phase settles (steady RSS, commits flowing)
    out: Path = Path("out/state-scale")
    bootstrap: str = "127.0.0.1:19092"
    seed: int = 1
    keep_topics: bool = False
    prefix: str = ""  # topic and group suffix; default ss-<random>
    worker_args: tuple[str, ...] = ()  # extra `giftstream worker` flags
    checkpoints: bool = False  # each worker keeps local checkpoints in <out>/state-<name> (a restart reuses them)
    quiet: bool = False


# ---------------------------------------------------------------------------------------------- building


@dataclass
class PartitionBuild:
    """What went into one changelog partition."""

    partition: int
    creators: int
    events: int
    records: int
    tombstones: int
    bytes: int  # keys + values as produced (the broker's on-disk size adds batch headers)
    streaks: int
    open_streaks: int
    dedupe_ids: int
    pane_tallies: int
    watermark: int | None
    rejected: int


@dataclass
class BuildResult:
    partitions: list[PartitionBuild]
    creators: int
    events: int
    records: int
    bytes: int
    streaks: int
    dedupe_ids: int
    pane_tallies: int
    seconds: float
    end_ts: int  # event time the state reaches: the trickle continues from here


def creator_id(i: int) -> str:
    return f"sc{i}"


_GIFT = ('{{"event_id":"{eid}","room_id":"r{i}","creator_id":"sc{i}","sender_id":"{sender}","gift_id":{gift},'
         '"gift_type":{gt},"diamond_count":{dc},"repeat_count":{rc},"repeat_end":{end},{group}"ts":{ts},'
         '"region":"{region}"}}')


def _gift(eid: str, i: int, sender: str, gift: int, gt: int, dc: int, rc: int, end: bool, group: str | None,
          ts: int, region: str) -> bytes:
    return _GIFT.format(eid=eid, i=i, sender=sender, gift=gift, gt=gt, dc=dc, rc=rc,
                        end="true" if end else "false", group=f'"group_id":"{group}",' if group else "",
                        ts=ts, region=region).encode()


def creator_events(i: int, rng: random.Random, start_ts: int, span_ms: int = SPAN_MS) -> list[tuple[int, bytes]]:
    """One creator's gifts as (ts, record): 1-4 plain gifts and 0-3 streaks of 1-4 events (cumulative
    repeat_count, a final repeat_end; 3% never end), all within ACTIVE_MS of a start drawn over the span.
    About 5 events and 1.4 streaks per creator on average."""
    region = REGIONS[i % len(REGIONS)]
    t = start_ts + int(rng.random() * max(1, span_ms - ACTIVE_MS))
    out: list[tuple[int, bytes]] = []
    n_plain = rng.choices((1, 2, 4), (0.7, 0.2, 0.1))[0]
    for j in range(n_plain):
        ts = t + int(rng.random() * ACTIVE_MS)
        out.append((ts, _gift(f"{i}p{j}", i, f"v{rng.randrange(1 << 30)}", 5655 + j, 2 if j == 3 else 0,
                              rng.choice((1, 1, 5, 10, 30)), 1, False, None, ts, region)))
    n_streaks = rng.choices((0, 1, 2, 3), (0.2, 0.35, 0.3, 0.15))[0]
    for k in range(n_streaks):
        sender = f"v{rng.randrange(1 << 30)}"
        ts = t + int(rng.random() * (ACTIVE_MS - 20_000))
        steps = rng.choices((1, 2, 3, 4), (0.2, 0.3, 0.3, 0.2))[0]
        ends = rng.random() >= 0.03
        count = 0
        for s in range(steps):
            count += rng.choice((1, 1, 2, 5))
            out.append((ts, _gift(f"{i}s{k}-{s}", i, sender, 7934, 1, 1, count, ends and s == steps - 1,
                                  f"g{i}-{k}", ts, region)))
            ts += rng.randrange(500, 4000)
    return out


def build_partition(policy: Policy, partition: int, partitions: int, creators: list[int], seed: int,
                    start_ts: int, gifts_topic: str) -> tuple[list[tuple[bytes, bytes | None]], PartitionBuild]:
    """The changelog records of one partition's state, built by the offline engine from generated gifts."""
    from stream.engine.native import make_engine
    from stream.engine.reference import Outputs
    from stream.state.changelog import ChangelogWriter

    rng = random.Random(seed * 1_000_003 + partition)
    events: list[tuple[int, bytes]] = []
    for i in creators:
        events.extend(creator_events(i, rng, start_ts))
    events.sort(key=lambda e: e[0])  # arrival in event-time order, as a live feed would have them
    engine = make_engine(policy, partition, None, gifts_topic, track_changes=True, partitions=partitions,
                         owners=PartitionCache(partitions))
    writer = ChangelogWriter()
    records: list[tuple[bytes, bytes | None]] = []
    rejected = 0
    for base in range(0, len(events), BUILD_BATCH):
        chunk = [raw for _, raw in events[base:base + BUILD_BATCH]]
        out = engine.process(chunk, base, Outputs())
        rejected += len(out.dead_letters)
        records.extend(writer.drain(engine))
    sizes = engine.sizes()
    n_events = len(events)
    del events
    tombstones = sum(1 for _, v in records if v is None)
    nbytes = sum(len(k) + (len(v) if v is not None else 0) for k, v in records)
    return records, PartitionBuild(partition, sizes.creators, n_events, len(records), tombstones, nbytes,
                                   sizes.streaks, sizes.open_streaks, sizes.dedupe_ids, sizes.pane_tallies,
                                   engine.watermark, rejected)


async def write_records(producer: Any, topic: str, partition: int,
                        records: Iterable[tuple[bytes, bytes | None]]) -> int:
    """Send records to one partition in producer batches (create_batch / send_batch: no per-record future)."""
    pending: list[asyncio.Future] = []
    batch = producer.create_batch()
    n = 0
    for key, value in records:
        if batch.append(key=key, value=value, timestamp=None) is None:
            pending.append(await producer.send_batch(batch, topic, partition=partition))
            batch = producer.create_batch()
            if batch.append(key=key, value=value, timestamp=None) is None:
                raise ValueError(f"changelog record {key[:40]!r} does not fit a producer batch")
        n += 1
        if len(pending) >= 64:  # bound what is in flight (and held in memory)
            await asyncio.gather(*pending)
            pending.clear()
    if batch.record_count():
        pending.append(await producer.send_batch(batch, topic, partition=partition))
    await asyncio.gather(*pending)
    return n


async def build_state(cfg: WorkerConfig, policy: Policy, opts: StateScaleOptions, log: Any) -> BuildResult:
    """Build the state of opts.creators creators into cfg's changelog topic, partition by partition."""
    from stream.kafka.session_io import bulk_producer

    started = time.monotonic()
    end_ts = int(time.time() * 1000)
    start_ts = end_ts - SPAN_MS
    by_partition: list[list[int]] = [[] for _ in range(opts.partitions)]
    for i in range(opts.creators):
        by_partition[partition_for(creator_id(i).encode(), opts.partitions)].append(i)
    producer = bulk_producer(cfg, linger_ms=5)
    await producer.start()
    parts: list[PartitionBuild] = []
    try:
        for p, creators in enumerate(by_partition):
            t = time.monotonic()
            records, info = build_partition(policy, p, opts.partitions, creators, opts.seed, start_ts,
                                            cfg.topics.gifts)
            built = time.monotonic() - t
            await write_records(producer, cfg.topics.changelog, p, records)
            del records
            parts.append(info)
            log(f"  partition {p}: {info.creators:,} creators, {info.events:,} events -> {info.records:,} "
                f"changelog records, {info.bytes / 1e6:,.1f} MB (built {built:.1f} s, "
                f"written {time.monotonic() - t - built:.1f} s)")
    finally:
        await producer.stop()
    wm = max((p.watermark or 0) for p in parts)
    return BuildResult(parts, sum(p.creators for p in parts), sum(p.events for p in parts),
                       sum(p.records for p in parts), sum(p.bytes for p in parts), sum(p.streaks for p in parts),
                       sum(p.dedupe_ids for p in parts), sum(p.pane_tallies for p in parts),
                       round(time.monotonic() - started, 2), wm or end_ts)


# ---------------------------------------------------------------------------------------------- broker size


class _DescribeLogDirsResponse_v1(Response):
    API_KEY = 35
    API_VERSION = 1
    SCHEMA = Schema(
        ("throttle_time_ms", Int32),
        ("results", Array(
            ("error_code", Int16),
            ("log_dir", String("utf-8")),
            ("topics", Array(
                ("name", String("utf-8")),
                ("partitions", Array(("partition_index", Int32), ("partition_size", Int64),
                                     ("offset_lag", Int64), ("is_future_key", Boolean))))))),
    )


class _DescribeLogDirsRequest_v1(RequestStruct):
    API_KEY = 35
    API_VERSION = 1
    RESPONSE_TYPE = _DescribeLogDirsResponse_v1
    SCHEMA = Schema(("topics", Array(("topic", String("utf-8")), ("partitions", Array(Int32)))))


class DescribeLogDirs(Request[_DescribeLogDirsRequest_v1]):
    """DescribeLogDirs (API 35) v1, which aiokafka's admin client does not have: partition sizes on disk."""

    API_KEY = 35

    def __init__(self, topic: str, partitions: list[int]) -> None:
        self.topic, self.partitions = topic, partitions

    def build(self, request_struct_class: type[_DescribeLogDirsRequest_v1]) -> _DescribeLogDirsRequest_v1:
        return request_struct_class([(self.topic, self.partitions)])


async def topic_bytes_on_disk(cfg: WorkerConfig, topic: str, partitions: int) -> dict[int, int] | None:
    """partition -> bytes of its log on the broker's disk (summed over brokers and log dirs); None if the
    broker does not answer DescribeLogDirs."""
    from aiokafka.admin import AIOKafkaAdminClient

    admin = AIOKafkaAdminClient(bootstrap_servers=cfg.bootstrap_servers, **cfg.kafka_security())
    await admin.start()
    try:
        sizes: dict[int, int] = {}
        for broker in admin._client.cluster.brokers():
            resp = await admin._client.send(broker.nodeId, DescribeLogDirs(topic, list(range(partitions))))
            for error_code, _dir, topics in resp.results:
                if error_code:
                    continue
                for name, parts in topics:
                    if name == topic:
                        for index, size, _lag, future in parts:
                            if not future:
                                sizes[index] = sizes.get(index, 0) + size
        return sizes
    except Exception:  # an old broker, no permission: the size is unknown, not a failure of the run
        return None
    finally:
        await admin.close()


# ---------------------------------------------------------------------------------------------- monitor


@dataclass
class GapTracker:
    """The longest time a partition with lag saw its committed offset not move (pure: fed samples)."""

    since: dict[int, float] = field(default_factory=dict)  # p -> when its offset last moved (or lag began)
    last: dict[int, int] = field(default_factory=dict)
    longest: float = 0.0
    longest_partition: int | None = None
    longest_ended_at: float | None = None

    def sample(self, t: float, committed: dict[int, int], ends: dict[int, int]) -> None:
        for p, end in ends.items():
            c = committed.get(p, 0)
            if p not in self.last or c != self.last[p] or c >= end:
                self.since[p] = t  # moved, or nothing to do: no gap
            self.last[p] = c
            gap = t - self.since[p]
            if gap > self.longest:
                self.longest, self.longest_partition, self.longest_ended_at = gap, p, t

    def reset(self, t: float) -> None:
        """A new phase: gaps count from now (a gap already open counts from now too)."""
        self.since = {p: t for p in self.since}
        self.longest, self.longest_partition, self.longest_ended_at = 0.0, None, None


class Monitor:
    """Background sampling while phases run: committed and end offsets of gifts every 0.5 s, RSS every 0.2 s,
    the workers' logs. Times are seconds since the benchmark's clock started."""

    def __init__(self, cfg: WorkerConfig, partitions: int) -> None:
        self.cfg, self.partitions = cfg, partitions
        self.t0 = time.monotonic()
        self.workers: list[WorkerProc] = []
        self.gaps = GapTracker()
        self.committed: dict[int, int] = {}
        self.ends: dict[int, int] = {}
        self.moved_at: dict[int, float] = {}  # p -> when its committed offset last moved
        self.offset_errors = 0
        self._tasks: list[asyncio.Task] = []

    def now(self) -> float:
        return time.monotonic() - self.t0

    async def start(self) -> None:
        from aiokafka import AIOKafkaConsumer
        from aiokafka.admin import AIOKafkaAdminClient

        sec = self.cfg.kafka_security()
        self.admin = AIOKafkaAdminClient(bootstrap_servers=self.cfg.bootstrap_servers, **sec)
        self.consumer = AIOKafkaConsumer(bootstrap_servers=self.cfg.bootstrap_servers,
                                         isolation_level="read_committed", enable_auto_commit=False, **sec)
        await self.admin.start()
        await self.consumer.start()
        self._tasks = [asyncio.create_task(self._offsets()), asyncio.create_task(self._rss())]

    async def stop(self) -> None:
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.consumer.stop()
        await self.admin.close()

    async def _offsets(self) -> None:
        from aiokafka import TopicPartition
        from aiokafka.errors import KafkaError

        topic = self.cfg.topics.gifts
        tps = [TopicPartition(topic, p) for p in range(self.partitions)]
        coordinator: int | None = None
        while True:
            started = time.monotonic()
            try:
                if coordinator is None:
                    coordinator = await self.admin.find_coordinator(self.cfg.group_id)
                got, ends = await asyncio.gather(
                    self.admin.list_consumer_group_offsets(self.cfg.group_id, coordinator, tps),
                    self.consumer.end_offsets(tps))
                t = self.now()
                committed = {tp.partition: (o.offset if o is not None and o.offset >= 0 else 0)
                             for tp, o in got.items() if tp.topic == topic}
                for p, c in committed.items():
                    if c != self.committed.get(p):
                        self.moved_at[p] = t
                self.committed = committed
                self.ends = {tp.partition: o for tp, o in ends.items()}
                self.gaps.sample(t, committed, self.ends)
            except (TimeoutError, KafkaError, OSError):
                coordinator = None
                self.offset_errors += 1
            await asyncio.sleep(max(0.0, SAMPLE_OFFSETS_S - (time.monotonic() - started)))

    async def _rss(self) -> None:
        while True:
            for w in self.workers:
                if w.alive():
                    w.sample_rss()
            await asyncio.sleep(SAMPLE_RSS_S)

    def lag(self) -> int:
        return sum(max(0, e - self.committed.get(p, 0)) for p, e in self.ends.items())


# ---------------------------------------------------------------------------------------------- traffic


class Trickle:
    """Gifts to creators of the built state at `rate`/s, in 0.1 s ticks, their event time continuing from
    the state's (so none is too old or too far ahead), each with a fresh event id."""

    def __init__(self, cfg: WorkerConfig, creators: int, partitions: int, rate: float, start_ts: int,
                 seed: int) -> None:
        self.cfg, self.creators, self.partitions, self.rate = cfg, creators, partitions, rate
        self.start_ts, self.rng = start_ts, random.Random(seed ^ 0x5EED)
        self.sent = 0
        self.errors = 0
        self._wall0 = 0.0
        self._task: asyncio.Task | None = None
        self._run = uuid.uuid4().hex[:6]
        self._partition_of: dict[int, int] = {}

    async def start(self) -> None:
        from stream.kafka.session_io import bulk_producer

        self.producer = bulk_producer(self.cfg, linger_ms=5)
        await self.producer.start()
        self._wall0 = time.monotonic()
        self._task = asyncio.create_task(self._loop())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        await self.producer.stop()

    def _record(self, n: int) -> tuple[int, bytes, bytes]:
        i = self.rng.randrange(self.creators)
        p = self._partition_of.get(i)
        if p is None:
            p = self._partition_of[i] = partition_for(creator_id(i).encode(), self.partitions)
        ts = self.start_ts + int((time.monotonic() - self._wall0) * 1000)
        raw = _gift(f"t{self._run}-{n}", i, f"v{self.rng.randrange(1 << 30)}", 5655, 0,
                    self.rng.choice((1, 1, 5, 10)), 1, False, None, ts, REGIONS[i % len(REGIONS)])
        return p, creator_id(i).encode(), raw

    async def _loop(self) -> None:
        tick = 0.1
        topic = self.cfg.topics.gifts
        while True:
            due = int((time.monotonic() - self._wall0) * self.rate) - self.sent
            if due > 0:
                batches: dict[int, Any] = {}
                for _ in range(due):
                    p, key, raw = self._record(self.sent)
                    b = batches.get(p)
                    if b is None:
                        b = batches[p] = self.producer.create_batch()
                    if b.append(key=key, value=raw, timestamp=None) is None:
                        await self.producer.send_batch(b, topic, partition=p)
                        b = batches[p] = self.producer.create_batch()
                        b.append(key=key, value=raw, timestamp=None)
                    self.sent += 1
                try:
                    for p, b in batches.items():
                        await self.producer.send_batch(b, topic, partition=p)
                except Exception:  # a broker hiccup: counted, the trickle goes on
                    self.errors += 1
            await asyncio.sleep(tick)


# ---------------------------------------------------------------------------------------------- phases


@dataclass
class WorkerStats:
    name: str
    peak_rss_mb: float
    rss_mb: float  # steady: at the end of the phase's hold
    partitions: list[int]
    restored: list[dict[str, Any]]  # "partition restored" log lines during the phase
    assignments: int  # rebalances this worker took part in during the phase
    expulsions: list[str]


@dataclass
class PhaseResult:
    """One phase. Times are seconds since the phase started (process start for restart and add, SIGTERM for
    remove); None when it did not happen within the phase timeout."""

    phase: str
    settled: bool
    time_to_ready_s: float | None  # every worker 200 on /readyz, together owning every partition once
    time_to_commits_s: float | None  # ... and every gifts partition's committed offset moved after that
    longest_commit_gap_s: float
    longest_gap_partition: int | None
    max_lag: int
    final_lag: int
    restore_records: int  # changelog records the "partition restored" lines of the phase report
    restore_max_partition_s: float | None  # the slowest partition's restore (its log line)
    restore_records_per_s: float | None  # restore_records / time_to_ready_s
    expelled: bool
    workers: list[WorkerStats]
    note: str = ""
    last_readyz: dict[str, Any] = field(default_factory=dict)


def _assigned(body: dict[str, Any] | None) -> list[int]:
    return list(body.get("partitions", [])) if body else []


async def _wait_settled(monitor: Monitor, workers: list[WorkerProc], partitions: int, phase_t0: float,
                        timeout: float, session: Any) -> tuple[float | None, float | None, str, dict[str, Any]]:
    """Wait until every worker is ready and together they own each partition exactly once, then until every
    partition's committed offset moves again. Returns (time to ready, time to commits, note, last /readyz)."""
    ready_at: float | None = None
    commits_at: float | None = None
    last: dict[str, Any] = {}
    note = ""
    while monitor.now() - phase_t0 < timeout:
        for w in workers:
            w.read_log()
        dead = [w for w in workers if not w.alive()]
        if dead:
            note = "; ".join(f"{w.name} exited with {w.popen.poll()}" for w in dead)
            break
        answers = await asyncio.gather(*(w.readyz(session) for w in workers))
        last = {w.name: {"status": s, **(b or {})} for w, (s, b) in zip(workers, answers, strict=True)}
        owned = sorted(p for _, b in answers for p in _assigned(b))
        all_ready = all(s == 200 for s, _ in answers) and owned == list(range(partitions))
        if ready_at is None and all_ready:
            ready_at = monitor.now()
        elif ready_at is not None and not all_ready:
            ready_at = None  # a further rebalance: wait again
        if ready_at is not None and all(monitor.moved_at.get(p, -1.0) > ready_at for p in range(partitions)):
            commits_at = max(monitor.moved_at[p] for p in range(partitions))
            break
        await asyncio.sleep(0.2)
    else:
        note = f"not settled within {timeout:g} s"
    to_ready = None if ready_at is None else round(ready_at - phase_t0, 2)
    to_commits = None if commits_at is None else round(commits_at - phase_t0, 2)
    return to_ready, to_commits, note, last


def _worker_stats(w: WorkerProc, body: dict[str, Any] | None, restored_from: int, assignments_from: int,
                  expulsions_from: int) -> WorkerStats:
    w.read_log()
    return WorkerStats(w.name, round(w.peak_kb / 1024, 1), round(w.rss_kb / 1024, 1), _assigned(body),
                       w.scan.restored[restored_from:], w.scan.assignments - assignments_from,
                       w.scan.expulsions[expulsions_from:])


async def run_phase(name: str, monitor: Monitor, active: list[WorkerProc], partitions: int,
                    opts: StateScaleOptions, session: Any, action: Any) -> PhaseResult:
    """Run one phase: note where every log stands, do `action` (start or stop a worker), wait for the
    survivors to settle, hold, and collect the figures."""
    for w in active:
        w.read_log()
    marks = {w.name: (len(w.scan.restored), w.scan.assignments, len(w.scan.expulsions)) for w in active}
    phase_t0 = monitor.now()
    monitor.gaps.reset(phase_t0)
    lags: list[int] = []
    workers = await action()
    for w in workers:
        if w.name not in marks:
            marks[w.name] = (0, 0, 0)
    lag_task = asyncio.create_task(_track_lag(monitor, lags))
    try:
        to_ready, to_commits, note, last = await _wait_settled(monitor, workers, partitions, phase_t0,
                                                               opts.phase_timeout_s, session)
        settled = to_commits is not None
        if settled and opts.hold_s > 0:
            await asyncio.sleep(opts.hold_s)
            answers = await asyncio.gather(*(w.readyz(session) for w in workers))
            last = {w.name: {"status": s, **(b or {})} for w, (s, b) in zip(workers, answers, strict=True)}
    finally:
        lag_task.cancel()
        await asyncio.gather(lag_task, return_exceptions=True)
    stats = []
    for w in workers:
        w.sample_rss()
        r0, a0, e0 = marks[w.name]
        body = last.get(w.name)
        stats.append(_worker_stats(w, body, r0, a0, e0))
    restored = [r for s in stats for r in s.restored]
    records = sum(int(r.get("changelog_records") or 0) for r in restored)
    slowest = max((float(r.get("seconds") or 0) for r in restored), default=None)
    expelled = any(s.expulsions for s in stats)
    return PhaseResult(name, settled, to_ready, to_commits, round(monitor.gaps.longest, 2),
                       monitor.gaps.longest_partition, max(lags, default=0), monitor.lag(), records, slowest,
                       round(records / to_ready) if to_ready and records else None, expelled, stats, note,
                       {} if settled else last)


async def _track_lag(monitor: Monitor, lags: list[int]) -> None:
    while True:
        lags.append(monitor.lag())
        await asyncio.sleep(SAMPLE_OFFSETS_S)


# ---------------------------------------------------------------------------------------------- run


def scale_config(opts: StateScaleOptions) -> WorkerConfig:
    """Topics and group of this run only (ss-<random> suffix)."""
    suffix = opts.prefix or f"ss-{uuid.uuid4().hex[:8]}"
    topics = Topics(**{k: f"{v}-{suffix}" for k, v in vars(Topics()).items()})
    return WorkerConfig(bootstrap_servers=opts.bootstrap, group_id=f"giftstream-{suffix}",
                        session_timeout_ms=opts.session_timeout_ms, topics=topics)


async def run_state_scale(opts: StateScaleOptions, policy: Policy) -> dict[str, Any]:
    """Build, run the phases, write the report; returns it. Everything started is stopped, the topics
    deleted (unless keep_topics), whatever happens."""
    import aiohttp

    from stream.kafka.topics import create_topics, delete_topics

    out = Path(opts.out)
    out.mkdir(parents=True, exist_ok=True)

    def log(text: str) -> None:
        if not opts.quiet:
            print(text, file=sys.stderr, flush=True)

    cfg = scale_config(opts)
    await create_topics(cfg, opts.partitions)
    log(f"state-scale: topics *-{cfg.topics.gifts.removeprefix('gifts-')}, group {cfg.group_id}, "
        f"{opts.partitions} partitions; building {opts.creators:,} creators")
    workers: list[WorkerProc] = []
    monitor: Monitor | None = None
    trickle: Trickle | None = None
    phases: list[PhaseResult] = []
    report: dict[str, Any] = {}
    try:
        build = await build_state(cfg, policy, opts, log)
        disk = await topic_bytes_on_disk(cfg, cfg.topics.changelog, opts.partitions)
        log(f"built {build.records:,} changelog records ({build.bytes / 1e6:,.1f} MB of keys and values"
            + (f", {sum(disk.values()) / 1e6:,.1f} MB on disk" if disk else "") + f") in {build.seconds:.1f} s: "
            f"{build.creators:,} creators, {build.streaks:,} streaks, {build.dedupe_ids:,} dedupe ids, "
            f"{build.pane_tallies:,} pane tallies")
        monitor = Monitor(cfg, opts.partitions)
        await monitor.start()
        trickle = Trickle(cfg, opts.creators, opts.partitions, opts.rate, build.end_ts, opts.seed)
        await trickle.start()
        async with aiohttp.ClientSession() as session:
            for name in opts.phases:
                if name == "restart":
                    for w in workers:  # a restart of what runs: stop it first
                        await w.stop()
                    workers.clear()

                    async def start_one() -> list[WorkerProc]:
                        w = WorkerProc("w1", cfg, out, opts.worker_args, opts.checkpoints)
                        workers.append(w)
                        monitor.workers.append(w)
                        return list(workers)

                    action = start_one
                elif name == "add":
                    async def add_one() -> list[WorkerProc]:
                        w = WorkerProc(f"w{len(workers) + 1}", cfg, out, opts.worker_args, opts.checkpoints)
                        workers.append(w)
                        monitor.workers.append(w)
                        return list(workers)

                    action = add_one
                elif name == "remove":
                    if len(workers) < 2:
                        phases.append(PhaseResult(name, False, None, None, 0.0, None, 0, monitor.lag(), 0, None,
                                                  None, False, [], "skipped: needs two workers (run add first)"))
                        continue

                    async def remove_last() -> list[WorkerProc]:
                        gone = workers.pop()
                        await gone.stop(timeout=opts.session_timeout_ms / 1000 + 30)
                        log(f"  {gone.name} stopped in {gone.stop_seconds} s (exit {gone.exit_code})")
                        return list(workers)

                    action = remove_last
                else:
                    raise ValueError(f"unknown phase {name!r} (known: {', '.join(PHASES)})")
                log(f"phase {name}: {len(workers)} worker(s) running, trickle {opts.rate:g}/s")
                result = await run_phase(name, monitor, workers, opts.partitions, opts, session, action)
                phases.append(result)
                log(f"phase {name}: {'settled' if result.settled else 'NOT settled: ' + result.note}; ready "
                    f"{_s(result.time_to_ready_s)}, commits {_s(result.time_to_commits_s)}, longest commit gap "
                    f"{result.longest_commit_gap_s:.1f} s, peak RSS "
                    + ", ".join(f"{w.name} {w.peak_rss_mb:,.0f} MB" for w in result.workers)
                    + (", EXPELLED" if result.expelled else ""))
                if not all(w.alive() for w in workers):
                    log("a worker exited: the remaining phases are skipped")
                    break
        final_disk = await topic_bytes_on_disk(cfg, cfg.topics.changelog, opts.partitions)
        final_lag = monitor.lag()
        report = {
            "config": {**{k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(opts).items()},
                       "group": cfg.group_id, "topics": vars(cfg.topics), "policy_version": policy.version,
                       "machine": {"cpus": os.cpu_count(), "mem_gb": _mem_gb()}},
            "build": asdict(build),
            "changelog": {"records": build.records, "bytes_produced": build.bytes,
                          "bytes_on_disk_after_build": sum(disk.values()) if disk else None,
                          "bytes_on_disk_per_partition_after_build": disk,
                          "bytes_on_disk_at_end": sum(final_disk.values()) if final_disk else None},
            "phases": [asdict(p) for p in phases],
            "trickle": {"rate": opts.rate, "sent": trickle.sent, "send_errors": trickle.errors,
                        "final_lag": final_lag},
            "offset_sample_errors": monitor.offset_errors,
        }
    finally:
        for w in list(workers):
            await w.stop()
        if monitor is not None:
            for w in monitor.workers:  # any not stopped yet (an exception mid-phase)
                if w.exit_code is None:
                    await w.stop()
        if trickle is not None:
            await trickle.stop()
        if monitor is not None:
            await monitor.stop()
        if not opts.keep_topics:
            await delete_topics(cfg)
    if monitor is not None:
        report["workers"] = [{"name": w.name, "exit_code": w.exit_code, "stop_seconds": w.stop_seconds,
                              "peak_rss_mb": round(w.peak_kb / 1024, 1), "assignments": w.scan.assignments,
                              "expulsions": w.scan.expulsions, "errors": w.scan.errors[:20], "log": str(w.log)}
                             for w in monitor.workers]
    (out / "report.json").write_bytes(orjson.dumps(report, option=orjson.OPT_INDENT_2 | orjson.OPT_NON_STR_KEYS)
                                      + b"\n")
    (out / "report.md").write_text(markdown(report))
    report["files"] = {"json": str(out / "report.json"), "markdown": str(out / "report.md")}
    return report


def _mem_gb() -> float | None:
    try:
        return round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
    except (ValueError, OSError):
        return None


# ---------------------------------------------------------------------------------------------- report


def _s(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.1f} s"


def _n(v: float | int | None) -> str:
    return "n/a" if v is None else f"{v:,.0f}"


def table(report: dict[str, Any]) -> str:
    """The phases as a markdown table (also what the command prints)."""
    ch = report.get("changelog", {})
    disk = ch.get("bytes_on_disk_after_build")
    lines = ["| phase | settled | time to ready | time to commits on every partition | longest commit gap | "
             "max lag | peak RSS per worker | steady RSS per worker | restored records | restore records/s | "
             "expelled |",
             "|---|---|---:|---:|---:|---:|---|---|---:|---:|---|"]
    for p in report.get("phases", []):
        peak = ", ".join(f"{w['name']} {w['peak_rss_mb']:,.0f} MB" for w in p["workers"]) or "n/a"
        steady = ", ".join(f"{w['name']} {w['rss_mb']:,.0f} MB" for w in p["workers"]) or "n/a"
        lines.append(f"| {p['phase']} | {'yes' if p['settled'] else 'NO: ' + p['note']} | {_s(p['time_to_ready_s'])} "
                     f"| {_s(p['time_to_commits_s'])} | {p['longest_commit_gap_s']:.1f} s | {_n(p['max_lag'])} | "
                     f"{peak} | {steady} | {_n(p['restore_records'])} | {_n(p['restore_records_per_s'])} | "
                     f"{'yes' if p['expelled'] else 'no'} |")
    lines += ["", f"Changelog: {_n(ch.get('records'))} records, {_n(ch.get('bytes_produced'))} bytes of keys and "
                  f"values, {'n/a' if disk is None else f'{disk / 1e6:,.1f} MB'} on the broker's disk after the build."]
    return "\n".join(lines)


def markdown(report: dict[str, Any]) -> str:
    c, b = report.get("config", {}), report.get("build", {})
    lines = [
        "# giftstream load state-scale",
        "",
        f"{_n(c.get('creators'))} creators over {c.get('partitions')} partitions, trickle {c.get('rate')} gifts/s, "
        f"session timeout {c.get('session_timeout_ms')} ms, phase timeout {c.get('phase_timeout_s')} s, "
        f"broker {c.get('bootstrap')}, machine {c.get('machine')}.",
        "",
        f"Built in {b.get('seconds')} s: {_n(b.get('creators'))} creators (balances), {_n(b.get('streaks'))} streaks, "
        f"{_n(b.get('dedupe_ids'))} dedupe ids, {_n(b.get('pane_tallies'))} pane tallies from {_n(b.get('events'))} "
        f"events; {_n(b.get('records'))} changelog records.",
        "",
        "| partition | creators | events | changelog records | tombstones | bytes (keys+values) | streaks | "
        "dedupe ids | pane tallies |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for p in b.get("partitions", []):
        lines.append(f"| {p['partition']} | {_n(p['creators'])} | {_n(p['events'])} | {_n(p['records'])} | "
                     f"{_n(p['tombstones'])} | {_n(p['bytes'])} | {_n(p['streaks'])} | {_n(p['dedupe_ids'])} | "
                     f"{_n(p['pane_tallies'])} |")
    lines += ["", "## Phases", "", table(report), "",
              "Time to ready: from the phase's start (worker process start; SIGTERM for remove) until every worker "
              "answers 200 on /readyz and together they own every partition once. Time to commits: until every "
              "gifts partition's committed offset has moved after that. Longest commit gap: the longest a gifts "
              "partition with lag saw its committed offset stand still (sampled every 0.5 s). Peak RSS: VmHWM. "
              "Restore records/s: changelog records the phase's 'partition restored' log lines report (a partition "
              "restored twice in a phase counts twice) / time to ready. Expelled: a worker's log says its member "
              "id or generation was refused, its session expired or it was fenced.", ""]
    for p in report.get("phases", []):
        if p.get("workers"):
            lines.append(f"**{p['phase']}**: " + "; ".join(
                f"{w['name']} owns {w['partitions']}, rebalances {w['assignments']}, restored "
                + (", ".join(f"p{r['partition']} {_n(r['changelog_records'])} records in {r['seconds']} s"
                             for r in w['restored']) or "nothing")
                + (f", expulsions: {w['expulsions']}" if w['expulsions'] else "") for w in p["workers"]))
            lines.append("")
        if p.get("note"):
            lines += [f"{p['phase']}: {p['note']}", ""]
        if p.get("last_readyz"):
            lines += [f"last /readyz: `{json.dumps(p['last_readyz'])[:1500]}`", ""]
    return "\n".join(lines)
