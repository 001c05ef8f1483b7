"""The Faust runner (stream/runtime/faust_app.py) on the local broker: same engine, same notices as the offline
replay."""

from __future__ import annotations

import asyncio
import sys
import time
from collections import Counter

import pytest
from aiokafka.admin import AIOKafkaAdminClient

from load.generator import TrafficConfig, generate
from stream.config import WorkerConfig
from stream.engine import model
from stream.engine.policy import load_policy
from stream.kafka.session_io import committed_offsets, produce_session, read_topic
from stream.kafka.topics import create_topics, delete_topics
from stream.runtime.replay import replay
from tests.support.processes import BOOTSTRAP, Proc, unique_topics, write_config

pytest.importorskip("faust")
pytestmark = pytest.mark.kafka
PARTITIONS = 3


async def _committed(cfg: WorkerConfig) -> int:
    admin = AIOKafkaAdminClient(bootstrap_servers=cfg.bootstrap_servers)
    await admin.start()
    try:
        return sum((await committed_offsets(admin, cfg.group_id, cfg.topics.gifts)).values())
    finally:
        await admin.close()


@pytest.mark.parametrize("mode", ["events", "take"])
async def test_faust_runner_notices_equal_the_offline_replay(tmp_path, mode):
    suffix, topics = unique_topics(f"faust-{mode}")
    cfg = WorkerConfig(bootstrap_servers=BOOTSTRAP, group_id=f"giftstream-{suffix}", topics=topics)
    records = list(generate(TrafficConfig(seed=17, events=6_000, creators=30, senders=2_000, duplicate_rate=0.01,
                                          malformed_rate=0.003, late_rate=0.005)))
    await create_topics(cfg, PARTITIONS)
    config = write_config(tmp_path / "w.toml", topics, bootstrap_servers=BOOTSTRAP, group_id=cfg.group_id)
    proc = None
    try:
        await produce_session(records, cfg)
        proc = Proc([sys.executable, "-m", "stream.runtime.faust_app", "worker", "--config", str(config), "--group",
                     cfg.group_id, "--mode", mode, "--take", "500"], tmp_path / "faust.log")
        deadline = time.monotonic() + 45
        # The app id is the consumer group: its committed offsets show when everything has been processed.
        while await _committed(cfg) < len(records):
            assert proc.alive(), proc.output()[-3000:]
            assert time.monotonic() < deadline, f"Faust runner did not commit everything\n{proc.output()[-3000:]}"
            await asyncio.sleep(0.5)
        assert proc.stop() == 0, proc.output()[-3000:]
        offline = replay(records, load_policy(), partitions=PARTITIONS)
        assert offline.outputs.notices, "the session must produce notices to compare"
        notices = [m.value for ms in (await read_topic(cfg, topics.notices)).values() for m in ms]
        assert sorted(notices) == sorted(model.encode(n) for n in offline.outputs.notices)  # byte for byte
        totals = [m.value for ms in (await read_topic(cfg, topics.window_totals)).values() for m in ms]
        assert Counter(totals) == Counter(model.encode(w) for w in offline.outputs.window_totals)
        dlq = [model.decode_dead_letter(m.value) for ms in (await read_topic(cfg, topics.dlq)).values() for m in ms]
        assert Counter(d.reason for d in dlq) == Counter(d.reason for d in offline.outputs.dead_letters)
    finally:
        if proc is not None:
            proc.stop()
        await delete_topics(cfg)
