"""`giftstream record` and `giftstream replay` (offline and `--to-kafka`) on a real broker: a live run over hostile
traffic on all three inputs, recorded, replays offline to every output topic's bytes, dead letters included; a
recording produced again puts every record back where it was; --speed paces by event time."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from dataclasses import replace

import orjson
import pytest
from aiokafka import AIOKafkaProducer

from stream.cli import _default_session
from stream.config import WorkerConfig
from stream.engine import model
from stream.engine.order import Input
from stream.kafka.recording import read_recording
from stream.kafka.routing import PartitionCache
from stream.kafka.session_files import read_session, write_session
from stream.kafka.session_io import read_topic
from stream.kafka.topics import create_topics, delete_topics, input_topics
from tests.support.events import T0
from tests.support.kafka_checks import PARTITIONS, run_until_drained
from tests.support.processes import BOOTSTRAP, run_cli, unique_topics, write_config

pytestmark = pytest.mark.kafka

OUTPUTS = {"payout-notices": "notices", "creator-window-totals": "window_totals", "gifts-late": "late",
           "gifts-dlq": "dlq"}


def gift(i: int, creator: str, coins: int, ts: int, **extra) -> bytes:
    return orjson.dumps({"event_id": f"e{i}", "room_id": "r", "creator_id": creator, "sender_id": "s", "gift_id": 1,
                         "gift_type": 2, "diamond_count": coins, "repeat_count": 1, "repeat_end": False, "ts": ts,
                         "region": "US", **extra})


def hostile_traffic() -> dict[Input, list[tuple[int | None, bytes | None, bytes | None, int | None, list]]]:
    """Per input: (partition or None for the key's, key, value, Kafka timestamp or None, headers). What a plain
    session file loses: empty and null values, newlines inside values, bytes that are not UTF-8, keys that differ
    from the creator, a record on another partition than its creator's, headers, gaps in offsets."""
    owners = PartitionCache(PARTITIONS)
    creators = [f"c{k}" for k in range(8)]
    of = {c: owners[c.encode()] for c in creators}
    elsewhere = next(c for c in creators if of[c] != 0)
    gifts = []
    for i in range(40):
        c = creators[i % len(creators)]
        gifts.append((None, c.encode(), gift(i, c, 700, T0 + 1000 * i), None, [("trace", f"t{i}".encode())]))
    gifts += [
        (None, b"c0", gift(0, "c0", 700, T0), None, []),  # a resend: a duplicate
        (None, b"c1", gift(100, "c1", 700, T0 + 5000).replace(b'"sender_id":"s"', b'"sender_id":"s\nx"'), None,
         []),  # a raw newline inside a string: not JSON (a session file made it a space: a valid gift)
        (None, b"c2", gift(101, "c2", 900, T0 + 6000).replace(b",", b",\n"), None, []),  # newlines between fields
        (None, b"c3", b"", None, []),  # empty
        (None, b"c3", None, None, [("why", None)]),  # null, a header without a value
        (None, b"c4", b'{"event_id": "\xff\xfe"}', None, []),  # not UTF-8
        (0, elsewhere.encode(), gift(102, elsewhere, 5000, T0 + 7000), None, []),  # on another partition
        (0, None, gift(103, "c5", 800, T0 + 8000), None, []),  # keyless, on partition 0
        (None, b"c6", gift(104, "c6", 800, T0 - 3_600_000), None, []),  # an hour behind: late
        (None, b"c7", gift(105, "c7", 800, T0 + 10 * 3_600_000), None, []),  # ten hours ahead: too far
    ]
    payouts = [
        (None, b"c0", orjson.dumps({"payout_id": "p0", "creator_id": "c0", "milli_diamonds": 1_000_000,
                                    "ts": T0 + 20_000}), None, []),
        (None, b"c1", orjson.dumps({"payout_id": "p1", "creator_id": "c1", "milli_diamonds": 10**12,
                                    "ts": T0 + 20_000}), None, []),  # exceeds the balance
        (None, b"c2", b"{\n}", None, []),
        (None, b"c2", b"", None, []),
    ]
    account = {"region": "US", "account_status": "verified", "payout_method": "paypal", "age": 30,
               "updated_ts": T0 + 100}
    accounts = [
        (None, b"c0", orjson.dumps({"creator_id": "c0", **account}), None, []),
        (None, b"c1", orjson.dumps({"creator_id": "c1", **account, "account_status": "suspended"}), None, []),
        (None, b"c2", orjson.dumps({"creator_id": "c2", **account, "payout_method": "bank"}), None, []),
        (None, b"c2", None, T0 + 30_000, []),  # a tombstone: closed
        (None, b"c3", orjson.dumps({"creator_id": "c3", **account, "account_status": "nobody"}), None, []),
        (None, b"c4", orjson.dumps({"creator_id": "not-c4", **account}), None, []),  # the key disagrees
    ]
    return {Input.GIFTS: gifts, Input.PAYOUTS: payouts, Input.ACCOUNTS: accounts}


async def produce(cfg: WorkerConfig, traffic) -> None:
    """Transactionally, with an aborted transaction in between: the read_committed offsets have gaps."""
    topic = input_topics(cfg.topics)
    owners = PartitionCache(PARTITIONS)
    async with AIOKafkaProducer(bootstrap_servers=cfg.bootstrap_servers, transactional_id=f"{cfg.group_id}-feed",
                                acks="all") as producer:
        for kind, records in traffic.items():
            for n, (p, key, value, ts, headers) in enumerate(records):
                partition = p if p is not None else (owners[key] if key else 0)
                if n == len(records) // 2:
                    await producer.begin_transaction()
                    await producer.send(topic[kind], b'{"aborted": true}', key=key, partition=partition)
                    await producer.abort_transaction()
                async with producer.transaction():
                    await producer.send(topic[kind], value, key=key, headers=headers, timestamp_ms=ts,
                                        partition=partition)


async def live_outputs(cfg: WorkerConfig) -> dict[str, Counter]:
    t = cfg.topics
    return {name: Counter(m.value for ms in (await read_topic(cfg, getattr(t, attr))).values() for m in ms)
            for name, attr in OUTPUTS.items()}


async def test_a_live_run_over_hostile_traffic_replays_from_its_recording_to_every_output_byte_for_byte(
        cfg, tmp_path):
    # Seen with the session files: the live run made 94 dead letters and 338 window totals, the replay of its
    # recording 90 and 330, and a notice's balance differed (empty and null values vanished, a newline inside a
    # value became a space, records were routed by creator_id, not placed on the partition they were on).
    await produce(cfg, hostile_traffic())
    await run_until_drained(cfg)
    live = await live_outputs(cfg)
    config = write_config(tmp_path / "w.toml", cfg.topics, bootstrap_servers=BOOTSTRAP, group_id=cfg.group_id)
    recording = tmp_path / "session.rec.jsonl.gz"
    done = run_cli("record", str(recording), "--quiet", "--config", str(config))
    assert done.returncode == 0, done.stderr
    replayed = run_cli("replay", str(recording), "--quiet", "--out", str(tmp_path / "out"))
    assert replayed.returncode == 0, replayed.stderr
    offline = {name: Counter(read_session(tmp_path / "out" / f"{name}.jsonl")) for name in OUTPUTS}
    for name in OUTPUTS:
        assert offline[name] == live[name], (name, sorted((offline[name] - live[name]).elements())[:3],
                                             sorted((live[name] - offline[name]).elements())[:3])
    # The traffic was hostile as meant: what a session file lost is in the dead letters, named by offset.
    reasons = Counter(model.decode_dead_letter(d).reason for d in live["gifts-dlq"].elements())
    assert reasons[model.WRONG_PARTITION] >= 1 and reasons[model.NOT_JSON] >= 4, reasons
    assert sum(live["payout-notices"].values()) >= 3 and sum(live["gifts-late"].values()) == 1
    rec = read_recording(recording)
    assert rec.complete and rec.partitions() == PARTITIONS
    values = [v for log in rec.logs.values() for v in log.values]
    assert None in values and b"" in values and b"aborted" not in b"".join(v or b"" for v in values)
    gaps = [o for log in rec.logs.values() for a, o in zip(log.offsets, log.offsets[1:], strict=False) if o > a + 1]
    assert gaps  # the transactions' markers


async def test_a_recording_produced_again_puts_every_record_where_it_was(cfg, tmp_path):
    await produce(cfg, hostile_traffic())
    config = write_config(tmp_path / "w.toml", cfg.topics, bootstrap_servers=BOOTSTRAP, group_id=cfg.group_id)
    recording = tmp_path / "session.rec.jsonl"
    assert run_cli("record", str(recording), "--quiet", "--config", str(config)).returncode == 0
    _, fresh = unique_topics("again")
    again = replace(cfg, topics=fresh)
    await create_topics(again, PARTITIONS)
    try:
        config2 = write_config(tmp_path / "w2.toml", fresh, bootstrap_servers=BOOTSTRAP)
        sent = run_cli("replay", str(recording), "--to-kafka", "--quiet", "--config", str(config2))
        assert sent.returncode == 0, sent.stderr
        rec = read_recording(recording)
        for kind, topic in ((Input.GIFTS, fresh.gifts), (Input.PAYOUTS, fresh.payouts),
                            (Input.ACCOUNTS, fresh.accounts)):
            back = await read_topic(again, topic)
            for p, msgs in back.items():
                log = rec.logs.get((kind, p))
                want = [] if log is None else list(zip(log.keys, log.values, log.timestamps,
                                                       [list(h) for h in log.headers], strict=True))
                assert [(m.key, m.value, m.timestamp, list(m.headers)) for m in msgs] == want, (kind, p)
    finally:
        await delete_topics(again)


async def test_record_takes_a_time_range_or_an_offset_range(cfg, tmp_path):
    owners = PartitionCache(PARTITIONS)
    creator = next(f"c{k}" for k in range(99) if owners[f"c{k}".encode()] == 0)
    async with AIOKafkaProducer(bootstrap_servers=cfg.bootstrap_servers, acks="all") as producer:
        for i in range(10):  # Kafka timestamps T0, T0 + 1 s, ...
            await producer.send_and_wait(cfg.topics.gifts, gift(i, creator, 700, T0 + 1000 * i),
                                         key=creator.encode(), partition=0, timestamp_ms=T0 + 1000 * i)
        await producer.send_and_wait(cfg.topics.accounts, b"{}", key=creator.encode(), partition=0,
                                     timestamp_ms=T0)  # before the range: a table is recorded whole
    config = write_config(tmp_path / "w.toml", cfg.topics, bootstrap_servers=BOOTSTRAP, group_id=cfg.group_id)

    def recorded(*args: str) -> dict[tuple[Input, int], list[int]]:
        done = run_cli("record", str(tmp_path / "r.jsonl"), "--quiet", "--config", str(config), *args)
        assert done.returncode == 0, done.stderr
        return {k: log.offsets for k, log in read_recording(tmp_path / "r.jsonl").logs.items()}

    iso = "2025-11-24T16:00:03"  # T0 + 3 s
    assert recorded("--since", iso, "--until", str(T0 + 7000)) == {(Input.GIFTS, 0): [3, 4, 5, 6],
                                                                   (Input.ACCOUNTS, 0): [0]}
    assert recorded("--offsets", "gifts:0=2..4", "--offsets", "creator-accounts:0=1..") == {
        (Input.GIFTS, 0): [2, 3]}
    assert recorded("--offsets", "gifts:0=8..") == {(Input.GIFTS, 0): [8, 9], (Input.ACCOUNTS, 0): [0]}
    bad = run_cli("record", str(tmp_path / "r.jsonl"), "--config", str(config), "--offsets", "gift:0=1..2")
    assert bad.returncode != 0 and "INPUT:PARTITION=FIRST..END" in bad.stderr


def test_a_plain_session_file_still_round_trips_through_a_topic(tmp_path):
    _, topics = unique_topics("plain")
    path = write_config(tmp_path / "w.toml", topics, bootstrap_servers=BOOTSTRAP)
    assert run_cli("topics", "create", "--partitions", "3", "--config", str(path)).returncode == 0
    try:
        original = read_session(_default_session())
        sent = run_cli("replay", "--to-kafka", "--quiet", "--config", str(path))
        assert sent.returncode == 0, sent.stderr
        out = tmp_path / "recorded.jsonl.gz"
        assert run_cli("record", str(out), "--quiet", "--config", str(path)).returncode == 0
        rec = read_recording(out)
        gifts = [v for (kind, _), log in rec.logs.items() if kind is Input.GIFTS for v in log.values]
        assert sorted(gifts) == sorted(original)  # every record, byte for byte
    finally:
        asyncio.run(delete_topics(WorkerConfig(bootstrap_servers=BOOTSTRAP, topics=topics)))


def test_speed_paces_production_by_event_time(tmp_path):
    _, topics = unique_topics("speed")
    path = write_config(tmp_path / "w.toml", topics, bootstrap_servers=BOOTSTRAP)
    assert run_cli("topics", "create", "--partitions", "3", "--config", str(path)).returncode == 0
    try:
        records = read_session(_default_session())[:400]  # ~4 minutes of event time
        times = [e.ts for e in map(model.decode_event, records) if type(e) is model.GiftEvent]
        span_s = (max(times) - times[0]) / 1000  # pacing follows event time from the first record on
        session = tmp_path / "short.jsonl"
        write_session(session, records)
        started = time.monotonic()
        sent = run_cli("replay", str(session), "--to-kafka", "--speed", "100", "--quiet", "--config", str(path))
        elapsed = time.monotonic() - started
        assert sent.returncode == 0, sent.stderr
        assert span_s / 100 * 0.7 <= elapsed, (span_s, elapsed)  # paced, not as fast as possible
    finally:
        asyncio.run(delete_topics(WorkerConfig(bootstrap_servers=BOOTSTRAP, topics=topics)))
