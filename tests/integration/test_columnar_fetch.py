"""Columnar fetching (stream/kafka/columnar_fetch.py): the native record-batch reader against aiokafka's reader on
the same bytes, and (on the local broker) a columnar consumer against a plain one on the same topic,
aborted transactions, compressed batches and null values included."""

from __future__ import annotations

import asyncio
import uuid

import pytest
from aiokafka.errors import CorruptRecordException
from aiokafka.record.default_records import DefaultRecordBatchBuilder
from aiokafka.record.memory_records import MemoryRecords
from aiokafka.record.util import calc_crc32c
from hypothesis import given, settings
from hypothesis import strategies as st

from stream.kafka import columnar_fetch

pytestmark = pytest.mark.skipif(not columnar_fetch.available(), reason="native engine not built")

RECORDS = st.lists(st.tuples(st.one_of(st.none(), st.binary(max_size=20)),  # key
                             st.one_of(st.none(), st.binary(max_size=300)),  # value
                             st.integers(0, 2**41),  # timestamp
                             st.lists(st.tuples(st.text(max_size=5), st.one_of(st.none(), st.binary(max_size=5))),
                                      max_size=2)),  # headers
                   min_size=1, max_size=30)


def build_batch(base_offset: int, records, compression: int = 0, transactional: bool = False) -> bytes:
    builder = DefaultRecordBatchBuilder(magic=2, compression_type=compression, is_transactional=transactional,
                                        producer_id=7 if transactional else -1, producer_epoch=0,
                                        base_sequence=0, batch_size=1 << 24)
    for i, (key, value, ts, headers) in enumerate(records):
        builder.append(i, timestamp=ts, key=key, value=value, headers=headers)
    raw = bytearray(builder.build())
    raw[0:8] = base_offset.to_bytes(8, "big")  # the broker assigns the base offset
    return bytes(raw)


def aiokafka_columns(buf: bytes) -> list[tuple[list, list, list]]:
    out, mem = [], MemoryRecords(buf)
    while mem.has_next():
        batch = mem.next_batch()
        recs = list(batch)
        out.append(([r.offset for r in recs], [r.value for r in recs], [r.timestamp for r in recs]))
    return out


@settings(max_examples=150, deadline=None)
@given(batches=st.lists(st.tuples(RECORDS, st.sampled_from([0, 0, 1]), st.booleans()), min_size=1, max_size=4),
       cut=st.integers(0, 60))
def test_native_reader_reads_what_aiokafka_reads(batches, cut):
    buf, offset = b"", 1000
    for records, compression, transactional in batches:
        buf += build_batch(offset, records, compression, transactional)
        offset += len(records) + 3
    buf = buf[:len(buf) - cut] if cut else buf  # a fetch may end in the middle of a batch
    want = aiokafka_columns(buf)
    got = columnar_fetch._native.read_record_batches(buf)
    assert len(got) == len(want)
    for (_, compression, _), mine, theirs in zip(batches, got, want, strict=False):
        if compression:
            assert mine is None  # left to aiokafka
        else:
            assert (list(mine[0]), list(mine[1]), list(mine[2])) == theirs


def with_crc(batch: bytearray) -> bytes:
    """The batch with its CRC-32C recomputed (damage the CRC check does not see)."""
    batch[17:21] = calc_crc32c(bytes(batch[21:])).to_bytes(4, "big")
    return bytes(batch)


def test_native_reader_gives_up_on_damaged_batches():
    good = build_batch(5, [(b"k", b"v", 1, [])] * 3)
    assert columnar_fetch._native.read_record_batches(good)[0] is not None
    damaged = bytearray(good)
    damaged[61] = 0x7F  # the first record's length no longer matches its fields
    assert columnar_fetch._native.read_record_batches(with_crc(damaged)) == [None]


def test_native_reader_checks_the_crc():
    good = bytearray(build_batch(5, [(b"k", b"value", 1, [])] * 3))
    flipped = bytearray(good)
    flipped[-2] ^= 0x01  # one bit of the last record's value (its last byte is the header count)
    assert columnar_fetch._native.read_record_batches(bytes(flipped)) == [None]
    assert columnar_fetch._native.read_record_batches(with_crc(flipped))[0] is not None


@pytest.mark.parametrize("check_crcs", [True, False])
def test_a_corrupt_batch_is_reported_like_aiokafka_reports_it(check_crcs: bool):
    from aiokafka.consumer import fetcher
    from aiokafka.structs import TopicPartition

    corrupt = bytearray(build_batch(0, [(None, b"abc", 1, [])] * 3))
    corrupt[-2] ^= 0x01  # the last value: b"abc" -> b"abb"
    assert columnar_fetch.install()
    recs = fetcher.PartitionRecords(TopicPartition("t", 0), fetcher.MemoryRecords(bytes(corrupt)), [], 0, None,
                                    columnar_fetch.Columns(5), check_crcs, fetcher.READ_UNCOMMITTED)
    if check_crcs:
        with pytest.raises(CorruptRecordException):
            list(recs)
    else:  # the consumer asked not to check: aiokafka reads the batch as it is
        assert [v for chunk in recs for v in chunk.values] == [b"abc", b"abc", b"abb"]


def test_columns_of_accepts_both_shapes():
    from aiokafka.structs import ConsumerRecord

    chunk = columnar_fetch.RecordChunk("t", 0, [3, 4], [b"a", None], [10, 11])
    rec = ConsumerRecord("t", 0, 5, 12, 0, None, b"c", None, -1, 1, ())
    assert columnar_fetch.columns_of([chunk, rec]) == ([3, 4, 5], [b"a", None, b"c"], [10, 11, 12], None)
    keyed = columnar_fetch.RecordChunk("t", 0, [3], [None], [10], [b"k"])
    assert columnar_fetch.columns_of([keyed, rec], with_keys=True) == ([3, 5], [None, b"c"], [10, 12], [b"k", None])


# ------------------------------------------------------------------ on the broker

@pytest.mark.kafka
async def test_columnar_consumer_sees_exactly_what_a_plain_consumer_sees():
    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

    from stream.config import Topics, WorkerConfig
    from stream.kafka.topics import create_topics, delete_topics
    from tests.support.processes import BOOTSTRAP

    assert columnar_fetch.install()
    topic = f"columnar-{uuid.uuid4().hex[:8]}"
    cfg = WorkerConfig(bootstrap_servers=BOOTSTRAP, topics=Topics(gifts=topic, payouts=f"{topic}-p",
                                                                   notices=f"{topic}-n", window_totals=f"{topic}-w",
                                                                   late=f"{topic}-l", dlq=f"{topic}-d",
                                                                   changelog=f"{topic}-c"))
    await create_topics(cfg, 2)
    try:
        plain = AIOKafkaProducer(bootstrap_servers=BOOTSTRAP, linger_ms=50)
        gzip = AIOKafkaProducer(bootstrap_servers=BOOTSTRAP, linger_ms=50, compression_type="gzip")
        txn = AIOKafkaProducer(bootstrap_servers=BOOTSTRAP, transactional_id=f"{topic}-txn")
        for prod in (plain, gzip, txn):
            await prod.start()
        try:
            for i in range(300):
                await plain.send(topic, value=None if i % 97 == 0 else f"p{i}".encode(), key=b"k", partition=i % 2)
            await plain.flush()
            for i in range(200):
                await gzip.send(topic, value=f"z{i}".encode(), partition=i % 2)
            await gzip.flush()
            for committed in (False, True, False):
                async with txn.transaction() if committed else _aborting(txn):
                    for i in range(50):
                        await txn.send(topic, value=f"t{committed}{i}".encode(), partition=i % 2)
            for i in range(100):
                await plain.send(topic, value=f"q{i}".encode(), partition=i % 2)
            await plain.flush()
        finally:
            for prod in (plain, gzip, txn):
                await prod.stop()

        async def consume(columnar: bool, raw: bool = False) -> dict[int, list[tuple[int, bytes | None, int]]]:
            extra = {"value_deserializer": columnar_fetch.Columns(64, keys=raw, raw=raw)} if columnar else {}
            consumer = AIOKafkaConsumer(topic, bootstrap_servers=BOOTSTRAP, auto_offset_reset="earliest",
                                        isolation_level="read_committed", enable_auto_commit=False,
                                        max_partition_fetch_bytes=4096, **extra)  # many small fetches
            await consumer.start()
            seen: dict[int, list] = {0: [], 1: []}
            deadline = asyncio.get_running_loop().time() + 60
            try:
                # 300 + 200 + 50 (the committed transaction) + 100 records are visible
                while sum(map(len, seen.values())) < 650 and asyncio.get_running_loop().time() < deadline:
                    for tp, msgs in (await consumer.getmany(timeout_ms=2000, max_records=7)).items():
                        if raw:  # a raw fetch's records as RawRecords.columns gives them (no timestamps)
                            kinds.update(type(m) for m in msgs)
                            for m in msgs:
                                if type(m) is columnar_fetch.RawRecords:
                                    offsets, _, values = m.columns()
                                else:
                                    offsets, values = m.offsets, m.values
                                seen[tp.partition] += zip(offsets, values, [0] * len(offsets), strict=True)
                            continue
                        offsets, values, stamps, _ = columnar_fetch.columns_of(msgs)
                        if columnar:
                            assert all(type(m) is columnar_fetch.RecordChunk for m in msgs)
                        seen[tp.partition] += zip(offsets, values, stamps, strict=True)
            finally:
                await consumer.stop()
            return seen

        kinds: set[type] = set()
        plain_seen, columnar_seen = await consume(False), await consume(True)
        assert plain_seen == columnar_seen
        raw_seen = await consume(True, raw=True)
        assert raw_seen == {p: [(o, v, 0) for o, v, _ in recs] for p, recs in plain_seen.items()}
        # fetches of plain batches come raw; those holding a compressed batch as chunks
        assert kinds == {columnar_fetch.RawRecords, columnar_fetch.RecordChunk}
        values = {v for recs in columnar_seen.values() for _, v, _ in recs}
        assert b"tTrue0" in values and b"tFalse0" not in values  # the aborted transactions stay invisible
        assert b"z5" in values and None in values  # compressed batches; a null value (a tombstone)
    finally:
        await delete_topics(cfg)


class _aborting:
    def __init__(self, producer):
        self.producer = producer

    async def __aenter__(self):
        await self.producer.begin_transaction()

    async def __aexit__(self, *exc):
        await self.producer.abort_transaction()


def test_chunks_gather_records_across_small_batches_and_track_the_position():
    from aiokafka.consumer import fetcher
    from aiokafka.structs import TopicPartition

    # 12 batches of 3 records each (offsets 6 to 41), fetched from offset 7: a fetch starts with the batch
    # that holds the fetch offset
    buf = b"".join(build_batch(3 * i, [(None, f"v{3 * i + j}".encode(), 100 + j, []) for j in range(3)])
                   for i in range(2, 14))
    assert columnar_fetch.install()
    recs = fetcher.PartitionRecords(TopicPartition("t", 0), fetcher.MemoryRecords(buf), [], 7, None,
                                    columnar_fetch.Columns(5), True, fetcher.READ_UNCOMMITTED)
    sizes, seen = [], []
    for chunk in recs:
        sizes.append(len(chunk.offsets))
        seen += chunk.offsets
        assert recs.next_fetch_offset == chunk.offsets[-1] + 1  # where a consumer stopping here resumes
    assert seen == list(range(7, 42))
    assert sizes == [5, 5, 5, 5, 5, 5, 5]
    assert recs.next_fetch_offset == 42


def _changelog_records() -> list[tuple[bytes, bytes | None]]:
    """A small real state's changelog (the state-scale builder's offline run: creators, panes, streaks, dedupe ids)."""
    from load.state_scale import build_partition
    from stream.engine.policy import load_policy

    records, _ = build_partition(load_policy(), 0, 1, list(range(40)), seed=3, start_ts=1_796_000_000_000,
                                 gifts_topic="gifts")
    return records


def _restored(apply) -> tuple:
    """(counts, sizes, every creator) of the native state a ChangelogRestore fed by `apply` makes."""
    from stream._native import ChangelogRestore
    from stream.engine.native import make_engine
    from stream.engine.policy import load_policy

    restore = ChangelogRestore()
    apply(restore)
    applied = restore.records
    engine = make_engine(load_policy(), 0, None, "gifts", "native", partitions=1)
    engine.adopt(restore)
    return engine.counts(), engine.sizes(), [engine.creator(f"sc{i}") for i in range(40)], applied


def test_a_restore_from_raw_batches_is_the_restore_from_their_records():
    records = _changelog_records()
    batches = [build_batch(base, [(k, v, 0, []) for k, v in records[base:base + 25]])
               for base in range(0, len(records), 25)]
    raw = b"".join(batches)
    keys, values = [k for k, _ in records], [v for _, v in records]
    whole = _restored(lambda r: r.apply(keys, values))
    assert whole[2][0] is not None and whole[3] == len(records)

    def from_raw(r):
        assert r.apply_batches(raw, list(range(len(batches))), 0) == (len(records), len(records) - 1)
    assert _restored(from_raw) == whole
    # from the middle of the second batch on, with the first record of each batch seen already
    start = 37
    tail = _restored(lambda r: (r.apply(keys[:start], values[:start]),
                                r.apply_batches(raw, list(range(1, len(batches))), start)))
    assert tail == whole
    # a batch left out (an aborted transaction's) is not applied
    from stream._native import ChangelogRestore

    restore = ChangelogRestore()
    assert restore.apply_batches(raw, [0, 2], 0) == (50, 74) and restore.records == 50


def test_a_raw_batch_that_does_not_read_fails_the_apply():
    from stream._native import ChangelogRestore

    records = [(k, v, 0, []) for k, v in _changelog_records()[:30]]
    batch = bytearray(build_batch(0, records))
    batch[-3] ^= 0xFF  # the CRC no longer holds
    with pytest.raises(ValueError, match="cannot be read"):
        ChangelogRestore().apply_batches(bytes(batch), [0], 0)
    with pytest.raises(ValueError, match="no record batch 1"):
        ChangelogRestore().apply_batches(build_batch(0, records), [1], 0)
    from stream._native import readable_record_batches

    plain, gzip = build_batch(0, records), build_batch(30, [(b"k", b"v" * 100, 0, [])] * 5, compression=1)
    assert readable_record_batches(plain + gzip) == [True, False]
