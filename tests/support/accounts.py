"""Test inputs with creator accounts: account records and their tombstones, payouts, and random sessions
(hypothesis) interleaving them with gifts in one order, as stream.engine.order merges a partition's inputs; and
policies that make the account rules bite (no default region, an ineligible missing status, a higher min age)."""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from importlib import resources

import msgspec
from hypothesis import strategies as st

from stream.engine.policy import Policy, load_policy, parse_policy
from tests.support.events import T0, gift, payout


@dataclass(frozen=True)
class PayoutInput:
    """A record of topic payouts."""

    raw: bytes


@dataclass(frozen=True)
class AccountInput:
    """A record of topic creator-accounts: its key, its value (None: a tombstone) and the record's timestamp."""

    key: bytes | None
    value: bytes | None
    ts: int


Input = bytes | PayoutInput | AccountInput  # bytes: a gift record


def account(creator_id: str, region: object = "US", status: object = "verified", method: object = "paypal",
            age: object = 30, ts: int = 0, key: object = ..., **extra: object) -> AccountInput:
    """A creator-accounts record (a field given as ... is left out; key: the creator id unless given)."""
    rec = {"creator_id": creator_id, "region": region, "account_status": status, "payout_method": method,
           "age": age, "updated_ts": ts, **extra}
    value = msgspec.json.encode({k: v for k, v in rec.items() if v is not ...})
    return AccountInput(creator_id.encode() if key is ... else key, value, ts)


def closing(creator_id: str, ts: int) -> AccountInput:
    """The tombstone of a creator's account."""
    return AccountInput(creator_id.encode(), None, ts)


def _policy_variant(change) -> Policy:
    data = tomllib.loads(resources.files("stream.data").joinpath("policy.default.toml").read_text())
    change(data)
    return parse_policy(data, "<a variant of the default policy>")


def _strict(data: dict) -> None:
    data["accounts"]["missing_status"] = "restricted"  # no notice without an account record
    data["regions"]["KR"]["min_age"] = 21


ACCOUNT_POLICIES = {
    "default": load_policy(),  # default_region US
    "no default region": _policy_variant(lambda data: data["accounts"].pop("default_region")),
    "strict": _policy_variant(_strict),
}
CREATORS = ["c0", "c1", "c2", "c3", "c4", "c5"]  # of 2 partitions, c0 and c4 are partition 0's, the rest 1's
GIFT_REGIONS = ["US", "DE", "KR", "ID", "TR", ..., ..., "", "ZZ"]  # ...: the record names no region
ACCOUNT_REGIONS = ["US", "DE", "KR", "ID", "TR"]
STATUSES = ["verified", "standard", "restricted", "suspended"]
MIN = 60_000


@st.composite
def bad_accounts(draw, creator: str, ts: int) -> AccountInput:
    """A creator-accounts record that is a dead letter."""
    bad = draw(st.sampled_from(["status", "method", "region", "key", "tombstone key", "not json", "missing", "age",
                                "closed status"]))
    if bad == "tombstone key":
        return AccountInput(draw(st.sampled_from([None, b"", b"a b", b"\xff"])), None, ts)
    if bad == "not json":
        return AccountInput(creator.encode(), b"{oops", ts)
    change = {"status": {"status": "gold"}, "closed status": {"status": "closed"}, "method": {"method": "crypto"},
              "region": {"region": draw(st.sampled_from(["ZZ", ""]))},
              "key": {"key": draw(st.sampled_from([b"c9", None, b"\xff"]))}, "missing": {"age": ...},
              "age": {"age": 151}}[bad]
    return account(creator, ts=ts, **change)


@st.composite
def account_sessions(draw) -> list[Input]:
    """Gifts (plain and streaks, some naming no region, some late or repeated), account records of every status,
    region and age and their closings, bad account records, and payouts, in one order."""
    n = draw(st.integers(1, 60))
    ts = T0
    items: list[Input] = []
    streaks: list[list] = []  # open ones: [creator, group, count, region, diamond_count]
    for i in range(n):
        ts += draw(st.integers(0, 2 * MIN))
        creator = draw(st.sampled_from(CREATORS))
        kind = draw(st.sampled_from(["gift", "gift", "gift", "streak", "streak", "late", "dup", "account", "account",
                                     "closing", "bad account", "payout"]))
        if kind in ("gift", "late"):
            items.append(gift(event_id=f"e{i}", creator_id=creator, region=draw(st.sampled_from(GIFT_REGIONS)),
                              room_id=f"r{creator}", diamond_count=draw(st.sampled_from([5, 99, 500, 1500, 2999])),
                              repeat_count=draw(st.integers(1, 3)),
                              ts=ts if kind == "gift" else ts - draw(st.integers(0, 180 * MIN))))
        elif kind == "streak":
            if streaks and draw(st.booleans()):
                s = draw(st.sampled_from(streaks))
                s[2] += draw(st.integers(0, 5))
                end = draw(st.booleans())
                if end:
                    streaks.remove(s)
            else:
                s = [creator, f"g{i}", draw(st.integers(1, 5)), draw(st.sampled_from(GIFT_REGIONS)),
                     draw(st.sampled_from([1, 99, 700]))]
                end = False
                streaks.append(s)
            items.append(gift(event_id=f"e{i}", creator_id=s[0], region=s[3], room_id=f"r{s[0]}", gift_type=1,
                              diamond_count=s[4], repeat_count=s[2], group_id=s[1], repeat_end=end, ts=ts))
        elif kind == "dup" and any(type(x) is bytes for x in items):
            items.append(draw(st.sampled_from([x for x in items if type(x) is bytes])))
        elif kind == "account":
            items.append(account(creator, draw(st.sampled_from(ACCOUNT_REGIONS)), draw(st.sampled_from(STATUSES)),
                                 draw(st.sampled_from(["paypal", "bank"])), draw(st.sampled_from([16, 18, 19, 21, 45])),
                                 ts))
        elif kind == "closing":
            items.append(closing(creator, ts))
        elif kind == "bad account":
            items.append(draw(bad_accounts(creator, ts)))
        elif kind == "payout":
            items.append(PayoutInput(payout(f"p{draw(st.integers(0, 4))}", creator,
                                            draw(st.sampled_from([1, 500_000, 2_000_000, 10_000_000])))))
    return items
