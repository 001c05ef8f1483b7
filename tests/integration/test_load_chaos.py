"""`giftstream load run --chaos` on a single node of the test's own (tests/support/private_broker.py, so the
broker it SIGKILLs is nobody else's): two of each kind of fault while gifts, payouts and accounts flow, and the
run's verification must find nothing lost and nothing twice (notices byte for byte against the offline replay,
unique notice ids, balances against the ground truth), every fault healed and no worker ended by itself."""

from __future__ import annotations

import json

import pytest

from tests.support.private_broker import CHAOS_PORT, started_private_broker
from tests.support.processes import run_cli, unique_topics, write_config

pytestmark = [pytest.mark.kafka, pytest.mark.slow]


@pytest.fixture(scope="module")
def broker(tmp_path_factory):
    with started_private_broker(tmp_path_factory, "kafka-chaos", CHAOS_PORT) as b:
        yield b


def test_a_short_chaos_run_loses_and_duplicates_nothing(broker, tmp_path):
    suffix, topics = unique_topics("chaos")
    config = write_config(tmp_path / "worker.toml", topics, bootstrap_servers=broker.bootstrap,
                          group_id=f"giftstream-{suffix}")
    out = tmp_path / "report"
    r = run_cli("load", "run", "--config", str(config), "--chaos", "all", "--faults", "10", "--workers", "2",
                "--session-timeout-ms", "3000", "--duration", "90", "--rate", "2000", "--accounts",
                "--creators", "200", "--senders", "10000", "--duplicate-rate", "0.01", "--late-rate", "0.005",
                "--drain-timeout", "120", "--out", str(out), "--quiet", env=broker.env, timeout=600)
    report = json.loads((out / "report.json").read_text()) if (out / "report.json").exists() else {}
    checks = {c["name"]: c for c in report.get("verification", {}).get("checks", [])}
    assert r.returncode == 0, f"{r.stderr[-4000:]}\n{json.dumps(checks, indent=1)}"
    chaos = report["chaos"]
    assert [f["kind"] for f in chaos["faults"]].count("broker-kill") == 2
    assert {k: v["faults"] for k, v in chaos["by_kind"].items()} == {
        "worker-kill": 2, "worker-term": 2, "worker-stop": 2, "broker-kill": 2, "worker-add": 2}
    assert chaos["healed"] == 10 and not chaos["unexpected_exits"]
    assert all(checks[name]["passed"] for name in (
        "notices equal the offline replay's (byte for byte)", "no duplicate notice (unique notice ids)",
        "balances (streaks timed out) equal the independent ground truth",
        "payouts applied equal the offline replay's and the ground truth's"))
    res = report["results"]
    assert res["drained"] and res["committed"] == res["produced"] and res["send_failures"] == 0
    md = (out / "report.md").read_text()
    assert "## Faults" in md and "Verification: PASSED" in md
