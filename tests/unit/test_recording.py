"""The recording format (stream.kafka.recording) keeps every record as the broker held it, and the replay of a
recording places each record where it was (stream.runtime.replay.replay_recording)."""

from __future__ import annotations

import gzip

import orjson
import pytest

from stream.cli import main
from stream.engine import model
from stream.engine.order import Input
from stream.engine.policy import load_policy
from stream.kafka.recording import (
    LOG_APPEND_TIME,
    Record,
    RecordingError,
    RecordingWriter,
    TopicInfo,
    is_recording,
    new_header,
    read_recording,
)
from stream.kafka.routing import PartitionCache
from stream.kafka.session_files import write_session
from stream.runtime.replay import replay, replay_recording
from tests.support.events import T0

HOSTILE = [
    Record(Input.GIFTS, 0, 0, 5, b"c1", b'{"a":\n1}'),  # a newline inside a value
    Record(Input.GIFTS, 0, 3, 6, None, None, LOG_APPEND_TIME, (("h", b"\xff\x00"), ("n", None))),  # null, gap
    Record(Input.GIFTS, 1, 0, 7, b"\xfe\xff", b""),  # a key that is not UTF-8, an empty value
    Record(Input.GIFTS, 1, 1, 8, b"k", b"\x80not utf-8\n"),
    Record(Input.ACCOUNTS, 1, 7, 9, b"c2", None),  # a tombstone
    Record(Input.PAYOUTS, 0, 2, 10, b"", "{\"x\": \"\u00e9\u2028\"}".encode()),
]


def header(partitions: int = 2):
    return new_header({kind: TopicInfo(f"{kind.name.lower()}-t", partitions) for kind in Input},
                      {Input.GIFTS: {0: (0, 4), 1: (0, 2)}})


def write(path, records, partitions: int = 2) -> None:
    with RecordingWriter(path, header(partitions)) as w:
        for r in records:
            w.write(r)


@pytest.mark.parametrize("name", ["r.jsonl", "r.jsonl.gz"])
def test_every_record_comes_back_as_it_was_written(tmp_path, name):
    write(tmp_path / name, HOSTILE)
    got = read_recording(tmp_path / name)
    assert got.complete and len(got) == len(HOSTILE)
    back = [r for (kind, p), log in got.logs.items() for r in log.records(kind, p)]
    assert sorted(back, key=lambda r: (r.input, r.partition, r.offset)) == \
        sorted(HOSTILE, key=lambda r: (r.input, r.partition, r.offset))
    assert got.header.topic(Input.ACCOUNTS) == TopicInfo("accounts-t", 2)
    assert is_recording(tmp_path / name)


def test_each_record_is_one_line_whatever_its_bytes(tmp_path):
    write(tmp_path / "r.jsonl", HOSTILE)
    lines = (tmp_path / "r.jsonl").read_bytes().split(b"\n")
    assert lines[-1] == b"" and len(lines) == len(HOSTILE) + 3  # header, records, trailer, final newline
    assert orjson.loads(lines[-2]) == {"trailer": {"records": len(HOSTILE)}}


def test_a_recording_cut_short_says_so_and_keeps_its_whole_lines(tmp_path):
    write(tmp_path / "r.jsonl.gz", HOSTILE)
    data = gzip.decompress((tmp_path / "r.jsonl.gz").read_bytes())
    cut = data[: data.index(b"\n", data.index(b'"offset":3')) + 10]  # 2 records whole, the third cut mid-line
    (tmp_path / "cut.jsonl.gz").write_bytes(gzip.compress(cut)[:-6])  # and the gzip stream cut too
    got = read_recording(tmp_path / "cut.jsonl.gz")
    assert not got.complete and len(got) == 2


def test_a_writer_that_fails_leaves_no_trailer(tmp_path):
    with pytest.raises(RuntimeError), RecordingWriter(tmp_path / "r.jsonl", header()) as w:
        w.write(HOSTILE[0])
        raise RuntimeError("the broker went away")
    assert not read_recording(tmp_path / "r.jsonl").complete


def test_offsets_must_rise_within_a_partition(tmp_path):
    with pytest.raises(RecordingError, match="offset 0 after 3"), RecordingWriter(tmp_path / "w.jsonl", header()) as w:
        w.write(HOSTILE[1])
        w.write(HOSTILE[0])
    write(tmp_path / "r.jsonl", HOSTILE[:2])
    lines = (tmp_path / "r.jsonl").read_bytes().split(b"\n")
    (tmp_path / "swapped.jsonl").write_bytes(b"\n".join([lines[0], lines[2], lines[1], *lines[3:]]))
    with pytest.raises(RecordingError, match="offset 0 after 3"):
        read_recording(tmp_path / "swapped.jsonl")


def test_a_newer_version_or_a_bad_line_is_refused(tmp_path):
    write(tmp_path / "r.jsonl", HOSTILE[:1])
    lines = (tmp_path / "r.jsonl").read_bytes().split(b"\n")
    newer = lines[0].replace(b'"version":1', b'"version":2')
    (tmp_path / "newer.jsonl").write_bytes(b"\n".join([newer, *lines[1:]]))
    with pytest.raises(RecordingError, match="version 2"):
        read_recording(tmp_path / "newer.jsonl")
    (tmp_path / "bad.jsonl").write_bytes(b"\n".join([lines[0], b'{"input": "gifts"}', *lines[1:]]))
    with pytest.raises(RecordingError, match=r"bad\.jsonl:2"):
        read_recording(tmp_path / "bad.jsonl")
    write_session(tmp_path / "plain.jsonl", [b'{"event_id": "e1"}'])
    assert not is_recording(tmp_path / "plain.jsonl")


def gift(i: int, creator: str, coins: int = 2_000) -> bytes:
    return orjson.dumps({"event_id": f"e{i}", "room_id": "r", "creator_id": creator, "sender_id": "s", "gift_id": 1,
                         "gift_type": 2, "diamond_count": coins, "repeat_count": 1, "repeat_end": False,
                         "ts": T0 + i})


def test_the_replay_places_each_record_on_its_recorded_partition_and_offset(tmp_path):
    # A routed replay sends a record to its creator's partition and numbers it there; the live worker saw it on
    # the partition it was produced to, at its offset (here: a gift produced to the wrong partition, offsets with
    # the gaps transaction markers leave).
    owners = PartitionCache(2)
    mine, other = next(f"c{i}" for i in range(99) if owners[f"c{i}".encode()] == 0), \
        next(f"c{i}" for i in range(99) if owners[f"c{i}".encode()] == 1)
    records = [Record(Input.GIFTS, 0, 10, T0, mine.encode(), gift(1, mine)),
               Record(Input.GIFTS, 0, 12, T0, other.encode(), gift(2, other)),  # on partition 0, owned by 1
               Record(Input.GIFTS, 0, 14, T0, None, b"not json")]
    write(tmp_path / "r.jsonl", records)
    placed = replay_recording(read_recording(tmp_path / "r.jsonl"), load_policy())
    assert [(d.reason, d.source_topic, d.partition, d.offset) for d in placed.outputs.dead_letters] == [
        (model.WRONG_PARTITION, "gifts-t", 0, 12), (model.NOT_JSON, "gifts-t", 0, 14)]
    routed = replay([r.value for r in records], load_policy(), partitions=2)
    assert [(d.reason, d.partition, d.offset) for d in routed.outputs.dead_letters] == [(model.NOT_JSON, 0, 2)]


def test_replay_of_a_recording_from_the_command_line(tmp_path, capsys):
    owners = PartitionCache(2)
    creator = next(f"c{i}" for i in range(99) if owners[f"c{i}".encode()] == 1)
    write(tmp_path / "r.jsonl.gz", [Record(Input.GIFTS, 1, 5, T0, creator.encode(), gift(1, creator, 10_000))])
    assert main(["replay", str(tmp_path / "r.jsonl.gz"), "--quiet", "--out", str(tmp_path / "out")]) == 0
    summary = orjson.loads((tmp_path / "out" / "summary.json").read_bytes())
    assert summary["partitions"] == 2 and summary["milli_diamonds_credited"] == 10_000_000
    assert summary["notices"] == 1
    with pytest.raises(SystemExit, match="recorded over 2 partitions"):
        main(["replay", str(tmp_path / "r.jsonl.gz"), "--partitions", "6"])
