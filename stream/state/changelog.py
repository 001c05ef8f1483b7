"""Partition state <-> compacted changelog records.

One record per changed key per batch, never per event, per input partition (written to the changelog partition
with the same number): the cursor (watermark and window close cursor), each creator, pane tally, streak, chunk
of dedupe ids and payout applied. Their keys and values are stream.state.changelog_schema's (the schema's one
home; its table lists them), the encoders and decoders here are built from its names. Everything else in
PartitionState (which ids sit in which bucket, which creators hold a pane, which closed streaks expire when)
is derived again on restore.

A restore applies records oldest first, each replacing its key's value, so a state plus any suffix of the log
read again gives the same state: that is what lets a checkpoint (stream.state.checkpoint, whose body is these records
too) be topped up with the changelog's tail. `StateRestore` rebuilds a partition for either engine kind as the
records are read; the native one keeps no Python object per record (native/src/changelog.rs).
"""

from __future__ import annotations

import asyncio
import os
import struct
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

import msgspec

from stream.engine.protocol import Changelog, Changes, ChunkStarts, Engine, Record, Restore

try:
    from stream._native import ChangelogRestore, RecordBatchBuilder
except ImportError:  # not built: drain_batches is unavailable (the worker sends drain()'s records)
    ChangelogRestore = RecordBatchBuilder = None
from stream.state.changelog_schema import (
    ACCOUNT,
    ACCOUNT_PREFIX,
    BODY_LENGTH,
    CREATOR,
    CREATOR_FALLBACKS,
    CREATOR_PREFIX,
    CURSOR,
    CURSOR_KEY,
    DEDUPE,
    DEDUPE_PREFIX,
    DEDUPE_SEP,
    NAME_AT,
    PANE,
    PANE_PREFIX,
    PANE_SEP,
    PAYOUT,
    PAYOUT_PREFIX,
    PAYOUT_VALUE,
    STREAK,
    STREAK_PREFIX,
)
from stream.state.tables import (
    CREATOR_FIELDS,
    RETENTION_BUCKET_MS,
    Account,
    CreatorState,
    PartitionState,
    Streak,
    creator_fields,
)

_enc = msgspec.msgpack.Encoder()
_dec_any = msgspec.msgpack.Decoder()
_dec_streak = msgspec.msgpack.Decoder(Streak)


# Streak records as changelogs before the array form hold them: a map of the same fields.
_StreakAsMap = msgspec.defstruct("_StreakAsMap", [(f.name, f.type) if f.required else (f.name, f.type, f.default)
                                                  for f in msgspec.structs.fields(Streak)])
_dec_streak_map = msgspec.msgpack.Decoder(_StreakAsMap)


def _decode_streak(value: bytes) -> Streak:
    if value[:1] and (0x80 <= value[0] <= 0x8f or value[0] in (0xde, 0xdf)):  # a msgpack map: the older form
        return Streak(*msgspec.structs.astuple(_dec_streak_map.decode(value)))
    return _dec_streak.decode(value)


# A creator record may leave out the trailing fields CREATOR_FALLBACKS names (an older one): the indexes of the fields
# whose values they take, in order.
_CREATOR_SHORTEST = len(CREATOR_FIELDS) - len(CREATOR_FALLBACKS)
assert set(CREATOR_FIELDS[_CREATOR_SHORTEST:]) == set(CREATOR_FALLBACKS)
_CREATOR_FALLBACK_AT = [CREATOR_FIELDS.index(CREATOR_FALLBACKS[f]) for f in CREATOR_FIELDS[_CREATOR_SHORTEST:]]


def _creator_fields(key: bytes, value: bytes) -> list:
    fields = _dec_any.decode(value)
    if type(fields) is not list or not _CREATOR_SHORTEST <= len(fields) <= len(CREATOR_FIELDS):
        raise ValueError(f"creator record {key!r} is not an array of {_CREATOR_SHORTEST} to {len(CREATOR_FIELDS)} "
                         "fields")
    n = len(fields)
    fields.extend([fields[i] for i in _CREATOR_FALLBACK_AT[n - _CREATOR_SHORTEST:]])
    return fields


_dec_ids = msgspec.msgpack.Decoder(list[str])
_dec_account = msgspec.msgpack.Decoder(Account)
# The key prefixes as text, for the f-strings that write keys.
_C, _W, _S, _D, _P, _A = (p.decode() for p in (CREATOR_PREFIX, PANE_PREFIX, STREAK_PREFIX, DEDUPE_PREFIX,
                                                PAYOUT_PREFIX, ACCOUNT_PREFIX))


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
        batches, chunks, expired = engine.take_changelog_batches(max_bytes, transactional, now)
        return _fill(batches, self._note(chunks, expired), max_bytes, transactional, now)

    def _note(self, chunks: list[tuple[int, int]], expired: list[int]) -> list[Record]:
        """Remember the new dedupe chunks; the tombstones of every chunk of the expired buckets."""
        for bucket, start in chunks:
            self.chunks.setdefault(bucket, []).append(start)
        return [(f"{_D}{bucket}{DEDUPE_SEP}{start}".encode(), None)
                for bucket in expired for start in self.chunks.pop(bucket, ())]


def record_batches(records: list[Record], max_bytes: int, transactional: bool, timestamp_ms: int) -> list:
    """Records in Kafka record batches (stream._native.RecordBatchBuilder, at most max_bytes each), in order."""
    return _fill([], records, max_bytes, transactional, timestamp_ms)


def _fill(batches: list, records: list[Record], max_bytes: int, transactional: bool, timestamp_ms: int) -> list:
    """Append records to the last of `batches`, a new batch whenever one is full."""
    if records and RecordBatchBuilder is None:
        raise RuntimeError("changelog record batches need the compiled module (stream._native): run `make install`")
    for key, value in records:
        if not batches or not batches[-1].add(key, value):
            batches.append(RecordBatchBuilder(max_bytes, transactional, timestamp_ms))
            batches[-1].add(key, value)
    return batches


def cursor_record(watermark: int | None, close_cursor: int | None) -> Record:
    """The cursor record: the partition's watermark and window close cursor (CURSOR_FIELDS)."""
    return CURSOR_KEY, _enc.encode((watermark, close_cursor))


def encode_changes(ch: Changes) -> Changelog:
    """Changed keys -> (records, the dedupe chunks they start [(bucket, start)], expired buckets). The native
    engine writes the same bytes itself (native/src/changelog.rs)."""
    out: list[Record] = [cursor_record(ch.watermark, ch.close_cursor)]
    out.extend((f"{_C}{cid}".encode(), None if v is None else _enc.encode(v)) for cid, v in ch.creators)
    out.extend((f"{_W}{cid}{PANE_SEP}{pane}".encode(), None if tally is None else _enc.encode(tally))
               for cid, pane, tally in ch.panes)
    out.extend((f"{_S}{key}".encode(), None if s is None else _enc.encode(s)) for key, s in ch.streaks)
    out.extend((f"{_D}{bucket}{DEDUPE_SEP}{start}".encode(), _enc.encode(ids)) for bucket, start, ids in ch.seen_chunks)
    out.extend((f"{_P}{pid}".encode(), PAYOUT_VALUE) for pid in ch.payouts)
    out.extend((f"{_A}{cid}".encode(), _enc.encode(account)) for cid, account in ch.accounts)
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
        kind, name = key[:1], key[NAME_AT:].decode()
        if kind == CURSOR:
            st.watermark, st.close_cursor = _dec_any.decode(value)
        elif kind == CREATOR:
            st.creators[name] = CreatorState(*_creator_fields(key, value))
        elif kind == PANE:
            cid, pane = name.rsplit(PANE_SEP, 1)
            panes.append((cid, int(pane), _dec_any.decode(value)))
        elif kind == STREAK:
            st.streaks[name] = _decode_streak(value)
        elif kind == DEDUPE:
            bucket, start = name.split(DEDUPE_SEP)
            chunks.setdefault(int(bucket), []).append((int(start), _dec_ids.decode(value)))
        elif kind == PAYOUT:
            st.payouts_seen.add(name)
        elif kind == ACCOUNT:
            st.accounts[name] = _dec_account.decode(value)
    for cid, pane, tally in sorted(panes):
        st.creators[cid].panes[pane] = tally
        st.pane_creators.setdefault(pane, {})[cid] = None
    for bucket in sorted(chunks):
        ids = [i for _, part in sorted(chunks[bucket]) for i in part]
        st.seen_buckets[bucket] = ids
        st.seen.update(ids)
    for key in sorted(st.streaks):  # sorted: both engines then expire a bucket's streaks in the same order
        s = st.streaks[key]
        if not s.open:
            st.streak_buckets.setdefault(s.last_ts - s.last_ts % RETENTION_BUCKET_MS, []).append(key)
    writer = ChangelogWriter({b: [start for start, _ in sorted(parts)] for b, parts in chunks.items()})
    return st, writer


# ---------------------------------------------------------------- whole states (checkpoint bodies)


def state_body(st: PartitionState, chunks: dict[int, list[int]]) -> bytes:
    """The whole state as changelog records, each framed [u32 key length][key][u32 value length][value]
    (big-endian, changelog_schema.BODY_LENGTH): a checkpoint's body. The dedupe ids are cut at the chunk
    starts the changelog holds (`chunks`, the writer's), so expiring a bucket later tombstones the same keys.
    native/src/changelog.rs `snapshot` writes the same."""
    parts: list[bytes] = []
    pack = BODY_LENGTH.pack

    def put(key: bytes, value: bytes) -> None:
        parts.extend((pack(len(key)), key, pack(len(value)), value))

    put(*cursor_record(st.watermark, st.close_cursor))
    for cid, c in st.creators.items():
        put(f"{_C}{cid}".encode(), _enc.encode(creator_fields(c)))
        for pane, tally in c.panes.items():
            put(f"{_W}{cid}{PANE_SEP}{pane}".encode(), _enc.encode(tally))
    for key, streak in st.streaks.items():
        put(f"{_S}{key}".encode(), _enc.encode(streak))
    for bucket, ids in st.seen_buckets.items():
        bounds = [b for b in chunks.get(bucket, []) if b < len(ids)]
        if not bounds or bounds[0] != 0:
            bounds.insert(0, 0)
        for i, start in enumerate(bounds):
            end = bounds[i + 1] if i + 1 < len(bounds) else len(ids)
            put(f"{_D}{bucket}{DEDUPE_SEP}{start}".encode(), _enc.encode(ids[start:end]))
    for pid in st.payouts_seen:
        put(f"{_P}{pid}".encode(), PAYOUT_VALUE)
    for cid, account in st.accounts.items():
        put(f"{_A}{cid}".encode(), _enc.encode(account))
    return b"".join(parts)


def body_records(body: bytes) -> list[Record]:
    """state_body's records back (ValueError when the body is cut short)."""
    records: list[Record] = []
    pos, end, unpack, w = 0, len(body), BODY_LENGTH.unpack_from, BODY_LENGTH.size
    try:
        while pos < end:
            (n,) = unpack(body, pos)
            key = body[pos + w:pos + w + n]
            pos += w + n
            (n,) = unpack(body, pos)
            records.append((key, body[pos + w:pos + w + n]))
            pos += w + n
    except struct.error as e:
        raise ValueError("the checkpoint's body is cut short") from e
    if pos != end:
        raise ValueError("the checkpoint's body is cut short")
    return records


def engine_body(engine: Engine, writer: ChangelogWriter) -> bytes:
    """A running engine's whole state as a checkpoint body (state_body's format, from either engine)."""
    return engine.snapshot_body(writer.chunks)


# ---------------------------------------------------------------- restore as records arrive

EngineFactory = Callable[[PartitionState | None], Engine]


class RecordsRestore:
    """The reference engine's Restore (stream.engine.protocol.Restore): the latest value of each key, made into a
    PartitionState by restore_state when the engine adopts it. The compiled engine's is stream._native.ChangelogRestore
    (native/src/changelog.rs), which keeps no Python object per record."""

    def __init__(self) -> None:
        self._latest: dict[bytes, bytes | None] = {}
        self.records = 0

    def apply(self, keys: list[bytes], values: list[bytes | None]) -> None:
        self._latest.update(zip(keys, values, strict=True))
        self.records += len(keys)

    def apply_body(self, body: bytes) -> None:
        records = body_records(body)
        self._latest.update(records)
        self.records += len(records)

    def take_state(self) -> tuple[PartitionState, ChunkStarts]:
        """The state the records make and each dedupe bucket's chunk starts; forgets the records. ValueError: the
        records do not make a state."""
        latest, self._latest = self._latest, {}
        try:
            state, writer = restore_state(latest.items())
        except (KeyError, ValueError, msgspec.DecodeError) as e:
            raise ValueError(f"changelog records do not make a state: {e!r}") from e
        return state, list(writer.chunks.items())


T = TypeVar("T")

# A restore's build is CPU and fresh memory only: more of them at once than cores makes each finish later, and
# the slowest far later (docs/benchmarks.md, "Checkpoint restarts, sized tables and one restore per core").
_RESTORE_CPU = ThreadPoolExecutor(max_workers=os.cpu_count() or 1, thread_name_prefix="restore")


async def restore_work(fn: Callable[..., T], *args: object) -> T:
    """Run a restore's CPU work (native, without the GIL) off the event loop, at most one per core at a time."""
    return await asyncio.get_running_loop().run_in_executor(_RESTORE_CPU, fn, *args)


class StateRestore:
    """One partition's state rebuilt from changelog records as they are read (a checkpoint's body first, when
    there is one), then handed to a new engine. `apply` is cheap per call (the worker's poll loop goes on
    between chunks); `finish` has the engine adopt the state in a thread, so a large state never stops the event
    loop.

    Native engine: the records go straight into native/src/changelog.rs's Restore (no Python object kept per
    record; `apply_batches` takes a fetch's raw record batches, so none is even made). Python engine: the latest
    value of each key is kept (RecordsRestore), and restore_state builds the PartitionState when the engine
    adopts it."""

    def __init__(self, make_engine: EngineFactory, native: bool) -> None:
        self._make = make_engine
        self._restore: Restore = (ChangelogRestore() if native and ChangelogRestore is not None
                                  else RecordsRestore())

    @property
    def records(self) -> int:
        return self._restore.records

    def apply(self, keys: list[bytes], values: list[bytes | None]) -> None:
        """Records oldest first; a None value is a tombstone."""
        self._restore.apply(keys, values)

    @property
    def apply_batches(self) -> Callable[[bytes, list[int], int], tuple[int, int]] | None:
        """The native restore's reader of a fetch's raw record batches (stream.runtime.restore.BatchSink), None
        for the Python one (it takes keys and values)."""
        native = ChangelogRestore is not None and isinstance(self._restore, ChangelogRestore)
        return self._restore.apply_batches if native else None

    async def apply_body(self, body: bytes) -> None:
        """A checkpoint's body (state_body's format); in a thread, as it holds a whole state."""
        await restore_work(self._restore.apply_body, body)

    async def finish(self) -> tuple[Engine, ChangelogWriter]:
        """The engine running on the rebuilt state, and its changelog writer. ValueError: the records do not
        make a state (a corrupt changelog or checkpoint)."""
        engine = self._make(None)
        starts = await restore_work(engine.adopt, self._restore)
        return engine, ChangelogWriter(dict(starts))
