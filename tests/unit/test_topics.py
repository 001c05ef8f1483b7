"""stream/kafka/topics.py without a broker: the replication factor from the broker count, min.insync.replicas
from the replication factor, and what create_topics asks an admin client (a fake one here)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from aiokafka.errors import InvalidReplicationFactorError, TopicAlreadyExistsError

from stream.cli import build_parser
from stream.config import WorkerConfig
from stream.kafka import topics
from stream.kafka.topics import create_topics, default_replication_factor, min_insync_replicas, topic_specs


@pytest.mark.parametrize(("brokers", "rf"), [(1, 1), (2, 2), (3, 3), (4, 3), (9, 3)])
def test_the_default_replication_factor_is_every_broker_up_to_three(brokers, rf):
    assert default_replication_factor(brokers) == rf


def test_no_brokers_is_an_error():
    with pytest.raises(ValueError):
        default_replication_factor(0)


@pytest.mark.parametrize(("rf", "isr"), [(1, None), (2, None), (3, 2), (5, 2)])
def test_min_insync_replicas_is_two_for_a_replicated_topic_else_the_brokers_default(rf, isr):
    assert min_insync_replicas(rf) == isr


def test_replication_factor_1_is_the_topics_as_they_were():
    for spec in topic_specs(WorkerConfig(), 6):
        assert spec.replication_factor == 1
        assert "min.insync.replicas" not in (spec.topic_configs or {})


def test_replication_factor_3_gives_every_topic_min_insync_2_and_keeps_its_other_settings():
    plain = {s.name: s for s in topic_specs(WorkerConfig(), 6)}
    for spec in topic_specs(WorkerConfig(), 6, replication_factor=3):
        assert spec.replication_factor == 3
        assert spec.topic_configs == {**plain[spec.name].topic_configs, "min.insync.replicas": "2"}


class FakeAdmin:
    """What create_topics uses of AIOKafkaAdminClient; answers each create with the error code in `answers`."""

    def __init__(self, brokers: int, existing=(), answers=None) -> None:
        self.brokers, self.existing, self.answers = brokers, set(existing), answers or {}
        self.created = []

    def __call__(self, **_kwargs):
        return self

    async def start(self):
        pass

    async def close(self):
        pass

    async def describe_cluster(self):
        return {"brokers": [{"node_id": n} for n in range(1, self.brokers + 1)]}

    async def list_topics(self):
        return sorted(self.existing)

    async def create_topics(self, specs):
        (spec,) = specs
        self.created.append(spec)
        code = self.answers.get(spec.name, 0)
        return SimpleNamespace(topic_errors=[(spec.name, code, "the broker says no" if code else None)])


@pytest.mark.parametrize(("brokers", "rf", "isr"), [(1, 1, None), (3, 3, "2"), (5, 3, "2")])
async def test_create_topics_asks_the_cluster_how_many_brokers_it_has(monkeypatch, brokers, rf, isr):
    admin = FakeAdmin(brokers)
    monkeypatch.setattr(topics, "AIOKafkaAdminClient", admin)
    created = await create_topics(WorkerConfig(), 4)
    assert created == [s.name for s in topic_specs(WorkerConfig(), 4)]
    assert {s.replication_factor for s in admin.created} == {rf}
    assert {(s.topic_configs or {}).get("min.insync.replicas") for s in admin.created} == {isr}


async def test_an_explicit_replication_factor_wins(monkeypatch):
    admin = FakeAdmin(3)
    monkeypatch.setattr(topics, "AIOKafkaAdminClient", admin)
    await create_topics(WorkerConfig(), 4, replication_factor=1)
    assert {s.replication_factor for s in admin.created} == {1}


async def test_an_existing_topic_is_left_alone_and_a_refused_one_is_an_error(monkeypatch):
    t = WorkerConfig().topics
    admin = FakeAdmin(1, existing=[t.gifts], answers={t.payouts: TopicAlreadyExistsError.errno})
    monkeypatch.setattr(topics, "AIOKafkaAdminClient", admin)
    created = await create_topics(WorkerConfig(), 4)
    assert t.gifts not in created and t.payouts not in created and t.notices in created
    admin = FakeAdmin(1, answers={t.notices: InvalidReplicationFactorError.errno})
    monkeypatch.setattr(topics, "AIOKafkaAdminClient", admin)
    with pytest.raises(InvalidReplicationFactorError, match="replication factor 4"):
        await create_topics(WorkerConfig(), 4, replication_factor=4)


def test_the_cli_takes_a_replication_factor():
    parser = build_parser()
    assert parser.parse_args(["topics", "create"]).replication_factor is None
    assert parser.parse_args(["topics", "create", "--replication-factor", "3"]).replication_factor == 3
