"""The worker's commit and recovery paths without a broker (tests/support/fake_kafka.py behind
stream.kafka.clients): what a failed commit, a fence, a failing restore and a backwards position lead to. The
same paths run against the real broker in tests/integration/test_kafka_worker.py and test_kafka_faults.py."""

from __future__ import annotations

import asyncio
import time
from collections import Counter

import pytest
from aiokafka import TopicPartition
from aiokafka import errors as Errors

from stream.config import WorkerConfig
from stream.engine import model
from stream.engine.policy import load_policy
from stream.engine.reference import Outputs
from stream.kafka.routing import partition_for
from stream.runtime.task import TaskCorrupted, TaskState
from stream.runtime.worker import Worker
from tests.support.events import T0, gift
from tests.support.fake_kafka import FakeClients, FakeCluster

PARTITIONS = 2


def creators_of(partition: int, n: int) -> list[str]:
    """n creator ids that Kafka's default partitioner puts on `partition`."""
    found, i = [], 0
    while len(found) < n:
        cid = f"c{i}"
        if partition_for(cid.encode(), PARTITIONS) == partition:
            found.append(cid)
        i += 1
    return found


def feed(cluster: FakeCluster, cfg: WorkerConfig, count: int, start: int = 0) -> None:
    """`count` plain 2,500-coin gifts (each one crosses the US threshold of a fresh creator) per partition."""
    for p in range(PARTITIONS):
        for i, cid in enumerate(creators_of(p, start + count)[start:]):
            cluster.append(cfg.topics.gifts, p, cid.encode(),
                           gift(event_id=f"e{p}-{start + i}", creator_id=cid, diamond_count=2_500, ts=T0 + i))


async def run_until(worker: Worker, condition, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.01)


def notices(cluster: FakeCluster, cfg: WorkerConfig) -> list[str]:
    return [model.decode_notice(m.value).notice_id for (tp, log) in cluster.logs.items()
            if tp.topic == cfg.topics.notices for m in log if not m.control]


def drained(cluster: FakeCluster, cfg: WorkerConfig) -> bool:
    return all(cluster.offsets.get(TopicPartition(cfg.topics.gifts, p)) == len(cluster.log(cfg.topics.gifts, p))
               for p in range(PARTITIONS))


@pytest.fixture
def cfg() -> WorkerConfig:
    return WorkerConfig(columnar_fetch=False, batch_max_ms=10, group_id="g")


async def start(cfg: WorkerConfig, cluster: FakeCluster) -> tuple[Worker, FakeClients, asyncio.Task]:
    clients = FakeClients(cfg, cluster)
    worker = Worker(cfg, load_policy(), clients=clients)
    return worker, clients, asyncio.create_task(worker.run())


async def stop(worker: Worker, run: asyncio.Task) -> None:
    worker.stop()
    await asyncio.wait_for(run, 10)


async def drain_once(cfg: WorkerConfig, cluster: FakeCluster) -> Worker:
    """Start a worker, run it until every gift is committed, stop it."""
    worker, _, run = await start(cfg, cluster)
    await run_until(worker, lambda: drained(cluster, cfg))
    await stop(worker, run)
    return worker


def assert_each_notice_once(cluster: FakeCluster, cfg: WorkerConfig, per_partition: int) -> None:
    """Every creator fed (feed()) has its one notice, exactly once."""
    assert Counter(notices(cluster, cfg)) == Counter(f"pn-{c}-1" for p in range(PARTITIONS)
                                                     for c in creators_of(p, per_partition))


async def test_batches_commit_outputs_and_positions_together(cfg):
    cluster = FakeCluster(PARTITIONS)
    feed(cluster, cfg, 3)
    worker, _, run = await start(cfg, cluster)
    await run_until(worker, lambda: drained(cluster, cfg))
    await stop(worker, run)
    assert sorted(notices(cluster, cfg)) == sorted(f"pn-{c}-1" for p in range(PARTITIONS) for c in creators_of(p, 3))


async def test_a_fenced_commit_gives_every_partition_up_and_rejoins_and_never_restores_on_its_own(cfg):
    """ProducerFenced means another member owns the partition: the worker closes every task and subscribes
    again; no producer of the fenced partition is started (which would fence the owner) before the group
    assigns it again."""
    cluster = FakeCluster(PARTITIONS)
    worker, clients, run = await start(cfg, cluster)
    await run_until(worker, lambda: worker.ready and len(worker.tasks) == PARTITIONS)
    txn0 = clients.transactional_id(0)
    cluster.fence(txn0)  # another member's producer for partition 0
    cluster.events.clear()
    feed(cluster, cfg, 2)
    await run_until(worker, lambda: "unsubscribe" in cluster.events and worker.ready and worker.tasks)
    await run_until(worker, lambda: drained(cluster, cfg))
    await stop(worker, run)
    events = cluster.events
    fenced_restart = events.index(f"producer start {txn0}")
    assert events.index("unsubscribe") < events.index("subscribe") < events.index("assigned") < fenced_restart
    assert f"abort {txn0}" not in events  # a fenced producer is not asked to abort
    assert Counter(notices(cluster, cfg)) == Counter(f"pn-{c}-1" for p in range(PARTITIONS)
                                                     for c in creators_of(p, 2))  # each exactly once


async def test_a_failed_commit_restores_a_new_task_from_the_last_commit(cfg):
    """Any other commit failure leaves the engine ahead of the commit: the task is dropped, a new one restores
    the state and positions of the last commit, and the batch is read and committed again, exactly once."""
    cluster = FakeCluster(PARTITIONS)
    feed(cluster, cfg, 2)
    worker, _, run = await start(cfg, cluster)
    await run_until(worker, lambda: drained(cluster, cfg))
    first = dict(worker.tasks)
    cluster.fail_commits.append(Errors.KafkaTimeoutError())
    feed(cluster, cfg, 2, start=2)
    await run_until(worker, lambda: drained(cluster, cfg) and worker.ready)
    replaced = [p for p in first if worker.tasks.get(p) is not first[p]]
    await stop(worker, run)
    assert len(replaced) == 1  # the partition whose commit failed, and only it
    assert Counter(notices(cluster, cfg)) == Counter(f"pn-{c}-1" for p in range(PARTITIONS)
                                                     for c in creators_of(p, 4))


async def test_a_failing_restore_is_reported_retried_and_never_polled(cfg):
    cluster = FakeCluster(PARTITIONS, missing_topics={cfg.topics.late})
    feed(cluster, cfg, 2)
    worker, _, run = await start(cfg, cluster)
    await run_until(worker, lambda: len(worker.tasks) == PARTITIONS
                    and all(t.progress.last_error for t in worker.tasks.values()))
    health = worker.health()
    assert not health.ready and all(t["state"] == "restoring" for t in health.partitions.values())
    assert "output topics do not exist" in health.reasons[0]
    assert worker.metrics.events_in._value.get() == 0 and cluster.offsets == {}
    cluster.missing_topics.clear()
    await run_until(worker, lambda: drained(cluster, cfg), timeout=15)  # the retry (after ~1 s) succeeds
    assert worker.health().ready
    await stop(worker, run)


async def test_a_restore_of_a_member_the_group_no_longer_knows_fences_nobody(cfg):
    """confirm_membership says no (a process woken after the session timeout): no producer starts, the worker
    rejoins instead."""
    cluster = FakeCluster(PARTITIONS, members=False)
    worker, _, run = await start(cfg, cluster)
    await run_until(worker, lambda: cluster.events.count("subscribe") >= 2)
    assert not any(e.startswith("producer start") for e in cluster.events)
    cluster.members = True
    await run_until(worker, lambda: worker.ready and len(worker.tasks) == PARTITIONS)
    await stop(worker, run)


async def test_a_commit_never_moves_a_position_backwards(cfg):
    cluster = FakeCluster(PARTITIONS)
    feed(cluster, cfg, 3)
    worker, _, run = await start(cfg, cluster)
    await run_until(worker, lambda: drained(cluster, cfg))
    task = worker.tasks[0]
    assert task.state is TaskState.RUNNING
    with pytest.raises(TaskCorrupted, match="behind the committed"):
        await task.commit(Outputs(), [], {TopicPartition(cfg.topics.gifts, 0): 1})
    await stop(worker, run)


def restores(worker: Worker) -> dict[str, float]:
    """giftstream_restores by source."""
    return {s.labels["source"]: s.value for m in worker.metrics.restores.collect() for s in m.samples
            if s.name.endswith("_total")}


def rebalance(worker: Worker) -> None:
    """As if the group rebalanced: everything revoked, then assigned again (aiokafka's eager protocol)."""
    worker._consumer.rebalance()


async def test_a_partition_handed_back_unchanged_keeps_its_state(cfg):
    """Keep what comes back: a rebalance that gives the worker its partitions again, with nobody having written
    their changelog in between, runs on the state it had; no changelog record is read."""
    cluster = FakeCluster(PARTITIONS)
    feed(cluster, cfg, 2)
    worker, _, run = await start(cfg, cluster)
    await run_until(worker, lambda: drained(cluster, cfg) and worker.ready)
    engines = {p: t.engine for p, t in worker.tasks.items()}
    rebalance(worker)
    await run_until(worker, lambda: worker.ready and sum(restores(worker).values()) == 2 * PARTITIONS)
    assert restores(worker) == {"changelog": PARTITIONS, "kept": PARTITIONS}
    assert {p: t.engine for p, t in worker.tasks.items()} == engines  # the very same state
    assert all(t.progress.changelog_read == 0 for t in worker.tasks.values())
    feed(cluster, cfg, 2, start=2)
    await run_until(worker, lambda: drained(cluster, cfg))
    await stop(worker, run)
    assert_each_notice_once(cluster, cfg, 4)


async def test_a_partition_whose_changelog_moved_while_away_is_restored(cfg):
    """Another owner wrote the changelog in between: the kept state is stale and the changelog decides."""
    cluster = FakeCluster(PARTITIONS)
    feed(cluster, cfg, 2)
    worker, _, run = await start(cfg, cluster)
    await run_until(worker, lambda: drained(cluster, cfg) and worker.ready)
    async with worker._lock:  # between batches: as if another member owned partition 0 for one transaction
        rebalance(worker)
        cluster.append(cfg.topics.changelog, 0, b"m", b"\x92\xc0\xc0")
        cluster.append(cfg.topics.changelog, 0, None, None, control=True)
    await run_until(worker, lambda: worker.ready and sum(restores(worker).values()) == 2 * PARTITIONS)
    await stop(worker, run)
    assert restores(worker) == {"changelog": PARTITIONS + 1, "kept": 1}


async def test_a_restart_loads_its_checkpoints_and_reads_only_the_changelogs_tail(cfg, tmp_path):
    cfg.state_dir = str(tmp_path)
    cluster = FakeCluster(PARTITIONS)
    feed(cluster, cfg, 3)
    await drain_once(cfg, cluster)  # a clean stop writes every partition's checkpoint
    assert sorted(f.name for f in (tmp_path / "g").iterdir()) == [f"{cfg.topics.changelog}-{p}.checkpoint"
                                                                 for p in range(PARTITIONS)]
    feed(cluster, cfg, 2, start=3)
    worker = await drain_once(cfg, cluster)
    assert restores(worker) == {"checkpoint": PARTITIONS}
    assert_each_notice_once(cluster, cfg, 5)  # exactly once across restarts


@pytest.mark.parametrize("damage", ["flip a body byte", "cut", "header cut", "another format", "another partition's",
                                    "ahead of the changelog"])
async def test_a_checkpoint_that_cannot_be_trusted_falls_back_to_the_changelog(cfg, tmp_path, damage):
    cfg.state_dir = str(tmp_path)
    cluster = FakeCluster(PARTITIONS)
    feed(cluster, cfg, 3)
    worker = await drain_once(cfg, cluster)
    path = tmp_path / "g" / f"{cfg.topics.changelog}-0.checkpoint"
    data = path.read_bytes()
    if damage == "flip a body byte":
        path.write_bytes(data[:-5] + bytes([data[-5] ^ 1]) + data[-4:])
    elif damage == "cut":
        path.write_bytes(data[:-10])
    elif damage == "header cut":
        path.write_bytes(data[:data.index(b"\n") + 30])
    elif damage == "another format":
        path.write_bytes(b"GIFTSTREAM-CHECKPOINT 0\n" + data[data.index(b"\n") + 1:])
    elif damage == "another partition's":
        path.write_bytes((tmp_path / "g" / f"{cfg.topics.changelog}-1.checkpoint").read_bytes())
    else:  # the changelog was made again, shorter: the checkpoint's offset is past its end
        del cluster.log(cfg.topics.changelog, 0)[5:]
    feed(cluster, cfg, 2, start=3)
    worker, _, run = await start(cfg, cluster)
    await run_until(worker, lambda: drained(cluster, cfg) and worker.ready)
    await stop(worker, run)
    assert restores(worker) == {"changelog": 1, "checkpoint": 1}
    refused = {s.labels["reason"] for m in worker.metrics.checkpoints_refused.collect() for s in m.samples
               if s.name.endswith("_total")}
    assert refused == {"outside_changelog" if damage == "ahead of the changelog" else "corrupt"}


async def test_checkpoints_taken_while_batches_flow_never_race_the_engine(cfg, tmp_path):
    """A checkpoint body is taken in a thread; the partition's next batch waits for it (the other partitions
    do not). With a checkpoint due at every turn, every batch still commits once and a restart from the last
    checkpoints is exact."""
    cfg.state_dir, cfg.checkpoint_interval_ms = str(tmp_path), 0
    cluster = FakeCluster(PARTITIONS)
    worker, _, run = await start(cfg, cluster)
    for batch in range(6):
        feed(cluster, cfg, 2, start=2 * batch)
        await run_until(worker, lambda: drained(cluster, cfg))
    await stop(worker, run)
    assert worker.metrics.checkpoints_written._value.get() >= PARTITIONS * 3
    feed(cluster, cfg, 2, start=12)
    worker = await drain_once(cfg, cluster)
    assert restores(worker) == {"checkpoint": PARTITIONS}
    assert_each_notice_once(cluster, cfg, 14)


async def test_a_fenced_batch_revoked_before_the_rejoin_is_not_kept(cfg, tmp_path):
    """A fenced commit leaves the task RUNNING with its engine ahead of the commit until the worker rejoins.
    If the group's revocation takes the lock first (it waits on the batch's lock too), that engine must not be
    kept, nor checkpointed: the batch is read again and its notices come out exactly once."""
    cfg.state_dir, cfg.checkpoint_interval_ms = str(tmp_path), 0
    cluster = FakeCluster(PARTITIONS)
    feed(cluster, cfg, 2)
    worker, _, run = await start(cfg, cluster)
    await run_until(worker, lambda: drained(cluster, cfg) and worker.ready)
    rejoin = worker._rejoin

    async def revoked_first() -> None:  # the revocation wins the lock, then the worker rejoins
        await worker._on_revoked(worker._consumer.assignment())
        await rejoin()

    worker._rejoin = revoked_first
    cluster.fail_commits.append(Errors.ProducerFenced())
    feed(cluster, cfg, 2, start=2)
    await run_until(worker, lambda: drained(cluster, cfg) and worker.ready and "unsubscribe" in cluster.events)
    await stop(worker, run)
    assert_each_notice_once(cluster, cfg, 4)
