"""Producing load: records keyed and partitioned like stream.kafka.session_io.produce_session, packed into producer
batches and sent at a target rate (PacedProducer), to one topic or, with a run's payouts and creator accounts, to
each input's topic (address_inputs); `load generate --to-kafka` (produce_to_kafka)."""

from __future__ import annotations

import argparse
import asyncio
import collections
import functools
import itertools
import time
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any, TypeAlias

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError

from load.generator import TrafficConfig
from stream.config import WorkerConfig
from stream.kafka.routing import PartitionCache

if TYPE_CHECKING:
    from aiokafka.producer.message_accumulator import BatchBuilder

    from stream._native import RecordBatchBuilder

# A record ready to send: (key, partition, value), for the producer's topic.
Addressed = tuple[bytes | None, int, bytes]
# A record ready to send to a topic of its own: (topic, key, partition, value, stamp); value None is a tombstone;
# stamp: the Kafka timestamp it must carry (a tombstone's time: it holds none of its own), None = when sent.
Routed = tuple[str, bytes | None, int, bytes | None, int | None]


def address(records: Iterable[bytes], partitions: int | PartitionCache) -> Iterator[Addressed]:
    """Each record with its key (creator_id; None for a record without one) and the partition Kafka's default
    partitioner gives that key (keyless records go to partition 0), lazily."""
    from stream.kafka.session_io import key_of

    partition_of = partitions if isinstance(partitions, PartitionCache) else PartitionCache(partitions)
    for raw in records:
        key, _ = key_of(raw)
        yield (None, 0, raw) if key is None else (key, partition_of[key], raw)


def address_inputs(records: Iterable[tuple[str, bytes | None, bytes | None, int]],
                   partitions: int | PartitionCache) -> Iterator[Routed]:
    """(topic, key, value, time) records, each with the partition Kafka's default partitioner gives its key
    (keyless ones to partition 0), lazily. A record given no key is keyed by its creator_id (gifts and payouts, as
    produce_session keys them); the creator accounts come with theirs (a tombstone has nothing else). A tombstone
    is stamped with its time, which the merge takes from its Kafka timestamp (stream.engine.order): stamped when
    sent, on the wall clock, it would sort a year after the run's other records."""
    from stream.kafka.session_io import key_of

    partition_of = partitions if isinstance(partitions, PartitionCache) else PartitionCache(partitions)
    for topic, key, value, t in records:
        if key is None and value is not None:
            key, _ = key_of(value)
        yield topic, key, (0 if key is None else partition_of[key]), value, (t if value is None else None)


# A producer batch: aiokafka's (producer.create_batch()) or stream._native's RecordBatchBuilder.
Batch: TypeAlias = "BatchBuilder | RecordBatchBuilder"
# One tick's records packed into producer batches: (partition, batch, records in it, topic, stamp), in sending
# order; stamp: the batch's Kafka timestamp (a tombstone's own batch), None = when sent.
Shipment = list[tuple[int, Batch, int, str, int | None]]


class PacedProducer:
    """Sends records keyed by creator_id to the partition Kafka's default partitioner picks (keyless ones to
    partition 0) at `rate` records/s of wall time (None = as fast as the producer takes them). Every batch's
    (partition, base offset, count, send time) goes to on_batch when the broker acks it.

    The records are `topic`'s (Addressed) or each of its own topic's (Routed: a run's gifts, payouts and creator
    accounts, interleaved in one order; the topics have `partitions` partitions each). The rate counts them all;
    `sent` and on_batch count `topic`'s only (the other topics' counts are in sent_to).

    The records go in shipments (`shipments`): one tick's worth (rate * tick records; max_chunk at max rate)
    packed into one producer batch per partition, sent when the clock reaches the tick. `run` takes them
    lazily (each packed when it is due: a plain load) or packed ahead (a measured run packs all of them before
    its clock starts: packing costs ~1.5 µs of the harness's Python per record, CPU that the workers and the
    broker on the same machine would lose). With `native_batches` the batches are stream._native's
    RecordBatchBuilder (no Python per record when they are built, CRC in hardware), stamped when sent."""

    def __init__(self, producer: AIOKafkaProducer, topic: str, partitions: int, rate: float | None,
                 on_batch: Callable[[int, int, int, float], None] | None = None, tick: float = 0.01,
                 clock: Callable[[], float] = time.monotonic, native_batches: bool = False,
                 max_batch_bytes: int = 1 << 20) -> None:
        self.producer, self.topic, self.partitions, self.rate = producer, topic, partitions, rate
        self.on_batch, self.tick, self.clock = on_batch, tick, clock
        self.sent = 0  # records of `topic` sent
        self.sent_to: dict[str, int] = {}  # records sent to each other topic
        self.failed = 0  # records of every topic whose batch the producer gave up on (not written)
        self._paced = 0  # records of every topic sent (what the rate counts)
        self._partition_of = PartitionCache(partitions)
        self._pending: set[asyncio.Future] = set()
        self._native: type[RecordBatchBuilder] | None = None
        if native_batches:
            from stream._native import RecordBatchBuilder

            self._native = RecordBatchBuilder
        self._max_batch_bytes = max_batch_bytes

    def address(self, records: Iterable[bytes]) -> Iterator[Addressed]:
        return address(records, self._partition_of)

    def shipments(self, records: Iterable[Addressed] | Iterable[Routed], max_chunk: int = 20_000
                  ) -> Iterator[Shipment]:
        """The records cut into ticks and packed, lazily."""
        size = max_chunk if self.rate is None else max(1, round(self.rate * self.tick))
        it = iter(records)
        while chunk := list(itertools.islice(it, size)):
            yield self.pack(chunk)

    def pack(self, chunk: Iterable[Addressed] | Iterable[Routed]) -> Shipment:
        """Records into producer batches, a batch per topic and partition (more when one fills), in sending order.
        All the records of one shipment are stamped alike when it is sent, but a record given a stamp (a
        tombstone's time), which goes in a batch of its own."""
        out: list[list[Any]] = []
        current: dict[tuple[str, int], list[Any]] = {}  # (topic, partition) -> its open [partition, batch, n, topic]
        for item in chunk:
            topic, key, p, raw, stamp = item if len(item) == 5 else (self.topic, *item, None)
            if stamp is not None:
                batch = self._new_batch()
                self._add(batch, key, raw, stamp)
                out.append([p, batch, 1, topic, stamp])
                current.pop((topic, p), None)  # what follows goes after it
                continue
            entry = current.get((topic, p))
            if entry is None or not self._add(entry[1], key, raw):
                entry = current[topic, p] = [p, self._new_batch(), 0, topic, None]
                out.append(entry)
                self._add(entry[1], key, raw)  # a fresh batch takes its first record
            entry[2] += 1
        return [(p, batch, n, topic, stamp) for p, batch, n, topic, stamp in out]

    def _new_batch(self) -> Batch:
        if self._native is None:
            return self.producer.create_batch()
        return self._native(self._max_batch_bytes, False, 0, capacity=0)  # stamped when sent

    def _add(self, batch: Batch, key: bytes | None, raw: bytes | None, stamp: int | None = None) -> bool:
        if self._native is None:
            return batch.append(key=key, value=raw, timestamp=stamp) is not None
        if stamp is not None:
            batch.set_timestamp(stamp)
        return batch.add(key, raw)

    async def _ship(self, shipment: Shipment) -> None:
        t = self.clock()
        now_ms = int(time.time() * 1000)
        for p, batch, count, topic, stamp in shipment:
            if self._native is not None and stamp is None:
                batch.set_timestamp(now_ms)
            fut = await self.producer.send_batch(batch, topic, partition=p)
            self._pending.add(fut)
            self._paced += count
            fut.add_done_callback(functools.partial(self._acked, p, topic, [[count, t]]))
            if topic == self.topic:
                self.sent += count
            else:
                self.sent_to[topic] = self.sent_to.get(topic, 0) + count

    def _acked(self, p: int, topic: str, runs: list[list[Any]], f: asyncio.Future) -> None:
        """A batch's ack: `runs`, its [records, handed over at] in order, go to on_batch (`topic`'s only), or
        count as failed."""
        self._pending.discard(f)
        if f.cancelled() or f.exception() is not None:
            self.failed += sum(n for n, _ in runs)
        elif topic == self.topic and self.on_batch is not None:
            base = f.result().offset
            for n, t in runs:
                self.on_batch(p, base, n, t)
                base += n

    async def run(self, shipments: Iterable[Shipment], duration: float | None = None,
                  stop: asyncio.Event | None = None) -> int:
        """Send until the shipments run out, `duration` seconds pass or `stop` is set; returns the records of
        `topic` sent (sent_to has the other topics')."""
        start = self.clock()
        paced0 = self._paced
        for shipment in shipments:
            if self.rate is not None:  # due once the clock has reached its last record
                due = (self._paced - paced0 + self._records_in(shipment)) / self.rate
                wait = due - (self.clock() - start)
                if wait > 0:
                    await asyncio.sleep(wait)
            if (stop is not None and stop.is_set()) or (duration is not None and self.clock() - start >= duration):
                break
            await self._ship(shipment)
            await asyncio.sleep(0)  # let the poller run
        await self._flush()
        return self.sent

    def _records_in(self, shipment: Shipment) -> int:
        return sum(n for _, _, n, _, _ in shipment)

    async def _flush(self) -> None:
        """Wait for every batch sent to be acked (or failed)."""
        if self._pending:
            await asyncio.gather(*list(self._pending), return_exceptions=True)


# A record queued for its partition's sender: (topic, key, value, stamp, handed over at, on the run's clock).
Queued = tuple[str, bytes | None, bytes | None, int | None, float]


class OrderedProducer(PacedProducer):
    """A PacedProducer that keeps each partition's records, across its topics, visible in the order they were
    handed over, and builds its batches as it sends them.

    Consumers see a partition's gifts, payouts and creator accounts in the order of their times only if records
    of one topic become visible before those of another that come after them; on a cluster a record is visible
    once replicated, and replication delays differ by broker and grow with load (seconds on a cluster short of
    CPU), far past any merge slack. So each partition has a sender of its own (no partition waits for another):
    it takes every record queued for it, up to the first of another topic (or a stamped tombstone), into one
    batch, and before the first batch of another topic it waits for the acks of the ones before (acks=all:
    replicated, visible). A broker that is slow or away makes the batches grow, not the backlog.

    `shipments` yields the records in chunks of a tick (not packed); on_batch gets each run of records handed
    over at the same time (a batch may hold several)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._queues: dict[int, collections.deque[Queued]] = {}
        self._wake: dict[int, asyncio.Event] = {}
        self._senders: dict[int, asyncio.Task] = {}
        self._closing = False

    def shipments(self, records: Iterable[Addressed] | Iterable[Routed], max_chunk: int = 20_000  # type: ignore[override]
                  ) -> Iterator[list]:
        size = max_chunk if self.rate is None else max(1, round(self.rate * self.tick))
        it = iter(records)
        while chunk := list(itertools.islice(it, size)):
            yield chunk

    def _records_in(self, shipment: list) -> int:  # type: ignore[override]
        return len(shipment)

    async def _ship(self, shipment: list) -> None:  # type: ignore[override]
        t = self.clock()
        touched = set()
        for item in shipment:
            topic, key, p, raw, stamp = item if len(item) == 5 else (self.topic, *item, None)
            self._queues.setdefault(p, collections.deque()).append((topic, key, raw, stamp, t))
            touched.add(p)
            self._paced += 1
            if topic == self.topic:
                self.sent += 1
            else:
                self.sent_to[topic] = self.sent_to.get(topic, 0) + 1
        for p in touched:
            if p not in self._senders:
                self._wake[p] = asyncio.Event()
                self._senders[p] = asyncio.create_task(self._sender(p))
            self._wake[p].set()

    async def _sender(self, p: int) -> None:
        queue, wake = self._queues[p], self._wake[p]
        last_topic: str | None = None
        unacked: list[asyncio.Future] = []  # this partition's batches of last_topic, sent and not yet acked
        while True:
            if not queue:
                if self._closing:
                    return
                wake.clear()
                await wake.wait()
                continue
            topic, _, _, stamp, _ = queue[0]
            if topic != last_topic and unacked:
                await asyncio.gather(*unacked, return_exceptions=True)
            if topic != last_topic:
                unacked, last_topic = [], topic
            batch = self._new_batch()
            runs: list[list[Any]] = []  # [records, handed over at]
            if stamp is not None:  # a tombstone: a batch of its own, stamped with its time
                _, key, raw, _, t = queue.popleft()
                self._add(batch, key, raw, stamp)
                runs.append([1, t])
            else:
                while queue and queue[0][0] == topic and queue[0][3] is None:
                    _, key, raw, _, t = queue[0]
                    if not self._add(batch, key, raw):
                        if not runs:
                            raise ValueError(f"a record of {len(raw or b'')} bytes does not fit in a batch")
                        break  # full: the rest goes in the next batch
                    queue.popleft()
                    if runs and runs[-1][1] == t:
                        runs[-1][0] += 1
                    else:
                        runs.append([1, t])
                if self._native is not None:
                    batch.set_timestamp(int(time.time() * 1000))
            try:
                fut = await self.producer.send_batch(batch, topic, partition=p)
            except KafkaError:  # e.g. no room for request_timeout_ms while a broker was away: not written
                self.failed += sum(n for n, _ in runs)
                continue
            self._pending.add(fut)
            unacked.append(fut)
            fut.add_done_callback(functools.partial(self._acked, p, topic, runs))

    async def _flush(self) -> None:
        self._closing = True
        for wake in self._wake.values():
            wake.set()
        await asyncio.gather(*self._senders.values())
        self._senders.clear()
        self._closing = False
        await super()._flush()


def traffic_config(args: argparse.Namespace, rate: float | None = None) -> TrafficConfig:
    """A TrafficConfig from the shared generator flags (see load/cli.py)."""
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


async def produce_to_kafka(cfg: WorkerConfig, records: Iterator[bytes], rate: float | None, topic: str | None = None,
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
