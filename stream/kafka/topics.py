"""Create the topics giftstream reads and writes, with the settings each needs."""

from __future__ import annotations

import logging

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError

from stream.config import WorkerConfig

log = logging.getLogger(__name__)
WEEK_MS = 7 * 24 * 3_600_000


def topic_specs(cfg: WorkerConfig, partitions: int, retention_ms: int = WEEK_MS) -> list[NewTopic]:
    """Inputs and the changelog share the partition count (co-partitioned by creator_id)."""
    t = cfg.topics
    keep = {"retention.ms": str(retention_ms)}
    return [
        NewTopic(t.gifts, partitions, 1, topic_configs=keep),
        NewTopic(t.payouts, partitions, 1, topic_configs=keep),
        # An account's latest record is its state: compacted, a tombstone closes it.
        NewTopic(t.accounts, partitions, 1, topic_configs={"cleanup.policy": "compact"}),
        NewTopic(t.notices, partitions, 1, topic_configs=keep),
        NewTopic(t.window_totals, partitions, 1, topic_configs=keep),
        NewTopic(t.late, partitions, 1, topic_configs=keep),
        NewTopic(t.dlq, partitions, 1, topic_configs={"retention.ms": str(4 * WEEK_MS)}),
        # The changelog is the state itself: compacted, never deleted by time.
        NewTopic(t.changelog, partitions, 1, topic_configs={
            "cleanup.policy": "compact", "min.compaction.lag.ms": "60000", "segment.bytes": str(64 << 20)}),
    ]


async def create_topics(cfg: WorkerConfig, partitions: int, retention_ms: int = WEEK_MS) -> list[str]:
    """Create missing topics; returns the names created. Existing topics are left as they are."""
    admin = AIOKafkaAdminClient(bootstrap_servers=cfg.bootstrap_servers, **cfg.kafka_security())
    await admin.start()
    created = []
    try:
        existing = set(await admin.list_topics())
        missing = [s for s in topic_specs(cfg, partitions, retention_ms) if s.name not in existing]
        for spec in missing:
            try:
                await admin.create_topics([spec])
                created.append(spec.name)
            except TopicAlreadyExistsError:
                pass
    finally:
        await admin.close()
    return created


async def delete_topics(cfg: WorkerConfig) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=cfg.bootstrap_servers, **cfg.kafka_security())
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        names = [s.name for s in topic_specs(cfg, 1) if s.name in existing]
        if names:
            await admin.delete_topics(names)
    finally:
        await admin.close()


def parse_retention(text: str) -> int:
    from stream.engine.policy import parse_duration

    return parse_duration(text)
