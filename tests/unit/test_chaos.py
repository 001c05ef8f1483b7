"""The chaos harness's pure parts (load/chaos.py): the seeded fault plan and when a fault has healed."""

from __future__ import annotations

from collections import Counter

import pytest

from load.chaos import (
    ALL_KINDS,
    Chaos,
    ChaosOptions,
    FaultKind,
    FaultRecord,
    OffsetsSample,
    checks,
    heal_time,
    judged_from,
    plan_faults,
)
from load.latency import LatencySample
from stream.config import WorkerConfig


def test_the_plan_is_the_same_for_the_same_seed_and_another_for_another():
    a = plan_faults(7, ALL_KINDS, 30, 1200, workers=3)
    assert a == plan_faults(7, ALL_KINDS, 30, 1200, workers=3)
    assert a != plan_faults(8, ALL_KINDS, 30, 1200, workers=3)


def test_the_plan_takes_every_kind_in_turn_one_fault_per_slot_inside_the_run():
    plan = plan_faults(3, ALL_KINDS, 30, 1200, workers=2, first_at=5, tail=5)
    assert Counter(f.kind for f in plan) == {k: 6 for k in ALL_KINDS}
    slot = (1200 - 10) / 30
    for i, f in enumerate(plan):
        assert 5 + i * slot <= f.at <= 5 + i * slot + slot / 2
        assert 0 <= f.worker < 2
    assert [f.at for f in plan] == sorted(f.at for f in plan)


def test_a_plan_whose_faults_do_not_fit_the_run_is_refused():
    with pytest.raises(ValueError, match="faults in"):
        plan_faults(1, ALL_KINDS, 100, 60, workers=2)
    assert plan_faults(1, (FaultKind.WORKER_KILL,), 0, 60, workers=2) == []


def polls(rows: list[tuple[float, dict[int, int], dict[int, int]]]) -> list[OffsetsSample]:
    return [OffsetsSample(t, c, e) for t, c, e in rows]


def test_a_fault_heals_when_every_partition_passed_its_end_at_the_fault_and_the_lag_is_back():
    samples = polls([
        (0.0, {0: 90, 1: 90}, {0: 100, 1: 100}),   # lag 20: the steady level
        (1.0, {0: 100, 1: 95}, {0: 110, 1: 110}),  # lag 25
        # the fault at 1.5 s: ends then (the last poll before it) 110 / 110
        (2.0, {0: 100, 1: 95}, {0: 120, 1: 120}),
        (3.0, {0: 130, 1: 100}, {0: 130, 1: 130}),  # partition 1 still behind its end at the fault
        (4.0, {0: 135, 1: 112}, {0: 140, 1: 140}),  # both past 110, but lag 33 > 25
        (5.0, {0: 140, 1: 136}, {0: 145, 1: 145}),  # lag 14: healed
    ])
    healed, level, max_lag = heal_time(samples, began=1.5, acted=1.6)
    assert (healed, level, max_lag) == (5.0, 25, 45)
    # not before its action is over, even when the numbers say so
    assert heal_time(samples, began=1.5, acted=5.5)[0] is None
    # a fault before the first poll cannot be judged
    assert heal_time(samples, began=0.0, acted=0.1) == (None, None, 0)


def test_overlapping_faults_heal_to_the_steady_level_before_the_first_and_latency_windows_take_records_in_flight():
    chaos = Chaos(WorkerConfig(), brokers=None, opts=ChaosOptions(workers=1))  # type: ignore[arg-type]
    chaos.samples = polls([(t, {0: c}, {0: e}) for t, c, e in
                           [(0, 95, 100), (1, 195, 200), (2, 200, 300), (3, 210, 400), (4, 300, 500),
                            (5, 498, 505), (6, 600, 604)]])
    chaos.records = [FaultRecord("worker-kill", 1.5, at=1.5, action_s=0.1),
                     FaultRecord("broker-kill", 2.5, at=2.5, action_s=0.1)]
    samples = [LatencySample(committed_at=0.5, latency=0.1, records=10),   # before both: outside
               LatencySample(committed_at=4.0, latency=3.0, records=5),    # sent at 1.0, committed inside
               LatencySample(committed_at=6.5, latency=0.2, records=10)]   # sent after both healed: outside
    report = chaos.report(samples, warmup=0)
    first, second = report["faults"]
    assert not first["overlapped"] and second["overlapped"]
    assert first["pre_fault_lag"] == second["pre_fault_lag"] == 5  # the steady level before the chain
    assert first["healed_at"] == second["healed_at"] == 6
    assert first["latency_s"]["max"] == 3.0
    assert report["outside_records"] == 20 and report["latency_outside_faults_s"]["max"] == 0.2
    assert report["healed"] == 2 and set(report["by_kind"]) == {"worker-kill", "broker-kill"}


def test_a_scale_out_heals_only_after_its_scale_in_every_other_fault_from_its_start():
    add = FaultRecord("worker-add", 10.0, at=10.0, action_s=9.5)
    kill = FaultRecord("broker-kill", 10.0, at=10.0, action_s=20.0)
    assert judged_from(add) == 19.5 and judged_from(kill) == 10.0


def test_the_checks_fail_on_an_unhealed_fault_a_failed_action_an_unclean_sigterm_or_a_worker_that_died():
    def fault(kind: str, **details) -> dict:
        return {"kind": kind, "at": 1.0, "target": "w1", "details": details}

    good = {"faults": [fault("worker-term", exit_code=0), fault("worker-add", exit_code=0)], "healed": 2,
            "unexpected_exits": []}
    assert all(ok for _, ok, _ in checks(good))
    for bad in ({**good, "healed": 1},
                {**good, "faults": [fault("worker-term", exit_code=0), fault("broker-kill", error="RuntimeError: x")]},
                {**good, "faults": [fault("worker-term", exit_code=1), fault("worker-add", exit_code=0)]},
                {**good, "unexpected_exits": ["w2 exited with 1"]}):
        assert not all(ok for _, ok, _ in checks(bad)), bad
