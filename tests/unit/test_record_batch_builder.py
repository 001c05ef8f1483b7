"""stream._native.RecordBatchBuilder (the worker's changelog batches) against aiokafka's own builder and reader."""

from __future__ import annotations

import pytest
from aiokafka.record.default_records import DefaultRecordBatch, DefaultRecordBatchBuilder
from hypothesis import given, settings
from hypothesis import strategies as st

from stream.engine.native import native_available

pytestmark = pytest.mark.skipif(not native_available(), reason="native engine not built")

RECORDS = st.lists(st.tuples(st.one_of(st.none(), st.binary(max_size=40)),  # key
                             st.one_of(st.none(), st.binary(max_size=400))),  # value
                   min_size=1, max_size=60)


@settings(max_examples=200, deadline=None)
@given(records=RECORDS, transactional=st.booleans(), producer=st.tuples(st.integers(-1, 2**40), st.integers(-1, 300),
                                                                          st.integers(-1, 2**30)))
def test_native_batch_is_byte_identical_to_aiokafkas(records, transactional, producer):
    from stream._native import RecordBatchBuilder

    ts = 1_764_000_000_123
    theirs = DefaultRecordBatchBuilder(magic=2, compression_type=0, is_transactional=transactional,
                                       producer_id=-1, producer_epoch=-1, base_sequence=-1, batch_size=1 << 24)
    mine = RecordBatchBuilder(1 << 24, transactional, ts)
    for i, (key, value) in enumerate(records):
        assert theirs.append(i, timestamp=ts, key=key, value=value, headers=[]) is not None
        assert mine.add(key, value)
    theirs.set_producer_state(*producer)
    mine._set_producer_state(*producer)
    built = mine._build()
    assert built == bytes(theirs.build())
    batch = DefaultRecordBatch(built)
    assert batch.validate_crc()
    assert [(r.offset, r.key, r.value) for r in batch] == [(i, k, v) for i, (k, v) in enumerate(records)]
    assert mine.record_count() == len(records) and mine.closed()


def test_a_full_batch_refuses_records_and_aiokafka_cannot_append_to_it():
    from stream._native import RecordBatchBuilder

    b = RecordBatchBuilder(200, False, 0)
    assert b.add(b"k", b"x" * 150)  # the first record always fits
    assert not b.add(b"k", b"y" * 10) and b.closed() and b.record_count() == 1
    # aiokafka's accumulator calls append() only to add a producer.send() record to a queued batch
    assert b.append(timestamp=None, key=b"k", value=b"v", headers=[]) is None
    assert b.size() == len(b._build())


def test_a_batch_filled_ahead_is_stamped_when_sent():
    from stream._native import RecordBatchBuilder

    early, late = 1_764_000_000_000, 1_764_000_090_500
    theirs = DefaultRecordBatchBuilder(magic=2, compression_type=0, is_transactional=False, producer_id=-1,
                                       producer_epoch=-1, base_sequence=-1, batch_size=1 << 24)
    mine = RecordBatchBuilder(1 << 20, False, early, capacity=0)  # reserves nothing: grows as it fills
    for i in range(5):
        theirs.append(i, timestamp=late, key=b"k", value=b"v%d" % i, headers=[])
        assert mine.add(b"k", b"v%d" % i)
    mine.set_timestamp(late)
    built = mine._build()
    assert built == bytes(theirs.build())
    assert [r.timestamp for r in DefaultRecordBatch(built)] == [late] * 5
    with pytest.raises(ValueError):
        mine.set_timestamp(early)  # its bytes (and CRC) are fixed once built
