"""Engine behaviour on hand-made sequences: credits, streaks, dedupe, windows, late gifts, notices."""

from __future__ import annotations

import base64

import pytest

from stream.engine.native import Engine, make_engine
from stream.engine.reference import Outputs
from stream.state.tables import restore, snapshot
from tests.support.events import T0, gift

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
