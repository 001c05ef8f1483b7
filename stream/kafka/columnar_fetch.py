"""Columnar fetching: a consumer that hands out its fetched records as chunks of columns (offsets, values,
timestamps) instead of one ConsumerRecord object per record.

Why: in a getmany loop aiokafka spends ~2 µs of Python per record (a generator step, a dataclass, size and
header bookkeeping), more than the compiled engine spends on the record itself. Here the bytes of each
record batch are read natively (stream._native.read_record_batches), and a poll returns a few chunks.

How, and what stays aiokafka's: install() swaps two names in aiokafka.consumer.fetcher (pinned at 0.14.0):
MemoryRecords (to keep the raw bytes of the fetched record set next to aiokafka's reader) and
PartitionRecords (a subclass). Only a consumer created with value_deserializer=Columns(...) gets chunks;
every other consumer in the process is untouched. Per batch, the subclass still uses aiokafka's own batch
object for everything that decides what a reader may see: the CRC check, aborted transactions under
read_committed, control batches and the fetch position. Only the per-record loop is replaced, and only for
uncompressed v2 batches (others go through aiokafka's record iterator, as before).
tests/integration/test_columnar_fetch.py compares the two paths on the same fetches, aborted transactions and
compressed batches included.

Consequence for getmany(max_records=N): N counts chunks (each at most Columns.chunk_records records).

Raw records (Columns(raw=True), the changelog restore): a partition fetch whose batches the native reader can
all read comes out as one RawRecords, the fetch's bytes and which of its batches a reader may see (decided as
above); its consumer parses them itself (ChangelogRestore.apply_batches: no Python object per record). A fetch
with any other batch comes out as RecordChunks, as above.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass

import aiokafka
from aiokafka import errors as kafka_errors
from aiokafka.consumer import fetcher as _fetcher

try:
    from stream import _native
except ImportError:  # not built: columnar fetching is unavailable, consumers get ConsumerRecords
    _native = None

SUPPORTED_AIOKAFKA = "0.14.0"  # the fetcher internals below are this version's


class Columns:
    """The value_deserializer marker that asks for chunks; never called as a deserializer."""

    def __init__(self, chunk_records: int = 1000, keys: bool = False, keyed_topics: frozenset[str] = frozenset(),
                 raw: bool = False) -> None:
        self.chunk_records = max(1, chunk_records)
        self.keys = keys  # chunks carry the record keys too (a changelog restore needs them)
        self.keyed_topics = keyed_topics  # ...of these topics only (the creator accounts: a tombstone is its key)
        self.raw = raw  # RawRecords where the native reader can read the whole fetch

    def __call__(self, value: bytes) -> bytes:  # pragma: no cover - aiokafka never calls it in columnar mode
        raise RuntimeError("Columns is a marker for columnar fetching, not a deserializer")


@dataclass(slots=True)
class RecordChunk:
    """Consecutive records of one partition (in offset order)."""

    topic: str
    partition: int
    offsets: list[int]
    values: list[bytes | None]
    timestamps: list[int]
    keys: list[bytes | None] | None = None  # when the consumer's Columns asked for keys


@dataclass(slots=True)
class RawRecords:
    """One partition fetch's record set as fetched: the records of its batches `batches` (indices among the
    set's batches, ascending) from offset `first` on are the reader's, in offset order."""

    topic: str
    partition: int
    raw: bytes
    batches: list[int]
    first: int

    def columns(self) -> tuple[list[int], list[bytes | None], list[bytes | None]]:
        """(offsets, keys, values) of those records, as Python objects (for a consumer that does not parse them)."""
        offsets: list[int] = []
        keys: list[bytes | None] = []
        values: list[bytes | None] = []
        parsed = _native.read_record_batches(self.raw, True)
        for i in self.batches:
            cols = parsed[i]
            if cols is None:
                raise kafka_errors.CorruptRecordException(f"record batch {i} of {self.topic}-{self.partition}'s fetch")
            batch_offsets, batch_values, _, batch_keys = cols
            start = bisect.bisect_left(batch_offsets, self.first)
            offsets += batch_offsets[start:]
            keys += batch_keys[start:]
            values += batch_values[start:]
        return offsets, keys, values


class _RawMemoryRecords:
    """aiokafka's MemoryRecords plus the raw bytes it reads (the fetcher builds one per partition fetch)."""

    __slots__ = ("_inner", "raw")

    def __init__(self, raw: bytes) -> None:
        self.raw = raw
        self._inner = _ORIGINAL_MEMORY_RECORDS(raw)

    def has_next(self) -> bool:
        return self._inner.has_next()

    def next_batch(self):
        return self._inner.next_batch()

    def size_in_bytes(self) -> int:
        return self._inner.size_in_bytes()


class _ColumnarPartitionRecords(_fetcher.PartitionRecords):
    """PartitionRecords that yields RecordChunks when its consumer asked for Columns."""

    def _unpack_records(self):
        columns = self._value_deserializer
        if not isinstance(columns, Columns) or not isinstance(self._records, _RawMemoryRecords):
            yield from super()._unpack_records()
            return
        if columns.raw and all(_native.readable_record_batches(self._records.raw)):
            yield from self._unpack_raw()
            return
        # The same steps as aiokafka 0.14's PartitionRecords._unpack_records, batch by batch; only the
        # records of a batch come from the native reader. Records of consecutive batches are gathered into
        # chunks of chunk_records (producers often send small batches; a chunk per batch would make
        # getmany's max_records, which counts chunks, a tiny bound).
        tp = self._tp
        records = self._records
        with_keys = columns.keys or tp.topic in columns.keyed_topics
        parsed = _native.read_record_batches(records.raw, with_keys)
        index = 0
        step = columns.chunk_records
        offsets: list[int] = []
        values: list[bytes | None] = []
        stamps: list[int] = []
        keys: list[bytes | None] = []
        after = self.next_fetch_offset  # the fetch position once everything gathered is handed out
        while records.has_next():
            next_batch = records.next_batch()
            cols = parsed[index] if index < len(parsed) else None
            index += 1
            # A batch the native reader took has passed its CRC check there.
            if self._check_crcs and cols is None and not next_batch.validate_crc():
                raise kafka_errors.CorruptRecordException(f"Invalid CRC - {tp}")
            if not self._skipped(next_batch):
                if cols is None:  # compressed or an older format: aiokafka reads the records
                    batch_offsets, batch_values, batch_stamps, batch_keys = [], [], [], []
                    for record in next_batch:
                        batch_offsets.append(record.offset)
                        batch_values.append(record.value)
                        batch_stamps.append(record.timestamp)
                        batch_keys.append(record.key)
                else:
                    batch_offsets, batch_values, batch_stamps = cols[:3]
                    batch_keys = cols[3] if with_keys else ()
                # Records before the fetch position (a batch fetched again from its middle) are skipped.
                first = bisect.bisect_left(batch_offsets, after)
                offsets += batch_offsets[first:]
                values += batch_values[first:]
                stamps += batch_stamps[first:]
                if with_keys:
                    keys += batch_keys[first:]
            after = next_batch.next_offset
            while len(offsets) >= step:
                chunk = RecordChunk(tp.topic, tp.partition, offsets[:step], values[:step], stamps[:step],
                                    keys[:step] if with_keys else None)
                del offsets[:step], values[:step], stamps[:step], keys[:step]
                self.next_fetch_offset = offsets[0] if offsets else after
                yield chunk
            if not offsets:
                self.next_fetch_offset = after
        if offsets:
            self.next_fetch_offset = after
            yield RecordChunk(tp.topic, tp.partition, offsets, values, stamps, keys if with_keys else None)

    def _skipped(self, batch) -> bool:
        """Whether a reader must not see the batch's records: a control batch, or under read_committed one of an
        aborted transaction (aiokafka 0.14's steps; they track the aborted producers batch by batch)."""
        skip = batch.is_control_batch
        if self._isolation_level == _fetcher.READ_COMMITTED and batch.producer_id is not None:
            self._consume_aborted_up_to(batch.base_offset)
            if batch.is_control_batch and self._contains_abort_marker(batch):
                self._aborted_producers.discard(batch.producer_id)
            if batch.is_transactional and batch.producer_id in self._aborted_producers:
                skip = True
        return skip

    def _unpack_raw(self):
        """The fetch as one RawRecords: which batches a reader may see, decided batch by batch as above; their
        records (CRC included) are read by the consumer of the RawRecords."""
        records = self._records
        first = self.next_fetch_offset
        take: list[int] = []
        index = 0
        after = first
        while records.has_next():
            batch = records.next_batch()
            if not self._skipped(batch):
                take.append(index)
            index += 1
            after = batch.next_offset
        self.next_fetch_offset = after
        if take:
            yield RawRecords(self._tp.topic, self._tp.partition, records.raw, take, first)


_ORIGINAL_MEMORY_RECORDS = _fetcher.MemoryRecords


def available() -> bool:
    return _native is not None and aiokafka.__version__ == SUPPORTED_AIOKAFKA


def install() -> bool:
    """Enable columnar fetching for consumers that ask for it (idempotent). False when unavailable."""
    if not available():
        return False
    _fetcher.MemoryRecords = _RawMemoryRecords
    _fetcher.PartitionRecords = _ColumnarPartitionRecords
    return True


def columns_of(msgs: list, with_keys: bool = False
               ) -> tuple[list[int], list[bytes | None], list[int], list[bytes | None] | None]:
    """(offsets, values, timestamps, keys or None) of a getmany list: RecordChunks or ConsumerRecords. A null
    value stays None (a tombstone)."""
    offsets: list[int] = []
    values: list[bytes | None] = []
    stamps: list[int] = []
    keys: list[bytes | None] | None = [] if with_keys else None
    for m in msgs:
        if type(m) is RecordChunk:
            offsets += m.offsets
            values += m.values
            stamps += m.timestamps
            if keys is not None:
                keys += m.keys if m.keys is not None else [None] * len(m.offsets)
        else:
            offsets.append(m.offset)
            values.append(m.value)
            stamps.append(m.timestamp)
            if keys is not None:
                keys.append(m.key)
    return offsets, values, stamps, keys


__all__ = ["Columns", "RawRecords", "RecordChunk", "available", "columns_of", "install"]
