"""`giftstream capture --to-kafka` on a real broker: the gifts a TikTokLive session gives (the library's own
parse of its gift messages, no network) reach the gifts topic keyed by creator_id, each on its creator's
partition, the same records as `capture --out FILE` writes."""

from __future__ import annotations

import asyncio

import pytest

from stream.kafka.routing import PartitionCache
from stream.kafka.session_files import read_session
from stream.kafka.session_io import read_topic
from stream.live_clients import tiktoklive as ttl
from tests.support.kafka_checks import PARTITIONS
from tests.unit.test_live_tiktoklive import FRAMES, HOST, ROOM, capture_to, frame, library_events

pytestmark = pytest.mark.kafka


async def test_capture_to_kafka_produces_what_capture_to_a_file_writes(cfg, tmp_path):
    events = await library_events([frame(f) for f in FRAMES])
    await capture_to(tmp_path / "gifts.jsonl", tmp_path / "raw.jsonl", events, ttl.Room(ROOM, HOST))
    want = read_session(tmp_path / "gifts.jsonl")
    capture = ttl.Capture(ttl.KafkaSink(cfg), report=lambda line: None)
    await capture.start()
    capture.begin(ttl.Room(ROOM, HOST))
    drain = asyncio.create_task(capture.drain())
    for e in events:
        capture.on_gift(e)
    capture.finish()
    await drain
    await capture.close()  # waits until every record is acknowledged
    got = await read_topic(cfg, cfg.topics.gifts)
    owners = PartitionCache(PARTITIONS)
    assert all(owners[m.key] == p for p, msgs in got.items() for m in msgs)  # keyed by creator_id
    assert sorted(m.value for msgs in got.values() for m in msgs) == sorted(want) and len(want) == 11
