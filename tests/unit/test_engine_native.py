"""The compiled engine (stream.engine.native, Rust) against the Python reference engine (stream.engine.reference):
on the same input, record for record, the same outputs, counters, changelog records and state."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from stream.engine.native import NativePartitionEngine, native_available
from stream.engine.reference import PartitionEngine
from stream.kafka.routing import partition_for
from stream.runtime.replay import replay
from stream.state.changelog import ChangelogWriter, restore_state
from stream.state.tables import Account
from tests.support.accounts import ACCOUNT_POLICIES, AccountInput, PayoutInput, account, account_sessions, closing
from tests.support.differential import assert_same_outputs, run_side_by_side
from tests.support.events import T0, gift, payout, sessions

pytestmark = pytest.mark.skipif(not native_available(), reason="native engine not built")

FIELDS = ["event_id", "room_id", "creator_id", "sender_id", "gift_id", "gift_type", "diamond_count",
          "repeat_count", "repeat_end", "ts", "region", "group_id"]


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(records=sessions(), cuts=st.lists(st.integers(0, 200), max_size=5),
       payouts=st.lists(st.tuples(st.sampled_from(["p1", "p2", "p3"]), st.sampled_from(["c0", "c1", "c2"]),
                                  st.integers(1, 40_000_000)), max_size=4))
def test_native_engine_equals_the_reference_on_random_sessions(policy, records, cuts, payouts):
    run_side_by_side(policy, records, cuts, [payout(*p) for p in payouts])


# The compiled engine holds ids that are canonical decimal numbers as numbers and any other id as text
# (native/src/ids.rs): every spelling must behave exactly like the text in the reference engine, including
# ids holding the streak key's separator (outside the id pattern: both engines must reject them alike).
ID_SPELLINGS = [
    lambda k: str(k + 1),                 # canonical: held as a number
    lambda k: str(k),                     # canonical, "0" included
    lambda k: f"0{k}",                    # leading zero: text
    lambda k: str(10**19 + k),            # 20 digits: text
    lambda k: str(10**19 - 1 - k),        # 19 digits: the largest numbers
    lambda k: f"{k % 3}\x1f{k % 2}",      # holds the separator: text, collides across fields
    lambda k: f"x{k}",
]


@st.composite
def respelled_sessions(draw):
    """A random session whose ids (events, rooms, senders, groups) are respelled in the forms above."""
    records = draw(sessions())
    spelling: dict[str, str] = {}
    out = []
    for raw in records:
        try:
            rec = orjson.loads(raw)
        except orjson.JSONDecodeError:
            out.append(raw)
            continue
        for field in ("event_id", "room_id", "sender_id", "group_id"):
            old = rec.get(field)
            if isinstance(old, str) and old:
                if old not in spelling:
                    spelling[old] = draw(st.sampled_from(ID_SPELLINGS))(len(spelling))
                rec[field] = spelling[old]
        out.append(orjson.dumps(rec))
    return out


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(records=respelled_sessions(), cuts=st.lists(st.integers(0, 200), max_size=5))
def test_numeric_and_text_ids_behave_like_their_text(policy, records, cuts):
    run_side_by_side(policy, records, cuts)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(records=respelled_sessions(), cut=st.integers(0, 200))
def test_numeric_ids_survive_the_changelog(policy, records, cut):
    """Ids written to the changelog as text come back as the same ids (numbers or text)."""
    whole, expected, b, got = restored_run(policy, records, cut, NativePartitionEngine, NativePartitionEngine)
    assert_same_outputs(got, expected)
    assert b.state == whole.state


def restored_run(policy, records, cut, first_kind, then_kind):
    """The records through one engine uninterrupted (of the reference kind), and through a first_kind engine
    up to `cut` then a then_kind engine restored from its changelog: (whole, its outputs, restored, its
    outputs)."""
    whole = PartitionEngine(policy) if PartitionEngine in (first_kind, then_kind) else first_kind(policy)
    expected = whole.process(records)
    whole.end_of_stream(expected)
    a, writer = first_kind(policy), ChangelogWriter()
    got = a.process(records[:cut], None)
    state, _ = restore_state(writer.drain(a))
    b = then_kind(policy, state=state)
    b.process(records[cut:], None, got)
    b.end_of_stream(got)
    return whole, expected, b, got


# Values a field may take in a fuzzed record: right and wrong types, bounds, escapes, unicode.
ODD_VALUES = st.one_of(
    st.integers(-2**63 - 5, 2**63 + 5), st.sampled_from([0, 1, -1, 2**31 - 1, 2**31, 10_000_000, 10_000_001,
                                                         1_000_000, 1_000_001, 10**14, 10**14 + 1]),
    st.floats(allow_nan=False, allow_infinity=False), st.booleans(), st.none(), st.text(max_size=70),
    st.sampled_from(["US", "ZZ", "", "a\"b", "é", "x" * 64, "x" * 65, "é" * 64, "é" * 65]),
    st.lists(st.integers(), max_size=2), st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
)


@st.composite
def fuzzed_records(draw) -> bytes:
    """A valid record with some fields replaced, dropped, added or the bytes damaged."""
    rec = orjson.loads(gift(event_id=draw(st.sampled_from(["e1", "e2", "e3"])), group_id="g",
                            gift_type=draw(st.sampled_from([0, 1])), ts=T0 + draw(st.integers(0, 10**7))))
    for key in draw(st.lists(st.sampled_from([*FIELDS, "extra"]), max_size=3)):
        action = draw(st.sampled_from(["replace", "drop"]))
        if action == "drop":
            rec.pop(key, None)
        else:
            rec[key] = draw(ODD_VALUES)
    raw = json.dumps(rec, separators=(",", ":"), ensure_ascii=draw(st.booleans())).encode()  # big ints too
    form = draw(st.sampled_from(["plain", "spaces", "escaped", "duplicate", "damaged", "negative zero"]))
    if form == "spaces":
        raw = b" " + raw.replace(b":", b" : ").replace(b",", b" ,\n") + b"\t"
    elif form == "escaped":
        raw = raw.replace(b'"c1"', b'"c\\u0031"')
    elif form == "duplicate":
        raw = raw[:-1] + b',"event_id":"dup"}'
    elif form == "damaged" and raw:
        i = draw(st.integers(0, len(raw) - 1))
        raw = raw[:i] + draw(st.binary(max_size=3)) + raw[i + 1:]
    elif form == "negative zero":
        raw = raw.replace(b'"gift_type":0', b'"gift_type":-0')
    return raw


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(records=st.lists(fuzzed_records(), min_size=1, max_size=12), cuts=st.lists(st.integers(0, 12), max_size=2))
def test_native_decoding_accepts_and_rejects_exactly_what_msgspec_does(policy, records, cuts):
    run_side_by_side(policy, [gift(event_id="first", ts=T0), *records], cuts)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(records=sessions(), cut=st.integers(0, 200), first=st.sampled_from(["python", "native"]))
def test_state_moves_between_engines(policy, records, cut, first):
    """A partition restored from the other engine's changelog continues exactly like an uninterrupted run."""
    kinds = [PartitionEngine, NativePartitionEngine]
    whole, expected, b, got = restored_run(policy, records, cut, *(kinds if first == "python" else kinds[::-1]))
    assert got.notices == expected.notices and got.window_totals == expected.window_totals
    assert got.late == expected.late
    assert b.state == whole.state


def test_replay_routes_and_orders_outputs_like_the_reference(policy):
    from stream.kafka.session_files import read_session

    records = read_session("stream/data/demo-session.jsonl.gz")[:8000]
    ref = replay(records, policy, partitions=4, batch_size=1000, final=True, engine="python")
    got = replay(records, policy, partitions=4, batch_size=1000, final=True, engine="native")
    assert_same_outputs(ref.outputs, got.outputs)
    assert [e.state for e in ref.engines.values()] == [e.state for e in got.engines.values()]
    assert {k: v for k, v in ref.summary.items() if k not in ("seconds", "events_per_second")} == \
        {k: v for k, v in got.summary.items() if k not in ("seconds", "events_per_second")}


@given(key=st.binary(max_size=40), partitions=st.integers(1, 64))
def test_native_murmur2_partitions_like_kafka(key, partitions):
    from stream import _native
    assert _native.partition_for(key, partitions) == partition_for(key, partitions)


def test_the_http_view_of_a_creator_is_the_same(policy):
    records = [gift(diamond_count=7, ts=T0 + i * 60_000) for i in range(30)]
    py, native = PartitionEngine(policy), NativePartitionEngine(policy)
    py.process(records)
    native.process(records)
    assert py.creator("c1") == native.creator("c1")
    assert native.creator("nobody") is None
    assert (py.watermark, py.close_cursor) == (native.watermark, native.close_cursor)


# ---------------------------------------------------------------- creator accounts

@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(items=account_sessions(), cuts=st.lists(st.integers(0, 60), max_size=4),
       policy_name=st.sampled_from(list(ACCOUNT_POLICIES)), partitions=st.sampled_from([1, 2]))
def test_native_engine_equals_the_reference_with_accounts(items, cuts, policy_name, partitions):
    """Accounts interleaved with gifts and payouts: the same notices (those an account record triggers too), dead
    letters, counters, changelog records and state; and the native engine restored from its changelog holds the
    same state and goes on alike."""
    run_side_by_side(ACCOUNT_POLICIES[policy_name], items, cuts, partition=partitions - 1, partitions=partitions,
                     restore=True)


def test_accounts_side_by_side_on_a_fixed_session():
    """Each case once, as partition 1 of 2 under a policy with no default region (c0 and c4 are partition 0's)."""
    policy = ACCOUNT_POLICIES["no default region"]
    s = 1000
    items = [
        gift(event_id="1", creator_id="c1", diamond_count=2999, ts=T0),  # no account: the missing status's notice
        gift(event_id="2", creator_id="c2", region=..., ts=T0 + 1 * s),  # no region anywhere: rejected
        account("c2", "DE", "restricted", "bank", 30, T0 + 2 * s),
        gift(event_id="3", creator_id="c2", region=..., diamond_count=1500, repeat_count=3, ts=T0 + 3 * s),  # in DE
        account("c2", "DE", "verified", "bank", 30, T0 + 4 * s),  # eligible above the threshold: a notice now
        PayoutInput(payout("p1", "c2", 4_000_000)),  # re-armed
        closing("c2", T0 + 5 * s),
        gift(event_id="4", creator_id="c2", region="US", diamond_count=2999, ts=T0 + 6 * s),  # closed: no notice
        closing("c3", T0 + 7 * s),  # closed before anything named it: no region
        gift(event_id="5", creator_id="c3", region=..., ts=T0 + 8 * s),  # rejected
        gift(event_id="6", creator_id="c3", region="KR", gift_type=1, diamond_count=700, repeat_count=2,
             group_id="g1", ts=T0 + 9 * s),
        account("c3", "KR", "verified", "bank", 18, T0 + 10 * s),  # under KR's min age
        gift(event_id="7", creator_id="c3", region="KR", gift_type=1, diamond_count=700, repeat_count=50,
             group_id="g1", repeat_end=True, ts=T0 + 11 * s),
        account("c3", "KR", "verified", "bank", 19, T0 + 12 * s),  # of age: a notice now
        account("c5", status="gold", ts=T0), account("c5", method="crypto", ts=T0), account("c5", key=b"c1", ts=T0),
        account("c0", ts=T0), closing("c4", T0), AccountInput(None, None, T0), AccountInput(b"c5", b"{oops", T0),
        gift(event_id="8", creator_id="c0", ts=T0 + 13 * s),  # not this partition's
        account("c5", "ID", "standard", "paypal", 40, T0 + 14 * s),
        gift(event_id="9", creator_id="c5", region=..., diamond_count=500, ts=T0 + 15 * s),  # in ID: a notice
        gift(event_id="9", creator_id="c5", region=..., diamond_count=500, ts=T0 + 15 * s),  # a duplicate
    ]
    result = run_side_by_side(policy, items, [3, 9, 14], partition=1, partitions=2, restore=True)
    out = result.outputs
    assert [(n.creator_id, n.trigger, n.account_status, n.payout_method, n.region) for n in out.notices] == [
        ("c1", "gift", "standard", "paypal", "US"), ("c2", "account", "verified", "bank", "DE"),
        ("c3", "account", "verified", "bank", "KR"), ("c5", "gift", "standard", "paypal", "ID")]
    assert [d.reason for d in out.dead_letters] == [
        "unknown_region", "unknown_region", "unknown_account_status", "unknown_payout_method", "key_mismatch",
        "wrong_partition", "wrong_partition", "invalid_value", "not_json", "wrong_partition"]
    assert "has no account record" in out.dead_letters[0].detail
    assert out.stats["gifts_without_account"] == 1 and out.stats["duplicates"] == 1
    assert (out.stats["accounts"], out.stats["accounts_closed"]) == (5, 2)
    accounts = result.native.state.accounts
    assert accounts["c2"] == Account("DE", "closed", "bank", 30, T0 + 5 * s)
    assert accounts["c3"] == Account("KR", "verified", "bank", 19, T0 + 12 * s)
    assert result.native.creator("c2").region == "DE" and result.native.sizes().accounts == 3


THP_LINE = "THP_enabled:"


def _huge_pages_enabled_after_import(env_value: str | None) -> str:
    """Whether a fresh interpreter that imports stream._native may still get transparent huge pages (the
    kernel's THP_enabled line of /proc/self/status), with MIMALLOC_ALLOW_THP unset or set to `env_value`."""
    env = {k: v for k, v in os.environ.items() if k != "MIMALLOC_ALLOW_THP"}
    if env_value is not None:
        env["MIMALLOC_ALLOW_THP"] = env_value
    code = ("import stream._native\n"
            f"print(next(l.split()[1] for l in open('/proc/self/status') if l.startswith({THP_LINE!r})))")
    return subprocess.run([sys.executable, "-c", code], env=env, check=True, capture_output=True,
                          text=True).stdout.strip()


@pytest.mark.skipif(not sys.platform.startswith("linux") or THP_LINE not in Path("/proc/self/status").read_text(),
                    reason="the kernel does not report THP_enabled")
def test_the_compiled_engine_opts_the_process_out_of_huge_pages_unless_mimalloc_is_told_otherwise():
    assert _huge_pages_enabled_after_import(None) == "0"
    assert _huge_pages_enabled_after_import("1") == "1"  # the operator's MIMALLOC_ALLOW_THP decides
