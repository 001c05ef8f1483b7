"""Kafka clients without a broker, for the worker's commit and recovery paths (stream.kafka.clients.KafkaClients
is the seam). FakeCluster keeps what a broker would: committed records per partition, the group's committed
offsets, each transactional id's producer epoch; and lets a test inject a fence or a failed commit. Only what
the worker and its tasks call is here; the real-broker tests (test_kafka_*.py) cover the rest."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any

from aiokafka import TopicPartition
from aiokafka import errors as Errors
from aiokafka.record.default_records import DefaultRecordBatch

from stream.config import WorkerConfig
from stream.kafka.aiokafka_patches import NotAMember
from stream.kafka.clients import FetchedUpTo, KafkaClients


@dataclass
class Msg:
    offset: int
    key: bytes | None
    value: bytes | None
    timestamp: int
    control: bool = False  # a transaction's commit marker: takes an offset, never handed to a reader


@dataclass
class Sent:
    """What a delivered send resolves to (aiokafka's RecordMetadata: the batch's base offset)."""

    offset: int


@dataclass
class FakeCluster:
    partitions: int
    logs: dict[TopicPartition, list[Msg]] = field(default_factory=dict)
    offsets: dict[TopicPartition, int] = field(default_factory=dict)  # the group's committed offsets
    epochs: dict[str, int] = field(default_factory=dict)  # transactional id -> newest producer epoch
    missing_topics: set[str] = field(default_factory=set)
    fail_commits: list[BaseException] = field(default_factory=list)  # raised by the next commits, in order
    members: bool = True  # confirm_membership answers yes
    events: list[str] = field(default_factory=list)  # what happened, in order, for the tests to read

    def log(self, topic: str, partition: int) -> list[Msg]:
        return self.logs.setdefault(TopicPartition(topic, partition), [])

    def append(self, topic: str, partition: int, key: bytes | None, value: bytes | None,
               control: bool = False, timestamp: int | None = None) -> None:
        log = self.log(topic, partition)
        log.append(Msg(len(log), key, value, int(time.time() * 1000) if timestamp is None else timestamp, control))

    def fence(self, txn_id: str) -> None:
        """As if another member started a producer with this transactional id."""
        self.epochs[txn_id] = self.epochs.get(txn_id, 0) + 1


def _done(value: Any = None) -> asyncio.Future:
    fut = asyncio.get_running_loop().create_future()
    fut.set_result(value)
    return fut


class _Batch:
    def __init__(self) -> None:
        self.records: list[tuple[bytes | None, bytes | None]] = []

    def append(self, key: bytes | None, value: bytes | None, timestamp: int | None) -> object:
        self.records.append((key, value))
        return True

    def record_count(self) -> int:
        return len(self.records)


class _Metadata:
    def __init__(self, cluster: FakeCluster) -> None:
        self.cluster = cluster

    def partitions_for_topic(self, topic: str) -> set[int] | None:
        return None if topic in self.cluster.missing_topics else set(range(self.cluster.partitions))


class FakeProducer:
    def __init__(self, cluster: FakeCluster, txn_id: str | None) -> None:
        self.cluster, self.txn_id = cluster, txn_id
        self.epoch: int | None = None
        self.pending: list[tuple[TopicPartition, bytes | None, bytes | None]] = []
        self.pending_offsets: dict[TopicPartition, int] = {}
        outer = self

        class _Client:
            async def fetch_all_metadata(self) -> _Metadata:
                return _Metadata(outer.cluster)

        self.client = _Client()

    async def start(self) -> None:
        if self.txn_id is not None:
            self.cluster.fence(self.txn_id)  # init_transactions fences every older producer of the id
            self.epoch = self.cluster.epochs[self.txn_id]
            self.cluster.events.append(f"producer start {self.txn_id}")

    async def stop(self) -> None:
        pass

    async def partitions_for(self, topic: str) -> set[int]:
        return set(range(self.cluster.partitions))

    def _check_epoch(self) -> None:
        if self.txn_id is not None and self.cluster.epochs[self.txn_id] != self.epoch:
            raise Errors.ProducerFenced()

    async def begin_transaction(self) -> None:
        self._check_epoch()
        self.pending, self.pending_offsets = [], {}

    def create_batch(self) -> _Batch:
        return _Batch()

    def _next_offset(self, tp: TopicPartition) -> int:
        """The offset the next pending record of tp gets at commit (one producer writes a partition at a time)."""
        return len(self.cluster.log(tp.topic, tp.partition)) + sum(1 for t, _, _ in self.pending if t == tp)

    async def send(self, topic: str, value: bytes | None, key: bytes | None = None, partition: int = 0):
        tp = TopicPartition(topic, partition)
        sent = Sent(self._next_offset(tp))
        self.pending.append((tp, key, value))
        return _done(sent)

    async def send_batch(self, batch: Any, topic: str, partition: int) -> asyncio.Future:
        tp = TopicPartition(topic, partition)
        if isinstance(batch, _Batch):
            records = batch.records
        else:  # a native changelog batch (stream._native.RecordBatchBuilder)
            records = [(r.key, r.value) for r in DefaultRecordBatch(batch._build())]
        sent = Sent(self._next_offset(tp))
        self.pending += [(tp, k, v) for k, v in records]
        return _done(sent)

    async def send_offsets_to_transaction(self, offsets: dict, group_id: str) -> None:
        self._check_epoch()
        self.pending_offsets.update({tp: om.offset for tp, om in offsets.items()})

    async def commit_transaction(self) -> None:
        self._check_epoch()
        if self.cluster.fail_commits:
            raise self.cluster.fail_commits.pop(0)
        for tp, key, value in self.pending:
            self.cluster.append(tp.topic, tp.partition, key, value)
        for tp in dict.fromkeys(tp for tp, _, _ in self.pending):
            self.cluster.append(tp.topic, tp.partition, None, None, control=True)
        self.cluster.offsets.update(self.pending_offsets)
        self.pending, self.pending_offsets = [], {}

    async def abort_transaction(self) -> None:
        self.pending, self.pending_offsets = [], {}
        self.cluster.events.append(f"abort {self.txn_id}")


class FakeRestoreConsumer:
    def __init__(self, cluster: FakeCluster, poll_records: int | None = None) -> None:
        self.cluster = cluster
        self.positions: dict[TopicPartition, int] = {}
        self.poll_records = poll_records  # records a poll hands out per partition (None: all there are)

    async def start(self) -> None:
        pass

    async def stop(self) -> None:
        pass

    def assign(self, tps: list[TopicPartition]) -> None:
        self.positions = dict.fromkeys(tps, 0)

    def seek(self, tp: TopicPartition, offset: int) -> None:
        self.positions[tp] = offset

    async def beginning_offsets(self, tps: list[TopicPartition]) -> dict[TopicPartition, int]:
        return dict.fromkeys(tps, 0)

    async def end_offsets(self, tps: list[TopicPartition]) -> dict[TopicPartition, int]:
        return {tp: len(self.cluster.log(tp.topic, tp.partition)) for tp in tps}

    async def position(self, tp: TopicPartition) -> int:
        return self.positions[tp]

    async def getmany(self, *tps: TopicPartition, timeout_ms: int = 0) -> dict[TopicPartition, list[Msg]]:
        out = {}
        for tp in tps or list(self.positions):
            log = self.cluster.log(tp.topic, tp.partition)
            upto = len(log) if self.poll_records is None else min(len(log), self.positions[tp] + self.poll_records)
            msgs = [m for m in log[self.positions[tp]:upto] if not m.control]
            self.positions[tp] = upto
            if msgs:
                out[tp] = msgs
        if not out:
            await asyncio.sleep(timeout_ms / 1000 / 10)
        return out


class FakeGroupConsumer:
    """One member alone in its group: subscribing (again) assigns it every partition of its topics."""

    def __init__(self, cluster: FakeCluster) -> None:
        self.cluster = cluster
        self.topics: list[str] = []
        self.listener: Any = None
        self._assigned: set[TopicPartition] = set()
        self.paused: set[TopicPartition] = set()
        self.positions: dict[TopicPartition, int] = {}
        self._join_pending = False

    def subscribe(self, topics: list[str], listener: Any) -> None:
        self.topics, self.listener, self._join_pending = topics, listener, True
        self.cluster.events.append("subscribe")

    def rebalance(self) -> None:
        """As if another member joined and left again: at the next poll everything is revoked, then the same
        partitions are assigned (aiokafka's eager protocol)."""
        self._join_pending = True
        self.cluster.events.append("rebalance")

    def unsubscribe(self) -> None:
        self._assigned, self._join_pending = set(), False
        self.cluster.events.append("unsubscribe")

    async def start(self) -> None:
        pass

    async def stop(self) -> None:
        pass

    def assignment(self) -> set[TopicPartition]:
        return set(self._assigned)

    def partitions_for_topic(self, topic: str) -> set[int]:
        return set(range(self.cluster.partitions))

    def pause(self, *tps: TopicPartition) -> None:
        self.paused.update(tps)

    def resume(self, *tps: TopicPartition) -> None:
        self.paused.difference_update(tps)

    def seek(self, tp: TopicPartition, offset: int) -> None:
        self.positions[tp] = offset
        self.cluster.events.append(f"seek {tp.topic}-{tp.partition} {offset}")

    async def committed(self, tp: TopicPartition) -> int | None:
        return self.cluster.offsets.get(tp)

    async def beginning_offsets(self, tps: list[TopicPartition]) -> dict[TopicPartition, int]:
        return dict.fromkeys(tps, 0)

    async def position(self, tp: TopicPartition) -> int:
        return self.positions.get(tp, 0)

    def last_poll_timestamp(self, tp: TopicPartition) -> int:
        return int(time.time() * 1000)

    def last_stable_offset(self, tp: TopicPartition) -> int:
        return len(self.cluster.log(tp.topic, tp.partition))

    highwater = last_stable_offset

    def fetched_up_to(self, tp: TopicPartition) -> FetchedUpTo:
        """stream.kafka.clients.fetched_up_to's answer: every log is fetched to its end, by a fetch sent now."""
        return FetchedUpTo(self.positions.get(tp, 0), self.last_stable_offset(tp), int(time.time() * 1000))

    def first_fetch_sent(self, tp: TopicPartition, last_offset: int) -> int | None:
        """stream.kafka.clients.first_fetch_sent's answer: not known (the task takes the time it gets the records)."""
        return None

    async def commit(self, offsets: dict) -> None:
        self.cluster.offsets.update({tp: om.offset for tp, om in offsets.items()})

    async def getmany(self, timeout_ms: int = 0, max_records: int | None = None) -> dict[TopicPartition, list[Msg]]:
        if self._join_pending:  # the group's answer to a (re)subscription
            self._join_pending = False
            await self.listener.on_partitions_revoked(self.assignment())
            self._assigned = {TopicPartition(t, p) for t in self.topics for p in range(self.cluster.partitions)}
            self.cluster.events.append("assigned")
            await self.listener.on_partitions_assigned(self.assignment())
            return {}
        out = {}
        for tp in sorted(self._assigned - self.paused):
            log = self.cluster.log(tp.topic, tp.partition)
            msgs = log[self.positions.get(tp, 0):][:max_records]
            if msgs:
                out[tp] = msgs
                self.positions[tp] = msgs[-1].offset + 1
        if not out:
            await asyncio.sleep(timeout_ms / 1000 / 10)
        return out


class FakeClients(KafkaClients):
    def __init__(self, cfg: WorkerConfig, cluster: FakeCluster) -> None:
        super().__init__(cfg)
        self.cluster = cluster
        self.consumer: FakeGroupConsumer | None = None
        self.restore_poll_records: int | None = None  # FakeRestoreConsumer.poll_records of the next one made

    def group_consumer(self, worker_id: str, value_deserializer: Any) -> FakeGroupConsumer:
        self.consumer = FakeGroupConsumer(self.cluster)
        return self.consumer

    def restore_consumer(self, value_deserializer: Any = None) -> FakeRestoreConsumer:
        return FakeRestoreConsumer(self.cluster, self.restore_poll_records)

    def transactional_producer(self, partition: int) -> FakeProducer:
        return FakeProducer(self.cluster, self.transactional_id(partition))

    def plain_producer(self) -> FakeProducer:
        return FakeProducer(self.cluster, None)

    async def confirm_membership(self, consumer: Any) -> None:
        if not self.cluster.members:
            raise NotAMember("the fake group does not know this member")
