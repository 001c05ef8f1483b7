"""Every Kafka client the worker uses is made here, with its settings in one place. The worker and its tasks
only ask this factory, so tests can hand them other clients (tests/support/fake_kafka.py) and drive the commit and
recovery paths without a broker, as well as with one."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any, NamedTuple

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.coordinator.assignors.range import RangePartitionAssignor

from stream.config import WorkerConfig
from stream.kafka import aiokafka_patches

log = logging.getLogger(__name__)

PRODUCER_BATCH_BYTES = 1 << 20  # the producers' max_batch_size
CLOSE_TIMEOUT_S = 5.0  # longest wait for a client to close (a broker that is away cannot be waited for)


class KafkaClients:
    def __init__(self, cfg: WorkerConfig) -> None:
        self.cfg = cfg

    def transactional_id(self, partition: int) -> str:
        """One transactional.id per input partition: starting its producer fences any older owner of it."""
        return f"giftstream-{self.cfg.group_id}-{self.cfg.topics.gifts}-{partition}"

    def group_consumer(self, worker_id: str, value_deserializer: Callable[[bytes], Any] | None) -> AIOKafkaConsumer:
        cfg = self.cfg
        return AIOKafkaConsumer(
            bootstrap_servers=cfg.bootstrap_servers, group_id=cfg.group_id, client_id=worker_id,
            enable_auto_commit=False, auto_offset_reset="earliest",
            isolation_level="read_committed" if cfg.exactly_once else "read_uncommitted",
            # Range keeps gifts-p and payouts-p on the same worker (co-partitioned by creator_id).
            partition_assignment_strategy=(RangePartitionAssignor,),
            max_partition_fetch_bytes=8 << 20, fetch_max_bytes=64 << 20,
            value_deserializer=value_deserializer,
            # aiokafka (0.14) keeps one fetch in flight per broker and leaves partitions whose fetched records
            # are still unconsumed after 100 ms (prefetch_backoff) out of the next fetch. So while a batch is
            # processed and committed, the fetcher asks for the other partitions only, often just the idle
            # payouts ones, and the broker holds that fetch for fetch_max_wait_ms (default 500) before the
            # gifts partitions can be fetched again: up to 500 ms on every record's latency. Keep it short.
            fetch_max_wait_ms=cfg.fetch_max_wait_ms,
            session_timeout_ms=cfg.session_timeout_ms, heartbeat_interval_ms=min(3000, cfg.session_timeout_ms // 3),
            **cfg.kafka_security(),
        )

    async def confirm_membership(self, consumer: AIOKafkaConsumer) -> None:
        """Raise aiokafka_patches.NotAMember unless the group still knows this consumer at its generation, and
        GroupRebalancing while the group is rebalancing."""
        await aiokafka_patches.confirm_membership(consumer)

    def restore_consumer(self, value_deserializer: Callable[[bytes], Any] | None = None) -> AIOKafkaConsumer:
        """The group-less consumer that reads changelog partitions for restores, read_committed
        (stream.runtime.restore; value_deserializer: columnar_fetch.Columns, or None for ConsumerRecords)."""
        return AIOKafkaConsumer(bootstrap_servers=self.cfg.bootstrap_servers, enable_auto_commit=False,
                                isolation_level="read_committed", max_partition_fetch_bytes=16 << 20,
                                fetch_max_bytes=64 << 20, value_deserializer=value_deserializer,
                                **self.cfg.kafka_security())

    def _producer_options(self) -> dict[str, Any]:
        return dict(bootstrap_servers=self.cfg.bootstrap_servers, linger_ms=5, max_batch_size=PRODUCER_BATCH_BYTES,
                    max_request_size=16 << 20, **self.cfg.kafka_security())

    def transactional_producer(self, partition: int) -> AIOKafkaProducer:
        # retry_backoff_ms: a transaction that starts while the broker still writes the previous one's commit
        # markers gets CONCURRENT_TRANSACTIONS and aiokafka waits retry_backoff_ms (default 100) before trying
        # again (AddOffsetsToTxn, EndTxn; AddPartitionsToTxn only uses its own 20 ms for the first partitions).
        return AIOKafkaProducer(transactional_id=self.transactional_id(partition), transaction_timeout_ms=60_000,
                                retry_backoff_ms=20, **self._producer_options())

    def plain_producer(self) -> AIOKafkaProducer:
        """The one idempotent producer of at-least-once mode (comparison only)."""
        return AIOKafkaProducer(acks="all", enable_idempotence=True, **self._producer_options())


class FetchedUpTo(NamedTuple):
    """Where an assigned partition stands (clients.fetched_up_to); None for what is not known yet."""

    position: int | None  # the next offset the consumer hands out
    end: int | None  # as of the last fetch response: the last stable offset under read_committed, else the HW
    sent_ms: int | None  # when that fetch was sent (wall-clock ms)


def fetched_up_to(consumer: AIOKafkaConsumer, tp: Any) -> FetchedUpTo:
    """Where an assigned partition stands as of its last fetch (FetchedUpTo; aiokafka_patches notes the send
    time)."""
    answer = getattr(consumer, "fetched_up_to", None)  # a test's fake consumer answers for itself
    if answer is not None:
        return answer(tp)
    state = _partition_state(consumer, tp)
    if state is None:
        return FetchedUpTo(None, None, None)
    position = state.position if state.has_valid_position else None
    return FetchedUpTo(position, aiokafka_patches.reader_end(state.lso, state.highwater),
                       getattr(state, "fetch_sent_ms", None))


def first_fetch_sent(consumer: AIOKafkaConsumer, tp: Any, last_offset: int) -> int | None:
    """When the first fetch that reported an end past last_offset of tp was sent (wall-clock ms; aiokafka_patches
    notes the ends): the records up to there were on the broker by the time that fetch was answered. None when not
    known. Records read from a backlog get the fetch that first saw their backlog, not the one they came with.
    Forgets the ends at or below last_offset: ask in offset order."""
    answer = getattr(consumer, "first_fetch_sent", None)  # a test's fake consumer answers for itself
    if answer is not None:
        return answer(tp, last_offset)
    seen = getattr(_partition_state(consumer, tp), "ends_seen", None)
    if not seen:
        return None
    while seen and seen[0][0] <= last_offset:
        seen.popleft()
    return seen[0][1] if seen else None


def _partition_state(consumer: AIOKafkaConsumer, tp: Any) -> Any:
    """aiokafka's TopicPartitionState of an assigned partition, or None (0.14 has no public synchronous getter)."""
    subscription = consumer._subscription.subscription
    return subscription.assignment.state_value(tp) if subscription and subscription.assignment else None


async def close_within(aw: Awaitable, what: str, partition: int | None = None,
                       seconds: float = CLOSE_TIMEOUT_S) -> None:
    """Await a client's close for at most `seconds`; a failure or a timeout is logged, not raised."""
    try:
        await asyncio.wait_for(aw, seconds)
    except asyncio.CancelledError as e:
        current = asyncio.current_task()
        if current is not None and current.cancelling():
            raise  # we are being cancelled ourselves
        # aiokafka's close lets a CancelledError of its own background work escape (the fetcher's retry sleep)
        log.warning("%s did not finish cleanly", what, extra={"partition": partition, "error": repr(e)})
    except Exception as e:
        log.warning("%s did not finish cleanly", what, extra={"partition": partition, "error": repr(e)})
