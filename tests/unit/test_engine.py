"""Engine behaviour on hand-made sequences: credits, streaks, dedupe, windows, late gifts, notices."""

from __future__ import annotations

import asyncio
import base64
import tomllib
from importlib import resources

import msgspec
import pytest

from stream.engine import model
from stream.engine.model import decode_account, decode_payout
from stream.engine.native import Engine, make_engine
from stream.engine.policy import parse_policy
from stream.engine.reference import Outputs
from stream.kafka.routing import PartitionCache, partition_for
from stream.state.tables import Account, restore, snapshot
from tests.support.events import T0, account, gift, payout

pytestmark = pytest.mark.usefixtures("both_engines")  # every test runs on both engines

MIN = 60_000
HOUR = 3_600_000


def run(policy, records, final=False) -> tuple[Engine, Outputs]:
    eng = make_engine(policy)
    out = eng.process(records, list(range(len(records))))
    if final:
        eng.end_of_stream(out)
    return eng, out


def balance(eng, creator="c1") -> int:
    return eng.state.creators[creator].balance


def test_plain_gift_credits_count_times_price_times_rate(policy):
    eng, out = run(policy, [gift(diamond_count=5, repeat_count=3), gift(creator_id="c2", region="ID")])
    assert balance(eng) == 15_000  # 15 coins x 1 diamond x 1000 milli
    assert balance(eng, "c2") == 2_500  # ID pays 1/2 diamond per coin
    assert out.stats["credits"] == 2 and not out.dead_letters


def test_streak_is_credited_once_with_its_final_cumulative_count(policy):
    streak = [gift(gift_type=1, diamond_count=1, repeat_count=n, group_id="g1", ts=T0 + n * 100,
                   repeat_end=(n == 7)) for n in (1, 2, 4, 7)]
    eng, out = run(policy, streak)
    assert balance(eng) == 7_000
    assert out.stats["credits"] == 1 and out.stats["streaks"] == 1


def test_streak_missing_its_end_times_out_with_last_seen_count(policy):
    streak = [gift(gift_type=1, repeat_count=n, group_id="g1", ts=T0 + n * 1000) for n in (1, 2, 3)]
    eng, out = run(policy, streak)
    assert "c1" not in eng.state.creators  # still open: nothing credited yet
    timeout = policy.streak_timeout_ms
    eng.process([gift(creator_id="c9", ts=T0 + 3000 + timeout - 1)], None, out)
    assert "c1" not in eng.state.creators  # one ms before the deadline
    eng.process([gift(creator_id="c9", ts=T0 + 3000 + timeout)], None, out)
    assert balance(eng) == 3 * 5 * 1000
    assert out.stats["streak_timeouts"] == 1


def test_straggler_after_timeout_credits_only_the_rest(policy):
    timeout = policy.streak_timeout_ms
    recs = [gift(gift_type=1, repeat_count=3, group_id="g1", ts=T0),
            gift(creator_id="c9", ts=T0 + timeout),  # times the streak out at count 3
            gift(gift_type=1, repeat_count=5, repeat_end=True, group_id="g1", ts=T0 + 500),  # real end
            gift(gift_type=1, repeat_count=4, group_id="g1", ts=T0 + 400)]  # stale straggler
    eng, out = run(policy, recs)
    assert balance(eng) == 5 * 5 * 1000
    assert out.stats["streak_stragglers"] == 1


def test_streak_without_group_id_restarts_when_the_count_drops(policy):
    recs = [gift(gift_type=1, repeat_count=n, group_id=..., ts=T0 + i) for i, n in enumerate((1, 2, 3, 1, 2))]
    eng, _out = run(policy, recs, final=True)
    assert balance(eng) == (3 + 2) * 5 * 1000


def test_duplicates_are_counted_once_and_reported(policy):
    a = gift()
    eng, out = run(policy, [a, a, gift(), a])
    assert balance(eng) == 2 * 5 * 1000
    assert out.stats["duplicates"] == 2


def test_duplicates_are_detected_across_snapshot_restore(policy):
    a = gift()
    eng, _ = run(policy, [a])
    again = make_engine(policy, state=restore(snapshot(eng.state)))
    out = again.process([a])
    assert balance(again) == 5 * 1000 and out.stats["duplicates"] == 1


def test_every_bad_input_class_goes_to_dead_letters_with_its_reason(policy):
    good = gift()
    bad = {
        b"not json at all": "not_json",
        b'{"event_id": "1", ': "not_json",
        b"[1, 2]": "not_object",
        gift(ts=...): "missing_field",
        gift(diamond_count="5"): "wrong_type",
        gift(repeat_end=1): "wrong_type",
        gift(diamond_count=1.5): "wrong_type",
        gift(gift_id=-1): "invalid_value",
        gift(event_id=""): "invalid_value",
        gift(diamond_count=10**12): "invalid_value",  # beyond any real gift: keeps sums inside 64 bits
        gift(diamond_count=0): "non_positive_count",
        gift(repeat_count=-3): "non_positive_count",
        gift(region="ZZ"): "unknown_region",
        gift(ts=T0 + 2 * HOUR): "ts_too_far_future",
        gift(ts=T0 - 3 * HOUR): "ts_too_old",
        gift(padding="x" * 70_000): "oversize",
    }
    records = [good, *bad]
    eng, out = run(policy, records)
    assert [d.reason for d in out.dead_letters] == list(bad.values())
    assert [d.offset for d in out.dead_letters] == list(range(1, len(records)))
    assert base64.b64decode(out.dead_letters[0].raw_b64) == b"not json at all"
    oversize = out.dead_letters[-1]
    assert len(base64.b64decode(oversize.raw_b64)) == policy.max_record_bytes and "first 65536 of" in oversize.detail
    assert balance(eng) == 5_000  # the good one still counts; nothing crashed
    assert sum(v for k, v in out.stats.items() if k.startswith("rejected.")) == len(bad)


def test_window_totals_close_after_grace_and_sum_exactly(policy):
    recs = [gift(ts=T0 + 1 * MIN), gift(ts=T0 + 59 * MIN, repeat_count=2), gift(ts=T0 + 61 * MIN)]
    eng, out = run(policy, recs)
    assert not [w for w in out.window_totals if w.window == "tumbling-1h"]
    eng.process([gift(creator_id="c9", ts=T0 + HOUR + policy.grace_ms)], None, out)
    hour = [w for w in out.window_totals if w.window == "tumbling-1h" and w.creator_id == "c1"]
    assert [(w.window_start, w.milli_diamonds, w.credits) for w in hour] == [(T0, 15_000, 2)]
    hop = {w.window_start: w.milli_diamonds for w in out.window_totals
           if w.window == "hopping-1h-5m" and w.creator_id == "c1"}
    assert hop[T0] == 15_000 and hop[T0 - 55 * MIN] == 5_000  # the window [T0-55m, T0+5m)


def test_late_gift_counts_toward_balance_and_is_reported(policy):
    recs = [gift(ts=T0 + 10 * MIN), gift(creator_id="c9", ts=T0 + HOUR + 6 * MIN),
            gift(ts=T0 + 20 * MIN)]  # its 1h window closed at T0+1h+5m
    eng, out = run(policy, recs)
    assert balance(eng) == 10_000
    assert len(out.late) == 1
    late = out.late[0]
    assert late.watermark == T0 + HOUR + 6 * MIN
    assert {(m.window, m.window_start) for m in late.missed_windows} >= {("tumbling-1h", T0)}
    assert all(m.window != "tumbling-1d" for m in late.missed_windows)
    eng.end_of_stream(out)
    day = [w for w in out.window_totals if w.window == "tumbling-1d" and w.creator_id == "c1"]
    assert day[0].milli_diamonds == 10_000  # the day window was still open: it has the late gift
    hour = [w for w in out.window_totals if w.window == "tumbling-1h" and w.creator_id == "c1"]
    assert hour[0].milli_diamonds == 5_000  # final totals are never revised


def test_notice_on_crossing_with_exact_money(policy):
    # US, no account record (status standard): threshold $10 = 2000 diamonds; $0.005/diamond; service fee 25%;
    # paypal 2.9% of what the service fee leaves
    eng, out = run(policy, [gift(diamond_count=1999), gift(diamond_count=1, event_id="trigger", ts=T0 + 5)])
    [n] = out.notices
    assert (n.notice_id, n.crossing_seq, n.balance_milli_diamonds) == ("pn-c1-1", 1, 2_000_000)
    assert (n.account_status, n.payout_method, n.threshold_cents) == ("standard", "paypal", 1000)
    # 25% of 1000 = 250; 2.9% of 750 = 21.75 -> 22 (half up); 1000 - 250 - 22 = 728
    assert (n.gross_cents, n.payable_cents, n.service_fee_bps, n.service_fee_cents, n.method_fee_cents,
            n.net_cents) == (1000, 1000, 2500, 250, 22, 728)
    assert (n.trigger, n.trigger_event_id, n.trigger_ts, n.policy_version) == ("gift", "trigger", T0 + 5,
                                                                               policy.version)
    eng.process([gift(diamond_count=5000)], None, out)
    assert len(out.notices) == 1  # already above: no second notice until a payout re-arms


def test_payout_rearms_threshold_and_is_idempotent(policy):
    from stream.engine.model import decode_payout

    eng, out = run(policy, [gift(diamond_count=3000)])
    raw = b'{"payout_id": "p1", "creator_id": "c1", "milli_diamonds": 2500000, "ts": 1}'
    eng.apply_payouts([decode_payout(raw), decode_payout(raw)], [raw, raw], None, out)
    assert balance(eng) == 500_000 and out.stats["payout_duplicates"] == 1
    eng.process([gift(diamond_count=1600)], None, out)
    assert [n.notice_id for n in out.notices] == ["pn-c1-1", "pn-c1-2"]


def test_daily_cap_limits_payable_and_ineligible_region_never_notifies(policy):
    eng, out = run(policy, [gift(diamond_count=500_000), gift(creator_id="c2", region="TR", diamond_count=10**6)])
    [n] = out.notices
    assert n.gross_cents == 250_000 and n.payable_cents == 100_000  # $2,500 capped at $1,000/day
    # the service fee is on the payable amount, 25% = 25,000; paypal 2.9% of 75,000 = 2,175
    assert (n.service_fee_cents, n.method_fee_cents, n.net_cents) == (25_000, 2_175, 72_825)
    assert balance(eng, "c2") == 10**9


def test_outputs_do_not_depend_on_batch_boundaries(policy):
    recs = [gift(gift_type=1, repeat_count=n % 4 + 1, group_id=f"g{n // 4}", repeat_end=n % 4 == 3,
                 creator_id=f"c{n % 3}", ts=T0 + n * 7 * MIN) for n in range(60)]
    _, whole = run(policy, recs, final=True)
    eng = make_engine(policy)
    parts = Outputs()
    for i in range(0, len(recs), 7):
        eng.process(recs[i:i + 7], None, parts)
    eng.end_of_stream(parts)
    assert parts.notices == whole.notices and parts.window_totals == whole.window_totals


def test_invalid_utf8_inside_a_string_is_a_dead_letter_not_a_crash(policy):
    # msgspec raises UnicodeDecodeError (not DecodeError) for it: found by the native decoder's fuzz test.
    raw = gift(region="US").replace(b'"US"', b'"\x80S"')
    eng, out = run(policy, [gift(), raw])
    assert [d.reason for d in out.dead_letters] == ["not_json"]
    assert balance(eng) == 5_000


# ------------------------------------------------------------------------------------- creator accounts


def acct(**fields) -> tuple[bytes | None, bytes, int]:
    """A creator-accounts record (key, value, record time): events.account(**fields), keyed by its creator_id."""
    return fields.get("creator_id", "c1").encode(), account(**fields), fields.get("updated_ts", T0)


def tomb(creator: str = "c1", ts: int = T0) -> tuple[bytes, None, int]:
    """A tombstone: the creator's account is closed as of ts."""
    return creator.encode(), None, ts


def accounts(eng, out: Outputs, *records, offsets: list[int] | None = None) -> None:
    eng.apply_accounts([decode_account(*r) for r in records], [r[1] for r in records], offsets, out)


def pay(eng, out: Outputs, pid: str, milli: int, creator: str = "c1") -> None:
    raw = payout(pid, creator, milli)
    eng.apply_payouts([decode_payout(raw)], [raw], None, out)


def fields(a) -> tuple:
    return a.region, a.account_status, a.payout_method, a.age, a.updated_ts


def custom(change) -> object:
    """The built-in policy with `change` applied to its data."""
    data = tomllib.loads(resources.files("stream.data").joinpath("policy.default.toml").read_text())
    change(data)
    return parse_policy(data, "test")


def test_a_creator_without_an_account_gets_the_gifts_region_or_the_default_and_the_missing_status(policy):
    eng, out = run(policy, [gift(creator_id="c1", region="ID"), gift(creator_id="c2", region=...),
                            gift(creator_id="c3", region="DE", diamond_count=4_000)])
    assert balance(eng, "c1") == 2_500 and eng.creator("c1").region == "ID"  # the gift's region: 1/2 diamond a coin
    assert balance(eng, "c2") == 5_000 and eng.creator("c2").region == "US"  # none: accounts.default_region
    assert out.stats["gifts_without_account"] == 3 and eng.account("c1") is None
    [n] = out.notices  # DE, status standard (accounts.missing_status): $20 = 4,000 diamonds, the region's method
    assert (n.creator_id, n.region, n.account_status, n.payout_method, n.threshold_cents) == (
        "c3", "DE", "standard", "bank", 2000)
    accounts(eng, out, acct(creator_id="c1"))
    eng.process([gift(creator_id="c1", region="ID"), gift(creator_id="c2")], None, out)
    assert out.stats["gifts_without_account"] == 4  # c1 has an account now; c2 still has none
    assert balance(eng, "c1") == 2_500 + 5_000  # priced in the account's region (US), not the gift's


def test_a_gift_without_a_region_needs_an_account_or_a_default_region():
    strict = custom(lambda d: d["accounts"].pop("default_region"))
    eng = make_engine(strict)
    out = eng.process([gift(region=...)], [0])
    [d] = out.dead_letters
    assert (d.reason, d.detail) == model.EVENT_REJECTIONS.no_region.of(creator_id="c1", policy_version=strict.version)
    assert eng.creator("c1") is None and "gifts_without_account" not in out.stats
    accounts(eng, out, acct(creator_id="c2", region="KR", payout_method="bank"), tomb("c3"))
    eng.process([gift(creator_id="c2", region=...), gift(creator_id="c3", region=...)], [1, 2], out)
    assert balance(eng, "c2") == 5_000 and eng.creator("c2").region == "KR"  # the account names the region
    # an account closed before any record named a region has none
    assert [(d.reason, d.offset) for d in out.dead_letters] == [("unknown_region", 0), ("unknown_region", 2)]


@pytest.mark.parametrize(("before", "after", "coins"), [
    ({"account_status": "suspended"}, {"account_status": "verified"}, 1_500),
    ({"account_status": "restricted"}, {"account_status": "standard"}, 2_500),
    ({"age": 17}, {"age": 18}, 1_500),  # min_age 18
    ({"region": "KR", "payout_method": "bank", "age": 18}, {"region": "KR", "payout_method": "bank", "age": 19},
     12_000),  # KR: min_age 19, verified $50 = 10,000 diamonds
    ({"region": "TR"}, {"region": "US"}, 1_500),  # TR pays nobody
    (None, {}, 1_500),  # no record: standard's $10 is 2,000 diamonds; a verified account's $5 is 1,000
], ids=["suspended-verified", "restricted-standard", "age-17-18", "kr-age-18-19", "tr-us", "no-record-verified"])
def test_a_creator_who_becomes_eligible_above_the_threshold_gets_the_notice_then(policy, before, after, coins):
    eng, out = make_engine(policy), Outputs()
    if before is not None:
        accounts(eng, out, acct(**before))
    eng.process([gift(diamond_count=coins)], None, out)
    assert not out.notices and eng.creator("c1").balance == coins * 1000
    update = acct(**after, updated_ts=T0 + 99)
    accounts(eng, out, update)
    [n] = out.notices
    assert (n.trigger, n.trigger_event_id, n.trigger_ts) == ("account", None, T0 + 99)
    assert (n.crossing_seq, n.balance_milli_diamonds) == (1, coins * 1000)
    assert (n.account_status, n.region) == (after.get("account_status", "verified"), after.get("region", "US"))
    accounts(eng, out, update)  # the same record again, then more gifts: the notice is out already
    eng.process([gift(diamond_count=coins)], None, out)
    assert len(out.notices) == 1 and eng.creator("c1").crossings == 1


@pytest.mark.parametrize("ineligible", [
    acct(account_status="suspended", updated_ts=T0 + 10), acct(account_status="restricted", updated_ts=T0 + 10),
    acct(age=17, updated_ts=T0 + 10), tomb("c1", T0 + 10),
], ids=["suspended", "restricted", "under-age", "closed"])
def test_an_ineligible_account_gets_no_notice_while_so_and_its_crossing_waits(policy, ineligible):
    eng, out = make_engine(policy), Outputs()
    accounts(eng, out, acct())
    eng.process([gift(diamond_count=1_500)], None, out)  # verified: $5 = 1,000 diamonds
    pay(eng, out, "p1", 1_500_000)  # re-armed
    accounts(eng, out, ineligible)
    eng.process([gift(diamond_count=1_500), gift(diamond_count=3_000), gift(diamond_count=10_000)], None, out)
    assert [n.crossing_seq for n in out.notices] == [1]  # nothing while ineligible, however high the balance
    assert eng.creator("c1").balance == 14_500_000 and not eng.creator("c1").above
    accounts(eng, out, acct(updated_ts=T0 + 20))  # in good standing again (a new record reopens a closed one)
    assert [(n.crossing_seq, n.trigger, n.balance_milli_diamonds) for n in out.notices] == [
        (1, "gift", 1_500_000), (2, "account", 14_500_000)]


def test_an_account_change_does_not_reprice_credits_already_made(policy):
    eng, out = make_engine(policy), Outputs()
    accounts(eng, out, acct(region="ID"))
    eng.process([gift(diamond_count=10, region="US")], None, out)  # the account's region wins: 1/2 diamond a coin
    assert balance(eng) == 5_000 and eng.creator("c1").region == "ID"
    eng.process([gift(gift_type=1, group_id="g", diamond_count=10, repeat_count=4, ts=T0 + 1)], None, out)  # opens
    accounts(eng, out, acct(region="US", updated_ts=T0 + 2))
    assert balance(eng) == 5_000 and eng.creator("c1").region == "US"  # not re-priced; the region follows
    eng.process([gift(diamond_count=10, region="ID", ts=T0 + 3)], None, out)  # priced in US now
    assert balance(eng) == 5_000 + 10_000
    eng.process([gift(gift_type=1, group_id="g", diamond_count=10, repeat_count=6, repeat_end=True, ts=T0 + 4)],
                None, out)
    assert balance(eng) == 15_000 + 6 * 10 * 500  # the streak keeps the region of its first event (ID)
    assert out.stats["gifts_without_account"] == 0


def test_closing_an_account_stops_notices_and_keeps_its_region(policy):
    eng, out = make_engine(policy), Outputs()
    accounts(eng, out, acct(region="KR", payout_method="bank"), tomb("c1", T0 + 5))
    assert fields(eng.account("c1")) == ("KR", "closed", "bank", 30, T0 + 5)
    eng.process([gift(region=..., diamond_count=20_000), gift(region="ID", diamond_count=20_000)], None, out)
    assert balance(eng) == 40_000_000 and eng.creator("c1").region == "KR"  # priced in KR, 1 diamond a coin
    assert not out.notices and "gifts_without_account" not in out.stats  # closed is not "no account"
    assert (out.stats["accounts"], out.stats["accounts_closed"]) == (1, 1)
    # Closing a creator with no account record: the region of its credits; one with nothing here: no region.
    eng.process([gift(creator_id="c2", region="ID")], None, out)
    accounts(eng, out, tomb("c2", T0 + 6), tomb("c3", T0 + 7))
    assert fields(eng.account("c2")) == ("ID", "closed", "", 0, T0 + 6)
    assert fields(eng.account("c3")) == ("", "closed", "", 0, T0 + 7)
    eng.process([gift(creator_id="c3", region=..., diamond_count=5_000)], None, out)
    assert balance(eng, "c3") == 5_000_000 and eng.creator("c3").region == "US" and not out.notices
    # A notice out already stays out; the closed account gets no new one after a payout.
    accounts(eng, out, acct(creator_id="c4"))
    eng.process([gift(creator_id="c4", diamond_count=1_000)], None, out)
    accounts(eng, out, tomb("c4", T0 + 8))
    pay(eng, out, "p4", 1_000_000, "c4")
    eng.process([gift(creator_id="c4", diamond_count=5_000)], None, out)
    assert [n.notice_id for n in out.notices] == ["pn-c4-1"]


def owned_by(partition: int, partitions: int, prefix: str = "c") -> str:
    return next(c for c in (f"{prefix}{i}" for i in range(1000)) if partition_for(c.encode(), partitions) == partition)


def test_bad_account_records_are_dead_letters_and_the_engine_goes_on(policy):
    mine, theirs = owned_by(0, 2), owned_by(1, 2)
    eng = make_engine(policy, 0, partitions=2, owners=PartitionCache(2))
    out = Outputs()
    key = mine.encode()
    bad = [
        (acct(creator_id=mine, region="ZZ"), "unknown_region"),
        (acct(creator_id=mine, account_status="gold"), "unknown_account_status"),
        (acct(creator_id=mine, account_status="closed"), "unknown_account_status"),  # reserved for tombstones
        (acct(creator_id=mine, payout_method="cheque"), "unknown_payout_method"),
        ((b"c-other", account(creator_id=mine), T0), "key_mismatch"),
        ((None, account(creator_id=mine), T0), "key_mismatch"),
        ((key, b"{oops", T0), "not_json"),
        ((key, b"[1, 2]", T0), "not_object"),
        (acct(creator_id=mine, age=...), "missing_field"),
        (acct(creator_id=mine, age="30"), "wrong_type"),
        (acct(creator_id=mine, age=151), "invalid_value"),
        (acct(creator_id=mine, updated_ts=-1), "invalid_value"),
        ((key, account(creator_id=mine)[:-1] + b',"age":31}', T0), "duplicate_key"),
        ((b"a b", None, T0), "invalid_value"),  # a tombstone's key must be a creator id
        ((None, None, T0), "invalid_value"),
        (acct(creator_id=theirs), "wrong_partition"),
        (tomb(theirs), "wrong_partition"),
    ]
    good = acct(creator_id=mine, updated_ts=T0 - 1)
    records = [good, *(r for r, _ in bad)]
    accounts(eng, out, *records, offsets=list(range(100, 100 + len(records))))
    assert [d.reason for d in out.dead_letters] == [reason for _, reason in bad]
    assert [d.offset for d in out.dead_letters] == list(range(101, 101 + len(bad)))
    assert {(d.source_topic, d.partition) for d in out.dead_letters} == {("creator-accounts", 0)}
    assert [base64.b64decode(d.raw_b64) for d in out.dead_letters] == [r[1] or b"" for r, _ in bad]
    assert out.dead_letters[0].detail == f"the account of creator {mine}: region 'ZZ' is not in policy {policy.version}"
    assert out.dead_letters[4].detail == f"the record's key 'c-other' is not its creator_id '{mine}'"
    assert out.stats["accounts"] == 1 and sum(v for k, v in out.stats.items() if k.startswith("rejected.")) == len(bad)
    assert fields(eng.account(mine)) == ("US", "verified", "paypal", 30, T0 - 1) and eng.account(theirs) is None
    eng.process([gift(creator_id=mine, diamond_count=1_000)], None, out)  # still verified: $5 = 1,000 diamonds
    [n] = out.notices
    assert (n.creator_id, n.account_status, n.threshold_cents) == (mine, "verified", 500)


@pytest.mark.parametrize(("record", "coins", "money"), [
    # gross = 100,000 diamonds x $0.005 = 50,000 cents; service 25% = 12,500; paypal 2.9% of 37,500 = 1087.5 -> 1088
    (acct(), 100_000, (50_000, 50_000, 2500, 12_500, 1088, 36_412)),
    # bank: a fixed 25 cents
    (acct(region="DE", payout_method="bank"), 100_000, (50_000, 50_000, 2500, 12_500, 25, 37_475)),
    (acct(payout_method="bank"), 100_000, (50_000, 50_000, 2500, 12_500, 25, 37_475)),  # the account's method
    # KR: service 30% = 15,000
    (acct(region="KR", payout_method="bank", age=19), 100_000, (50_000, 50_000, 3000, 15_000, 25, 34_975)),
    # ID: 1/2 diamond a coin = 50,000 diamonds = 25,000 cents; service 20% = 5,000; 2.9% of 20,000 = 580
    (acct(region="ID"), 100_000, (25_000, 25_000, 2000, 5_000, 580, 19_420)),
    # 1,001 diamonds = 500.5 cents -> 501; 25% = 125.25 -> 125; 2.9% of 376 = 10.904 -> 11
    (acct(), 1_001, (501, 501, 2500, 125, 11, 365)),
    # the daily cap: $2,500 capped at $1,000; 25% = 25,000; 2.9% of 75,000 = 2,175
    (acct(), 500_000, (250_000, 100_000, 2500, 25_000, 2_175, 72_825)),
], ids=["us-paypal", "de-bank", "us-bank", "kr-bank", "id-paypal", "half-cents", "daily-cap"])
def test_the_fee_breakdown_of_a_notice(policy, record, coins, money):
    eng, out = make_engine(policy), Outputs()
    accounts(eng, out, record)
    eng.process([gift(diamond_count=coins)], None, out)
    [n] = out.notices
    assert (n.gross_cents, n.payable_cents, n.service_fee_bps, n.service_fee_cents, n.method_fee_cents,
            n.net_cents) == money
    assert n.daily_cap_cents == 100_000 and n.payout_method == decode_account(*record).payout_method


def test_a_payout_rearms_against_the_accounts_threshold(policy):
    eng, out = make_engine(policy), Outputs()
    accounts(eng, out, acct())  # verified: $5 = 1,000 diamonds (a creator without a record would need 2,000)
    eng.process([gift(diamond_count=1_500)], None, out)
    pay(eng, out, "p1", 1_000_000)  # 500 diamonds left: below the threshold, re-armed
    eng.process([gift(diamond_count=600)], None, out)
    assert [(n.crossing_seq, n.threshold_cents) for n in out.notices] == [(1, 500), (2, 500)]
    pay(eng, out, "p2", 100_000)  # 1,000 diamonds left: still at the threshold, not re-armed
    eng.process([gift(diamond_count=1)], None, out)
    assert len(out.notices) == 2
    accounts(eng, out, acct(account_status="suspended", updated_ts=T0 + 1))
    pay(eng, out, "p3", 1_000_000)  # no threshold while suspended: it lowers the lowest balance, re-arms nothing yet
    eng.process([gift(diamond_count=2_000)], None, out)
    c = eng.creator("c1")
    assert len(out.notices) == 2 and c.above and (c.low, c.balance) == (1_000, 2_001_000)
    accounts(eng, out, acct(updated_ts=T0 + 2))  # verified: the balance went under its threshold since notice 2
    assert [(n.crossing_seq, n.trigger) for n in out.notices] == [(1, "gift"), (2, "gift"), (3, "account")]
    assert eng.creator("c1").low == 2_001_000  # a notice starts the lowest balance again


@pytest.mark.parametrize("during", ["suspended", "verified"])
def test_a_payout_that_keeps_the_balance_at_the_threshold_rearms_nothing_whatever_the_status(policy, during):
    """The payout's status does not matter: suspended (no threshold) or verified, a balance that never went under the
    threshold since the notice gets no second one when the account is verified (again)."""
    eng, out = make_engine(policy), Outputs()
    accounts(eng, out, acct())  # verified: $5 = 1,000 diamonds
    eng.process([gift(diamond_count=2_500)], None, out)
    accounts(eng, out, acct(account_status=during, updated_ts=T0 + 1))
    pay(eng, out, "p1", 1_500_000)  # 1,000 diamonds left: at the threshold, never under it
    accounts(eng, out, acct(updated_ts=T0 + 2))
    eng.process([gift(diamond_count=500)], None, out)
    assert [n.crossing_seq for n in out.notices] == [1]
    c = eng.creator("c1")
    assert (c.above, c.low, c.balance, c.crossings) == (True, 1_000_000, 1_500_000, 1)


def test_a_balance_paid_under_the_threshold_while_ineligible_crosses_again_when_eligible(policy):
    """The crossing is not lost: paid out under the threshold while suspended (no threshold then, nothing re-arms),
    the account verified again re-arms it, and the next credits cross from below."""
    eng, out = make_engine(policy), Outputs()
    accounts(eng, out, acct())  # verified: $5 = 1,000 diamonds
    eng.process([gift(diamond_count=2_500)], None, out)
    accounts(eng, out, acct(account_status="suspended", updated_ts=T0 + 1))
    pay(eng, out, "p1", 2_000_000)  # 500 diamonds left
    assert eng.creator("c1").above  # not re-armed while there is no threshold
    accounts(eng, out, acct(updated_ts=T0 + 2))  # re-armed: under the threshold since the notice; no notice (500)
    c = eng.creator("c1")
    assert (c.above, c.low, c.balance) == (False, 500_000, 500_000) and len(out.notices) == 1
    eng.process([gift(diamond_count=400, ts=T0 + 3), gift(diamond_count=600, ts=T0 + 4, event_id="again")], None, out)
    assert [(n.crossing_seq, n.trigger, n.trigger_event_id, n.balance_milli_diamonds) for n in out.notices][1:] == [
        (2, "gift", "again", 1_500_000)]


def _restored(policy, records: list[tuple[bytes, bytes | None]]):
    """An engine of the kind under test (GIFTSTREAM_ENGINE) on the state changelog records rebuild."""
    from stream.engine.native import resolve_kind
    from stream.state.changelog import StateRestore

    async def rebuild():
        restore = StateRestore(lambda st: make_engine(policy, state=st), native=resolve_kind() == "native")
        restore.apply([k for k, _ in records], [v for _, v in records])
        return await restore.finish()

    return asyncio.run(rebuild())[0]


def test_an_older_creator_record_without_low_restores_with_low_its_balance(policy):
    """A creator record written before `low` (six fields): its low is its balance, so nothing re-arms until a
    payout takes the balance under the threshold."""
    verified = msgspec.msgpack.encode(Account("US", "verified", "paypal", 30, T0))
    eng = _restored(policy, [
        (b"c:c1", msgspec.msgpack.encode(("US", 2_500_000, 3_000_000, 500_000, 1, True))),  # the older form
        (b"c:c2", msgspec.msgpack.encode(("US", 2_500_000, 2_500_000, 0, 1, True, 700_000))),  # with its low
        (b"a:c1", verified), (b"a:c2", verified)])
    c1, c2 = eng.creator("c1"), eng.creator("c2")
    assert (c1.balance, c1.credited, c1.paid_out, c1.crossings, c1.above, c1.low) == (
        2_500_000, 3_000_000, 500_000, 1, True, 2_500_000)
    assert (c2.above, c2.low) == (True, 700_000)
    out = Outputs()
    eng.process([gift(diamond_count=1, creator_id="c1"), gift(diamond_count=1, creator_id="c2")], None, out)
    assert [n.notice_id for n in out.notices] == ["pn-c2-2"]  # c2's low was under the threshold, c1's is not
    pay(eng, out, "p1", 1_400_000)  # c1: 1,101 diamonds left, at or above the threshold
    eng.process([gift(diamond_count=1, creator_id="c1")], None, out)
    pay(eng, out, "p2", 200_000)  # 902 diamonds left: under it, re-armed
    eng.process([gift(diamond_count=100, creator_id="c1")], None, out)
    assert [n.notice_id for n in out.notices] == ["pn-c2-2", "pn-c1-2"]
    for fields in [("US", 1, 1, 0, 0), ("US", 1, 1, 0, 0, False, 1, 1)]:  # five fields, or eight: not a creator
        with pytest.raises(ValueError):  # when the record is read (native) or when the state is made
            _restored(policy, [(b"c:c1", msgspec.msgpack.encode(fields))])


def _older_policy():
    """The built-in policy with a status ("partner") and a region (NZ) more: a state kept from it meets a policy
    without them."""
    def more(data):
        data["account_statuses"]["partner"] = {"eligible": True}
        data["defaults"]["threshold_cents"]["partner"] = 500
        data["regions"]["US"]["threshold_cents"]["partner"] = 500
        data["regions"]["NZ"] = {}
    return custom(more)


def _kept_state(older, *steps) -> list[tuple[bytes, bytes | None]]:
    """The changelog records of an engine under `older` after `steps` (each a callable of the engine and out)."""
    from stream.state.changelog import ChangelogWriter

    eng, out, writer = make_engine(older), Outputs(), ChangelogWriter()
    for step in steps:
        step(eng, out)
    return writer.drain(eng)


def test_a_restored_account_whose_status_the_policy_dropped_gets_no_notice_and_no_crash(policy):
    older = _older_policy()
    log = _kept_state(older, lambda e, o: accounts(e, o, acct(account_status="partner")),
                      lambda e, o: e.process([gift(diamond_count=1_500)], None, o),  # notice 1 under partner's $5
                      lambda e, o: accounts(e, o, acct(creator_id="c2", account_status="partner")),
                      lambda e, o: e.process([gift(creator_id="c2", diamond_count=100)], None, o))
    eng, out = _restored(policy, log), Outputs()
    assert eng.account("c1").account_status == "partner" and eng.creator("c1").above
    eng.process([gift(diamond_count=5_000), gift(creator_id="c2", diamond_count=5_000)], None, out)
    pay(eng, out, "p1", 6_000_000)  # c1: 500 diamonds left; no threshold: nothing re-arms
    pay(eng, out, "p2", 100_000, "c2")
    eng.process([gift(diamond_count=5_000), gift(creator_id="c2", diamond_count=5_000)], None, out)
    assert not out.notices and not out.dead_letters
    assert (balance(eng), balance(eng, "c2")) == (5_500_000, 10_000_000)
    assert eng.creator("c1").above and not eng.creator("c2").above
    accounts(eng, out, acct(updated_ts=T0 + 1), acct(creator_id="c2", updated_ts=T0 + 1))  # statuses it has
    assert [(n.notice_id, n.trigger, n.account_status) for n in out.notices] == [
        ("pn-c1-2", "account", "verified"), ("pn-c2-1", "account", "verified")]  # c1 was paid under $5 since


def test_a_restored_account_whose_region_the_policy_dropped_prices_nothing_and_crashes_nothing(policy):
    older = _older_policy()
    log = _kept_state(older, lambda e, o: accounts(e, o, acct(region="NZ"), acct(creator_id="c2", region="NZ")),
                      lambda e, o: e.process([gift(diamond_count=1_500), gift(creator_id="c2")], None, o))
    eng, out = _restored(policy, log), Outputs()
    assert eng.creator("c1").region == "NZ" and eng.creator("c1").above
    eng.process([gift(diamond_count=10), gift(creator_id="c2", region=...), gift(creator_id="c3")], [0, 1, 2], out)
    [d1, d2] = out.dead_letters  # its gifts cannot be priced: in the account's region, which has no rate now
    assert (d1.reason, d1.detail, d1.offset) == (*model.EVENT_REJECTIONS.account_region.of(
        creator_id="c1", region="NZ", policy_version=policy.version), 0)
    assert (d2.reason, d2.offset) == ("unknown_region", 1) and balance(eng, "c3") == 5_000
    pay(eng, out, "p1", 1_000_000)  # no threshold in a region the policy lacks: the payout applies, nothing re-arms
    accounts(eng, out, tomb("c2", T0 + 1))  # closed, keeping NZ: still no price
    eng.process([gift(creator_id="c2")], [3], out)
    assert [d.offset for d in out.dead_letters] == [0, 1, 3] and eng.creator("c1").above and not out.notices
    accounts(eng, out, acct(updated_ts=T0 + 2), acct(creator_id="c2", updated_ts=T0 + 2))  # back in the US
    eng.process([gift(diamond_count=600, ts=T0 + 3), gift(creator_id="c2", diamond_count=1_000, ts=T0 + 3)], [4, 5],
                out)
    assert [n.notice_id for n in out.notices] == ["pn-c1-2", "pn-c2-1"] and len(out.dead_letters) == 3
    assert (balance(eng), balance(eng, "c2")) == (1_100_000, 1_005_000)


def test_accounts_survive_snapshot_restore(policy):
    eng, out = make_engine(policy), Outputs()
    accounts(eng, out, acct(region="ID"), tomb("c2", T0 + 1))
    again = make_engine(policy, state=restore(snapshot(eng.state)))
    assert fields(again.account("c1")) == ("ID", "verified", "paypal", 30, T0)
    assert fields(again.account("c2")) == ("", "closed", "", 0, T0 + 1)
    again.process([gift(diamond_count=10, region=...)], None, out)
    assert balance(again) == 5_000 and again.sizes().accounts == 2


def test_an_engine_dropped_is_freed(policy, both_engines):
    """Nothing holds an engine but its owner: the hooks the compiled core holds reach it only weakly (a cycle
    through the core, which the cyclic GC cannot look into, leaked every replay's and every restore's engine)."""
    import gc
    import weakref

    from stream.engine.native import make_engine

    engine = make_engine(policy)
    engine.process([gift()], [0])
    gone = weakref.ref(engine)
    del engine
    gc.collect()
    assert gone() is None


def test_the_state_names_what_a_policy_must_price_and_a_policy_without_it_says_so(policy):
    # Seen: a worker restarted with a policy that dropped a region of an open streak, or a payout method an
    # account uses, restored and then stopped at that streak's close or that account's notice (KeyError).
    eng = make_engine(policy)
    out = Outputs()
    accounts(eng, out, acct(creator_id="c1", region="DE", payout_method="bank"),
             acct(creator_id="c2", region="TR", payout_method="paypal"), tomb("c2", T0 + 1))
    eng.process([gift(creator_id="c3", region="TR", gift_type=1, repeat_count=2, group_id="g1")], [0], out)
    priced = eng.priced_in()
    assert priced.streak_regions == {"TR"}  # the open streak; c2's closed account is not priced
    assert priced.account_methods == {("DE", "bank")}
    assert policy.cannot_price(priced) == []
    data = tomllib.loads(resources.files("stream.data").joinpath("policy.default.toml").read_text())
    del data["regions"]["TR"]
    bank = data["defaults"]["fees"].pop("bank")  # offered in the regions whose usual method it is, but not in DE
    for name, region in data["regions"].items():
        if region.get("payout_method") == "bank" and name != "DE":
            region.setdefault("fees", {})["bank"] = bank
    data["regions"]["DE"]["payout_method"] = "paypal"
    narrower = parse_policy({**data, "policy_version": "narrow"})
    assert narrower.cannot_price(priced) == [
        "open streaks priced in region 'TR', which policy narrow does not have",
        "accounts in DE paid by 'bank', which policy narrow does not offer there"]
