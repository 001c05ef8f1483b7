"""Partition state <-> compacted changelog records.

One record per changed key per batch, never per event. Keys (bytes, per input partition, written to the
changelog partition with the same number):
  m                  watermark and window close cursor
  c:<creator>        balance, lifetime credited / paid out, crossings, above-threshold flag, region
  w:<creator>:<pane> one pane tally [milli_diamonds, credits]      (tombstone when the pane is dropped)
  s:<streak key>     a streak                                      (tombstone when it expires)
  d:<bucket>:<start> a chunk of event ids seen (dedupe), appended per batch (tombstones on expiry)
  p:<payout id>      a payout already applied
Everything else in PartitionState (which ids sit in which bucket, which creators hold a pane, which
closed streaks expire when) is derived again on restore.
"""

from __future__ import annotations

import time
from collections.abc import Iterable

import msgspec

from stream.engine import Changes
from stream.engine_native import Engine, NativePartitionEngine

try:
    from stream._native import RecordBatchBuilder
except ImportError:  # not built: drain_batches is unavailable (the worker sends drain()'s records)
    RecordBatchBuilder = None
from stream.state import RETENTION_BUCKET_MS, CreatorState, PartitionState, Streak

_enc = msgspec.msgpack.Encoder()
_dec_any = msgspec.msgpack.Decoder()
_dec_streak = msgspec.msgpack.Decoder(Streak)
_dec_ids = msgspec.msgpack.Decoder(list[str])
_SEP = "\x1e"  # creator ids never contain it (schema: printable ids)

Record = tuple[bytes, bytes | None]


class ChangelogWriter:
    """Turns an engine's changed keys (take_changes, either engine) into changelog records. Keeps the chunk
    keys of each dedupe bucket so an expired bucket can be tombstoned completely."""

    def __init__(self, chunks: dict[int, list[int]] | None = None) -> None:
        self.chunks: dict[int, list[int]] = chunks if chunks is not None else {}

    def drain(self, engine: Engine) -> list[Record]:
        records, chunks, expired = engine.take_changelog()
        return records + self._note(chunks, expired)

    def drain_batches(self, engine: Engine, max_bytes: int, transactional: bool) -> list:
        """drain()'s records as Kafka record batches (stream._native.RecordBatchBuilder, at most max_bytes
        each) for producer.send_batch: the native engine writes them without a Python object per record."""
        now = int(time.time() * 1000)
        if isinstance(engine, NativePartitionEngine):
            batches, chunks, expired = engine.take_changelog_batches(max_bytes, transactional, now)
            records = self._note(chunks, expired)
        else:
            batches, records = [], self.drain(engine)
        for key, value in records:
            if not batches or not batches[-1].add(key, value):
                batches.append(RecordBatchBuilder(max_bytes, transactional, now))
                batches[-1].add(key, value)
        return batches

    def _note(self, chunks: list[tuple[int, int]], expired: list[int]) -> list[Record]:
        """Remember the new dedupe chunks; the tombstones of every chunk of the expired buckets."""
        for bucket, start in chunks:
            self.chunks.setdefault(bucket, []).append(start)
        return [(f"d:{bucket}:{start}".encode(), None) for bucket in expired for start in self.chunks.pop(bucket, ())]


Changelog = tuple[list[Record], list[tuple[int, int]], list[int]]


def cursor_record(watermark: int | None, close_cursor: int | None) -> Record:
    """The `m` record: the partition's watermark and window close cursor."""
    return b"m", _enc.encode((watermark, close_cursor))


def encode_changes(ch: Changes) -> Changelog:
    """Changed keys -> (records, the dedupe chunks they start [(bucket, start)], expired buckets). The native
    engine writes the same bytes itself (native/src/msgpack.rs)."""
    out: list[Record] = [cursor_record(ch.watermark, ch.close_cursor)]
    out.extend((f"c:{cid}".encode(), None if v is None else _enc.encode(v)) for cid, v in ch.creators)
    out.extend((f"w:{cid}{_SEP}{pane}".encode(), None if tally is None else _enc.encode(tally))
               for cid, pane, tally in ch.panes)
    out.extend((f"s:{key}".encode(), None if s is None else _enc.encode(s)) for key, s in ch.streaks)
    out.extend((f"d:{bucket}:{start}".encode(), _enc.encode(ids)) for bucket, start, ids in ch.seen_chunks)
    out.extend((f"p:{pid}".encode(), b"1") for pid in ch.payouts)
    return out, [(bucket, start) for bucket, start, _ in ch.seen_chunks], ch.expired_buckets


def restore_state(records: Iterable[Record]) -> tuple[PartitionState, ChangelogWriter]:
    """Rebuild a partition's state from its changelog (oldest first; the last record of a key wins)."""
    latest: dict[bytes, bytes | None] = {}
    for key, value in records:
        latest[key] = value
    st = PartitionState()
    panes: list[tuple[str, int, list[int]]] = []
    chunks: dict[int, list[tuple[int, list[str]]]] = {}
    for key, value in latest.items():
        if value is None:
            continue
        kind, name = key[:1], key[2:].decode()
        if kind == b"m":
            st.watermark, st.close_cursor = _dec_any.decode(value)
        elif kind == b"c":
            region, balance, credited, paid_out, crossings, above = _dec_any.decode(value)
            st.creators[name] = CreatorState(region, balance, credited, paid_out, crossings, above)
        elif kind == b"w":
            cid, pane = name.rsplit(_SEP, 1)
            panes.append((cid, int(pane), _dec_any.decode(value)))
        elif kind == b"s":
            st.streaks[name] = _dec_streak.decode(value)
        elif kind == b"d":
            bucket, start = name.split(":")
            chunks.setdefault(int(bucket), []).append((int(start), _dec_ids.decode(value)))
        elif kind == b"p":
            st.payouts_seen.add(name)
    for cid, pane, tally in sorted(panes):
        st.creators[cid].panes[pane] = tally
        st.pane_creators.setdefault(pane, {})[cid] = None
    for bucket in sorted(chunks):
        ids = [i for _, part in sorted(chunks[bucket]) for i in part]
        st.seen_buckets[bucket] = ids
        st.seen.update(ids)
    for key, s in st.streaks.items():
        if not s.open:
            st.streak_buckets.setdefault(s.last_ts - s.last_ts % RETENTION_BUCKET_MS, []).append(key)
    writer = ChangelogWriter({b: [start for start, _ in sorted(parts)] for b, parts in chunks.items()})
    return st, writer
