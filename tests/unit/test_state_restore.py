"""Restoring a partition from its changelog as records arrive (stream.state.changelog.StateRestore), natively and
in Python, and from a checkpoint body plus the changelog's tail: always the state restore_state gives from
the whole log, so the restored engine continues exactly like an uninterrupted one."""

from __future__ import annotations

import asyncio
import itertools

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from stream.engine.native import NativePartitionEngine, native_available
from stream.engine.reference import Outputs, PartitionEngine
from stream.state.changelog import ChangelogWriter, StateRestore, body_records, engine_body, restore_state, state_body
from tests.support.accounts import ACCOUNT_POLICIES, account_sessions
from tests.support.differential import feed
from tests.support.events import T0, gift, sessions

KINDS = ["python", "native"] if native_available() else ["python"]


def engine_of(kind: str, policy, state=None):
    cls = NativePartitionEngine if kind == "native" else PartitionEngine
    return cls(policy, state=state)


def logged_run(kind: str, policy, records: list, cuts: list[int]):
    """The records (gifts, or any inputs of tests.support.accounts) through one engine in batches: the engine, its
    writer and the whole changelog written."""
    engine, writer, log = engine_of(kind, policy), ChangelogWriter(), []
    bounds = sorted({min(c, len(records)) for c in cuts} | {0, len(records)})
    for lo, hi in itertools.pairwise(bounds):
        feed(engine, records[lo:hi], lo, Outputs())
        log += writer.drain(engine)
    return engine, writer, log


def restore(kind: str, policy, log, chunk: int, body: bytes | None = None):
    """StateRestore over `log` in chunks of `chunk` records (after `body`, a checkpoint's, when given)."""
    async def run():
        r = StateRestore(lambda state: engine_of(kind, policy, state), native=kind == "native")
        if body is not None:
            await r.apply_body(body)
        for i in range(0, len(log), chunk):
            part = log[i:i + chunk]
            r.apply([k for k, _ in part], [v for _, v in part])
        return await r.finish()
    return asyncio.run(run())


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(records=sessions(), cuts=st.lists(st.integers(0, 200), max_size=5), chunk=st.integers(1, 50),
       first=st.sampled_from(KINDS), then=st.sampled_from(KINDS))
def test_a_restore_as_records_arrive_is_the_whole_logs_state(policy, records, cuts, chunk, first, then):
    engine, _writer, log = logged_run(first, policy, records, cuts)
    expected, expected_writer = restore_state(log)
    restored, restored_writer = restore(then, policy, log, chunk)
    assert restored.state == expected
    assert restored_writer.chunks == expected_writer.chunks
    assert restored.state.creators == engine.state.creators


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(records=sessions(), cuts=st.lists(st.integers(0, 200), min_size=1, max_size=5),
       at=st.integers(0, 200), back=st.integers(0, 30), first=st.sampled_from(KINDS), then=st.sampled_from(KINDS))
def test_a_checkpoint_and_the_changelogs_tail_give_the_whole_logs_state(policy, records, cuts, at, back, first,
                                                                         then):
    """A checkpoint taken after `at` records of the log, topped up with the log from `back` records before its
    offset (records read again are harmless), restores what the whole log restores, for either engine."""
    _, _, log = logged_run(first, policy, records, cuts)
    at = min(at, len(log))
    state, writer = restore_state(log[:at])
    body = engine_body(engine_of(first, policy, state), writer)
    assert sorted(body_records(body)) == sorted(body_records(state_body(state, writer.chunks)))
    expected, expected_writer = restore_state(log)
    restored, restored_writer = restore(then, policy, log[max(0, at - back):], 7, body)
    assert restored.state == expected
    assert restored_writer.chunks == expected_writer.chunks


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(items=account_sessions(), cuts=st.lists(st.integers(0, 60), max_size=4), chunk=st.integers(1, 50),
       at=st.integers(0, 200), first=st.sampled_from(KINDS), then=st.sampled_from(KINDS),
       policy_name=st.sampled_from(list(ACCOUNT_POLICIES)))
def test_accounts_restore_from_the_changelog_and_from_a_checkpoint(items, cuts, chunk, at, first, then, policy_name):
    """A changelog with account records (kind a) restores their accounts, and so does a checkpoint of them
    topped up with the log's tail, for either engine."""
    policy = ACCOUNT_POLICIES[policy_name]
    engine, _writer, log = logged_run(first, policy, items, cuts)
    expected, expected_writer = restore_state(log)
    assert expected.accounts == engine.state.accounts
    restored, restored_writer = restore(then, policy, log, chunk)
    assert restored.state == expected
    assert restored_writer.chunks == expected_writer.chunks
    at = min(at, len(log))
    state, writer = restore_state(log[:at])
    body = engine_body(engine_of(first, policy, state), writer)
    assert sorted(body_records(body)) == sorted(body_records(state_body(state, writer.chunks)))
    restored, restored_writer = restore(then, policy, log[at:], 7, body)
    assert restored.state == expected
    assert restored_writer.chunks == expected_writer.chunks


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(records=sessions(), cut=st.integers(0, 200), then=st.sampled_from(KINDS))
def test_a_restored_engine_continues_like_an_uninterrupted_one(policy, records, cut, then):
    whole = PartitionEngine(policy)
    expected = whole.process(records)
    whole.end_of_stream(expected)
    first, writer = PartitionEngine(policy), ChangelogWriter()
    got = first.process(records[:cut])
    engine, _ = restore(then, policy, writer.drain(first), 3)
    engine.process(records[cut:], None, got)
    engine.end_of_stream(got)
    assert got.notices == expected.notices and got.window_totals == expected.window_totals
    assert got.late == expected.late


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("bad", [
    (b"c:c1", b"\x93\xa2US\x01"),  # a creator record of 3 fields, not 6
    (b"w:c1\x1e100", b"\x92\x01"),  # a pane tally cut short
    (b"d:60000:x", b"\x90"),  # a chunk start that is not a number
    (b"w:c9\x1e100", b"\x92\x01\x01"),  # a pane of a creator the log never names
    (b"a:c1", b"\x94\xa2US\xa8verified\xa6paypal\x1e"),  # an account of 4 fields, not 5
    (b"a:c1", b"\x95\xa2US\xa8verified\xa6paypal\xa21e\x01"),  # an age that is not a number
])
def test_records_that_do_not_make_a_state_fail_the_restore(policy, kind, bad):
    engine = engine_of("python", policy)
    engine.process([gift(creator_id="c1", ts=T0)], [0], Outputs())
    log = [*ChangelogWriter().drain(engine), bad]
    with pytest.raises((ValueError, KeyError, msgspec.DecodeError)):
        restore(kind, policy, log, 100)


@pytest.mark.parametrize("kind", KINDS)
def test_a_cut_checkpoint_body_fails_the_restore(policy, kind):
    engine = engine_of(kind, policy)
    engine.process([gift(creator_id="c1", ts=T0)], [0], Outputs())
    writer = ChangelogWriter()
    writer.drain(engine)
    body = engine_body(engine, writer)
    with pytest.raises(ValueError):
        restore(kind, policy, [], 1, body[:-3])


@pytest.mark.parametrize("kind", KINDS)
def test_streak_records_of_the_older_map_form_restore_the_same(policy, kind):
    """Changelogs written before streaks were arrays hold them as maps of field names: both forms restore
    the same state."""
    engine = engine_of("python", policy)
    engine.process([gift(event_id=f"e{i}", creator_id="c1", gift_type=1, repeat_count=i + 1, repeat_end=i == 2,
                         group_id="g1", ts=T0 + i) for i in range(3)]
                   + [gift(event_id="e9", creator_id="c2", gift_type=1, group_id="g2", ts=T0 + 9)], [0, 1, 2, 3],
                   Outputs())
    log = ChangelogWriter().drain(engine)
    streaks = [(k, v) for k, v in log if k.startswith(b"s:")]
    assert len(streaks) == 2 and all(v[0] == 0x98 for _, v in streaks)  # arrays of 8 fields

    def as_map(value: bytes) -> bytes:
        fields = msgspec.msgpack.decode(value)
        names = ["creator_id", "region", "diamond_count", "count", "credited", "last_ts", "last_event_id", "open"]
        return msgspec.msgpack.encode(dict(zip(names, fields, strict=True)))

    older = [(k, as_map(v) if k.startswith(b"s:") else v) for k, v in log]
    assert restore(kind, policy, older, 5)[0].state == restore(kind, policy, log, 5)[0].state == engine.state
