"""What the Kafka tests share: a test session of records, topics of a test's own, and the checks that a run
committed exactly what the offline replay computes."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import Counter

import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient

from load.generator import TrafficConfig, generate
from stream.config import Topics, WorkerConfig
from stream.engine import model
from stream.engine.policy import load_policy
from stream.kafka.session_io import committed_offsets, end_offsets, produce_session, read_topic
from stream.kafka.topics import create_topics
from stream.runtime.replay import replay
from stream.runtime.worker import Worker
from stream.state.changelog import restore_state

PARTITIONS = 4


def session(events: int, seed: int) -> list[bytes]:
    cfg = TrafficConfig(seed=seed, events=events, creators=60, senders=4_000, duplicate_rate=0.01,
                        late_rate=0.005, malformed_rate=0.003, streak_missing_end_rate=0.03)
    return list(generate(cfg))


async def topics_of_its_own(bootstrap: str, partitions: int = PARTITIONS) -> WorkerConfig:
    """A worker config whose group and topics (created, `partitions` each) no other test uses."""
    suffix = uuid.uuid4().hex[:8]
    c = WorkerConfig(bootstrap_servers=bootstrap, group_id=f"giftstream-test-{suffix}",
                     topics=Topics(**{k: f"{v}-{suffix}" for k, v in vars(Topics()).items()}))
    try:
        await create_topics(c, partitions)
    except Exception as e:  # a missing broker is a failure, not a skip: `make test` starts it
        pytest.fail(f"no Kafka broker at {bootstrap} ({e!r}); run `make kafka-up`")
    return c


async def group_committed(c: WorkerConfig, topic: str | None = None) -> dict[int, int]:
    """The group's committed offsets of an input topic (default: gifts), per partition that has one."""
    admin = AIOKafkaAdminClient(bootstrap_servers=c.bootstrap_servers)
    await admin.start()
    try:
        return await committed_offsets(admin, c.group_id, topic or c.topics.gifts)
    finally:
        await admin.close()


async def committed_lag(c: WorkerConfig, topic: str | None = None) -> int:
    """Records of an input topic (default: gifts) not yet covered by the group's committed offsets."""
    topic = topic or c.topics.gifts
    committed = await group_committed(c, topic)
    return sum(end - committed.get(p, 0) for p, end in (await end_offsets(c, topic)).items())


async def wait_drained(c: WorkerConfig, timeout: float = 120, topic: str | None = None) -> None:
    deadline = time.monotonic() + timeout
    while (lag := await committed_lag(c, topic)) > 0:
        assert time.monotonic() < deadline, f"worker did not drain: {lag} records left"
        await asyncio.sleep(0.5)


async def assert_matches_offline(c: WorkerConfig, records: list[bytes]) -> None:
    """Everything committed equals what the offline replay computes from the same records."""
    policy = load_policy()
    async with AIOKafkaProducer(bootstrap_servers=c.bootstrap_servers) as producer:
        partitions = len(await producer.partitions_for(c.topics.gifts))
    offline = replay(records, policy, partitions=partitions)
    notices = [m.value for ms in (await read_topic(c, c.topics.notices)).values() for m in ms]
    expected_notices = [model.encode(n) for n in offline.outputs.notices]
    assert sorted(notices) == sorted(expected_notices), (  # byte for byte
        f"live only: {sorted((Counter(notices) - Counter(expected_notices)).elements())[:5]}; offline only: "
        f"{sorted((Counter(expected_notices) - Counter(notices)).elements())[:5]}")
    assert len({model.decode_notice(n).notice_id for n in notices}) == len(notices)  # each exactly once
    totals = [m.value for ms in (await read_topic(c, c.topics.window_totals)).values() for m in ms]
    assert Counter(totals) == Counter(model.encode(w) for w in offline.outputs.window_totals)
    late = [m.value for ms in (await read_topic(c, c.topics.late)).values() for m in ms]
    assert Counter(late) == Counter(model.encode(g) for g in offline.outputs.late)
    dlq = [model.decode_dead_letter(m.value) for ms in (await read_topic(c, c.topics.dlq)).values() for m in ms]
    assert Counter(d.reason for d in dlq) == Counter(d.reason for d in offline.outputs.dead_letters)
    # Balances: the state restored from the changelog equals the offline engine's, creator by creator.
    changelog = await read_topic(c, c.topics.changelog)
    live = {}
    for _p, msgs in changelog.items():
        state, _ = restore_state((m.key, m.value) for m in msgs)
        live.update({cid: (s.balance, s.crossings) for cid, s in state.creators.items()})
    expected = {cid: (s.balance, s.crossings) for e in offline.engines.values()
                for cid, s in e.state.creators.items()}
    assert live == expected


async def run_worker_through(cfg: WorkerConfig, records: list[bytes]) -> Worker:
    """Produce records, run one in-process worker until they are all committed, stop it."""
    await produce_session(records, cfg)
    worker = Worker(cfg, load_policy())
    run = asyncio.create_task(worker.run())
    await wait_drained(cfg)
    worker.stop()
    await run
    return worker


async def run_until_drained(cfg: WorkerConfig) -> None:
    """Run one in-process worker until it has committed all three inputs' records, stop it."""
    worker = Worker(cfg, load_policy())
    run = asyncio.create_task(worker.run())
    try:
        for topic in (cfg.topics.gifts, cfg.topics.payouts, cfg.topics.accounts):
            await wait_drained(cfg, topic=topic)
    finally:
        worker.stop()
        await run


async def wait_for(condition, what: str, timeout: float = 60, procs: tuple = ()) -> object:
    """Poll condition() until it returns something truthy, and return that; fail after `timeout` s, or as soon as
    one of `procs` (tests/proc_helpers.Proc) has exited. An OSError (an HTTP side not up yet) counts as not yet."""
    deadline = time.monotonic() + timeout
    while True:
        for proc in procs:
            assert proc.alive(), f"{what}: a worker exited with {proc.popen.returncode}:\n{proc.output()[-3000:]}"
        try:
            result = condition()
        except OSError:
            result = None
        if result:
            return result
        assert time.monotonic() < deadline, f"timed out after {timeout:g} s waiting for {what}"
        await asyncio.sleep(0.2)
