"""Local checkpoints: each partition's state on disk with the changelog offset it matches, so a restarted
worker loads it and reads only the changelog's tail (after Kafka Streams' .checkpoint files).

A checkpoint file holds a header line and a body. The body is the state as changelog records
(stream.state.changelog.state_body), so loading it is the same restore as reading the changelog, and reading the
log again from `changelog_offset` on top of it gives the state of the whole log: records read twice are
harmless, as each one sets its key. The offset is at or before the end of the last committed transaction the
state holds, never after it.

    GIFTSTREAM-CHECKPOINT 1\\n
    {"topic": ..., "partition": ..., "changelog_offset": ..., "changelog_end": ..., "written_ms": ...,
     "body_bytes": ..., "body_crc32": ...}\\n
    <body>

Written atomically (a temporary file, fsync, rename, fsync of the directory), only from committed state, and
verified on load (the header, the size, the CRC). What the task does with one that is missing, corrupt or stale
(its offset outside the changelog's bounds, or older than the changelog keeps tombstones) is always the full
restore, never wrong state: see stream.runtime.task.PartitionTask.restore. A changelog shorter than the checkpoint's
`changelog_end` is not the one it was taken from (deleted and made again, or truncated).
"""

from __future__ import annotations

import json
import os
import zlib
from dataclasses import dataclass
from pathlib import Path

MAGIC = b"GIFTSTREAM-CHECKPOINT 1\n"
MAX_HEADER_BYTES = 4096


class CheckpointInvalid(Exception):
    """A checkpoint file that cannot be trusted (the reason says why); it is discarded."""


@dataclass(frozen=True)
class Checkpoint:
    topic: str
    partition: int
    changelog_offset: int  # the state holds every changelog record before this offset
    changelog_end: int  # the changelog's end when the state was taken: a changelog shorter than this is another
    written_ms: int
    body: bytes


class CheckpointStore:
    """The checkpoint files of one worker's state directory, one per changelog partition."""

    def __init__(self, directory: str | Path, group_id: str, topic: str) -> None:
        self.directory = Path(directory) / group_id
        self.topic = topic

    def path(self, partition: int) -> Path:
        return self.directory / f"{self.topic}-{partition}.checkpoint"

    def write(self, checkpoint: Checkpoint) -> int:
        """Replace the partition's checkpoint, atomically (blocking: callers run it in a thread). Returns its
        size in bytes."""
        self.directory.mkdir(parents=True, exist_ok=True)
        header = json.dumps({"topic": checkpoint.topic, "partition": checkpoint.partition,
                             "changelog_offset": checkpoint.changelog_offset, "changelog_end": checkpoint.changelog_end,
                             "written_ms": checkpoint.written_ms,
                             "body_bytes": len(checkpoint.body), "body_crc32": zlib.crc32(checkpoint.body)},
                            separators=(",", ":")).encode() + b"\n"
        final = self.path(checkpoint.partition)
        tmp = final.with_name(f"{final.name}.tmp-{os.getpid()}")
        with open(tmp, "wb") as f:
            f.write(MAGIC)
            f.write(header)
            f.write(checkpoint.body)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, final)
        dir_fd = os.open(self.directory, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
        return len(MAGIC) + len(header) + len(checkpoint.body)

    def load(self, partition: int) -> Checkpoint | None:
        """The partition's checkpoint, None when there is none. CheckpointInvalid when it cannot be trusted."""
        # The body is read into its own bytes object (no copy out of the whole file's): it is tens of MB.
        try:
            with self.path(partition).open("rb") as f:
                magic = f.read(len(MAGIC))
                line = f.readline(MAX_HEADER_BYTES + 1) if magic == MAGIC else b""
                body = f.read() if line.endswith(b"\n") else b""
        except FileNotFoundError:
            return None
        if magic != MAGIC:
            raise CheckpointInvalid("not a giftstream checkpoint (or another version)")
        if not line.endswith(b"\n"):
            raise CheckpointInvalid("the header is cut short")
        try:
            header = json.loads(line[:-1])
            topic, part = header["topic"], header["partition"]
            offset, end, written = header["changelog_offset"], header["changelog_end"], header["written_ms"]
            size, crc = header["body_bytes"], header["body_crc32"]
        except (ValueError, KeyError, TypeError) as e:
            raise CheckpointInvalid(f"the header cannot be read: {e!r}") from e
        if (topic, part) != (self.topic, partition):
            raise CheckpointInvalid(f"it is the checkpoint of {topic}-{part}")
        if len(body) != size:
            raise CheckpointInvalid(f"the body has {len(body)} bytes, the header says {size}")
        if zlib.crc32(body) != crc:
            raise CheckpointInvalid("the body's CRC does not match")
        if not (isinstance(offset, int) and isinstance(end, int) and 0 <= offset <= end):
            raise CheckpointInvalid(f"changelog offset {offset!r}, end {end!r}")
        return Checkpoint(topic, partition, offset, end, int(written), body)

    def discard(self, partition: int) -> None:
        self.path(partition).unlink(missing_ok=True)
