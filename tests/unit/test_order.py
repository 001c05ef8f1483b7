"""The one order of a partition's inputs (stream.engine.order): head merge by record timestamp, the tie rule,
offset order within an input, and waiting for an input that may still deliver."""

from __future__ import annotations

import random

import pytest

from stream.engine.order import (
    FINISHED,
    LET_GO_AFTER,
    UNKNOWN,
    Input,
    Pending,
    Run,
    merge_time,
    plan,
    record_time,
    runs,
)

A, G, P = Input.ACCOUNTS, Input.GIFTS, Input.PAYOUTS
F, U = FINISHED, UNKNOWN  # an input's horizon: complete, or may still deliver anything


def value(kind: Input, ts: int) -> bytes:
    return (b'{"updated_ts": %d}' if kind is Input.ACCOUNTS else b'{"ts": %d}') % ts


def queues(**stamps: list[int]) -> list[Pending]:
    qs = [Pending(kind) for kind in Input]
    for name, ts in stamps.items():
        kind = Input[name.upper()]
        qs[kind].add(list(range(len(ts))), [value(kind, t) for t in ts], [0] * len(ts))
    return qs


def merged(qs: list[Pending], horizons: list[int] | None = None) -> list[tuple[Input, int]]:
    """(input, offset) in the order the plan takes them."""
    order = []
    for run in runs(qs, lambda: horizons or [F] * 3, lambda: None, 3_600_000):
        order += [(run.input, o) for o in qs[run.input].take(run.hi)[0]]
    return order


def test_the_smallest_head_goes_first_and_ties_go_accounts_gifts_payouts():
    qs = queues(gifts=[10, 20, 30], payouts=[20, 25], accounts=[20])
    assert merged(qs) == [(G, 0), (A, 0), (G, 1), (P, 0), (P, 1), (G, 2)]


def test_an_input_keeps_its_offset_order_whatever_its_timestamps():
    # gifts 50 then 5: the 5 never overtakes the 50 of its own input; the payout at 10 goes before the 50's head
    qs = queues(gifts=[50, 5, 60], payouts=[10])
    assert merged(qs) == [(P, 0), (G, 0), (G, 1), (G, 2)]


def test_the_merge_waits_for_an_input_that_may_still_deliver():
    qs = queues(gifts=[10, 20], payouts=[])
    assert merged(qs, [F, F, U]) == []  # payouts not caught up: nothing can be decided
    assert merged(qs, [F, F, F]) == [(G, 0), (G, 1)]


def test_the_merge_stops_where_an_input_runs_dry():
    qs = queues(gifts=[10, 20, 30], payouts=[15])
    # payouts may still deliver: once its one record is taken, gifts after 15 must wait for its next one
    assert merged(qs, [F, F, U]) == [(G, 0), (P, 0)]
    assert len(qs[G]) == 2
    qs[P].add([1], [value(P, 25)], [0])
    assert merged(qs, [F, F, F]) == [(G, 1), (P, 1), (G, 2)]


def test_any_cut_of_the_inputs_into_polls_gives_the_same_order():
    rng = random.Random(7)
    stamps = {k: sorted(rng.randrange(0, 50) for _ in range(n)) for k, n in (("gifts", 60), ("payouts", 15),
                                                                              ("accounts", 10))}
    want = merged(queues(**stamps))
    for _ in range(30):
        qs = [Pending(kind) for kind in Input]
        fed = dict.fromkeys(stamps, 0)
        got = []
        while any(fed[k] < len(v) for k, v in stamps.items()):
            name = rng.choice([k for k, v in stamps.items() if fed[k] < len(v)])
            n = rng.randint(1, 5)
            ts = stamps[name][fed[name]:fed[name] + n]
            kind = Input[name.upper()]
            qs[kind].add(list(range(fed[name], fed[name] + len(ts))), [value(kind, t) for t in ts], [0] * len(ts))
            fed[name] += len(ts)
            horizons = [F if fed[k.name.lower()] == len(stamps[k.name.lower()]) else U for k in Input]
            got += merged(qs, horizons)
        assert got == want


def test_a_record_is_ordered_by_the_time_it_holds_a_tombstone_by_its_kafka_timestamp():
    q = Pending(A)
    q.add([0, 1, 2], [b'{"updated_ts": 5}', None, b"not json"], [100, 7, 100], [b"c", b"c", b"c"])
    assert q.stamps == [5, 7, 0]  # a record whose time cannot be read goes as soon as it is at the head
    assert record_time(A, b'{"ts": 3}') is None and record_time(P, b'{"ts": 4, "x": 1}') == 4
    assert record_time(G, b'{"ts": "x"}') is None


def test_one_input_alone_is_taken_whole_without_reading_a_time():
    q = [Pending(kind) for kind in Input]
    q[G].add([0, 1], [b"x", b"y"], [0, 0])
    assert plan(q, [F, F, U]) == [] and plan(q, [F, U, F])[0].hi == 2
    assert q[G].times == []  # never looked into


def test_a_gift_with_a_bad_time_counts_as_at_the_watermark_so_it_holds_nothing_back():
    far = 10**12  # past watermark + max_future: the engine rejects it (ts_too_far_future)
    qs = queues(gifts=[far, 20, 30], payouts=[25])
    order = []
    for run in runs(qs, lambda: [F] * 3, lambda: 10, 100):  # watermark 10, max_future 100
        order += [(run.input, o) for o in qs[run.input].take(run.hi)[0]]
    # at the watermark (10): the bad gift goes first and the gift at 20 is not overtaken by the payout at 25
    assert order == [(G, 0), (G, 1), (P, 0), (G, 2)]
    assert merge_time(far, 10, 110) == 10 and merge_time(50, 10, 110) == 50 and merge_time(far, None, None) == far


@pytest.mark.parametrize("kind", [P, A])
def test_a_payout_or_account_with_a_bad_time_counts_as_at_the_watermark_so_its_input_is_not_held_back(kind):
    # Seen: a payout (or account record) stamped a year ahead by a producer's clock sorted after every gift of the
    # partition offline, while live it went as soon as the gifts input ran empty: different notices. Now it
    # counts as at the watermark, as a gift with a bad time does, and the records behind it follow in time.
    far = 10**12
    marks = [10]
    qs = queues(gifts=[20, 30, 40], **{"payouts" if kind is P else "accounts": [far, 25]})
    order = []
    for run in runs(qs, lambda: [F] * 3, lambda: marks[0], 100):  # watermark 10 at first, max_future 100
        for o, v in zip(*qs[run.input].take(run.hi)[:2], strict=True):
            order.append((run.input, o))
            if run.input is G:
                marks[0] = max(marks[0], record_time(G, v))
    assert order == [(kind, 0), (G, 0), (kind, 1), (G, 1), (G, 2)]


def test_the_live_merge_of_a_bad_time_decides_as_the_offline_one_whatever_the_arrivals():
    # Records fetched a few at a time (an input with more on the broker holds the others back) merge as the whole
    # does: before the first gift there is no watermark, so its run is that gift alone, and the heads are
    # decided again with the watermark it sets.
    far = 10**12
    times = {G: [20, 30, 40, 50, 60], P: [far, 35, far + 1, 55], A: [15, far, 45]}

    def merged(chunk: int) -> list[tuple[Input, int]]:
        marks: list[int | None] = [None]
        qs = [Pending(k) for k in Input]
        fed = dict.fromkeys(Input, 0)
        order = []
        while True:
            for k in Input:
                n = min(chunk, len(times[k]) - fed[k])
                qs[k].add(list(range(fed[k], fed[k] + n)), [value(k, t) for t in times[k][fed[k]:fed[k] + n]],
                          [0] * n, arrived_ms=1)
                fed[k] += n
            done = all(fed[k] == len(times[k]) for k in Input)
            horizons = [U if fed[k] < len(times[k]) else F for k in Input]  # more on the broker: not caught up
            for run in runs(qs, lambda h=horizons: h, lambda: marks[0], 100):
                for o, v in zip(*qs[run.input].take(run.hi)[:2], strict=True):
                    order.append((run.input, o))
                    if run.input is G:
                        t = record_time(G, v)
                        marks[0] = t if marks[0] is None else max(marks[0], t)
            if done and not any(len(q) for q in qs):
                return order

    whole = merged(100)
    assert merged(1) == whole and merged(2) == whole
    assert whole.index((P, 0)) < whole.index((G, 1))  # the bad payout did not wait for every gift


def test_a_gift_past_the_bound_ends_a_run_and_is_decided_with_the_watermark_before_it():
    marks = [49]
    qs = queues(gifts=[50, 150, 160], payouts=[149])
    order = []
    for run in runs(qs, lambda: [F] * 3, lambda: marks[0], 100):  # bound 149 at first
        for o, v in zip(*qs[run.input].take(run.hi)[:2], strict=True):
            order.append((run.input, o))
            if run.input is G:
                marks[0] = max(marks[0], record_time(G, v))  # the engine's watermark after the gift
    # 150 is past the first bound (149) but not past the one the gift at 50 leaves (150): it keeps its time and
    # goes after the payout (at the old watermark it would have gone before it)
    assert order == [(G, 0), (P, 0), (G, 1), (G, 2)]


def test_a_record_passes_an_empty_input_once_that_input_was_caught_up_as_of_the_fetch_that_brought_it():
    q = [Pending(kind) for kind in Input]
    q[G].add([0, 1], [value(G, 10), value(G, 20)], [0, 0], arrived_ms=1_000)  # first reported by a fetch sent at 1000
    q[G].add([2], [value(G, 30)], [0], arrived_ms=1_050)
    # payouts caught up as of a fetch sent before 1000: nothing may pass it yet; as of 1000: the first two
    assert plan(q, [F, F, 999]) == []
    assert plan(q, [F, F, 1_000]) == [Run(G, 0, 2)]
    assert plan(q, [F, F, 1_050])[0].hi == 3
    # beside another input's records, the horizon of the empty one still bounds the run
    q[A].add([0], [value(A, 25)], [0], arrived_ms=900)
    assert plan(q, [F, F, 1_000]) == [Run(G, 0, 2)]
    q[G].take(2)
    assert plan(q, [F, F, 1_000]) == [Run(A, 0, 1)]  # the account at 25, before the gift at 30
    q[A].take(1)
    assert plan(q, [F, F, 1_000]) == [] and plan(q, [1_000, F, 1_050]) == [] \
        and plan(q, [1_050, F, 1_050]) == [Run(G, 2, 3)]  # every empty input must be caught up as of 1050


def test_an_input_that_never_runs_empty_holds_only_what_still_waits():
    """Live, with the slack, the gifts of the last max_task_idle_ms are always waiting while traffic flows: what was
    processed must be let go though the input never runs empty, and the merge must go on exactly as before."""
    q = [Pending(kind) for kind in Input]
    taken, offset = [], 0
    for poll in range(2_000):
        q[G].add(list(range(offset, offset + 50)), [value(G, offset + i) for i in range(50)], [0] * 50,
                 arrived_ms=poll * 20)
        offset += 50
        if poll == 1_000:  # a payout among them, merged by its time
            payout_ts = offset - 75
            q[P].add([0], [value(P, payout_ts)], [0], arrived_ms=poll * 20)
        for run in runs(q, lambda poll=poll: [F, F, F if len(q[P]) else poll * 20 - 100], lambda: None, 3_600_000):
            taken += [(run.input, o) for o in q[run.input].take(run.hi)[0]]
        held, waiting = len(q[G].offsets), len(q[G])
        assert held <= 2 * waiting + LET_GO_AFTER, f"poll {poll}: {held} held, {waiting} waiting"
    gifts = [o for kind, o in taken if kind is G]
    assert gifts == list(range(offset - 5 * 50))  # the last 100 ms wait for a fresher fetch of the payouts
    assert taken.index((P, 0)) == gifts.index(payout_ts) + 1  # after the gift at its time (tie: gifts first)


def test_the_compiled_run_end_is_the_python_loop():
    from stream.engine import order

    if order.run_end is order._run_end:
        pytest.skip("native module not built")
    rng = random.Random(7)
    for _ in range(2000):
        stamps = [rng.randrange(0, 6) for _ in range(rng.randrange(0, 12))]
        lo = rng.randrange(0, len(stamps) + 1)
        hi = rng.randrange(lo, len(stamps) + 1)
        limit, ties = rng.randrange(-1, 7), rng.random() < 0.5
        assert order.run_end(stamps, lo, hi, limit, ties) == order._run_end(stamps, lo, hi, limit, ties)


@pytest.mark.parametrize("engine", ["python", "native"])
def test_a_null_gift_value_is_fed_as_an_empty_record(policy, engine):
    """A tombstone on the gifts topic is bad input, dead-lettered as an empty record would be."""
    from stream.engine.native import make_engine, native_available
    from stream.engine.order import feed
    from stream.engine.protocol import Outputs
    from tests.support.events import gift

    if engine == "native" and not native_available():
        pytest.skip("native module not built")
    got = []
    for values in ([None, gift(), None], [b"", gift(), b""]):
        out = Outputs()
        feed(make_engine(policy, 0, kind=engine, track_changes=False), G, ([0, 1, 2], values, [0] * 3, [None] * 3),
             out, "gifts")
        got.append((out.dead_letters, out.stats))
    assert got[0] == got[1] and len(got[0][0]) == 2
