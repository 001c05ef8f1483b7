"""The worker on the three-broker loopback cluster (deploy/kafka/kafka-cluster.sh): topics with three replicas
and min.insync.replicas=2; the broker that leads the most gifts partitions is SIGKILLed mid-run and started
again, and what the worker committed is still exactly the offline replay: nothing lost, nothing twice.

Skipped unless GIFTSTREAM_TEST_CLUSTER=1 or `-m cluster` (tests/conftest.py); it starts the cluster if it is not
up and stops what it started."""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import replace

import pytest
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from load.chaos import ALL_KINDS
from stream.config import WorkerConfig
from stream.engine.policy import load_policy
from stream.kafka.session_io import produce_session
from stream.kafka.topics import delete_topics, topic_specs
from stream.runtime.worker import Worker
from tests.support.cluster import cluster_for_tests, wait_drained_through_faults
from tests.support.kafka_checks import assert_matches_offline, committed_lag, session, topics_of_its_own
from tests.support.processes import run_cli, unique_topics, write_config

pytestmark = [pytest.mark.kafka, pytest.mark.cluster, pytest.mark.slow]
PARTITIONS = 6  # two led by each broker


@pytest.fixture(scope="module")
def cluster():
    with cluster_for_tests() as c:
        print(f"\ncluster {c.bootstrap} ready in {c.started_in_s:.1f} s")
        yield c


@pytest.fixture
async def cfg(cluster):
    c = await topics_of_its_own(cluster.bootstrap, PARTITIONS)  # the default replication: min(3, brokers) = 3
    yield c
    await delete_topics(c)


async def test_the_topics_have_three_replicas_and_need_two_in_sync(cluster, cfg):
    names = [s.name for s in topic_specs(cfg, PARTITIONS)]
    states = await cluster.partitions(names)
    assert len(states) == len(names) * PARTITIONS
    assert all(len(p.replicas) == 3 and p.healthy for p in states)
    for name in names:
        assert await cluster.topic_config(name, "min.insync.replicas") == "2"


async def test_the_config_of_a_topic_created_just_after_the_question_is_still_read(cluster, cfg):
    """A broker that does not know a topic yet (created moments ago, its metadata still on the way) answers
    describe_configs with UNKNOWN_TOPIC_OR_PARTITION and no entries: asked again until it knows."""
    late = f"{cfg.topics.gifts}-created-late"
    question = asyncio.create_task(cluster.topic_config(late, "min.insync.replicas"))
    await asyncio.sleep(1.0)
    admin = AIOKafkaAdminClient(bootstrap_servers=cfg.bootstrap_servers)
    await admin.start()
    try:
        assert not question.done(), "answered before the topic existed"
        await admin.create_topics([NewTopic(late, 1, 3, topic_configs={"min.insync.replicas": "2"})])
        assert await question == "2"
    finally:
        await admin.delete_topics([late])
        await admin.close()


async def test_a_sigkilled_leader_broker_loses_and_duplicates_nothing(cluster, cfg):
    records = session(40_000, seed=43)
    first, rest = records[:15_000], records[15_000:]
    cfg = replace(cfg, batch_max_records=1_000)  # many transactions: the kill lands between and inside them
    await produce_session(first, cfg)
    worker = Worker(cfg, load_policy())
    run = asyncio.create_task(worker.run())
    try:
        # mid-run: some of the first records committed, not all
        deadline = time.monotonic() + 60
        while (lag := await committed_lag(cfg)) >= len(first):
            assert not run.done() and time.monotonic() < deadline, f"no commit yet ({lag} records left)"
            await asyncio.sleep(0.1)
        counts = await cluster.leader_counts(cfg.topics.gifts)
        victim = max(counts, key=counts.get)
        lag_at_kill = await committed_lag(cfg)
        await asyncio.to_thread(cluster.kill, victim)
        killed = time.monotonic()
        # more records arrive while it is down: the producers' writes go to the new leaders (acks=all, 2 in sync)
        for lo in range(0, len(rest), 5_000):
            await produce_session(rest[lo:lo + 5_000], cfg)
        assert not run.done(), "the worker stopped while a broker was down"
        await asyncio.to_thread(cluster.start, victim)
        answered = time.monotonic()
        await cluster.wait_healthy(timeout=180)
        healthy = time.monotonic()
        await wait_drained_through_faults(cfg)
        print(f"\nkilled node {victim} (led {counts[victim]} of {PARTITIONS} gifts partitions, {counts}) with "
              f"{lag_at_kill} of {len(first)} records not yet committed; down "
              f"{answered - killed:.1f} s; ISR full {healthy - answered:.1f} s after it answered again; "
              f"drained {time.monotonic() - healthy:.1f} s later")
        assert not run.done()
    finally:
        worker.stop()
        await run
    await assert_matches_offline(cfg, records)


def test_a_chaos_run_on_the_cluster_loses_and_duplicates_nothing(cluster, tmp_path):
    """`giftstream load run --chaos all --kafka-nodes 3`: one fault of each kind, the broker-kill taking the node
    that leads the most gifts partitions; nothing lost, nothing twice, every fault healed."""
    suffix, topics = unique_topics("chaos-cluster")
    config = write_config(tmp_path / "worker.toml", topics, bootstrap_servers=cluster.bootstrap,
                          group_id=f"giftstream-{suffix}")
    out = tmp_path / "report"
    r = run_cli("load", "run", "--config", str(config), "--chaos", "all", "--faults", "5", "--workers", "2",
                "--kafka-nodes", "3", "--session-timeout-ms", "3000", "--duration", "60", "--rate", "2000",
                "--accounts", "--creators", "200", "--senders", "10000", "--drain-timeout", "180", "--out", str(out),
                "--quiet", timeout=600)
    report = json.loads((out / "report.json").read_text()) if (out / "report.json").exists() else {}
    assert r.returncode == 0, f"{r.stderr[-4000:]}\n{json.dumps(report.get('verification'), indent=1)}"
    chaos = report["chaos"]
    assert sorted(chaos["by_kind"]) == sorted(k.value for k in ALL_KINDS)
    broker = next(f for f in chaos["faults"] if f["kind"] == "broker-kill")
    assert broker["details"]["led"] >= 2  # two of six gifts partitions at least, on three brokers
    assert chaos["healed"] == 5 and not chaos["unexpected_exits"] and report["verification"]["passed"]
    asyncio.run(delete_topics(WorkerConfig(bootstrap_servers=cluster.bootstrap, topics=topics)))
