"""Properties over random sessions: exact totals against the independent reference, and results that do
not depend on batching, partition restarts or snapshot/restore."""

from __future__ import annotations

import itertools
from fractions import Fraction

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from load import ground_truth
from stream.engine.native import Engine, make_engine
from stream.engine.reference import Outputs
from stream.runtime.replay import replay
from stream.state.tables import restore, snapshot
from tests.support.events import gift, sessions

pytestmark = pytest.mark.usefixtures("both_engines")  # every test runs on both engines

MIN = 60_000
REGIONS = ["US", "ID", "KR", "TR"]


def _reference(policy, records, partitions):
    rates = {r: p.diamonds_per_coin for r, p in policy.regions.items()}
    return ground_truth.expected(records, rates, partitions, policy.max_future_ms, policy.dedupe_horizon_ms,
                              policy.max_record_bytes)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(records=sessions(), partitions=st.sampled_from([1, 3]))
def test_balances_match_the_reference_exactly(policy, records, partitions):
    result = replay(records, policy, partitions=partitions, batch_size=17, final=True)
    ref = _reference(policy, records, partitions)
    got = {c: s.balance for e in result.engines.values() for c, s in e.state.creators.items()}
    assert got == ref["balances"]
    assert result.summary["accepted"] == ref["accepted"]
    assert result.summary["open_streaks"] == 0


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(records=sessions(in_order=True))
def test_window_totals_match_the_reference_when_nothing_is_late(policy, records):
    result = replay(records, policy, partitions=2, final=True)
    ref = _reference(policy, records, 2)
    windows = [(w.name, w.size_ms, w.hop_ms) for w in policy.windows]
    expected = {k: v for k, v in ground_truth.window_totals(ref["credits"], windows).items() if v}
    got = {(w.creator_id, w.window, w.window_start): w.milli_diamonds for w in result.outputs.window_totals}
    assert got == expected
    assert not result.outputs.late


def uninterrupted(policy, records) -> tuple[Engine, Outputs]:
    """The run every interrupted run must equal: one engine, one batch, then end of session."""
    whole = make_engine(policy)
    expected = whole.process(records)
    whole.end_of_stream(expected)
    return whole, expected


def cut_points(cuts: list[int], n: int) -> list[int]:
    return sorted({min(c, n) for c in cuts} | {0, n})


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(records=sessions(), cuts=st.lists(st.integers(0, 200), max_size=4))
def test_snapshot_restore_and_batching_equal_an_uninterrupted_run(policy, records, cuts):
    whole, expected = uninterrupted(policy, records)
    eng = make_engine(policy)
    got = Outputs()
    for lo, hi in itertools.pairwise(cut_points(cuts, len(records))):
        eng.process(records[lo:hi], list(range(lo, hi)), got)
        eng = make_engine(policy, state=restore(snapshot(eng.state)))  # a restart at every cut
    eng.end_of_stream(got)
    assert got.notices == expected.notices
    assert got.window_totals == expected.window_totals
    assert got.late == expected.late
    assert [d.reason for d in got.dead_letters] == [d.reason for d in expected.dead_letters]
    assert eng.state == whole.state  # field by field (the native engine's dict order differs)


def test_reference_agrees_with_a_hand_count():
    recs = [gift(diamond_count=5, repeat_count=2), gift(gift_type=1, group_id="g", repeat_count=3),
            gift(gift_type=1, group_id="g", repeat_count=9, repeat_end=True)]
    ref = ground_truth.expected(recs, {"US": Fraction(1)}, 1, 3_600_000, 7_200_000)
    assert ref["balances"] == {"c1": (10 + 45) * 1000}


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(records=sessions(), cuts=st.lists(st.integers(0, 200), max_size=4))
def test_changelog_restore_equals_an_uninterrupted_run(policy, records, cuts):
    from stream.state.changelog import ChangelogWriter, restore_state

    whole, expected = uninterrupted(policy, records)
    changelog: list = []
    eng, writer, got = make_engine(policy), ChangelogWriter(), Outputs()
    for lo, hi in itertools.pairwise(cut_points(cuts, len(records))):
        eng.process(records[lo:hi], list(range(lo, hi)), got)
        changelog.extend(writer.drain(eng))  # what one transaction commits
        state, writer = restore_state(changelog)  # a crash right after the commit
        eng = make_engine(policy, state=state)
    eng.end_of_stream(got)
    assert got.notices == expected.notices
    assert got.window_totals == expected.window_totals
    assert got.late == expected.late
    assert {c: (s.balance, s.crossings) for c, s in eng.state.creators.items()} == {
        c: (s.balance, s.crossings) for c, s in whole.state.creators.items()}
