"""Test inputs: gift, account and payout records, and random sessions (hypothesis) of gifts good and bad."""

from __future__ import annotations

import itertools

import orjson
from hypothesis import strategies as st

T0 = 1_764_000_000_000  # 2025-11-24T16:00:00Z, a whole hour
_ids = itertools.count(1)


def gift(**fields) -> bytes:
    """A valid gift event (a plain 5-coin gift to creator c1 in the US) with overrides."""
    rec = {"event_id": str(next(_ids)), "room_id": "r1", "creator_id": "c1", "sender_id": "s1",
           "gift_id": 5655, "gift_type": 0, "diamond_count": 5, "repeat_count": 1, "repeat_end": False,
           "ts": T0, "region": "US"}
    rec.update(fields)
    return orjson.dumps({k: v for k, v in rec.items() if v is not ...})


def account(**fields) -> bytes:
    """A valid creator-accounts value (a verified US creator c1 paid by paypal) with overrides; `...` drops a field."""
    rec = {"creator_id": "c1", "region": "US", "account_status": "verified", "payout_method": "paypal", "age": 30,
           "updated_ts": T0}
    rec.update(fields)
    return orjson.dumps({k: v for k, v in rec.items() if v is not ...})


def payout(pid: str, creator: str, milli: int) -> bytes:
    return orjson.dumps({"payout_id": pid, "creator_id": creator, "milli_diamonds": milli, "ts": T0})


MIN = 60_000
REGIONS = ["US", "ID", "KR", "TR"]


@st.composite
def sessions(draw, in_order: bool = False, region_optional: bool = False,
             coins: tuple[int, ...] = (1, 5, 99, 500, 29_999)):
    """A session of plain gifts, streaks (some missing their end), duplicates, disorder and bad records.
    region_optional: some gifts name no region (as real live clients; the creator's account names it). coins: the
    prices of the plain gifts."""
    n = draw(st.integers(1, 80))
    ts = T0
    records: list[bytes] = []
    for i in range(n):
        ts += draw(st.integers(0, 9 * MIN))
        kind = draw(st.sampled_from(["plain", "plain", "streak", "dup", "late", "bad"] if not in_order
                                    else ["plain", "plain", "streak"]))
        creator = draw(st.sampled_from(["c0", "c1", "c2", "c3", "c4"]))
        region = REGIONS[int(creator[1]) % len(REGIONS)]
        if region_optional and draw(st.booleans()):
            region = ...
        if kind == "plain":
            records.append(gift(event_id=f"e{i}", creator_id=creator, region=region, room_id=f"r{creator}",
                                diamond_count=draw(st.sampled_from(coins)),
                                repeat_count=draw(st.integers(1, 3)), ts=ts))
        elif kind == "streak":
            counts = sorted(draw(st.lists(st.integers(1, 30), min_size=1, max_size=5, unique=True)))
            has_end = draw(st.booleans())
            for j, c in enumerate(counts):
                records.append(gift(event_id=f"e{i}-{j}", creator_id=creator, region=region,
                                    room_id=f"r{creator}", gift_type=1, diamond_count=1, repeat_count=c,
                                    group_id=f"g{i}", repeat_end=has_end and j == len(counts) - 1,
                                    ts=ts + j * 200))
        elif kind == "dup" and records:
            records.append(draw(st.sampled_from(records)))
        elif kind == "late":
            records.append(gift(event_id=f"e{i}", creator_id=creator, region=region,
                                ts=ts - draw(st.integers(0, 180 * MIN))))
        elif kind == "bad":
            records.append(draw(st.sampled_from([b"{oops", gift(diamond_count=0), gift(region="ZZ"),
                                                 gift(ts=ts + 10**9)])))
    return records


ACCOUNT_REGIONS = ["US", "ID", "KR", "TR", "DE"]
STATUSES = ["verified", "standard", "restricted", "suspended"]


@st.composite
def account_records(draw, ts: int, creator: str | None = None) -> tuple[bytes | None, bytes | None, int]:
    """One creator-accounts record (key, value, record time): an account, a tombstone (value None) or a bad one
    (a region, status or method the policy does not know, a key that is not its creator_id)."""
    creator = creator or draw(st.sampled_from(["c0", "c1", "c2", "c3", "c4", "c5"]))
    kind = draw(st.sampled_from(["account", "account", "account", "account", "tombstone", "bad"]))
    if kind == "tombstone":
        return creator.encode(), None, ts
    rec = {"creator_id": creator, "region": draw(st.sampled_from(ACCOUNT_REGIONS)),
           "account_status": draw(st.sampled_from([*STATUSES, "verified", "standard"])),  # eligible mostly
           "payout_method": draw(st.sampled_from(["paypal", "bank"])),
           "age": draw(st.sampled_from([17, 18, 19, 30, 30, 30])), "updated_ts": ts}
    key = creator
    if kind == "bad":
        flaw = draw(st.sampled_from(["region", "status", "closed", "method", "key"]))
        if flaw == "key":
            key = "c9"
        else:
            field, value = {"region": ("region", "ZZ"), "status": ("account_status", "gold"),
                            "closed": ("account_status", "closed"), "method": ("payout_method", "cheque")}[flaw]
            rec[field] = value
    return key.encode(), account(**rec), ts


WHOLE_BALANCE = -1  # a payout's milli_diamonds in account_sessions: the creator's balance then (see there)


@st.composite
def account_sessions(draw, in_order: bool = False) -> list[tuple[str, list]]:
    """A session (see `sessions`, some gifts without a region) cut into steps, with creator-accounts records and
    payouts between them (some inside a streak): ("gifts", [value]), ("accounts", [(key, value, ts)]) or
    ("payouts", [value]), in the order one partition's input would have them. A payout of WHOLE_BALANCE milli-diamonds
    stands for the creator's whole balance at that point (it re-arms the threshold): the test's reference, which
    knows that balance, writes the amount in before the engines see the record."""
    records = draw(sessions(in_order=in_order, region_optional=True, coins=(5, 99, 500, 1_500, 29_999, 150_000)))
    cuts = sorted(set(draw(st.lists(st.integers(0, len(records)), max_size=20))) | {0, len(records)})
    steps: list[tuple[str, list]] = []
    first = [draw(account_records(T0 - MIN, c)) for c in ("c0", "c1", "c2", "c3", "c4", "c5")
             if draw(st.integers(0, 9)) < 7]  # most creators have an account from the start
    if first:
        steps.append(("accounts", first))
    for i, (lo, hi) in enumerate(itertools.pairwise(cuts)):
        kind = draw(st.sampled_from(["accounts", "accounts", "accounts", "payouts", "payouts", "payouts", "none"]))
        if kind == "accounts":
            steps.append(("accounts", draw(st.lists(account_records(T0 + i * MIN), min_size=1, max_size=4))))
        elif kind == "payouts":
            steps.append(("payouts", [
                payout(f"p{draw(st.integers(0, 3))}-{creator}", creator,  # resent at times
                       draw(st.sampled_from([WHOLE_BALANCE, WHOLE_BALANCE, WHOLE_BALANCE, 1_000, 500_000, 2_000_000,
                                             20_000_000, 10**9])))
                for creator in draw(st.lists(st.sampled_from(["c0", "c1", "c2", "c3", "c4"]), min_size=1,
                                             max_size=3))]))
        steps.append(("gifts", records[lo:hi]))
    return steps
