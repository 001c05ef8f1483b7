"""The one order of a partition's inputs (stream.engine.order): head merge by record timestamp, the tie rule,
offset order within an input, and waiting for an input that may still deliver."""

from __future__ import annotations

import random

from stream.engine.order import Input, Pending, plan, record_time

A, G, P = Input.ACCOUNTS, Input.GIFTS, Input.PAYOUTS


def value(kind: Input, ts: int) -> bytes:
    return (b'{"updated_ts": %d}' if kind is Input.ACCOUNTS else b'{"ts": %d}') % ts


def queues(**stamps: list[int]) -> list[Pending]:
    qs = [Pending(kind) for kind in Input]
    for name, ts in stamps.items():
        kind = Input[name.upper()]
        qs[kind].add(list(range(len(ts))), [value(kind, t) for t in ts], [0] * len(ts))
    return qs


def merged(qs: list[Pending], exhausted: list[bool] | None = None) -> list[tuple[Input, int]]:
    """(input, offset) in the order the plan takes them."""
    order = []
    for run in plan(qs, exhausted or [True] * 3):
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
    assert merged(qs, [True, True, False]) == []  # payouts not caught up: nothing can be decided
    assert merged(qs, [True, True, True]) == [(G, 0), (G, 1)]


def test_the_merge_stops_where_an_input_runs_dry():
    qs = queues(gifts=[10, 20, 30], payouts=[15])
    # payouts is not exhausted: once its one record is taken, gifts after 15 must wait for its next one
    assert merged(qs, [True, True, False]) == [(G, 0), (P, 0)]
    assert len(qs[G]) == 2
    qs[P].add([1], [value(P, 25)], [0])
    assert merged(qs, [True, True, True]) == [(G, 1), (P, 1), (G, 2)]


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
            exhausted = [fed[k.name.lower()] == len(stamps[k.name.lower()]) for k in Input]
            got += merged(qs, exhausted)
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
    assert plan(q, [True, True, False]) == [] and plan(q, [True, False, True])[0].hi == 2
    assert q[G].times == []  # never looked into
