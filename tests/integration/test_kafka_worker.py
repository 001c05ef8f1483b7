"""The worker against the real local broker (make kafka-up): exact totals, identical notices to the
offline replay, a rebalance mid-stream, SIGKILL at random points, poison records."""

from __future__ import annotations

import asyncio
import base64
import logging
import random
import signal
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import orjson
import pytest
from aiokafka import AIOKafkaProducer

from stream.config import WorkerConfig, dump_config
from stream.engine import model
from stream.engine.policy import load_policy
from stream.kafka.clients import KafkaClients
from stream.kafka.session_io import produce_session, read_topic
from stream.runtime.worker import Worker
from stream.state.changelog import restore_state
from tests.support.events import gift
from tests.support.kafka_checks import (
    PARTITIONS,
    assert_matches_offline,
    committed_lag,
    group_committed,
    run_worker_through,
    session,
    wait_drained,
    wait_for,
)

pytestmark = pytest.mark.kafka
ROOT = Path(__file__).resolve().parents[2]


async def test_end_to_end_totals_are_exact_and_notices_match_the_offline_replay(cfg):
    records = session(30_000, seed=11)
    await run_worker_through(cfg, records)
    await assert_matches_offline(cfg, records)


async def run_while_arriving(cfg: WorkerConfig, worker: Worker, records: list[bytes], step: int) -> None:
    """Run the worker while the records arrive `step` at a time, until it has committed them all; stop it."""
    run = asyncio.create_task(worker.run())
    for lo in range(0, len(records), step):
        await produce_session(records[lo:lo + step], cfg)
        await asyncio.sleep(0.05)
    await wait_drained(cfg)
    worker.stop()
    await run


class FlakyClients(KafkaClients):
    """Its producers' transactions fail after their outputs went out, before their offsets, at the chosen
    calls (counted over every transaction, the first one of a restore included)."""

    def __init__(self, cfg: WorkerConfig, fail_at: set[int]) -> None:
        super().__init__(cfg)
        self.fail_at, self.calls, self.failed = fail_at, 0, 0

    def transactional_producer(self, partition: int):
        producer = super().transactional_producer(partition)
        send_offsets = producer.send_offsets_to_transaction

        async def flaky(offsets, group_id):
            self.calls += 1
            if self.calls in self.fail_at:
                self.failed += 1
                raise RuntimeError("injected: the transaction fails after its outputs went out")
            return await send_offsets(offsets, group_id)

        producer.send_offsets_to_transaction = flaky
        return producer


async def test_failed_transactions_are_aborted_and_redone(cfg):
    """When a batch's transaction fails after its outputs went out, it is aborted, the partition is restored
    from its last commit and reads its records again: nothing is lost or counted twice."""
    records = session(30_000, seed=17)
    cfg = replace(cfg, batch_max_records=400)  # many small batches and transactions
    clients = FlakyClients(cfg, fail_at={9, 17, 18, 40, 41, 42})
    await run_while_arriving(cfg, Worker(cfg, load_policy(), clients=clients), records, step=3_000)
    assert clients.failed == 6  # each injected failure happened
    await assert_matches_offline(cfg, records)


async def test_no_produce_is_retried_for_a_transaction_check(cfg, caplog):
    """A transaction's outputs are delivered before its offsets are sent (Worker._commit). Sent side by side,
    some produce requests met the broker's KIP-890 check while AddOffsetsToTxn was being written: answered
    NOT_ENOUGH_REPLICAS, sent again 20-30 ms later."""
    records = session(20_000, seed=23)
    cfg = replace(cfg, batch_max_records=300)  # many small transactions
    caplog.set_level(logging.WARNING, logger="aiokafka.producer.sender")
    await run_while_arriving(cfg, Worker(cfg, load_policy()), records, step=2_000)
    retried = [r.getMessage() for r in caplog.records if "NotEnoughReplicas" in r.getMessage()]
    assert retried == []
    await assert_matches_offline(cfg, records)


async def test_a_restored_partition_commits_a_first_transaction_that_changes_nothing(cfg):
    """At assignment each partition commits its own `m` record and its position again (the first transaction
    of PartitionTask.restore): the producer's connections are open before the first batch. Restoring gives the
    same state back."""
    records = session(3_000, seed=29)
    await run_worker_through(cfg, records)  # a first worker: committed positions and a changelog
    before = await group_committed(cfg)
    changelog_before = await read_topic(cfg, cfg.topics.changelog)
    worker = Worker(cfg, load_policy())  # the next owner, with nothing new to read
    run = asyncio.create_task(worker.run())
    await wait_for(lambda: worker.ready and len(worker.tasks) == PARTITIONS, "the worker to restore")
    after = await group_committed(cfg)
    changelog_after = await read_topic(cfg, cfg.topics.changelog)
    worker.stop()
    await run
    assert after == before and len(after) == PARTITIONS
    for p in range(PARTITIONS):
        new = changelog_after[p][len(changelog_before[p]):]
        assert [m.key for m in new] == [b"m"]  # one more record: the cursor, as it was
        old_m = [m.value for m in changelog_before[p] if m.key == b"m"][-1]
        assert new[0].value == old_m
        assert restore_state((m.key, m.value) for m in changelog_after[p])[0] == \
            restore_state((m.key, m.value) for m in changelog_before[p])[0]


async def test_a_new_group_starts_from_the_log_start(cfg):
    """A fresh group's first transaction commits where it starts reading anyway: the log start."""
    worker = Worker(cfg, load_policy())
    run = asyncio.create_task(worker.run())
    await wait_for(lambda: worker.ready and len(worker.tasks) == PARTITIONS, "the worker to restore")
    assert await group_committed(cfg) == {p: 0 for p in range(PARTITIONS)}
    records = session(2_000, seed=31)
    await produce_session(records, cfg)
    await wait_drained(cfg)
    worker.stop()
    await run
    await assert_matches_offline(cfg, records)


async def test_inputs_from_a_transactional_producer_are_committed_past_their_markers(cfg):
    # Seen: a transactional producer ends each partition it writes with a commit marker; the worker committed the
    # offset after its last record, before the marker, so the group's lag stayed at 1 per partition for good
    # (and a lag-based autoscaler never saw the group caught up).
    records = session(400, seed=5)
    async with AIOKafkaProducer(bootstrap_servers=cfg.bootstrap_servers, transactional_id=f"{cfg.group_id}-tx",
                                acks="all") as producer:
        for lo in range(0, len(records), 100):
            async with producer.transaction():
                for raw in records[lo:lo + 100]:
                    await producer.send(cfg.topics.gifts, raw, key=model.decode_event(raw).creator_id.encode())
    worker = Worker(cfg, load_policy())
    run = asyncio.create_task(worker.run())
    try:
        await wait_drained(cfg, timeout=60)
        assert await committed_lag(cfg) == 0
    finally:
        worker.stop()
        await run
    await assert_matches_offline(cfg, records)


async def test_poison_records_go_to_the_dead_letter_topic_and_the_worker_keeps_going(cfg):
    good = session(2_000, seed=5)
    # The last one is near the broker's 1 MB message limit: its dead letter must still fit (raw is cut).
    poison = [b"\xff\xfe not json", b"[]", b'{"event_id": "x"}', b"", b"{" * 100, b'{"pad": "' + b"x" * 900_000 + b'"}']
    records = good[:1000] + poison + good[1000:]
    worker = await run_worker_through(cfg, records)
    dlq = [model.decode_dead_letter(m.value) for ms in (await read_topic(cfg, cfg.topics.dlq)).values() for m in ms]
    by_raw = {base64.b64decode(d.raw_b64): d for d in dlq}
    for raw in poison:
        d = by_raw[raw[:65_536]]
        assert d.reason in model.REJECT_REASONS and d.source_topic == cfg.topics.gifts
        assert d.partition == 0 and d.offset is not None  # keyless records go to partition 0
    assert worker.metrics.rejected.labels("not_json")._value.get() >= 2  # counted in metrics too
    await assert_matches_offline(cfg, records)


async def test_hostile_records_are_dead_letters_with_their_reasons_and_the_batch_goes_on(cfg):
    """Issue 11.2, .6 and .7 on the live path: a 2 KB nesting bomb raised RecursionError in decode, so the
    worker died at every start and the partitions after it in the batch starved; a repeated diamond_count
    credited its last value; an id holding U+001F merged two creators' streaks. Each is a dead letter with its
    reason, and everything around them is committed exactly as the offline replay computes it."""
    good = session(2_000, seed=7)
    bomb = b'{"x":' + b"[" * 997 + b"]" * 997 + b"}"
    twice = gift(event_id="dup-key", creator_id="c-dup", diamond_count=1)[:-1] + b',"diamond_count":9999999}'
    control = gift(event_id="ctl", room_id="a\x1fb", gift_type=1)
    expected = {bomb: "too_deep", twice: "duplicate_key", control: "invalid_value"}
    records = good[:1000] + list(expected) + good[1000:]
    await run_worker_through(cfg, records)
    dlq = [model.decode_dead_letter(m.value) for ms in (await read_topic(cfg, cfg.topics.dlq)).values() for m in ms]
    by_raw = {base64.b64decode(d.raw_b64): d.reason for d in dlq}
    assert {raw: by_raw.get(raw) for raw in expected} == expected
    await assert_matches_offline(cfg, records)


async def test_payouts_rearm_the_threshold_and_bad_payouts_are_dead_lettered(cfg):
    def gift(i: int, coins: int) -> bytes:
        return orjson.dumps({"event_id": f"e{i}", "room_id": "r", "creator_id": "c-payout", "sender_id": "s",
                             "gift_id": 1, "gift_type": 2, "diamond_count": coins, "repeat_count": 1,
                             "repeat_end": False, "ts": 1_764_000_000_000 + i, "region": "US"})

    worker = Worker(cfg, load_policy())
    run = asyncio.create_task(worker.run())
    try:
        await produce_session([gift(1, 2_500)], cfg)  # $12.50 >= the US threshold of $10
        await wait_drained(cfg)
        payout = orjson.dumps({"payout_id": "p1", "creator_id": "c-payout", "milli_diamonds": 2_000_000, "ts": 1})
        await produce_session([payout, payout, b"not a payout"], cfg, topic=cfg.topics.payouts)
        await wait_drained(cfg, topic=cfg.topics.payouts)
        await produce_session([gift(2, 1_500)], cfg)  # 500 + 1500 diamonds: crosses again
        await wait_drained(cfg)
    finally:
        worker.stop()
        await run
    notices = [model.decode_notice(m.value) for ms in (await read_topic(cfg, cfg.topics.notices)).values()
               for m in ms]
    assert [(n.notice_id, n.balance_milli_diamonds) for n in notices] == [
        ("pn-c-payout-1", 2_500_000), ("pn-c-payout-2", 2_000_000)]
    dlq = [model.decode_dead_letter(m.value) for ms in (await read_topic(cfg, cfg.topics.dlq)).values() for m in ms]
    assert [(d.reason, d.source_topic) for d in dlq] == [("not_json", cfg.topics.payouts)]


def restored_from(worker: Worker, source: str) -> float:
    """How many partitions the worker restored from `source` (kept, checkpoint, changelog)."""
    return worker.metrics.registry.get_sample_value("giftstream_restores_total", {"source": source}) or 0


async def test_two_workers_share_partitions_with_a_rebalance_mid_stream(cfg):
    """A joins, B joins (every partition is revoked; A gets some of its own back and keeps their state, the
    rest B restores), A leaves (B keeps its own and restores A's): exact throughout."""
    records = session(40_000, seed=23)
    half = len(records) // 2
    await produce_session(records[:half], cfg)
    cfg.batch_max_records = 500  # many small transactions, so the rebalance lands mid-stream
    a = Worker(cfg, load_policy(), worker_id="worker-a")
    b = Worker(cfg, load_policy(), worker_id="worker-b")
    run_a = asyncio.create_task(a.run())
    await wait_for(lambda: a.metrics.events_in._value.get() > 0, "worker a to start consuming")
    run_b = asyncio.create_task(b.run())  # joins: partitions move from a to b
    # The second half arrives over ~10 s of wall time, so traffic flows before, during and after the move.
    producing = asyncio.create_task(produce_session(records[half:], cfg, speed=2.0))
    await wait_for(lambda: a.ready and b.ready and a.tasks and b.tasks
                   and set(a.tasks) | set(b.tasks) == set(range(PARTITIONS)), "a shared assignment")
    assert not set(a.tasks) & set(b.tasks)
    await producing
    await wait_drained(cfg)
    assert 0 < b.metrics.events_in._value.get() < len(records)  # b took over part of the stream
    a.stop()
    await run_a  # a leaves: b takes everything over, restoring a's partitions from the changelog
    extra = session(500, seed=99)
    await produce_session(extra, cfg)
    await wait_for(lambda: b.ready and sorted(b.tasks) == list(range(PARTITIONS)), "b to own every partition")
    await wait_drained(cfg)
    b.stop()
    await run_b
    assert restored_from(a, "kept") >= 1 and restored_from(b, "kept") >= 1  # handed back unchanged: kept
    assert restored_from(b, "changelog") >= PARTITIONS  # its first share, then a's partitions
    await assert_matches_offline(cfg, records + extra)


def _start_worker(config_path: Path, log) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "stream.cli", "worker", "--config", str(config_path)],
                            cwd=ROOT, stdout=log, stderr=log)


async def test_worker_killed_with_sigkill_at_random_points_loses_and_duplicates_nothing(cfg, tmp_path):
    records = session(200_000, seed=31)
    await produce_session(records, cfg)
    config = tmp_path / "worker.toml"
    config.write_text(dump_config(replace(cfg, batch_max_records=200, session_timeout_ms=6000)))
    log_path = tmp_path / "worker.log"
    rng = random.Random(7)
    kills_mid_stream = 0
    total = len(records)
    with log_path.open("wb") as log:
        for round_ in range(1, 5):
            proc = _start_worker(config, log)
            # Kill only once this worker owns the partitions and is committing, at a random instant.
            await wait_for(lambda r=round_: log_path.read_bytes().count(b"partitions assigned") >= r,
                           "the worker to be assigned its partitions", timeout=60)
            before = await committed_lag(cfg)
            await asyncio.sleep(rng.uniform(0.3, 2.0))
            proc.send_signal(signal.SIGKILL)  # no chance to finish the batch or leave the group
            proc.wait(timeout=10)
            after = await committed_lag(cfg)
            if after == 0:
                break
            assert after < total and after <= before
            kills_mid_stream += 1
        assert kills_mid_stream >= 2, "the worker finished before it could be killed mid-stream"
        proc = _start_worker(config, log)
        try:
            await wait_drained(cfg, timeout=240)
            await wait_for(lambda: log_path.read_bytes().count(b"partitions assigned") > kills_mid_stream,
                           "the last worker to own its partitions")
        finally:
            proc.send_signal(signal.SIGTERM)  # drains, commits and leaves the group
            assert proc.wait(timeout=30) == 0
    await assert_matches_offline(cfg, records)
