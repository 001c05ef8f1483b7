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
def sessions(draw, in_order: bool = False):
    """A session of plain gifts, streaks (some missing their end), duplicates, disorder and bad records."""
    n = draw(st.integers(1, 80))
    ts = T0
    records: list[bytes] = []
    for i in range(n):
        ts += draw(st.integers(0, 9 * MIN))
        kind = draw(st.sampled_from(["plain", "plain", "streak", "dup", "late", "bad"] if not in_order
                                    else ["plain", "plain", "streak"]))
        creator = draw(st.sampled_from(["c0", "c1", "c2", "c3", "c4"]))
        region = REGIONS[int(creator[1]) % len(REGIONS)]
        if kind == "plain":
            records.append(gift(event_id=f"e{i}", creator_id=creator, region=region, room_id=f"r{creator}",
                                diamond_count=draw(st.sampled_from([1, 5, 99, 500, 29_999])),
                                repeat_count=draw(st.integers(1, 3)), ts=ts))
        elif kind == "streak":
            counts = sorted(draw(st.lists(st.integers(1, 30), min_size=1, max_size=5, unique=True)))
            has_end = draw(st.booleans())
            for j, c in enumerate(counts):
                records.append(gift(event_id=f"e{i}.{j}", creator_id=creator, region=region,
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
