"""`giftstream load state-scale` end to end at a tiny size against real `giftstream worker` processes and the
local broker (make kafka-up): every phase runs, settles and reports sane figures; no process is left behind."""

from __future__ import annotations

import json

import pytest

from load.state_scale import GapTracker
from tests.support.processes import BOOTSTRAP, run_cli

pytestmark = pytest.mark.kafka


def test_state_scale_runs_every_phase_and_reports_sane_figures(tmp_path):
    out = tmp_path / "report"
    r = run_cli("load", "state-scale", "--creators", "2000", "--partitions", "2", "--rate", "500", "--hold", "1",
                "--phase-timeout", "25", "--session-timeout-ms", "6000", "--bootstrap", BOOTSTRAP, "--out", str(out),
                timeout=58)
    assert r.returncode == 0, f"{r.stdout}\n{r.stderr}"
    report = json.loads((out / "report.json").read_text())
    b = report["build"]
    assert b["creators"] == 2000 and len(b["partitions"]) == 2
    # The production mix per creator (issue 16): a balance each, ~1.4 streaks, ~5 dedupe ids, ~4 records.
    assert 1.2 <= b["streaks"] / b["creators"] <= 1.6
    assert 4.0 <= b["dedupe_ids"] / b["creators"] <= 6.0
    assert 3.0 <= b["records"] / b["creators"] <= 5.0
    assert report["changelog"]["bytes_on_disk_after_build"] >= report["changelog"]["bytes_produced"] > 0
    phases = {p["phase"]: p for p in report["phases"]}
    assert list(phases) == ["restart", "add", "remove"]
    for name, p in phases.items():
        assert p["settled"], (name, p)
        assert 0 < p["time_to_ready_s"] <= p["time_to_commits_s"] < 25, (name, p)
        assert 0 <= p["longest_commit_gap_s"] < 25
        assert not p["expelled"], p
        assert all(w["peak_rss_mb"] >= w["rss_mb"] > 20 for w in p["workers"]), p["workers"]
    assert [len(phases[n]["workers"]) for n in ("restart", "add", "remove")] == [1, 2, 1]
    assert sorted(p for w in phases["add"]["workers"] for p in w["partitions"]) == [0, 1]
    assert phases["restart"]["restore_records"] == b["records"]  # the first worker restores the whole build
    assert phases["restart"]["restore_records_per_s"] > 0
    assert all(w["exit_code"] is not None for w in report["workers"])  # every worker stopped
    assert report["trickle"]["sent"] > 0 and report["trickle"]["send_errors"] == 0
    assert "| restart | yes |" in r.stdout and "| remove | yes |" in (out / "report.md").read_text()


def test_gap_tracker_counts_only_time_with_lag_and_no_commit():
    g = GapTracker()
    g.sample(0.0, {0: 0}, {0: 0})  # nothing to do
    g.sample(1.0, {0: 0}, {0: 5})  # lag, no commit yet
    g.sample(3.0, {0: 0}, {0: 9})
    assert g.longest == 3.0 - 0.0 and g.longest_partition == 0
    g.sample(3.5, {0: 9}, {0: 9})  # caught up
    g.sample(4.0, {0: 9}, {0: 9})  # idle without lag: no gap
    assert g.longest == 3.0
    g.reset(10.0)
    g.sample(10.5, {0: 9}, {0: 12})
    assert g.longest == 0.5
