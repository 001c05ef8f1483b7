"""Recordings, the one owner of their format: what `giftstream record` writes and `giftstream replay` (offline or
`--to-kafka`) reads. A recording keeps the three inputs of a run as the broker held them, so that a replay places
every record where it was and the engine makes the live run's bytes, dead letters included.

The format, version 1: JSON Lines in UTF-8 (gzipped when the file name ends in .gz), written and read as a stream.
  line 1      the header: {"format": "giftstream-recording", "version": 1, "inputs": {"gifts": {"topic": "gifts",
              "partitions": 6}, ...}, "isolation": "read_committed", "recorded_ms": <epoch ms>, "ranges": {"gifts":
              {"0": [<first offset>, <end offset>]}, ...}}: which topics, how many partitions each, and which
              offsets of each partition were asked for ([first, end), end exclusive);
  then        one line per record, each partition's records in offset order (partitions interleave as read):
              {"input": "gifts", "partition": 0, "offset": 41, "timestamp": <ms>, "timestamp_type": 0, "key": "c1",
              "value": "{...}", "headers": [["name", "<base64>"]]}
              timestamp_type is Kafka's (0 CreateTime, 1 LogAppendTime). A key or value that is UTF-8 is kept as
              text ("key", "value"); any other bytes as base64 ("key_b64", "value_b64"); a null one has neither
              (a tombstone; an empty value is ""). Header values are base64, or null. Absent fields are their
              defaults: no headers, timestamp_type 0;
  last line   the trailer: {"trailer": {"records": <count>}}. A recording without it was cut short (the reader
              says so: `Recording.complete`).
A reader refuses a newer version, a line it cannot read and offsets that do not rise within a partition.
"""

from __future__ import annotations

import base64
import gzip
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import msgspec

from stream.engine.order import Input

FORMAT = "giftstream-recording"
VERSION = 1
# The inputs as a recording names them.
INPUT_NAMES = {Input.GIFTS: "gifts", Input.PAYOUTS: "payouts", Input.ACCOUNTS: "creator-accounts"}
_INPUTS = {name: kind for kind, name in INPUT_NAMES.items()}
CREATE_TIME, LOG_APPEND_TIME = 0, 1


class RecordingError(ValueError):
    """A file that is not a recording this version can read; the message says where and why."""


class TopicInfo(msgspec.Struct, frozen=True):
    topic: str
    partitions: int


class Header(msgspec.Struct, frozen=True):
    format: str
    version: int
    inputs: dict[str, TopicInfo]
    isolation: str = "read_committed"
    recorded_ms: int = 0
    ranges: dict[str, dict[str, tuple[int, int]]] = {}

    def topic(self, kind: Input) -> TopicInfo | None:
        return self.inputs.get(INPUT_NAMES[kind])


class _Line(msgspec.Struct, omit_defaults=True):
    input: str
    partition: int
    offset: int
    timestamp: int
    timestamp_type: int = CREATE_TIME
    key: str | None = None
    key_b64: str | None = None
    value: str | None = None
    value_b64: str | None = None
    headers: list[tuple[str, str | None]] = []


class _Trailer(msgspec.Struct):
    records: int


class _TrailerLine(msgspec.Struct):
    trailer: _Trailer


@dataclass(frozen=True, slots=True)
class Record:
    """One record as the broker held it."""

    input: Input
    partition: int
    offset: int
    timestamp: int
    key: bytes | None
    value: bytes | None
    timestamp_type: int = CREATE_TIME
    headers: tuple[tuple[str, bytes | None], ...] = ()


@dataclass(slots=True)
class PartitionLog:
    """One input partition's records, in offset order, column by column."""

    offsets: list[int] = field(default_factory=list)
    timestamps: list[int] = field(default_factory=list)
    keys: list[bytes | None] = field(default_factory=list)
    values: list[bytes | None] = field(default_factory=list)
    timestamp_types: list[int] = field(default_factory=list)
    headers: list[tuple[tuple[str, bytes | None], ...]] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.offsets)

    def records(self, kind: Input, partition: int) -> Iterator[Record]:
        for i in range(len(self.offsets)):
            yield Record(kind, partition, self.offsets[i], self.timestamps[i], self.keys[i], self.values[i],
                         self.timestamp_types[i], self.headers[i])


@dataclass
class Recording:
    header: Header
    logs: dict[tuple[Input, int], PartitionLog]  # (input, partition) -> its records
    complete: bool  # the trailer was there and its count matched

    def __len__(self) -> int:
        return sum(len(log) for log in self.logs.values())

    def partitions(self) -> int:
        """The partition count the inputs share (co-partitioned), or RecordingError."""
        counts = {name: info.partitions for name, info in self.header.inputs.items()}
        if len(set(counts.values())) != 1:
            raise RecordingError(f"the recorded inputs are not co-partitioned: {counts}")
        return next(iter(counts.values()))


def new_header(inputs: dict[Input, TopicInfo], ranges: dict[Input, dict[int, tuple[int, int]]],
               isolation: str = "read_committed") -> Header:
    return Header(FORMAT, VERSION, {INPUT_NAMES[k]: v for k, v in inputs.items()}, isolation,
                  int(time.time() * 1000),
                  {INPUT_NAMES[k]: {str(p): r for p, r in sorted(v.items())} for k, v in ranges.items()})


def _text_or_b64(data: bytes | None) -> tuple[str | None, str | None]:
    if data is None:
        return None, None
    try:
        return data.decode(), None  # strict UTF-8: the text encodes back to these very bytes
    except UnicodeDecodeError:
        return None, base64.b64encode(data).decode()


def _bytes(text: str | None, b64: str | None) -> bytes | None:
    if b64 is not None:
        return base64.b64decode(b64, validate=True)
    return None if text is None else text.encode()


def _open(path: str | Path, mode: str) -> IO[bytes]:
    if str(path).endswith(".gz"):
        return gzip.open(path, mode)  # type: ignore[return-value]
    return open(path, mode)


class RecordingWriter:
    """Writes a recording as records come (each partition's in offset order); close() writes the trailer."""

    def __init__(self, path: str | Path, header: Header) -> None:
        self._file = _open(path, "wb")
        self._enc = msgspec.json.Encoder()
        self._file.write(self._enc.encode(header) + b"\n")
        self._last: dict[tuple[str, int], int] = {}
        self.records = 0

    def write(self, r: Record) -> None:
        name = INPUT_NAMES[r.input]
        if self._last.get((name, r.partition), -1) >= r.offset:
            raise RecordingError(f"{name}-{r.partition}: offset {r.offset} after {self._last[(name, r.partition)]}")
        self._last[(name, r.partition)] = r.offset
        key, key_b64 = _text_or_b64(r.key)
        value, value_b64 = _text_or_b64(r.value)
        headers = [(k, None if v is None else base64.b64encode(v).decode()) for k, v in r.headers]
        self._file.write(self._enc.encode(_Line(name, r.partition, r.offset, r.timestamp, r.timestamp_type, key,
                                                key_b64, value, value_b64, headers)) + b"\n")
        self.records += 1

    def close(self) -> None:
        self._file.write(self._enc.encode(_TrailerLine(_Trailer(self.records))) + b"\n")
        self._file.close()

    def __enter__(self) -> RecordingWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        if exc[0] is None:
            self.close()
        else:  # cut short: no trailer, so a reader knows
            self._file.close()


_header = msgspec.json.Decoder(Header)
_line = msgspec.json.Decoder(_Line)
_trailer = msgspec.json.Decoder(_TrailerLine)


def is_recording(path: str | Path) -> bool:
    """Whether the file starts as a recording does (else it is a plain session file of records)."""
    with _open(path, "rb") as f:
        first = f.readline(4096)
    return first.lstrip().startswith(b'{"format":"' + FORMAT.encode() + b'"')


def iter_recording(path: str | Path) -> tuple[Header, Iterator[Record | int]]:
    """The header and a stream of the records; the stream's last item is the trailer's count (an int), when the
    recording has one."""
    f = _open(path, "rb")
    first = f.readline()
    try:
        header = _header.decode(first)
    except msgspec.DecodeError as e:
        f.close()
        raise RecordingError(f"{path}: line 1 is not a recording header ({e})") from None
    if header.format != FORMAT or header.version > VERSION:
        f.close()
        raise RecordingError(f"{path}: {header.format} version {header.version}; this giftstream reads {FORMAT} "
                             f"up to version {VERSION}")
    return header, _records(path, f)


def _records(path: str | Path, f: IO[bytes]) -> Iterator[Record | int]:
    with f:
        n = 1
        while True:
            try:
                line = f.readline()
            except EOFError:  # a gzip stream cut short: the recording ends at its last whole line
                return
            n += 1
            if not line.endswith(b"\n"):  # the end, or a last line cut short
                return
            if line.startswith(b'{"trailer"'):
                yield _trailer.decode(line).trailer.records
                return
            try:
                x = _line.decode(line)
                yield Record(_INPUTS[x.input], x.partition, x.offset, x.timestamp, _bytes(x.key, x.key_b64),
                             _bytes(x.value, x.value_b64), x.timestamp_type,
                             tuple((k, None if v is None else base64.b64decode(v, validate=True))
                                   for k, v in x.headers))
            except (msgspec.DecodeError, KeyError, ValueError) as e:
                raise RecordingError(f"{path}:{n}: not a record line ({e})") from None


def read_recording(path: str | Path) -> Recording:
    """A whole recording, per input partition (each in offset order)."""
    header, stream = iter_recording(path)
    logs: dict[tuple[Input, int], PartitionLog] = {}
    count = 0
    trailer = None
    for r in stream:
        if isinstance(r, int):
            trailer = r
            break
        log = logs.get((r.input, r.partition))
        if log is None:
            log = logs[(r.input, r.partition)] = PartitionLog()
        elif log.offsets[-1] >= r.offset:
            raise RecordingError(f"{path}: {INPUT_NAMES[r.input]}-{r.partition}: offset {r.offset} after "
                                 f"{log.offsets[-1]}")
        log.offsets.append(r.offset)
        log.timestamps.append(r.timestamp)
        log.keys.append(r.key)
        log.values.append(r.value)
        log.timestamp_types.append(r.timestamp_type)
        log.headers.append(r.headers)
        count += 1
    return Recording(header, logs, complete=trailer == count)
