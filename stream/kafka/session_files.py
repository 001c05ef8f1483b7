"""Session files, the one owner of their format: plain JSONL that `giftstream replay` reads (and `giftstream
import` and the load kit write). A `giftstream record` recording is another format (stream.kafka.recording): a
session file cannot hold an empty or null value, a value with a newline, or the partition a record was on.

A session file holds one input's records, one per line (JSONL, gzipped when the name ends in .gz), a record's
value as it is, its key being the creator_id it holds; the replay routes each by that key. A creator-accounts
file may also hold tombstone lines, {"tombstone": "<creator id>", "ts": <its Kafka timestamp>}, for the records
with a null value. A session directory holds one such file per input (SESSION_FILES). The replay orders the three
inputs by the time each record holds (stream.engine.order), so the files need no timestamps besides the
tombstones'.
"""

from __future__ import annotations

import gzip
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import msgspec

from stream.engine import model
from stream.engine.order import Input

# A recorded session's files, per input (read with or without .gz).
SESSION_FILES = {Input.GIFTS: "gifts.jsonl", Input.PAYOUTS: "payouts.jsonl", Input.ACCOUNTS: "creator-accounts.jsonl"}


class _KeyOnly(msgspec.Struct):
    creator_id: str
    ts: int = 0


_keys = msgspec.json.Decoder(_KeyOnly)


def key_of(raw: bytes) -> tuple[bytes | None, int | None]:
    """(creator_id key, event time) of a record; (None, None) when it cannot be read."""
    try:
        k = _keys.decode(raw)
        return k.creator_id.encode(), k.ts
    except (*model.DECODE_ERRORS, UnicodeEncodeError):  # bad JSON or UTF-8 / a lone surrogate in creator_id
        return None, None


def read_session(path: str | Path) -> list[bytes]:
    """All records of a session file, one per non-empty line."""
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "rb") as f:
        data = f.read()
    return [line for line in data.split(b"\n") if line.strip()]


def write_session(path: str | Path, records: Iterable[bytes]) -> int:
    opener = gzip.open if str(path).endswith(".gz") else open
    n = 0
    with opener(path, "wb") as f:
        for r in records:
            f.write(r + b"\n")
            n += 1
    return n


class _Tombstone(msgspec.Struct, forbid_unknown_fields=True):
    tombstone: str  # the creator id (the record's key)
    ts: int  # the record's timestamp


_tombstone = msgspec.json.Decoder(_Tombstone)


@dataclass(frozen=True, slots=True)
class AccountRecord:
    """A creator-accounts record of a session file: its key, value (None: a tombstone) and the time a tombstone
    line gives (a record's own time is its updated_ts)."""

    key: bytes | None
    value: bytes | None
    ts: int | None = None


def read_accounts(path: str | Path) -> list[AccountRecord]:
    """A creator-accounts file: one record value per non-empty line (its key is its creator_id); a line
    {"tombstone": "<creator id>", "ts": <ms>} stands for a tombstone (the key with a null value)."""
    records = []
    for line in read_session(path):
        if line.startswith(b'{"tombstone"'):
            try:
                t = _tombstone.decode(line)
                records.append(AccountRecord(t.tombstone.encode(), None, t.ts))
                continue
            except msgspec.DecodeError:
                pass
        key, _ = key_of(line)
        records.append(AccountRecord(key, line))
    return records


def tombstone_line(creator_id: str, ts: int) -> bytes:
    return model.encode(_Tombstone(creator_id, ts))




def session_path(directory: str | Path, kind: Input) -> Path | None:
    """The file of an input in a recorded session directory (plain or .gz), None when it has none."""
    for name in (SESSION_FILES[kind], SESSION_FILES[kind] + ".gz"):
        path = Path(directory) / name
        if path.is_file():
            return path
    return None
