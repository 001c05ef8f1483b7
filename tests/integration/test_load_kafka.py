"""`giftstream load run` against a real `giftstream worker` process and the local broker (make kafka-up)."""

from __future__ import annotations

import asyncio
import json

import pytest

from load.drain import free_port
from stream.config import WorkerConfig
from stream.kafka.topics import delete_topics
from tests.support.processes import BOOTSTRAP, run_cli, start_worker, unique_topics, wait_ready, write_config

pytestmark = pytest.mark.kafka
PARTITIONS = 3
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def test_load_run_measures_latency_and_verifies_against_ground_truth(tmp_path):
    suffix, topics = unique_topics("load")
    group = f"giftstream-{suffix}"
    config = write_config(tmp_path / "worker.toml", topics, bootstrap_servers=BOOTSTRAP, group_id=group)
    r = run_cli("topics", "create", "--config", str(config), "--partitions", str(PARTITIONS))
    assert r.returncode == 0, r.stderr
    port = free_port()
    worker = start_worker(config, port, tmp_path / "worker.log")
    try:
        wait_ready(port, worker)
        out = tmp_path / "report"
        r = run_cli("load", "run", "--config", str(config), "--rate", "5000", "--duration", "8", "--out", str(out),
                    "--creators", "60", "--senders", "4000", "--duplicate-rate", "0.01", "--late-rate", "0.005",
                    "--malformed-rate", "0.003", "--missing-end-rate", "0.03", "--drain-timeout", "30", "--quiet",
                    timeout=58)
        assert r.returncode == 0, f"{r.stderr}\n--- worker ---\n{worker.output()[-3000:]}"
    finally:
        worker.stop()
        asyncio.run(delete_topics(WorkerConfig(bootstrap_servers=BOOTSTRAP, topics=topics)))
    report = json.loads((out / "report.json").read_text())
    res = report["results"]
    assert 30_000 <= res["produced"] <= 40_000  # 5,000/s for 8 s (pacing on a shared machine)
    assert res["drained"] and res["final_lag"] == 0 and res["committed"] == res["produced"]
    assert res["throughput"] > 1_000
    lat = res["latency_s"]
    assert lat["records"] == res["produced"]
    assert 0 < lat["p50"] <= lat["p90"] <= lat["p99"] <= lat["max"] < 30
    v = report["verification"]
    assert v["passed"] is True, v
    assert {c["name"] for c in v["checks"]} >= {"notices equal the offline replay's (byte for byte)",
                                                "no duplicate notice (unique notice ids)",
                                                "balances (streaks timed out) equal the independent ground truth"}
    assert v["records"] == res["produced"] and v["partitions"] == PARTITIONS
    assert len(report["series"]["t"]) >= 8
    md = (out / "report.md").read_text()
    assert "Verification: PASSED" in md
    for name in ("rate.png", "lag.png", "latency.png"):
        assert (out / name).read_bytes()[:8] == PNG_MAGIC
    assert "latency p50" in r.stderr and "ok" in r.stderr  # the summary on stderr


def test_generate_to_kafka_paces_and_keys_records_like_produce_session(tmp_path):
    from load.generator import TrafficConfig, generate
    from stream.kafka.routing import partition_for
    from stream.kafka.session_io import key_of, read_topic

    _suffix, topics = unique_topics("gen")
    cfg = WorkerConfig(bootstrap_servers=BOOTSTRAP, topics=topics)
    try:
        r = run_cli("load", "generate", "--to-kafka", "--bootstrap", BOOTSTRAP, "--topic", topics.gifts,
                    "--partitions", str(PARTITIONS), "--rate", "4000", "--events", "6000", "--seed", "5",
                    "--creators", "40", "--quiet", timeout=58)
        assert r.returncode == 0, r.stderr
        summary = json.loads(r.stdout)
        assert summary["records"] == 6000 and 1.2 <= summary["seconds"] <= 6  # ~1.5 s at 4,000/s
        got = asyncio.run(read_topic(cfg, topics.gifts))
    finally:
        asyncio.run(delete_topics(cfg))
    records = list(generate(TrafficConfig(seed=5, events=6000, creators=40, rate_per_s=4000.0)))
    want: dict[int, list[bytes]] = {p: [] for p in range(PARTITIONS)}
    for raw in records:
        key, _ = key_of(raw)
        want[0 if key is None else partition_for(key, PARTITIONS)].append(raw)
    assert {p: [m.value for m in ms] for p, ms in got.items()} == want  # same partition, same order
