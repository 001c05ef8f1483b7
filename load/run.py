"""`giftstream load run`: drive RUNNING workers at a target rate, measure, verify against ground truth, report.

It produces seeded synthetic traffic (load/generator.py) into the gifts topic at a target rate (paced by the
wall clock, batches per partition keyed by creator_id like stream.kafka.session_io.produce_session; load/producing.py)
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
With creator accounts and payouts (`--accounts`: load.generator.generate_inputs), the accounts that exist before the
first gift are produced first, unpaced, before the clock starts; then the gifts, the payouts and the later account
updates go interleaved in the generator's time order (load.generator.Inputs.in_time_order), at the target rate
counting them all, each to its topic (cfg.topics), keyed by creator_id. Every record is stamped with the wall clock
when its shipment is sent, as the gifts are; the workers merge a partition's inputs by the times the records hold
(stream.engine.order), so they see the generator's order, except a tombstone, which has no value and is ordered by
its send stamp (verify replays it with the same stamp, read back). The latency and throughput figures are the
gifts'; the run has drained when the
group has committed every input topic to its end.
Verification (after the group has caught up): load/verify.py.
The report (report.json, report.md, rate.png, lag.png, latency.png; load/report.py) goes to --out.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import gc
import sys
import time
from collections.abc import Awaitable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError, for_code
from aiokafka.protocol.commit import OffsetFetchRequest

from load.chaos import Chaos
from load.chaos import checks as chaos_checks
from load.generator import Inputs
from load.latency import LatencyTracker, percentiles
from load.producing import OrderedProducer, PacedProducer, Shipment, address_inputs
from load.report import write_report
from load.timeline import Point, poll_period, series
from load.verify import verify
from stream.config import WorkerConfig
from stream.engine.policy import Policy

POLL_TIMEOUT_S = 5.0  # a committed-offset poll that takes longer is given up (a broker away) and counted


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


class LoadRun:
    """One `load run`: drive the running workers of cfg.group_id with `records` (gift records, or a run's
    Inputs: gifts, payouts and creator accounts), measure, verify, write the report.
    `await LoadRun(cfg, policy, records, opts).run()` does it all once and returns the report.

    While it runs: `points` (one per committed-offset poll) and `tracker` (per-record latency) fill up; the
    clock (`clock()`) reads seconds since producing started."""

    # The run's Kafka clients, made by _open() and started by run() (aiokafka clients need the running event
    # loop).
    producer: AIOKafkaProducer
    consumer: AIOKafkaConsumer
    admin: AIOKafkaAdminClient
    pp: PacedProducer

    def __init__(self, cfg: WorkerConfig, policy: Policy, records: Iterator[bytes] | Inputs,
                 opts: RunOptions, chaos: Chaos | None = None) -> None:
        self.cfg, self.policy, self.opts = cfg, policy, opts
        self.chaos = chaos  # faults injected while producing (load/chaos.py), or none
        self.poll_failures = 0  # committed-offset polls that failed or timed out (a broker away)
        self.inputs = records if isinstance(records, Inputs) else None
        self.records: Iterator[bytes] = iter(records.gifts) if isinstance(records, Inputs) else records
        self.topic = cfg.topics.gifts
        # The other input topics the run produces to (with Inputs), and what it sent to each.
        self.other_topics = [cfg.topics.payouts, cfg.topics.accounts] if self.inputs is not None else []
        self.sent_to: dict[str, int] = {}
        self.tracker = LatencyTracker()
        self.points: list[Point] = []
        self.progress = Progress(enabled=not opts.quiet and sys.stderr.isatty())
        self.partitions = 0
        self._tps: list[TopicPartition] = []
        self._coordinator: int | None = None  # the group coordinator's node id, once looked up
        self._t0 = time.monotonic()  # the run's clock starts when producing does (see _measure)
        # Offsets before the run: end offsets of the topic and the group's committed offsets, per partition.
        self._base_end: dict[int, int] = {}
        self._base_committed: dict[int, int] = {}
        self.generation: dict[str, str] = {}  # how the traffic was generated, for the report's config
        self.sent = 0
        self.last_send = 0.0  # clock() when producing stopped
        self.drained_at: float | None = None  # clock() when the group had committed everything produced

    def clock(self) -> float:
        return time.monotonic() - self._t0

    async def run(self) -> dict[str, Any]:
        """Produce, measure, drain, verify; write the report files and return the report."""
        await self._open()
        await self.producer.start()
        await self.consumer.start()
        await self.admin.start()
        try:
            await self._measure()
        finally:
            await self.admin.close()
            await self.consumer.stop()
            await self.producer.stop()
        s = series(self.points, self.tracker.samples)
        results = self._results(s)
        report = {"config": self._config(), "results": results, "verification": await self._verification(results),
                  "series": s}
        if self.chaos is not None:
            report["chaos"] = self.chaos.report(self.tracker.samples, self.opts.warmup)
            _add_checks(report["verification"], chaos_checks(report["chaos"]))
        report["files"] = {k: str(v) for k, v in write_report(self.opts.out, report).items()}
        return report

    async def _open(self) -> None:
        """Create the missing topics and make the run's Kafka clients (not started yet)."""
        from stream.kafka.session_io import bulk_producer
        from stream.kafka.topics import create_topics

        cfg = self.cfg
        await create_topics(cfg, self.opts.partitions)  # missing ones only
        sec = cfg.kafka_security()
        # linger 0: PacedProducer hands over whole batches, lingering would only delay them (and their stamps
        # are taken before the hand-off, so a linger is counted in every record's latency).
        self.producer = bulk_producer(cfg, linger_ms=0)
        self.consumer = AIOKafkaConsumer(bootstrap_servers=cfg.bootstrap_servers, isolation_level="read_committed",
                                         enable_auto_commit=False, **sec)
        self.admin = AIOKafkaAdminClient(bootstrap_servers=cfg.bootstrap_servers, **sec)

    async def _measure(self) -> None:
        """Generate (unless live), produce while polling, then poll until the group has caught up."""
        self.partitions = len(await self.producer.partitions_for(self.topic))
        self._tps = [TopicPartition(self.topic, p) for p in range(self.partitions)]
        for topic in self.other_topics:
            n = len(await self.producer.partitions_for(topic))
            if n != self.partitions:
                raise RuntimeError(f"topic {topic} has {n} partitions, {self.topic} {self.partitions}: the inputs "
                                   "must be co-partitioned")
        # With other inputs the order across topics is part of what is verified: OrderedProducer keeps it as
        # consumers see it (and packs while sending); gifts alone go pre-packed (no packing in the measured run).
        ordered = self.inputs is not None or self.opts.generate_live
        self.pp = (OrderedProducer if ordered else PacedProducer)(
            self.producer, self.topic, self.partitions, self.opts.rate, on_batch=self.tracker.sent, clock=self.clock,
            native_batches=not self.opts.generate_live)
        await self._produce_first_accounts()
        shipments = self._shipments()
        self._base_end = {tp.partition: o for tp, o in (await self.consumer.end_offsets(self._tps)).items()}
        self._base_committed = await self._committed_offsets()
        self._t0 = time.monotonic()
        await self._produce(shipments)
        await self._drain()

    async def _produce_first_accounts(self) -> None:
        """With Inputs: the accounts that exist before the first gift, sent (unpaced) and acked before the clock
        starts, so that their timestamps come before every gift's."""
        inputs = self.inputs
        if inputs is None or not inputs.gifts:
            return
        first = inputs.gift_times[0]
        early = [("accounts", k, v, t) for (k, v), t in zip(inputs.accounts, inputs.account_times, strict=True)
                 if t < first]
        if not early:
            return
        pp = PacedProducer(self.producer, self.cfg.topics.accounts, self.partitions, None,
                           native_batches=not self.opts.generate_live)
        sent = await pp.run(pp.shipments(self._routed(early)))
        self.sent_to[self.cfg.topics.accounts] = sent
        self.progress.show(f"produced {sent:,} account records before the first gift", force=True)

    def _routed(self, records: Iterable[tuple[str, bytes | None, bytes | None, int]]) -> Iterator:
        """Inputs.in_time_order's records to their topics, addressed."""
        topics = {"gifts": self.topic, "payouts": self.cfg.topics.payouts, "accounts": self.cfg.topics.accounts}
        return address_inputs(((topics[kind], key, value, t) for kind, key, value, t in records), self.partitions)

    def _addressed(self) -> Iterator:
        """The records of the paced run, addressed: the gifts (with Inputs: interleaved with the payouts and the
        account records from the first gift on)."""
        if self.inputs is None:
            return self.pp.address(self.records)
        since = self.inputs.gift_times[0] if self.inputs.gifts else None
        return self._routed(self.inputs.in_time_order(since=since))

    def _shipments(self) -> Iterable[Shipment]:
        if isinstance(self.pp, OrderedProducer):
            self.generation = {"traffic_generation": "live, while producing" if self.inputs is None else
                               "before the run, packed into batches while producing, in order across topics"}
            return self.pp.shipments(self._addressed())
        started = time.monotonic()
        # Generated, addressed and packed into producer batches before the clock starts (see PacedProducer):
        # the run only hands batches over. About 0.6 KiB per record, held until sent.
        shipments = list(self.pp.shipments(self._addressed()))
        _return_freed_memory()
        # Many held objects: a full collection in the run would walk them all and stall the poller, whose
        # stamps are the latency measurement. They live until sent: freeze them.
        gc.freeze()
        packed = sum(n for shipment in shipments for _, _, n, _, _ in shipment)
        self.generation = {"traffic_generation": f"before the run: {packed:,} records generated and packed in "
                                                 f"{time.monotonic() - started:.1f} s"}
        self.progress.show(f"generated {packed:,} records", force=True)
        return shipments

    async def _produce(self, shipments: Iterable[Shipment]) -> None:
        """Send the shipments for opts.duration while a poller task polls every poll interval."""
        producing_done = asyncio.Event()
        poll_task = asyncio.create_task(self._poller(producing_done))
        chaos_task = (asyncio.create_task(self.chaos.run(self.clock))
                      if self.chaos is not None else None)
        try:
            self.sent = await self.pp.run(shipments, duration=self.opts.duration)
            if chaos_task is not None:  # the last fault finishes its action (a stopped worker is woken)
                await chaos_task
        finally:
            for topic, n in self.pp.sent_to.items():
                self.sent_to[topic] = self.sent_to.get(topic, 0) + n
            self.last_send = self.clock()
            producing_done.set()
            await poll_task
            if chaos_task is not None and not chaos_task.done():
                chaos_task.cancel()

    async def _poller(self, producing_done: asyncio.Event) -> None:
        started = self.clock()
        while not producing_done.is_set():
            await self._poll_once()
            self._show("producing")
            started = await self._tick(started)

    async def _drain(self) -> None:
        """Keep polling until the group has committed everything this run produced (or drain_timeout)."""
        started = self.clock()
        while self.clock() - self.last_send < self.opts.drain_timeout:
            lag = await self._poll_once()
            self._show("draining")
            if lag == 0 and self.tracker.pending_records() == 0 and await self._other_lag() == 0:
                self.drained_at = self.clock()
                break
            started = await self._tick(started)
        self._show("drained" if self.drained_at is not None else "NOT drained", force=True)
        self.progress.done()

    async def _group_offsets(self, tps: list[TopicPartition]) -> dict[TopicPartition, int]:
        """The group's committed offsets of `tps` (0 where it never committed)."""
        # list_consumer_group_offsets looks the group coordinator up on every call unless told it: one more
        # round trip per poll. Look it up once, and again after an error (it moved).
        group = self.cfg.group_id
        if self._coordinator is None:
            self._coordinator = await self.admin.find_coordinator(group)
        try:
            got = await self._offset_fetch(group, tps)
        except KafkaError:
            self._coordinator = await self.admin.find_coordinator(group)
            got = await self._offset_fetch(group, tps)
        return {tp: max(got.get(tp, -1), 0) for tp in tps}

    async def _offset_fetch(self, group: str, tps: list[TopicPartition]) -> dict[TopicPartition, int]:
        """OffsetFetch, raising the response's top-level error. The admin client's list_consumer_group_offsets
        reads only the per-partition ones, and a coordinator still loading after a restart answers with a
        top-level COORDINATOR_LOAD_IN_PROGRESS and -1 for every partition: "never committed", a lag spike."""
        by_topic: dict[str, list[int]] = {}
        for tp in tps:
            by_topic.setdefault(tp.topic, []).append(tp.partition)
        response = await self.admin._send_request(OffsetFetchRequest(group, list(by_topic.items())),
                                                  self._coordinator)
        if getattr(response, "error_code", 0):
            raise for_code(response.error_code)(f"OffsetFetch of group {group}")
        out = {}
        for topic, partitions in response.topics:
            for partition, offset, _metadata, error_code in partitions:
                if error_code:
                    raise for_code(error_code)(f"OffsetFetch of {topic}-{partition}")
                out[TopicPartition(topic, partition)] = offset
        return out

    async def _committed_offsets(self) -> dict[int, int]:
        return {tp.partition: o for tp, o in (await self._group_offsets(self._tps)).items()}

    async def _other_lag(self) -> int | None:
        """End offsets minus the group's committed offsets, summed over the other input topics' partitions (None:
        the poll failed)."""
        if not self.other_topics:
            return 0
        tps = [TopicPartition(topic, p) for topic in self.other_topics for p in range(self.partitions)]
        got = await self._bounded(self._group_offsets(tps), self.consumer.end_offsets(tps))
        if got is None:
            return None
        committed, ends = got
        return sum(max(0, ends[tp] - committed.get(tp, 0)) for tp in tps)

    async def _bounded(self, *asks: Awaitable[Any]) -> list[Any] | None:
        """The answers to `asks`, asked side by side; None when one fails or they take over POLL_TIMEOUT_S (a
        broker away): counted in poll_failures, and the coordinator is looked up again next time."""
        try:
            return await asyncio.wait_for(asyncio.gather(*asks), POLL_TIMEOUT_S)
        except (KafkaError, OSError, TimeoutError):
            self.poll_failures += 1
            self._coordinator = None
            return None

    async def _stamped_committed(self) -> tuple[dict[int, int], float]:
        c = await self._committed_offsets()
        return c, self.clock()

    def _committed_in_run(self, c: dict[int, int]) -> int:
        return sum(max(0, c.get(p, 0) - max(self._base_end[p], self._base_committed.get(p, 0)))
                   for p in range(self.partitions))

    async def _poll_once(self) -> int | None:
        """One poll: stamps the committed offsets, appends a Point; returns the lag (None: the poll failed, as
        while a broker is away; counted, and the next poll asks again)."""
        # Committed and end offsets side by side; the committed offsets are stamped when they arrive.
        got = await self._bounded(self._stamped_committed(), self.consumer.end_offsets(self._tps))
        if got is None:
            return None
        (c, t), end_offsets = got
        for p, off in c.items():
            self.tracker.committed(p, off, t)
        ends = {tp.partition: o for tp, o in end_offsets.items()}
        lag = sum(max(0, ends[p] - c.get(p, 0)) for p in range(self.partitions))
        self.points.append(Point(t, self.pp.sent, self._committed_in_run(c),
                                 sum(ends[p] - self._base_end[p] for p in ends), lag))
        if self.chaos is not None:
            self.chaos.observe(t, c, ends)
        return lag

    async def _tick(self, last: float) -> float:
        # Polls start every poll_interval (not poll_interval after the previous poll ended), so a poll's
        # own round trips do not stretch the resolution; after a slow poll the next one starts at once.
        nxt = max(last + self.opts.poll_interval, self.clock())
        await asyncio.sleep(nxt - self.clock())
        return nxt

    def _show(self, phase: str, force: bool = False) -> None:
        points = self.points
        if not self.progress.enabled or not points:
            return
        last = points[-1]
        ref = next((p for p in reversed(points) if last.t - p.t >= 1.0), points[0])
        dt = (last.t - ref.t) or 1.0
        recent = [s for s in self.tracker.samples[-2000:] if s.committed_at >= last.t - 5]
        p99 = percentiles(recent, (99,))["p99"]
        self.progress.show(f"[{last.t:6.1f}s {phase}] sent {last.produced:,} "
                           f"({(last.produced - ref.produced) / dt:,.0f}/s)"
                           f"  committed {(last.committed - ref.committed) / dt:,.0f}/s  lag {last.lag:,}"
                           f"  p99 {'n/a' if p99 is None else f'{p99:.3f}s'}", force=force)

    def _results(self, s: dict[str, list]) -> dict[str, Any]:
        points, tracker, sent, last_send, drained_at = (self.points, self.tracker, self.sent, self.last_send,
                                                        self.drained_at)
        lat = percentiles(tracker.samples)
        lat["records"] = tracker.measured_records()
        # The same after the warm-up (the first batches also pay for metadata, coordinator lookups and the first
        # transactions of six producers): the steady state. Both are reported.
        steady = percentiles([s for s in tracker.samples if s.committed_at >= self.opts.warmup])
        commit_points = [p for p in points if p.committed > 0]
        first = next((p for p in points if p.committed > 0), None)
        other = {"produced_to": dict(self.sent_to)} if self.other_topics else {}
        return {
            "produced": sent,
            "produce_seconds": round(last_send, 3),
            "produce_rate": sent / last_send if last_send else None,
            "committed": points[-1].committed if points else 0,
            "throughput": ((commit_points[-1].committed - first.committed) / (commit_points[-1].t - first.t)
                           if first and commit_points[-1].t > first.t else None),
            "peak_throughput": max((r for r in s["committed_per_s"] if r is not None), default=None),
            "max_lag": max((p.lag for p in points), default=None),
            "final_lag": points[-1].lag if points else None,
            "drained": drained_at is not None,
            "drain_s": round(drained_at - last_send, 3) if drained_at is not None else None,
            "latency_s": lat,
            "latency_after_warmup_s": steady,
            # The latency resolution: a record is stamped at the first poll that sees it committed.
            "poll_period_s": poll_period(points),
            "poll_failures": self.poll_failures,
            "send_failures": self.pp.failed,
            **other,
        }

    def _config(self) -> dict[str, Any]:
        opts, cfg = self.opts, self.cfg
        return {"rate": opts.rate or "max", "duration_s": opts.duration, "topic": self.topic,
                "partitions": self.partitions, "group": cfg.group_id, "bootstrap": cfg.bootstrap_servers,
                "poll_interval_s": opts.poll_interval, "warmup_s": opts.warmup, **self.generation,
                "policy_version": self.policy.version, **self._inputs_config(), **opts.extra}

    def _inputs_config(self) -> dict[str, Any]:
        inputs = self.inputs
        if inputs is None:
            return {}
        return {"inputs": {"payouts_topic": self.cfg.topics.payouts, "accounts_topic": self.cfg.topics.accounts,
                           "payouts": len(inputs.payouts), "account_records": len(inputs.accounts),
                           **inputs.input_stats.to_dict()}}

    async def _verification(self, results: dict[str, Any]) -> dict[str, Any]:
        if not self.opts.verify:
            return {"passed": None, "checks": [], "reason": "skipped (--no-verify)"}
        if self.drained_at is None:
            return {"passed": False, "checks": [], "reason": f"the group did not catch up within "
                    f"{self.opts.drain_timeout} s of the last send (final lag {results['final_lag']}): "
                    "are the workers running, with this config's group and topics?"}
        return await verify(self.cfg, self.policy)


def _return_freed_memory() -> None:
    """Give the C heap's free pages back to the OS (glibc's malloc_trim). Generating leaves ~1.8 KiB per
    record of freed but still mapped heap (orjson's buffers, the generator's working objects): 6 GB of
    resident memory for 3.3M records, on the machine whose broker and workers are being measured."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: nothing to trim this way
        pass


def _add_checks(verification: dict[str, Any], extra: list[tuple[str, bool, str]]) -> None:
    """More checks into a verification dict (load/verify.py's shape); it passes only if they pass too."""
    verification.setdefault("checks", [])
    verification["checks"] += [{"name": n, "passed": ok, "detail": d} for n, ok, d in extra]
    verification["passed"] = bool(verification.get("passed")) and all(ok for _, ok, _ in extra)
