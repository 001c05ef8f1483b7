"""Create the topics giftstream reads and writes, with the settings each needs.

Replication: `replication_factor` copies of every partition; by default min(3, brokers in the cluster), so the
single test broker keeps RF 1 and the loopback cluster (deploy/kafka/kafka-cluster.sh) gets RF 3. A replicated
topic (RF >= 3) gets min.insync.replicas=2: an acks=all write (every transactional one) needs two copies, so
one broker may be down without stopping writes or losing an acknowledged record. RF 1 and RF 2 get no topic
setting: the broker's default (1) is the only value RF 1 allows, and for RF 2 it is what lets one broker be down.
"""

from __future__ import annotations

import logging

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError, for_code

from stream.config import Topics, WorkerConfig
from stream.engine.order import Input

log = logging.getLogger(__name__)
WEEK_MS = 7 * 24 * 3_600_000
MAX_DEFAULT_REPLICATION = 3


def input_topics(topics: Topics) -> dict[Input, str]:
    """The topic of each input of a partition (stream.engine.order.Input)."""
    return {Input.GIFTS: topics.gifts, Input.PAYOUTS: topics.payouts, Input.ACCOUNTS: topics.accounts}


def default_replication_factor(brokers: int) -> int:
    """The replication factor when none is asked for: every broker up to three (one broker: 1, as ever)."""
    if brokers < 1:
        raise ValueError(f"the cluster lists {brokers} brokers")
    return min(MAX_DEFAULT_REPLICATION, brokers)


def min_insync_replicas(replication_factor: int) -> int | None:
    """min.insync.replicas for a topic of that replication factor; None: the broker's default (1)."""
    if replication_factor < 1:
        raise ValueError(f"replication factor {replication_factor} < 1")
    return 2 if replication_factor >= 3 else None


def topic_specs(cfg: WorkerConfig, partitions: int, retention_ms: int = WEEK_MS,
                replication_factor: int = 1) -> list[NewTopic]:
    """Inputs and the changelog share the partition count (co-partitioned by creator_id)."""
    t = cfg.topics
    rf = replication_factor
    isr = min_insync_replicas(rf)
    replicated = {} if isr is None else {"min.insync.replicas": str(isr)}
    keep = {"retention.ms": str(retention_ms), **replicated}
    return [
        NewTopic(t.gifts, partitions, rf, topic_configs=keep),
        NewTopic(t.payouts, partitions, rf, topic_configs=keep),
        # An account's latest record is its state: compacted, a tombstone closes it.
        NewTopic(t.accounts, partitions, rf, topic_configs={"cleanup.policy": "compact", **replicated}),
        NewTopic(t.notices, partitions, rf, topic_configs=keep),
        NewTopic(t.window_totals, partitions, rf, topic_configs=keep),
        NewTopic(t.late, partitions, rf, topic_configs=keep),
        NewTopic(t.dlq, partitions, rf, topic_configs={"retention.ms": str(4 * WEEK_MS), **replicated}),
        # The changelog is the state itself: compacted, never deleted by time.
        NewTopic(t.changelog, partitions, rf, topic_configs={
            "cleanup.policy": "compact", "min.compaction.lag.ms": "60000", "segment.bytes": str(64 << 20),
            **replicated}),
    ]


async def broker_count(admin: AIOKafkaAdminClient) -> int:
    """Brokers the cluster's metadata lists (registered, not fenced)."""
    return len((await admin.describe_cluster())["brokers"])


async def create_topics(cfg: WorkerConfig, partitions: int, retention_ms: int = WEEK_MS,
                        replication_factor: int | None = None) -> list[str]:
    """Create missing topics; returns the names created. Existing topics are left as they are.
    replication_factor None: default_replication_factor(brokers the cluster lists now)."""
    admin = AIOKafkaAdminClient(bootstrap_servers=cfg.bootstrap_servers, **cfg.kafka_security())
    await admin.start()
    created = []
    try:
        rf = replication_factor or default_replication_factor(await broker_count(admin))
        existing = set(await admin.list_topics())
        missing = [s for s in topic_specs(cfg, partitions, retention_ms, rf) if s.name not in existing]
        for spec in missing:
            response = await admin.create_topics([spec])
            (name, code, *message), = response.topic_errors
            if code == TopicAlreadyExistsError.errno:
                continue
            if code:
                raise for_code(code)(f"cannot create {name} ({partitions} partitions, replication factor {rf}): "
                                     f"{message[0] if message else ''}")
            created.append(spec.name)
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
