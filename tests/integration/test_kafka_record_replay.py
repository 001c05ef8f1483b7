"""`giftstream replay --to-kafka` and `giftstream record` round-trip a recorded session through a real topic:
the recording replays offline to the same notices as the original, and --speed paces by event time."""

from __future__ import annotations

import asyncio
import time

import pytest

from stream.cli import _default_session
from stream.config import WorkerConfig
from stream.engine import model
from stream.engine.policy import load_policy
from stream.kafka.session_files import read_session, write_session
from stream.kafka.topics import delete_topics
from stream.runtime.replay import replay
from tests.support.processes import BOOTSTRAP, run_cli, unique_topics, write_config

pytestmark = pytest.mark.kafka


@pytest.fixture
def config(tmp_path):
    _, topics = unique_topics("record")
    path = write_config(tmp_path / "w.toml", topics, bootstrap_servers=BOOTSTRAP)
    created = run_cli("topics", "create", "--partitions", "3", "--config", str(path))
    assert created.returncode == 0, created.stderr
    yield path, topics
    asyncio.run(delete_topics(WorkerConfig(bootstrap_servers=BOOTSTRAP, topics=topics)))


def notices(records: list[bytes]) -> list[bytes]:
    return sorted(model.encode(n) for n in replay(records, load_policy(), partitions=3).outputs.notices)


def test_a_recorded_topic_replays_to_the_same_notices_as_the_original(config, tmp_path):
    path, topics = config
    original = read_session(_default_session())
    sent = run_cli("replay", "--to-kafka", "--quiet", "--config", str(path))
    assert sent.returncode == 0, sent.stderr
    out = tmp_path / "recorded.jsonl.gz"
    recorded = run_cli("record", topics.gifts, str(out), "--config", str(path))
    assert recorded.returncode == 0, recorded.stderr
    again = read_session(out)
    assert sorted(again) == sorted(original)  # every record, byte for byte (order differs across partitions)
    assert notices(again) == notices(original) and notices(original)


def test_speed_paces_production_by_event_time(config, tmp_path):
    path, _ = config
    records = read_session(_default_session())[:400]  # ~4 minutes of event time
    times = [e.ts for e in map(model.decode_event, records) if type(e) is model.GiftEvent]
    span_s = (max(times) - times[0]) / 1000  # pacing follows event time from the first record on
    session = tmp_path / "short.jsonl"
    write_session(session, records)
    started = time.monotonic()
    sent = run_cli("replay", str(session), "--to-kafka", "--speed", "100", "--quiet", "--config", str(path))
    elapsed = time.monotonic() - started
    assert sent.returncode == 0, sent.stderr
    assert span_s / 100 * 0.7 <= elapsed, (span_s, elapsed)  # paced, not as fast as possible
