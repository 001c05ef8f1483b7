"""The streaming worker: aiokafka consumer group in, one Kafka transaction per partition batch out.

For each assigned input partition p the worker owns an engine (stream.engine_native.make_engine), a
ChangelogWriter and (exactly-once mode) a transactional producer whose transactional.id is derived from p.
Starting that producer fences any zombie that still owns p (an old owner's open transaction is aborted),
then the state is restored from changelog partition p, read_committed. Each batch of p is processed, and
its notices, window totals, late gifts, dead letters, changelog records and consumed offsets are committed
in one transaction: a crash anywhere leaves either all of it or none of it, and the restart resumes from
the committed offsets with the state that matches them.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener, TopicPartition
from aiokafka.coordinator.assignors.range import RangePartitionAssignor
from aiokafka.errors import ProducerFenced
from aiokafka.structs import OffsetAndMetadata

from stream import columnar_fetch, model
from stream.changelog import ChangelogWriter, Record, RecordBatchBuilder, cursor_record, restore_state
from stream.columnar_fetch import columns_of
from stream.config import WorkerConfig
from stream.engine import Outputs, partition_for
from stream.engine_native import Engine, make_engine
from stream.metrics import Metrics
from stream.policy import Policy

log = logging.getLogger(__name__)

PRODUCER_BATCH_BYTES = 1 << 20  # the producers' max_batch_size
CHANGELOG_BATCH_BYTES = PRODUCER_BATCH_BYTES  # native changelog record batches, the same size
NATIVE_CHANGELOG = RecordBatchBuilder is not None  # changelog as native record batches, else as records
STATE_SIZE_EVERY_S = 1.0  # state-size gauges after a batch at most this often (sizes() walks the tables)


class GcPacer:
    """Keeps CPython's full (generation 2) collections from stalling the consume loop.

    The dedupe state holds a few very large containers (the `seen` set, the per-minute id lists), and a
    full collection walks every element of every tracked container: with ~1.4 M event ids, 150-400 ms
    with the event loop stopped. Full collections also come often, about once a second at 48,000/s,
    because CPython starts one when the objects promoted since the last one exceed a quarter of the old
    ones, and each batch's in-flight ConsumerRecords are promoted. So after a batch, at most once every
    `freeze_every` seconds, gc.freeze() moves everything that is alive into the permanent generation,
    which collections skip; only objects made since then are walked. Objects freed by reference counting
    leave the permanent generation as usual; only garbage reference cycles that were caught by a freeze
    would stay, so every `full_every` seconds the pacer unfreezes and runs one full collection (one pause)
    before freezing again."""

    def __init__(self, freeze_every: float = 1.0, full_every: float = 600.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.freeze_every, self.full_every, self.clock = freeze_every, full_every, clock
        self._frozen_at = self._full_at = clock()

    def after_restore(self) -> None:
        """Once partitions are restored, before their traffic: one full collection now, then freeze what is
        left. The first batches otherwise pay for a full collection of everything start-up made (15 ms in
        the first batch of a fresh worker)."""
        gc.collect()
        gc.freeze()
        self._frozen_at = self.clock()

    def after_batch(self) -> None:
        now = self.clock()
        if now - self._full_at >= self.full_every:
            gc.unfreeze()
            gc.collect()
            self._full_at = now
        elif now - self._frozen_at < self.freeze_every:
            return
        gc.freeze()
        self._frozen_at = now


@dataclass
class PartitionTask:
    """Everything this worker owns for one input partition while it is assigned."""

    partition: int
    engine: Engine
    writer: ChangelogWriter
    producer: AIOKafkaProducer


class _Rebalance(ConsumerRebalanceListener):
    def __init__(self, worker: Worker) -> None:
        self.worker = worker

    async def on_partitions_revoked(self, revoked: Iterable[TopicPartition]) -> None:
        await self.worker._on_revoked(revoked)

    async def on_partitions_assigned(self, assigned: Iterable[TopicPartition]) -> None:
        await self.worker._on_assigned(assigned)


class Worker:
    def __init__(self, cfg: WorkerConfig, policy: Policy, metrics: Metrics | None = None,
                 worker_id: str = "worker") -> None:
        self.cfg = cfg
        self.policy = policy
        self.metrics = metrics or Metrics()
        self.worker_id = worker_id
        self.tasks: dict[int, PartitionTask] = {}
        self.ready = False  # true once every assigned partition is restored
        self._stopping = asyncio.Event()
        self._lock = asyncio.Lock()  # a batch and a rebalance never interleave
        self._consumer: AIOKafkaConsumer | None = None
        self._plain_producer: AIOKafkaProducer | None = None  # at-least-once mode only
        self._partitions: dict[str, int] = {}
        self._last_poll: float | None = None
        self._max_polled = cfg.batch_max_records  # getmany's max_records (chunks when fetching columnar)
        self._gc = GcPacer()

    # ------------------------------------------------------------------ lifecycle

    def stop(self) -> None:
        """Ask the loop to finish the batch in hand, commit it and leave the group (SIGTERM)."""
        self._stopping.set()

    async def run(self) -> None:
        cfg = self.cfg
        t = cfg.topics
        # Columnar fetching (stream/columnar_fetch.py): a poll returns chunks of columns, not one object per
        # record. getmany's max_records then counts chunks.
        chunk = min(1000, cfg.batch_max_records)
        columnar = cfg.columnar_fetch and columnar_fetch.install()
        self._max_polled = max(1, cfg.batch_max_records // chunk) if columnar else cfg.batch_max_records
        self._consumer = AIOKafkaConsumer(
            bootstrap_servers=cfg.bootstrap_servers, group_id=cfg.group_id, client_id=self.worker_id,
            enable_auto_commit=False, auto_offset_reset="earliest",
            isolation_level="read_committed" if cfg.exactly_once else "read_uncommitted",
            # Range keeps gifts-p and payouts-p on the same worker (co-partitioned by creator_id).
            partition_assignment_strategy=(RangePartitionAssignor,),
            max_partition_fetch_bytes=8 << 20, fetch_max_bytes=64 << 20,
            value_deserializer=columnar_fetch.Columns(chunk) if columnar else None,
            # aiokafka (0.14) keeps one fetch in flight per broker and leaves partitions whose fetched records
            # are still unconsumed after 100 ms (prefetch_backoff) out of the next fetch. So while a batch is
            # processed and committed, the fetcher asks for the other partitions only, often just the idle
            # payouts ones, and the broker holds that fetch for fetch_max_wait_ms (default 500) before the
            # gifts partitions can be fetched again: up to 500 ms on every record's latency. Keep it short.
            fetch_max_wait_ms=cfg.fetch_max_wait_ms,
            session_timeout_ms=cfg.session_timeout_ms, heartbeat_interval_ms=min(3000, cfg.session_timeout_ms // 3),
            **cfg.kafka_security(),
        )
        self._consumer.subscribe([t.gifts, t.payouts], listener=_Rebalance(self))
        if not cfg.exactly_once:
            self._plain_producer = self._producer(None)
            await self._plain_producer.start()
        await self._consumer.start()
        log.info("worker started", extra={"worker": self.worker_id, "group": cfg.group_id,
                                          "exactly_once": cfg.exactly_once, "columnar_fetch": columnar})
        try:
            while not self._stopping.is_set():
                data = await self._consumer.getmany(timeout_ms=cfg.batch_max_ms, max_records=self._max_polled)
                self._last_poll = time.monotonic()
                if data:
                    async with self._lock:
                        await self._process(data)
                    self._gc.after_batch()
                    rest = cfg.commit_interval_ms / 1000 - (time.monotonic() - self._last_poll)
                    if rest > 0:  # let the next batch gather: fewer, bigger transactions
                        await asyncio.sleep(rest)
                await self.metrics.observe_lag(self._consumer)
        finally:
            async with self._lock:
                await self._release(list(self.tasks))
            await self._consumer.stop()
            if self._plain_producer:
                await self._plain_producer.stop()
            log.info("worker stopped", extra={"worker": self.worker_id})

    def _producer(self, partition: int | None) -> AIOKafkaProducer:
        opts = dict(bootstrap_servers=self.cfg.bootstrap_servers, linger_ms=5, max_batch_size=PRODUCER_BATCH_BYTES,
                    max_request_size=16 << 20, **self.cfg.kafka_security())
        if partition is None:
            return AIOKafkaProducer(acks="all", enable_idempotence=True, **opts)
        txn_id = f"giftstream-{self.cfg.group_id}-{self.cfg.topics.gifts}-{partition}"
        # retry_backoff_ms: a transaction that starts while the broker still writes the previous one's commit
        # markers gets CONCURRENT_TRANSACTIONS and aiokafka waits retry_backoff_ms (default 100) before trying
        # again (AddOffsetsToTxn, EndTxn; AddPartitionsToTxn only uses its own 20 ms for the first partitions).
        return AIOKafkaProducer(transactional_id=txn_id, transaction_timeout_ms=60_000, retry_backoff_ms=20, **opts)

    def seconds_since_poll(self) -> float | None:
        """Seconds since the consume loop last came back from getmany (None before the first poll)."""
        return None if self._last_poll is None else time.monotonic() - self._last_poll

    def gifts_partitions(self) -> int:
        """Partition count of the gifts topic as the consumer knows it (0 before metadata arrives)."""
        if self._consumer is None:
            return 0
        return len(self._consumer.partitions_for_topic(self.cfg.topics.gifts) or ())

    # ------------------------------------------------------------------ rebalance

    async def _on_assigned(self, assigned: Iterable[TopicPartition]) -> None:
        async with self._lock:
            self.ready = False
            parts = sorted({tp.partition for tp in assigned if tp.topic == self.cfg.topics.gifts})
            new = [p for p in parts if p not in self.tasks]
            for task in await asyncio.gather(*(self._restore(p) for p in new)):  # restores run side by side
                self.tasks[task.partition] = task
            self._gc.after_restore()
            self.ready = True
            log.info("partitions assigned", extra={"worker": self.worker_id, "partitions": parts})

    async def _on_revoked(self, revoked: Iterable[TopicPartition]) -> None:
        # Every batch is committed before the lock is released, so there is nothing to flush: drop the
        # state; the next owner restores it from the changelog.
        async with self._lock:
            parts = sorted({tp.partition for tp in revoked if tp.topic == self.cfg.topics.gifts})
            await self._release(parts)
            log.info("partitions revoked", extra={"worker": self.worker_id, "partitions": parts})

    async def _release(self, parts: list[int]) -> None:
        for p in parts:
            task = self.tasks.pop(p, None)
            if task is not None and task.producer is not self._plain_producer:
                await task.producer.stop()
        self.metrics.set_state_size(self.tasks)

    async def _restore(self, p: int) -> PartitionTask:
        started = time.perf_counter()
        if self.cfg.exactly_once:
            producer = self._producer(p)
            await producer.start()  # init_transactions: fences a zombie owner of p, ends its transaction
            await self._learn_output_topics(producer)
        else:
            producer = self._plain_producer
        records = await self._read_changelog(p)
        state, writer = restore_state(records)
        task = PartitionTask(p, make_engine(self.policy, p, state, self.cfg.topics.gifts, self.cfg.engine), writer,
                             producer)
        if self.cfg.exactly_once:
            await self._first_transaction(task)
        seconds = time.perf_counter() - started
        self.metrics.restore_seconds.observe(seconds)
        self.metrics.set_state_size(self.tasks | {p: task})
        log.info("partition restored", extra={"worker": self.worker_id, "partition": p,
                                              "changelog_records": len(records), "creators": len(state.creators),
                                              "seconds": round(seconds, 3)})
        return task

    async def _first_transaction(self, task: PartitionTask) -> None:
        """Commit, once the partition is restored, a transaction that changes nothing: the state's own `m`
        record and the partition's committed position again (a new group: where it starts reading, the log
        start). A producer's first transaction looks up the group coordinator and connects to it: left to
        the first batch, its offsets step took 26-31 ms instead of 7-11, at the moment a fresh worker starts
        to fall behind."""
        p, prod = task.partition, task.producer
        tp = TopicPartition(self.cfg.topics.gifts, p)
        position = await self._consumer.committed(tp)
        if position is None:
            position = (await self._consumer.beginning_offsets([tp]))[tp]
        await prod.begin_transaction()
        try:
            key, value = cursor_record(task.engine.watermark, task.engine.close_cursor)
            await (await prod.send(self.cfg.topics.changelog, value, key=key, partition=p))
            await prod.send_offsets_to_transaction({tp: OffsetAndMetadata(position, "")}, self.cfg.group_id)
            await prod.commit_transaction()
        except BaseException:
            await self._abort(prod)
            raise

    async def _read_changelog(self, p: int) -> list[Record]:
        tp = TopicPartition(self.cfg.topics.changelog, p)
        consumer = AIOKafkaConsumer(bootstrap_servers=self.cfg.bootstrap_servers, enable_auto_commit=False,
                                    isolation_level="read_committed", max_partition_fetch_bytes=16 << 20,
                                    **self.cfg.kafka_security())
        await consumer.start()
        records: list[Record] = []
        try:
            consumer.assign([tp])
            await consumer.seek_to_beginning(tp)
            end = (await consumer.end_offsets([tp]))[tp]
            while await consumer.position(tp) < end:
                batch = await consumer.getmany(tp, timeout_ms=1000)
                records.extend((m.key, m.value) for m in batch.get(tp, ()))
        finally:
            await consumer.stop()
        return records

    # ------------------------------------------------------------------ batches

    async def _process(self, data: dict[TopicPartition, list]) -> None:
        t = self.cfg.topics
        by_partition: dict[int, tuple[list, list]] = {}
        for tp, msgs in data.items():
            slot = by_partition.setdefault(tp.partition, ([], []))
            slot[0 if tp.topic == t.gifts else 1].extend(msgs)
        # Each partition's transaction starts as soon as that partition is processed, so its round trips
        # overlap the processing of the next partitions instead of all of them waiting for the slowest.
        commits: dict[int, asyncio.Task] = {}
        try:
            for p, (gifts, payouts) in sorted(by_partition.items()):
                task = self.tasks.get(p)
                if task is None:
                    continue  # revoked while the batch was in flight: the next owner reads it again
                started = time.perf_counter()
                out = Outputs()
                offsets: dict[TopicPartition, OffsetAndMetadata] = {}
                count = 0
                if payouts:
                    payout_offsets, raws, _ = columns_of(payouts)
                    task.engine.apply_payouts([model.decode_payout(r) for r in raws], raws, payout_offsets, out,
                                              t.payouts)
                    offsets[TopicPartition(t.payouts, p)] = OffsetAndMetadata(payout_offsets[-1] + 1, "")
                    count += len(raws)
                stamps: list[int] = []
                if gifts:
                    gift_offsets, raws, stamps = columns_of(gifts)
                    task.engine.process(raws, gift_offsets, out)
                    offsets[TopicPartition(t.gifts, p)] = OffsetAndMetadata(gift_offsets[-1] + 1, "")
                    count += len(raws)
                if NATIVE_CHANGELOG:
                    changelog = task.writer.drain_batches(task.engine, CHANGELOG_BATCH_BYTES,
                                                          self.cfg.exactly_once)
                else:
                    changelog = task.writer.drain(task.engine)
                self.metrics.record_batch(out, count, time.perf_counter() - started, stamps)
                commits[p] = asyncio.ensure_future(self._commit(task, out, changelog, offsets))
                await asyncio.sleep(0)  # let it send its first requests
        finally:
            results = await asyncio.gather(*commits.values(), return_exceptions=True)
        for p, result in zip(commits, results, strict=True):
            if isinstance(result, BaseException):
                await self._recover(p, result)
        self.metrics.set_state_size(self.tasks, every=STATE_SIZE_EVERY_S)

    async def _commit(self, task: PartitionTask, out: Outputs, changelog: list[Record],
                      offsets: dict[TopicPartition, OffsetAndMetadata]) -> None:
        prod = task.producer
        if not self.cfg.exactly_once:
            await self._send_outputs(prod, task.partition, out, changelog)
            await prod.flush()
            await self._consumer.commit(offsets)
            return
        await prod.begin_transaction()
        try:
            delivered = await self._send_outputs(prod, task.partition, out, changelog)
            # The offsets go once the outputs are written. Kafka 4 checks a transaction's first produce to a
            # partition with the transaction coordinator (KIP-890); if AddOffsetsToTxn is being written at
            # that moment the check fails, the broker answers NOT_ENOUGH_REPLICAS and the producer sends
            # again after retry_backoff_ms: 20-30 ms more for several percent of the transactions.
            await asyncio.gather(*delivered)
            await prod.send_offsets_to_transaction(offsets, self.cfg.group_id)
            await prod.commit_transaction()
        except BaseException:
            self.metrics.transactions_aborted.inc()
            await self._abort(prod)
            raise

    @staticmethod
    async def _abort(prod: AIOKafkaProducer) -> None:
        """Abort the open transaction; a failed abort is logged, not raised (the error that led here is)."""
        try:
            await prod.abort_transaction()
        except Exception:  # fenced or broken producer: the restart path replaces it
            log.warning("abort failed", exc_info=True)

    async def _recover(self, p: int, error: BaseException) -> None:
        """A transaction failed: the engine is ahead of what was committed. Throw the state away and
        start over from the last commit (state from the changelog, position from committed offsets)."""
        await self._release([p])
        assigned = {tp.partition for tp in self._consumer.assignment() if tp.topic == self.cfg.topics.gifts}
        if isinstance(error, ProducerFenced) and p not in assigned:
            # Another worker owns p now and our consumer already knows it: let it have p. (If our consumer
            # still lists p, the group says we own it: restoring fences the other side, which is right.)
            log.warning("fenced: partition %s has a new owner", p, extra={"worker": self.worker_id, "partition": p})
            return
        log.error("transaction failed; restoring partition from its last commit",
                  extra={"worker": self.worker_id, "partition": p, "error": repr(error)})
        self.tasks[p] = await self._restore(p)
        for topic in (self.cfg.topics.gifts, self.cfg.topics.payouts):
            tp = TopicPartition(topic, p)
            committed = await self._consumer.committed(tp)
            if committed is None:
                await self._consumer.seek_to_beginning(tp)
            else:
                self._consumer.seek(tp, committed)

    async def _send_outputs(self, prod: AIOKafkaProducer, p: int, out: Outputs,
                            changelog: list) -> list[asyncio.Future]:  # changelog: records or native batches
        """Hand the batch's outputs to the producer; returns the futures of their delivery."""
        t = self.cfg.topics
        encode = model.encode
        delivered: list[asyncio.Future] = []
        keyed = [
            (t.notices, [(n.creator_id.encode(), encode(n)) for n in out.notices]),
            (t.window_totals, [(w.creator_id.encode(), encode(w)) for w in out.window_totals]),
            (t.late, [(g.creator_id.encode(), encode(g)) for g in out.late]),
        ]
        for topic, records in keyed:
            if records:
                n = await self._partition_count(prod, topic)
                by_p: dict[int, list[Record]] = {}
                for key, value in records:
                    by_p.setdefault(partition_for(key, n), []).append((key, value))
                for q, recs in by_p.items():
                    delivered += await self._send_batches(prod, topic, q, recs)
        if out.dead_letters:
            # Dead letters stay on the partition number they came from, so they keep their order.
            dlq_parts = await self._partition_count(prod, t.dlq)
            delivered += await self._send_batches(prod, t.dlq, p % dlq_parts,
                                                  [(None, encode(d)) for d in out.dead_letters])
        if NATIVE_CHANGELOG:  # record batches from drain_batches
            for batch in changelog:
                delivered.append(await prod.send_batch(batch, t.changelog, partition=p))
        else:
            delivered += await self._send_batches(prod, t.changelog, p, changelog)
        return delivered

    async def _learn_output_topics(self, prod: AIOKafkaProducer) -> None:
        """Fetch the output topics' metadata now: a producer otherwise asks for a topic's metadata on its
        first send to it, in the middle of the partition's first transactions."""
        t = self.cfg.topics
        for topic in (t.changelog, t.notices, t.window_totals, t.late, t.dlq):
            self._partitions[topic] = len(await prod.partitions_for(topic))

    async def _partition_count(self, prod: AIOKafkaProducer, topic: str) -> int:
        n = self._partitions.get(topic)
        if n is None:
            n = self._partitions[topic] = len(await prod.partitions_for(topic))
        return n

    @staticmethod
    async def _send_batches(prod: AIOKafkaProducer, topic: str, partition: int,
                            records: list[tuple[bytes | None, bytes | None]]) -> list[asyncio.Future]:
        """Append records into producer batches directly: far cheaper than one send() per record. Returns
        the batches' delivery futures."""
        delivered = []
        batch = prod.create_batch()
        for key, value in records:
            if batch.append(key=key, value=value, timestamp=None) is None:
                delivered.append(await prod.send_batch(batch, topic, partition=partition))
                batch = prod.create_batch()
                batch.append(key=key, value=value, timestamp=None)
        if batch.record_count():
            delivered.append(await prod.send_batch(batch, topic, partition=partition))
        return delivered
