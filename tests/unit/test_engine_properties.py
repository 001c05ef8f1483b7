"""Properties over random sessions: exact totals, notices (every field, fees included) and crossings against the
independent reference, with creator accounts and payouts between the gifts; and results that do not depend on
batching, partition restarts or snapshot/restore."""

from __future__ import annotations

import itertools
import json
import re
import tomllib
from collections import defaultdict
from importlib import resources

import msgspec
import orjson
import pytest
from aiokafka.partitioner import murmur2
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from load import ground_truth
from stream.engine.model import decode_account, decode_payout
from stream.engine.native import Engine, make_engine
from stream.engine.policy import parse_policy
from stream.engine.reference import Outputs
from stream.kafka.routing import PartitionCache
from stream.runtime.replay import replay
from stream.state.tables import restore, snapshot
from tests.support.events import T0, WHOLE_BALANCE, account, account_sessions, gift, payout, sessions

pytestmark = pytest.mark.usefixtures("both_engines")  # every test runs on both engines

MIN = 60_000
REGIONS = ["US", "ID", "KR", "TR"]


def _strict_policy():
    """The built-in policy without a default region, and creators without an account record not eligible."""
    data = tomllib.loads(resources.files("stream.data").joinpath("policy.default.toml").read_text())
    del data["accounts"]["default_region"]
    data["accounts"]["missing_status"] = "restricted"
    data["regions"]["GB"]["threshold_cents"] = 700  # one threshold for every status
    return parse_policy(data, "strict")


STRICT = _strict_policy()


# ------------------------------------------------------------------------------------- the independent reference
#
# It reads the same records and the policy's settings, and shares no code with the engines: JSON by json, its own
# rounding, its own thresholds, crossings and fees, written from the rules (stream.engine.policy's and
# stream.engine.reference's docstrings, schemas/payout-notice.schema.json), one record at a time.

_ID = re.compile(r"[0-9A-Za-z_-]{1,64}")
_GIFT = {"event_id": str, "room_id": str, "creator_id": str, "sender_id": str, "gift_id": int, "gift_type": int,
         "diamond_count": int, "repeat_count": int, "repeat_end": bool, "ts": int}


def _half_up(num: int, den: int) -> int:
    """num / den rounded half up to an integer (num >= 0): the policy's one rounding rule."""
    return (2 * num + den) // (2 * den)


def _gift_problem(raw: bytes) -> tuple[str | None, dict | None]:
    """The reason a gift record is bad input (for the kinds of bad record the sessions hold), or its fields."""
    try:
        rec = json.loads(raw)
    except ValueError:
        return "not_json", None
    assert isinstance(rec, dict) and all(type(rec.get(k)) is t for k, t in _GIFT.items()), rec
    assert all(_ID.fullmatch(rec[k]) for k in ("event_id", "room_id", "creator_id", "sender_id")), rec
    if rec["diamond_count"] < 1 or rec["repeat_count"] < 1:
        return "non_positive_count", None
    return None, rec


def _reference(policy, steps: list[tuple[str, list]], partitions: int) -> dict:
    """What the engines must produce for `steps` (see events.account_sessions), each partition fed its creators'
    records in step order, then the end of the session; and the steps to feed them ("steps": a WHOLE_BALANCE
    payout written out as the creator's balance at that point)."""
    regions = policy.regions
    watermark: dict[int, int] = {}
    seen: set[str] = set()
    creators: dict[str, dict] = {}  # creator -> region, balance, crossings, above, low
    accounts: dict[str, dict] = {}  # creator -> region, status, method, age, ts
    streaks: dict[tuple, dict] = {}
    paid: set[str] = set()
    notices: list[dict] = []
    credits: list[tuple[str, int, int]] = []
    rejected: list[tuple[str, str]] = []
    accepted = 0

    def partition(creator: str) -> int:
        return (murmur2(creator.encode()) & 0x7FFFFFFF) % partitions

    def rate(region: str) -> int:
        return int(regions[region].diamonds_per_coin * 1000)

    def status_of(creator: str) -> str:
        a = accounts.get(creator)
        return policy.missing_status if a is None else a["status"]

    def threshold_cents(creator: str) -> int | None:
        """None: no notice while so (the region, the status or the age is not eligible, or the account closed)."""
        c, a = creators[creator], accounts.get(creator)
        rp, status = regions[c["region"]], status_of(creator)
        if status == "closed" or not policy.statuses[status] or not rp.eligible:
            return None
        if a is not None and a["age"] < rp.min_age:
            return None
        return rp.thresholds_cents[status]

    def reached(creator: str) -> bool:
        """The balance's exact value (not the rounded one) is at least the threshold."""
        cents, c = threshold_cents(creator), creators[creator]
        return cents is not None and c["balance"] * regions[c["region"]].diamond_value_micro_usd >= cents * 10**7

    def look(creator: str) -> None:
        """The threshold is looked at (a credit, a payout, an account record): a notice out re-arms when the lowest
        balance since it was worth less than the threshold now. No threshold now: it waits (nothing is forgotten,
        the lowest balance is kept)."""
        cents, c = threshold_cents(creator), creators[creator]
        if c["above"] and cents is not None and c["low"] * regions[c["region"]].diamond_value_micro_usd < cents * 10**7:
            c["above"] = False

    def notice(creator: str, event_id: str | None, ts: int) -> None:
        c, a = creators[creator], accounts.get(creator)
        rp = regions[c["region"]]
        c["crossings"] += 1
        c["above"] = True
        c["low"] = c["balance"]  # the lowest balance since this notice, so far
        method = rp.payout_method if a is None else a["method"]
        gross = _half_up(c["balance"] * rp.diamond_value_micro_usd, 1000 * 10_000)
        payable = min(gross, rp.daily_cap_cents)
        service = _half_up(payable * rp.service_fee_bps, 10_000)
        rest = payable - service
        fee = rp.fees[method]
        method_fee = min(rest, fee.fixed_cents + _half_up(rest * fee.rate_bps, 10_000)) if rest > 0 else 0
        notices.append({
            "notice_id": f"pn-{creator}-{c['crossings']}", "creator_id": creator, "region": c["region"],
            "account_status": status_of(creator), "payout_method": method, "crossing_seq": c["crossings"],
            "balance_milli_diamonds": c["balance"], "gross_cents": gross, "payable_cents": payable,
            "service_fee_bps": rp.service_fee_bps, "service_fee_cents": service, "method_fee_cents": method_fee,
            "net_cents": rest - method_fee, "threshold_cents": rp.thresholds_cents[status_of(creator)],
            "daily_cap_cents": rp.daily_cap_cents, "currency": "USD", "policy_version": policy.version,
            "trigger": "gift" if event_id is not None else "account", "trigger_event_id": event_id,
            "trigger_ts": ts})

    def account_region(creator: str) -> str:
        a = accounts.get(creator)
        return a["region"] if a is not None else ""

    def credit(creator: str, region: str, milli: int, ts: int, event_id: str) -> None:
        home = account_region(creator) or region  # the creator's region follows its account, else its credits
        c = creators.setdefault(creator, {"region": home, "balance": 0, "crossings": 0, "above": False, "low": 0})
        c["region"] = home
        c["balance"] += milli
        credits.append((creator, ts, milli))
        look(creator)
        if not c["above"] and reached(creator):
            notice(creator, event_id, ts)

    def close(s: dict, ts: int, event_id: str) -> None:
        delta, s["credited"], s["open"] = s["count"] - s["credited"], s["count"], False
        if delta:
            credit(s["creator"], s["region"], s["coins"] * delta * rate(s["region"]), ts, event_id)

    def time_out(p: int, until: int | None) -> None:
        """Credit the open streaks of partition p whose timeout is due by `until` (None: all), earliest first."""
        due = [(s["last_ts"] + policy.streak_timeout_ms, "\x1f".join(map(str, key)), s)
               for key, s in streaks.items()
               if s["open"] and s["partition"] == p and (until is None or s["last_ts"] + policy.streak_timeout_ms
                                                         <= until)]
        for _, _, s in sorted(due, key=lambda d: d[:2]):
            close(s, s["last_ts"], s["last_event_id"])

    def streak_event(rec: dict, region: str, p: int) -> None:
        key = (rec["room_id"], rec["sender_id"], rec["gift_id"], rec["group_id"])
        assert rec["group_id"], "the sessions' streaks all have a group id"
        s = streaks.get(key)
        ts, event_id, count = rec["ts"], rec["event_id"], rec["repeat_count"]
        if s is None:  # a streak is priced in the region of its first event
            s = streaks[key] = {"creator": rec["creator_id"], "region": region, "coins": rec["diamond_count"],
                                "count": count, "credited": 0, "last_ts": ts, "last_event_id": event_id,
                                "open": True, "partition": p}
            if rec["repeat_end"]:
                close(s, ts, event_id)
        elif s["open"]:
            s["count"] = max(s["count"], count)
            if ts >= s["last_ts"]:
                s["last_ts"], s["last_event_id"] = ts, event_id
            if rec["repeat_end"]:
                close(s, s["last_ts"], event_id)
        elif count > s["credited"]:  # a straggler with more units than were credited
            s["count"], s["last_ts"] = count, max(s["last_ts"], ts)
            close(s, ts, event_id)

    def gift_record(raw: bytes) -> None:
        nonlocal accepted
        problem, rec = _gift_problem(raw)
        if problem is not None:
            rejected.append(("gifts", problem))
            return
        creator, ts = rec["creator_id"], rec["ts"]
        p, named = partition(creator), rec.get("region", "")
        wm = watermark.get(p)
        if (named not in regions) if named else (policy.default_region is None and not account_region(creator)):
            problem = "unknown_region"  # a region the policy does not list, or none to be found
        elif wm is not None and ts > wm + policy.max_future_ms:
            problem = "ts_too_far_future"
        elif wm is not None and ts < wm - policy.dedupe_horizon_ms:
            problem = "ts_too_old"
        if problem is not None:
            rejected.append(("gifts", problem))
            return
        if rec["event_id"] in seen:
            return
        seen.add(rec["event_id"])
        accepted += 1
        if wm is None or ts > wm:
            watermark[p] = ts
            if wm is not None:
                time_out(p, ts)
        region = account_region(creator) or named or policy.default_region
        if rec["gift_type"] == 1:
            streak_event(rec, region, p)
        else:
            credit(creator, region, rec["diamond_count"] * rec["repeat_count"] * rate(region), ts, rec["event_id"])

    def account_record(key: bytes | None, value: bytes | None, ts: int) -> None:
        if value is None:  # a tombstone: closed, keeping what the account had (else the creator's region)
            creator = key.decode()
            prev, c = accounts.get(creator), creators.get(creator)
            accounts[creator] = {"region": prev["region"] if prev else (c["region"] if c else ""),
                                 "status": "closed", "method": prev["method"] if prev else "",
                                 "age": prev["age"] if prev else 0, "ts": ts}
        else:
            rec = json.loads(value)
            creator, region = rec["creator_id"], rec["region"]
            problem = ("key_mismatch" if key.decode() != creator else
                       "unknown_region" if region not in regions else
                       "unknown_account_status" if rec["account_status"] not in policy.statuses else
                       "unknown_payout_method" if rec["payout_method"] not in regions[region].fees else None)
            if problem is not None:
                rejected.append(("creator-accounts", problem))
                return
            accounts[creator] = {"region": region, "status": rec["account_status"], "method": rec["payout_method"],
                                 "age": rec["age"], "ts": rec["updated_ts"]}
        c = creators.get(creator)
        if c is None:
            return
        if accounts[creator]["region"]:
            c["region"] = accounts[creator]["region"]
        look(creator)
        if not c["above"] and reached(creator):
            notice(creator, None, accounts[creator]["ts"])

    def payout_record(raw: bytes) -> bytes:
        rec = json.loads(raw)
        c = creators.get(rec["creator_id"])
        if rec["milli_diamonds"] == WHOLE_BALANCE:  # the amount is the balance now (at least 1, or it is no payout)
            raw = payout(rec["payout_id"], rec["creator_id"], max(c["balance"] if c else 0, 1))
            rec = json.loads(raw)
        if rec["payout_id"] in paid:
            return raw
        if c is None or rec["milli_diamonds"] > c["balance"]:
            rejected.append(("payouts", "invalid_value"))
            return raw
        paid.add(rec["payout_id"])
        c["balance"] -= rec["milli_diamonds"]
        c["low"] = min(c["low"], c["balance"])
        look(rec["creator_id"])  # the one way down: a payout under the threshold re-arms, at once or when looked at
        return raw

    handle = {"gifts": gift_record, "accounts": lambda r: account_record(*r), "payouts": payout_record}
    fed = []  # the steps with every payout amount written in
    for kind, records in steps:
        fed.append((kind, [handle[kind](r) or r for r in records]))
    for p in list(watermark):
        time_out(p, None)
    return {"balances": {c: s["balance"] for c, s in creators.items()},
            "crossings": {c: s["crossings"] for c, s in creators.items()},
            "notices": sorted(notices, key=lambda n: n["notice_id"]), "credits": credits, "accepted": accepted,
            "rejected": sorted(rejected), "steps": fed}


# ------------------------------------------------------------------------------------- feeding the engines


def _creator_of(kind: str, record) -> str | None:
    """The key Kafka routes a record by: the creator_id (an account record's own key)."""
    if kind == "accounts":
        return record[0].decode()
    try:
        rec = orjson.loads(record)
    except orjson.JSONDecodeError:
        return None
    return rec.get("creator_id") if isinstance(rec, dict) and isinstance(rec.get("creator_id"), str) else None


def _feed(engine, kind: str, records: list, out: Outputs) -> None:
    if kind == "gifts":
        engine.process(records, None, out)
    elif kind == "accounts":
        engine.apply_accounts([decode_account(*r) for r in records], [r[1] for r in records], None, out)
    else:
        engine.apply_payouts([decode_payout(r) for r in records], records, None, out)


def run_steps(policy, steps: list[tuple[str, list]], partitions: int) -> tuple[list[Engine], Outputs]:
    """Each step's records to the engine of their creator's partition (a record without one: partition 0)."""
    owners = PartitionCache(partitions)
    engines = [make_engine(policy, p, partitions=partitions, owners=owners) for p in range(partitions)]
    out = Outputs()
    for kind, records in steps:
        shares: dict[int, list] = defaultdict(list)
        for r in records:
            creator = _creator_of(kind, r)
            shares[owners[creator] if creator is not None else 0].append(r)
        for p in sorted(shares):
            _feed(engines[p], kind, shares[p], out)
    for e in engines:
        e.end_of_stream(out)
    return engines, out


def _notices(out: Outputs) -> list[dict]:
    return sorted((msgspec.structs.asdict(n) for n in out.notices), key=lambda n: n["notice_id"])


POLICIES = st.sampled_from(["built-in", "strict"])


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(records=sessions(), partitions=st.sampled_from([1, 3]))
def test_balances_match_the_reference_exactly(policy, records, partitions):
    result = replay(records, policy, partitions=partitions, batch_size=17, final=True)
    ref = _reference(policy, [("gifts", records)], partitions)
    got = {c: s.balance for e in result.engines.values() for c, s in e.state.creators.items()}
    assert got == ref["balances"]
    assert result.summary["accepted"] == ref["accepted"]
    assert result.summary["open_streaks"] == 0
    assert _notices(result.outputs) == ref["notices"]
    # the load harness's naive ground truth (no accounts, no timeouts) agrees on every balance
    naive = ground_truth.expected(records, {r: p.diamonds_per_coin for r, p in policy.regions.items()}, partitions,
                                  policy.max_future_ms, policy.dedupe_horizon_ms, policy.max_record_bytes)
    assert naive["balances"] == ref["balances"] and naive["accepted"] == ref["accepted"]


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(steps=account_sessions(), partitions=st.sampled_from([1, 2]), which=POLICIES)
def test_accounts_fees_and_crossings_match_the_reference(policy, steps, partitions, which):
    """Gifts (some without a region), creator accounts (tombstones and bad records among them) and payouts,
    interleaved: balances, every field of every notice, crossings and the rejects are the reference's."""
    policy = policy if which == "built-in" else STRICT
    ref = _reference(policy, steps, partitions)
    engines, out = run_steps(policy, ref["steps"], partitions)
    creators = {c: s for e in engines for c, s in e.state.creators.items()}
    assert {c: s.balance for c, s in creators.items()} == ref["balances"]
    assert {c: s.crossings for c, s in creators.items()} == ref["crossings"]
    assert _notices(out) == ref["notices"]
    assert sorted((d.source_topic, d.reason) for d in out.dead_letters) == ref["rejected"]


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(records=sessions(in_order=True))
def test_window_totals_match_the_reference_when_nothing_is_late(policy, records):
    result = replay(records, policy, partitions=2, final=True)
    ref = _reference(policy, [("gifts", records)], 2)
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


def _ops(steps: list[tuple[str, list]]) -> list[tuple[str, object]]:
    return [(kind, r) for kind, records in steps for r in records]


def _batches(ops: list[tuple[str, object]]) -> list[tuple[str, list]]:
    """Consecutive records of one kind as one batch."""
    return [(kind, [r for _, r in group]) for kind, group in itertools.groupby(ops, key=lambda op: op[0])]


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


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(steps=account_sessions(), cuts=st.lists(st.integers(0, 300), max_size=4))
def test_accounts_survive_batching_and_snapshot_restore(policy, steps, cuts):
    """With accounts and payouts between the gifts: a restart (snapshot/restore) at any record, and batches cut
    anywhere, change nothing."""
    steps = _reference(policy, steps, 1)["steps"]
    [whole], expected = run_steps(policy, steps, 1)
    ops = _ops(steps)
    eng, got = make_engine(policy), Outputs()
    for lo, hi in itertools.pairwise(cut_points(cuts, len(ops))):
        for kind, batch in _batches(ops[lo:hi]):
            _feed(eng, kind, batch, got)
        eng = make_engine(policy, state=restore(snapshot(eng.state)))
    eng.end_of_stream(got)
    assert got.notices == expected.notices
    assert got.window_totals == expected.window_totals
    assert [(d.source_topic, d.reason) for d in got.dead_letters] == [
        (d.source_topic, d.reason) for d in expected.dead_letters]
    assert eng.state == whole.state


def test_reference_agrees_with_a_hand_count(policy):
    recs = [gift(diamond_count=5, repeat_count=2), gift(gift_type=1, group_id="g", repeat_count=3),
            gift(gift_type=1, group_id="g", repeat_count=9, repeat_end=True)]
    ref = _reference(policy, [("gifts", recs)], 1)
    assert ref["balances"] == {"c1": (10 + 45) * 1000} and not ref["notices"]
    # ID (1/2 diamond a coin) verified: $1 = 200 diamonds; 2,000 coins = 1,000 diamonds = 500 cents; the service
    # fee 20% = 100; paypal 2.9% of 400 = 11.6 -> 12; net 388. Then the account moves to US, suspended: the payout
    # takes the balance to 0 (nothing re-arms without a threshold), the next gift is priced in US, and its crossing
    # waits for the account to be verified, which re-arms the notice (the balance was under its threshold) and sends
    # the next one.
    steps = [("accounts", [(b"c2", account(creator_id="c2", region="ID"), T0)]),
             ("gifts", [gift(creator_id="c2", region=..., diamond_count=2_000, event_id="x")]),
             ("accounts", [(b"c2", account(creator_id="c2", account_status="suspended", updated_ts=T0 + 1), T0 + 1)]),
             ("payouts", [payout("p1", "c2", 1_000_000)]),
             ("gifts", [gift(creator_id="c2", diamond_count=3_000, event_id="y")]),
             ("accounts", [(b"c2", account(creator_id="c2", updated_ts=T0 + 2), T0 + 2)])]
    ref = _reference(policy, steps, 1)
    assert ref["balances"] == {"c2": 3_000_000}
    assert [(n["region"], n["crossing_seq"], n["gross_cents"], n["service_fee_cents"], n["method_fee_cents"],
             n["net_cents"], n["trigger"], n["trigger_ts"]) for n in ref["notices"]] == [
        ("ID", 1, 500, 100, 12, 388, "gift", T0),
        # US verified: 3,000 diamonds = 1,500 cents; 25% = 375; 2.9% of 1,125 = 32.625 -> 33; net 1,092
        ("US", 2, 1500, 375, 33, 1092, "account", T0 + 2)]


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


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(steps=account_sessions(), cuts=st.lists(st.integers(0, 300), max_size=4))
def test_accounts_survive_a_changelog_restore(policy, steps, cuts):
    from stream.state.changelog import ChangelogWriter, restore_state

    steps = _reference(policy, steps, 1)["steps"]
    [whole], expected = run_steps(policy, steps, 1)
    ops = _ops(steps)
    changelog: list = []
    eng, writer, got = make_engine(policy), ChangelogWriter(), Outputs()
    for lo, hi in itertools.pairwise(cut_points(cuts, len(ops))):
        for kind, batch in _batches(ops[lo:hi]):
            _feed(eng, kind, batch, got)
        changelog.extend(writer.drain(eng))
        state, writer = restore_state(changelog)
        eng = make_engine(policy, state=state)
    eng.end_of_stream(got)
    assert got.notices == expected.notices
    assert {c: (s.balance, s.crossings, s.above) for c, s in eng.state.creators.items()} == {
        c: (s.balance, s.crossings, s.above) for c, s in whole.state.creators.items()}
    assert {c: eng.account(c) for c in whole.state.accounts} == dict(whole.state.accounts)
