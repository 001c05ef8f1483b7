"""The worker merges a partition's three inputs in one order (stream.engine.order) whatever the polls hand it, on
the fake cluster (tests/support/fake_kafka.py); tests/integration/test_kafka_accounts.py does it on the broker."""

from __future__ import annotations

import asyncio
import dataclasses
import time
import tomllib
from importlib import resources

import orjson
from aiokafka import TopicPartition

from stream.engine import model
from stream.engine.policy import load_policy, parse_policy
from stream.kafka.clients import FetchedUpTo
from stream.runtime.worker import Worker
from tests.support.events import T0, gift, payout
from tests.support.fake_kafka import FakeClients, FakeCluster
from tests.unit.test_worker_recovery import PARTITIONS, cfg, creators_of, notices, run_until, start, stop

__all__ = ["cfg"]  # the fixture


def dead_letters(cluster: FakeCluster, topic: str) -> list[model.DeadLetter]:
    return [model.decode_dead_letter(m.value) for (tp, log) in cluster.logs.items() if tp.topic == topic
            for m in log if not m.control]


def now_ms() -> int:
    return int(time.time() * 1000)


def start_answering(cfg, cluster: FakeCluster, fetched_up_to) -> tuple[Worker, asyncio.Task]:
    """A worker on the fake cluster whose consumer answers clients.fetched_up_to with fetched_up_to(tp, answer),
    answer being the fake's own (every log fetched to its end)."""
    clients = FakeClients(cfg, cluster)
    make = clients.group_consumer

    def group_consumer(*args, **kwargs):
        consumer = make(*args, **kwargs)
        answer = consumer.fetched_up_to
        consumer.fetched_up_to = lambda tp: fetched_up_to(tp, answer)
        return consumer

    clients.group_consumer = group_consumer
    worker = Worker(cfg, load_policy(), clients=clients)
    return worker, asyncio.create_task(worker.run())


def committed(cluster: FakeCluster, topic: str, p: int) -> int | None:
    return cluster.offsets.get(TopicPartition(topic, p))


async def test_a_gift_and_the_payout_of_its_money_waiting_at_start_are_applied_in_time_order(cfg):
    # Seen before the merge: the batch applied its payouts before its gifts, and the payout was dead-lettered as
    # "exceeds the balance 0".
    cluster = FakeCluster(PARTITIONS)
    cid = creators_of(0, 1)[0]
    t = cfg.topics
    cluster.append(t.gifts, 0, cid.encode(), gift(event_id="e1", creator_id=cid, diamond_count=2_500), timestamp=T0)
    cluster.append(t.payouts, 0, cid.encode(), payout("p1", cid, 2_500_000), timestamp=T0 + 1)
    worker, _, run = await start(cfg, cluster)
    await run_until(worker, lambda: committed(cluster, t.payouts, 0) == 1 and committed(cluster, t.gifts, 0) == 1)
    creator = worker.tasks[0].engine.creator(cid)
    await stop(worker, run)
    assert dead_letters(cluster, t.dlq) == []
    assert notices(cluster, cfg) == [f"pn-{cid}-1"]
    assert (creator.balance, creator.paid_out) == (0, 2_500_000)


async def test_an_account_applies_to_the_gifts_after_it_in_time_only(cfg):
    cluster = FakeCluster(PARTITIONS)
    cid = creators_of(0, 1)[0]
    t = cfg.topics
    account = orjson.dumps({"creator_id": cid, "region": "ID", "account_status": "verified", "payout_method": "bank",
                            "age": 30, "updated_ts": T0 + 10})
    # polled in the other order than their timestamps: the merge puts the US gift first, then the account, then
    # the gift it prices in ID (1/2 diamond per coin)
    cluster.append(t.accounts, 0, cid.encode(), account, timestamp=T0 + 10)
    cluster.append(t.gifts, 0, cid.encode(), gift(event_id="e1", creator_id=cid, diamond_count=100), timestamp=T0)
    cluster.append(t.gifts, 0, cid.encode(), gift(event_id="e2", creator_id=cid, diamond_count=100, ts=T0 + 20),
                   timestamp=T0 + 20)
    worker, _, run = await start(cfg, cluster)
    await run_until(worker, lambda: committed(cluster, t.gifts, 0) == 2 and committed(cluster, t.accounts, 0) == 1)
    engine = worker.tasks[0].engine
    creator, acct = engine.creator(cid), engine.account(cid)
    await stop(worker, run)
    assert (creator.balance, creator.region) == (100_000 + 50_000, "ID")
    assert acct.account_status == "verified"


async def test_records_wait_while_another_input_may_still_deliver_an_earlier_one(cfg):
    cluster = FakeCluster(PARTITIONS)
    cid = creators_of(0, 1)[0]
    t = cfg.topics
    cluster.append(t.gifts, 0, cid.encode(), gift(event_id="e1", creator_id=cid, diamond_count=2_500), timestamp=T0)
    lagging = {TopicPartition(t.payouts, 0)}  # as if a payout were on the broker, not fetched yet
    worker, run = start_answering(cfg, cluster, lambda tp, answer: FetchedUpTo(0, 1, now_ms()) if tp in lagging
                                  else answer(tp))
    await run_until(worker, lambda: 0 in worker.tasks and worker.tasks[0].has_pending())
    await asyncio.sleep(0.3)  # many polls
    assert committed(cluster, t.gifts, 0) in (None, 0)  # the gift waits (the first transaction commits 0)
    lagging.clear()
    await run_until(worker, lambda: committed(cluster, t.gifts, 0) == 1)
    await stop(worker, run)


async def test_an_input_caught_up_only_as_of_an_old_fetch_holds_the_others_back(cfg):
    # Seen in load runs with payouts flowing while the worker was starved of CPU: the gifts' last fetch had come
    # back caught up, the next one was slow to come back, and 100 ms later the merge took the gifts input for
    # exhausted; the payout went before the gift that was already on the broker and was dead-lettered as
    # "exceeds the balance". Caught up as of a fetch sent before the payout arrived says nothing about the gift.
    cluster = FakeCluster(PARTITIONS)
    cid = creators_of(0, 1)[0]
    t = cfg.topics
    cluster.append(t.payouts, 0, cid.encode(), payout("p1", cid, 2_500_000), timestamp=T0)
    gifts = TopicPartition(t.gifts, 0)
    stale = [now_ms() - 1_000]  # the gifts' last answered fetch: caught up (an empty log), sent a second ago
    worker, run = start_answering(cfg, cluster, lambda tp, answer: FetchedUpTo(0, 0, stale[0]) if tp == gifts and stale
                                  else answer(tp))
    await run_until(worker, lambda: 0 in worker.tasks and worker.tasks[0].has_pending())
    await asyncio.sleep(3 * cfg.max_task_idle_ms / 1000)  # well past max_task_idle_ms of the old fetch
    assert committed(cluster, t.payouts, 0) in (None, 0)  # the payout waits for a fresher fetch of the gifts
    # The fresher fetch: the gift that credits the money was on the broker, with the earlier time.
    cluster.append(t.gifts, 0, cid.encode(), gift(event_id="e1", creator_id=cid, diamond_count=2_500), timestamp=T0)
    stale.clear()
    await run_until(worker, lambda: committed(cluster, t.payouts, 0) == 1 and committed(cluster, t.gifts, 0) == 1)
    creator = worker.tasks[0].engine.creator(cid)
    await stop(worker, run)
    assert dead_letters(cluster, t.dlq) == []
    assert (creator.balance, creator.paid_out) == (0, 2_500_000)


async def test_a_batch_that_takes_the_last_record_waiting_leaves_the_worker_waiting_for_records(cfg):
    # Seen on the broker (test_a_woken_zombie...): a batch of exactly batch_max_records took every record waiting,
    # the task stayed `capped`, and the worker polled with timeout 0 without ever waiting: the event loop never
    # read a fetch response or sent a heartbeat, and the group expelled the worker 6 s later.
    cfg = dataclasses.replace(cfg, batch_max_records=2)
    cluster = FakeCluster(PARTITIONS)
    cid = creators_of(0, 1)[0]
    t = cfg.topics
    for i in range(2):
        cluster.append(t.gifts, 0, cid.encode(), gift(event_id=f"e{i}", creator_id=cid, diamond_count=1),
                       timestamp=T0)
    worker, _, run = await start(cfg, cluster)
    await run_until(worker, lambda: committed(cluster, t.gifts, 0) == 2)
    capped, polls = worker.tasks[0].capped, worker._poll_timeout_ms()
    await stop(worker, run)
    assert not capped and polls == cfg.batch_max_ms


def policy_without_tr():
    data = tomllib.loads(resources.files("stream.data").joinpath("policy.default.toml").read_text())
    del data["regions"]["TR"]
    return parse_policy({**data, "policy_version": "without-tr"})


async def test_a_policy_that_cannot_price_the_restored_state_is_refused_before_any_batch(cfg):
    # Seen: a worker restarted with a policy that dropped TR restored a partition holding an open TR streak, went
    # on, and died at the streak's timeout (the engine raised "a streak's region is in the policy").
    cluster = FakeCluster(PARTITIONS)
    cid, other = creators_of(0, 2)
    t = cfg.topics
    cluster.append(t.gifts, 0, cid.encode(), gift(event_id="e1", creator_id=cid, region="TR", gift_type=1,
                                                  repeat_count=3, group_id="g1"), timestamp=T0)
    worker, _, run = await start(cfg, cluster)
    await run_until(worker, lambda: committed(cluster, t.gifts, 0) == 1)
    await stop(worker, run)
    # A gift an hour later would time the streak out.
    cluster.append(t.gifts, 0, other.encode(), gift(event_id="e2", creator_id=other, ts=T0 + 3_600_000),
                   timestamp=T0 + 3_600_000)
    worker = Worker(cfg, policy_without_tr(), clients=FakeClients(cfg, cluster))
    run = asyncio.create_task(worker.run())
    await run_until(worker, lambda: run.done() or (0 in worker.tasks and worker.tasks[0].progress.last_error))
    assert not run.done()  # the worker goes on (live), the partition waits for a policy that can price it
    error, health = worker.tasks[0].progress.last_error, worker.health()
    await stop(worker, run)
    assert "open streaks priced in region 'TR', which policy without-tr does not have" in error
    assert any("partition 0" in r and "cannot be priced" in r for r in health.reasons)  # /readyz says why
    assert committed(cluster, t.gifts, 0) == 1  # nothing processed under that policy
