"""One restore consumer for every changelog partition being restored (after Kafka Streams'
StoreChangelogReader): a task asks for its partition from an offset to an end, and the reader hands it the
records chunk by chunk as they arrive: as each fetch's raw record batches (columnar_fetch.RawRecords) to a
read's batch sink, which parses them natively, or as keys and values.

Why one consumer: a consumer per restoring partition is a client, its connections and its own fetches per
partition (96 partitions restoring at once were 96 clients). Here one fetch serves every partition being
restored, and partitions join and leave the assignment as their tasks start and finish.

The reader's pump owns the consumer: assignment changes, seeks and polls happen only there, between polls,
so nothing changes the consumer under a fetch in flight. A partition's read fails (TimeoutError) when it gets
no record for `stall_s` while short of its end; a consumer error fails every read in hand, and the next read
starts a new consumer.
"""

from __future__ import annotations

import asyncio
import bisect
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from aiokafka import AIOKafkaConsumer, TopicPartition

from stream.kafka import columnar_fetch
from stream.kafka.clients import KafkaClients, close_within

log = logging.getLogger(__name__)

Sink = Callable[[list[bytes], list[bytes | None]], None]  # keys and values of consecutive records
# A fetch's raw record set, the batches to take and the first offset to take: (records applied, the last one's
# offset or -1). Without one, a read's RawRecords are made into keys and values for its Sink.
BatchSink = Callable[[bytes, list[int], int], tuple[int, int]]
POLL_MS = 200
CHUNK_RECORDS = 5000  # records per chunk handed to a sink (columnar fetching)


@dataclass
class _Read:
    tp: TopicPartition
    start: int  # offset to read from
    end: int  # read until the position reaches this
    sink: Sink
    batch_sink: BatchSink | None
    on_progress: Callable[[int], None]  # records read so far
    done: asyncio.Future
    position: int = -1  # next offset to read
    placed: bool = False  # the consumer has been put at `position` for this read (not for an earlier one)
    records: int = 0
    quiet_since: float = field(default_factory=time.monotonic)


class ChangelogReader:
    def __init__(self, clients: KafkaClients, topic: str, stall_s: float, worker_id: str = "worker") -> None:
        self.clients, self.topic, self.stall_s, self.worker_id = clients, topic, stall_s, worker_id
        self._consumer: AIOKafkaConsumer | None = None
        self._columnar = False
        self._started: asyncio.Future | None = None
        self._reads: dict[int, _Read] = {}
        self._assigned: frozenset[int] = frozenset()
        self._pump: asyncio.Task | None = None
        self._wake = asyncio.Event()

    async def _ready_consumer(self) -> AIOKafkaConsumer:
        if self._started is None:
            self._columnar = columnar_fetch.install()
            deserializer = columnar_fetch.Columns(CHUNK_RECORDS, keys=True, raw=True) if self._columnar else None
            self._consumer = self.clients.restore_consumer(deserializer)
            self._started = asyncio.ensure_future(self._consumer.start())
        try:
            await asyncio.shield(self._started)
        except BaseException:
            if self._started.done():  # a start that failed: the next call makes a new consumer
                await self._discard_consumer()
            raise
        return self._consumer

    async def bounds(self, partition: int) -> tuple[int, int]:
        """The changelog partition's (log start, end), read_committed (the end is the last stable offset)."""
        consumer = await self._ready_consumer()
        tp = TopicPartition(self.topic, partition)
        begin = (await consumer.beginning_offsets([tp]))[tp]
        end = (await consumer.end_offsets([tp]))[tp]
        return begin, end

    async def read(self, partition: int, start: int, end: int, sink: Sink,
                   on_progress: Callable[[int], None] = lambda n: None, batch_sink: BatchSink | None = None) -> int:
        """Hand every record of the partition from `start` until the position reaches `end` to `sink` (or, as
        fetched, to `batch_sink`), in offset order; returns the records read. One read per partition at a time."""
        if start >= end:
            return 0
        await self._ready_consumer()
        tp = TopicPartition(self.topic, partition)
        if partition in self._reads:
            raise RuntimeError(f"{tp.topic}-{partition} is being read already")
        read = _Read(tp, start, end, sink, batch_sink, on_progress, asyncio.get_running_loop().create_future())
        self._reads[partition] = read
        self._wake.set()
        if self._pump is None or self._pump.done():
            self._pump = asyncio.ensure_future(self._run())
        try:
            return await read.done
        finally:
            if self._reads.get(partition) is read:
                del self._reads[partition]
                self._wake.set()

    async def close(self) -> None:
        if self._pump is not None:
            self._pump.cancel()
            await asyncio.gather(self._pump, return_exceptions=True)
            self._pump = None
        await self._discard_consumer()

    async def _discard_consumer(self) -> None:
        consumer, started = self._consumer, self._started
        self._consumer = self._started = None
        self._assigned = frozenset()
        if consumer is not None and started is not None and started.done() and not started.exception():
            await close_within(consumer.stop(), "restore consumer stop")

    # ------------------------------------------------------------------ the pump

    async def _run(self) -> None:
        try:
            while self._reads:
                self._wake.clear()
                consumer = self._consumer
                self._place(consumer)
                data = await consumer.getmany(*[r.tp for r in self._reads.values()], timeout_ms=POLL_MS)
                now = time.monotonic()
                # A read asked for during the poll is not placed yet: records for its partition were fetched for
                # an earlier read of it (one that was cancelled), from that one's position, not this one's.
                deliveries = [(read, msgs) for tp, msgs in data.items()
                              if (read := self._reads.get(tp.partition)) is not None and read.placed and msgs
                              and not read.done.done()]
                # Each read's records go to its sink in a thread, side by side (the native restore applies them
                # without the GIL); all are done before the next poll, so each partition's stay in order.
                results = await asyncio.gather(*(asyncio.to_thread(self._deliver, read, msgs, now)
                                                 for read, msgs in deliveries), return_exceptions=True)
                for (read, _), result in zip(deliveries, results, strict=True):
                    if isinstance(result, BaseException) and not read.done.done():
                        read.done.set_exception(result)  # the sink refused the records (they make no state)
                for read in list(self._reads.values()):
                    if not read.placed:
                        continue  # placed at the next turn
                    if read.done.done():
                        pass
                    elif await consumer.position(read.tp) >= read.end:
                        read.done.set_result(read.records)
                    elif now - read.quiet_since > self.stall_s:
                        read.done.set_exception(TimeoutError(
                            f"changelog {read.tp.topic}-{read.tp.partition}: no records for {self.stall_s:g} s at "
                            f"{read.records} read, position {read.position} of {read.end}"))
                    else:
                        continue
                    del self._reads[read.tp.partition]
        except asyncio.CancelledError:
            raise
        except Exception as e:  # the consumer broke: every read in hand fails, the next one starts afresh
            for read in self._reads.values():
                if not read.done.done():
                    read.done.set_exception(e)
            self._reads.clear()
            await self._discard_consumer()

    def _place(self, consumer: AIOKafkaConsumer) -> None:
        """Assign exactly the partitions being read and put each new read at its start. assign() forgets the
        positions of everything, so after one every partition is placed again from what the reader tracks."""
        wanted = frozenset(self._reads)
        reassigned = wanted != self._assigned
        if reassigned:
            consumer.assign([r.tp for r in self._reads.values()])
            self._assigned = wanted
        for read in self._reads.values():
            if not read.placed:
                read.position, read.placed = read.start, True
            elif not reassigned:
                continue
            consumer.seek(read.tp, read.position)

    def _deliver(self, read: _Read, msgs: list, now: float) -> None:
        """Hand the records at or after the read's position to its sink, in order: a record before it is one
        fetched before the last seek, and applying it again after later records of its key would undo them.
        Runs in a thread (one per read at a time)."""
        keys: list[bytes] = []
        values: list[bytes | None] = []
        last = read.position - 1
        applied = 0
        for m in msgs:
            if type(m) is columnar_fetch.RawRecords:
                if keys:  # records gathered before it go first
                    read.sink(keys, values)
                    applied += len(keys)
                    keys, values = [], []
                first = max(m.first, last + 1)
                if read.batch_sink is not None:
                    n, batch_last = read.batch_sink(m.raw, m.batches, first)
                else:
                    offsets, batch_keys, batch_values = m.columns()
                    start = bisect.bisect_left(offsets, first)
                    read.sink(batch_keys[start:], batch_values[start:])
                    n, batch_last = len(offsets) - start, offsets[-1] if len(offsets) > start else -1
                applied += n
                last = max(last, batch_last)
            elif type(m) is columnar_fetch.RecordChunk:
                first = bisect.bisect_left(m.offsets, last + 1)
                keys += m.keys[first:]
                values += m.values[first:]
                last = max(last, m.offsets[-1])
            elif m.offset > last:
                keys.append(m.key)
                values.append(m.value)
                last = m.offset
        if keys:
            read.sink(keys, values)
            applied += len(keys)
        read.records += applied
        read.position = last + 1
        read.quiet_since = now
        read.on_progress(read.records)
