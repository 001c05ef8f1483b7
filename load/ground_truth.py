"""An independent, deliberately naive computation of what the engine must produce.

It reads the same records but shares no code with stream.engine: plain dicts and json, one pass per partition, no
windows machinery, no timers. The policy comes in as plain values (Rules). Used as the ground truth by the engine
tests and by the load harness (`giftstream load run`).

With payouts and creator accounts (expected_inputs), a partition's three inputs are merged into one sequence the
way stream/engine/order.py's docstring says (written again here, not imported): each input stays in offset order;
the next record is the input head with the smallest time; at equal times accounts go before gifts before payouts. A
record's time is the one it holds (a gift's and a payout's `ts`, an account's `updated_ts`), a tombstone's its Kafka
timestamp, and 0 for a record whose time cannot be read; a record more than max_future past the partition's watermark
(the highest time of the gifts accepted so far) counts as at the watermark. Along that sequence:
  * an account record (valid: its key is its creator_id, known region and status, a method its region offers) sets
    the creator's account; a tombstone (null value) closes it, keeping the region it had (a creator closed without
    ever having an account keeps the region of its latest credit);
  * a gift is priced in its creator's account's region, else its own region, else the default region;
  * a payout applies when its payout_id was not applied before and it does not exceed the balance.
Streaks are credited when the engine's timers close them, which this module does not model. So the balance at a
payout is known only within bounds: plain gifts and streaks that had their end event are certainly credited,
streaks still without one may or may not be (each with its highest count so far). A payout within the lower bound
applies, one above the upper bound does not, and one between is reported as undecided (load.generator sizes its
payouts so that none is).
"""

from __future__ import annotations

import json
import re
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from fractions import Fraction

from aiokafka.partitioner import murmur2

# The contract's id pattern (schemas/gift-event.schema.json), written out again here: this module shares no
# code with the engine.
_ID = re.compile(r"[0-9A-Za-z_-]{1,64}")
MAX_TS = 10**14  # the largest record time (ms) the contract allows

FIELDS = {"event_id": str, "room_id": str, "creator_id": str, "sender_id": str, "gift_id": int,
          "gift_type": int, "diamond_count": int, "repeat_count": int, "repeat_end": bool, "ts": int}
PAYOUT_FIELDS = {"payout_id": str, "creator_id": str, "milli_diamonds": int, "ts": int}
ACCOUNT_FIELDS = {"creator_id": str, "region": str, "account_status": str, "payout_method": str, "age": int,
                  "updated_ts": int}
CLOSED = "closed"  # the status of an account closed by a tombstone
ACCOUNTS, GIFTS, PAYOUTS = 0, 1, 2  # the inputs, by their rank at equal timestamps


@dataclass(frozen=True)
class Rules:
    """The policy's numbers the ground truth needs, as plain values."""

    rates: dict[str, Fraction]  # region -> diamonds per coin (the regions the policy knows)
    max_future_ms: int
    horizon_ms: int
    max_bytes: int = 65536
    default_region: str | None = None  # of a gift that names none, for a creator without an account region
    statuses: frozenset[str] = frozenset()  # the account statuses
    methods: dict[str, frozenset[str]] = field(default_factory=dict)  # region -> payout methods it offers


@dataclass(frozen=True, slots=True)
class Rec:
    """A record of an input partition: its value (None: a tombstone), record timestamp and key."""

    value: bytes | None
    ts: int
    key: bytes | None = None


@dataclass
class PartitionInputs:
    """One partition's records of each input, in offset order."""

    gifts: list[Rec] = field(default_factory=list)
    payouts: list[Rec] = field(default_factory=list)
    accounts: list[Rec] = field(default_factory=list)


class _Duplicate(ValueError):
    pass


def _pairs(pairs: list[tuple[str, object]]) -> dict:
    d = dict(pairs)
    if len(d) != len(pairs):
        raise _Duplicate("duplicate key")
    return d


def _no_constant(name: str) -> object:
    raise ValueError(f"{name} is not JSON")


def _loads(raw: bytes) -> object:
    """A record as JSON (None when it is not: bad bytes, NaN, a repeated key at any depth)."""
    try:
        return json.loads(raw, object_pairs_hook=_pairs, parse_constant=_no_constant)
    except (ValueError, RecursionError):
        return None


def _typed(rec: object, fields: dict[str, type]) -> bool:
    return isinstance(rec, dict) and all(type(rec.get(name)) is typ for name, typ in fields.items())


def _valid(rec: object) -> bool:
    """A gift event: every field of its type, ids of the id pattern, counts and times in range. The region is
    optional (a string; "" counts as none)."""
    if not _typed(rec, FIELDS):
        return False
    assert isinstance(rec, dict)
    if not all(_ID.fullmatch(rec[k]) for k in ("event_id", "room_id", "creator_id", "sender_id")):
        return False
    if type(rec.get("region", "")) is not str:
        return False
    group = rec.get("group_id", "")
    if type(group) is not str or (group and not _ID.fullmatch(group)):
        return False
    return (1 <= rec["diamond_count"] <= 10_000_000 and 1 <= rec["repeat_count"] <= 1_000_000
            and 0 <= rec["gift_id"] < 2**31 and 0 <= rec["gift_type"] < 2**31 and 0 <= rec["ts"] <= MAX_TS)


def _valid_payout(rec: object) -> bool:
    if not _typed(rec, PAYOUT_FIELDS):
        return False
    assert isinstance(rec, dict)
    return (bool(_ID.fullmatch(rec["payout_id"]) and _ID.fullmatch(rec["creator_id"]))
            and 1 <= rec["milli_diamonds"] <= 2**62 and 0 <= rec["ts"] <= MAX_TS)


def _valid_account(rec: object) -> bool:
    if not _typed(rec, ACCOUNT_FIELDS):
        return False
    assert isinstance(rec, dict)
    return (bool(_ID.fullmatch(rec["creator_id"])) and 1 <= len(rec["account_status"]) <= 32
            and 1 <= len(rec["payout_method"]) <= 32 and 0 <= rec["age"] <= 150 and 0 <= rec["updated_ts"] <= MAX_TS)


def partition_of(key: bytes, partitions: int) -> int:
    """Kafka's default partitioner on a key (murmur2, positive, modulo the partition count)."""
    return (murmur2(key) & 0x7FFFFFFF) % partitions


def creator_key(raw: bytes) -> bytes | None:
    """The key a producer gives a gift or payout record: its creator_id (None when it has none it can read)."""
    rec = _loads(raw)
    if not isinstance(rec, dict) or type(rec.get("creator_id")) is not str or type(rec.get("ts", 0)) is not int:
        return None
    try:
        return rec["creator_id"].encode()
    except UnicodeEncodeError:
        return None


def route(partitions: int, gifts: Iterable[tuple[bytes, int]] = (), payouts: Iterable[tuple[bytes, int]] = (),
          accounts: Iterable[tuple[bytes | None, bytes | None, int]] = ()) -> dict[int, PartitionInputs]:
    """Records as producers spread them: gifts and payouts (value, timestamp) keyed by their creator_id, accounts
    (key, value, timestamp) by their key; keyless records to partition 0; each partition's in the given order."""
    out = {p: PartitionInputs() for p in range(partitions)}

    def where(key: bytes | None) -> PartitionInputs:
        return out[0 if key is None else partition_of(key, partitions)]

    for value, ts in gifts:
        where(creator_key(value)).gifts.append(Rec(value, ts))
    for value, ts in payouts:
        where(creator_key(value)).payouts.append(Rec(value, ts))
    for key, value, ts in accounts:
        where(key).accounts.append(Rec(value, ts, key))
    return out


def own_time(kind: int, r: Rec) -> int:
    """The time the merge orders a record by (the module docstring)."""
    if r.value is None:
        return r.ts if kind == ACCOUNTS else 0
    rec = _loads(r.value)
    t = rec.get("updated_ts" if kind == ACCOUNTS else "ts") if isinstance(rec, dict) else None
    return t if type(t) is int and 0 <= t < 2**63 else 0


def merged(inputs: PartitionInputs, watermark: Callable[[], int | None] = lambda: None,
           max_future_ms: int = 0) -> Iterable[tuple[int, Rec]]:
    """(input, record) of a partition in the one order of its inputs (the module docstring). watermark(): the
    partition's watermark now (asked before each record): a record more than max_future_ms past it counts as at it."""
    queues = {ACCOUNTS: inputs.accounts, GIFTS: inputs.gifts, PAYOUTS: inputs.payouts}
    times = {kind: [own_time(kind, r) for r in q] for kind, q in queues.items()}
    pos = dict.fromkeys(queues, 0)
    while True:
        wm = watermark()
        heads = [(wm if wm is not None and t > wm + max_future_ms else t, kind)
                 for kind, q in queues.items() if pos[kind] < len(q) for t in (times[kind][pos[kind]],)]
        if not heads:
            return
        _, kind = min(heads)
        yield kind, queues[kind][pos[kind]]
        pos[kind] += 1


@dataclass
class _Streak:
    creator: str
    region: str  # the region it is priced in: its creator's credit region when it began
    milli: int  # per unit of count, at that region's rate
    count: int = 0
    ts: int = 0
    ended: bool = False  # its end event was accepted: the engine has credited it (up to its count)


@dataclass
class _Truth:
    rules: Rules
    partitions: int
    balances: dict[str, int] = field(default_factory=lambda: defaultdict(int))  # plain credits - payouts
    credits: list[tuple[str, int, int]] = field(default_factory=list)  # plain credits (streaks added at the end)
    streaks: dict[tuple, _Streak] = field(default_factory=dict)
    by_creator: dict[str, list[_Streak]] = field(default_factory=lambda: defaultdict(list))
    seen: set[str] = field(default_factory=set)
    accounts: dict[str, tuple[str, str]] = field(default_factory=dict)  # creator -> (region, status)
    home: dict[str, str] = field(default_factory=dict)  # creator -> the region of its latest credit
    payouts_seen: set[str] = field(default_factory=set)
    accepted: int = 0
    payouts: int = 0
    payouts_refused: int = 0
    payout_duplicates: int = 0
    undecided: list[str] = field(default_factory=list)
    accounts_applied: int = 0
    accounts_refused: int = 0

    def ours(self, creator: str, p: int) -> bool:
        return self.partitions == 1 or partition_of(creator.encode(), self.partitions) == p

    def run(self, p: int, inputs: PartitionInputs) -> None:
        marks: list[int | None] = [None]  # the partition's watermark, which the merge asks before each record
        for kind, rec in merged(inputs, lambda: marks[0], self.rules.max_future_ms):
            if kind == GIFTS:
                marks[0] = self.gift(p, rec, marks[0])
            elif kind == PAYOUTS:
                self.payout(p, rec)
            else:
                self.account(p, rec)

    def region(self, rec: dict) -> str | None:
        """The region a gift is priced in (None: it cannot be)."""
        account = self.accounts.get(rec["creator_id"])
        if account is not None and account[0]:
            return account[0]
        return rec.get("region") or self.rules.default_region

    def gift(self, p: int, r: Rec, watermark: int | None) -> int | None:
        rules = self.rules
        raw = r.value if r.value is not None else b""
        if len(raw) > rules.max_bytes:
            return watermark
        rec = _loads(raw)
        if not _valid(rec):
            return watermark
        assert isinstance(rec, dict)
        if not self.ours(rec["creator_id"], p) or (rec.get("region") and rec["region"] not in rules.rates):
            return watermark
        region = self.region(rec)
        if region is None:
            return watermark
        if watermark is not None and not (watermark - rules.horizon_ms <= rec["ts"] <= watermark + rules.max_future_ms):
            return watermark
        if rec["event_id"] in self.seen:
            return watermark
        self.seen.add(rec["event_id"])
        self.accepted += 1
        watermark = rec["ts"] if watermark is None else max(watermark, rec["ts"])
        milli = int(rules.rates[region] * 1000) * rec["diamond_count"]
        creator = rec["creator_id"]
        if rec["gift_type"] == 1:
            key = (rec["room_id"], rec["sender_id"], rec["gift_id"], rec.get("group_id", ""))
            s = self.streaks.get(key)
            if s is None:
                s = self.streaks[key] = _Streak(creator, region, milli)
                self.by_creator[creator].append(s)
            s.count = max(s.count, rec["repeat_count"])
            s.ts = max(s.ts, rec["ts"])
            if rec["repeat_end"]:
                s.ended = True
                self.home[creator] = self.account_region(creator) or s.region
        else:
            self.balances[creator] += milli * rec["repeat_count"]
            self.credits.append((creator, rec["ts"], milli * rec["repeat_count"]))
            self.home[creator] = self.account_region(creator) or region
        return watermark

    def account_region(self, creator: str) -> str:
        account = self.accounts.get(creator)
        return account[0] if account is not None else ""

    def payout(self, p: int, r: Rec) -> None:
        rec = _loads(r.value) if r.value is not None else None
        if not _valid_payout(rec) or not self.ours(rec["creator_id"], p):  # type: ignore[index]
            self.payouts_refused += 1
            return
        assert isinstance(rec, dict)
        if rec["payout_id"] in self.payouts_seen:
            self.payout_duplicates += 1
            return
        creator, milli = rec["creator_id"], rec["milli_diamonds"]
        streaks = self.by_creator.get(creator, ())
        low = self.balances.get(creator, 0) + sum(s.milli * s.count for s in streaks if s.ended)
        high = low + sum(s.milli * s.count for s in streaks if not s.ended)
        if milli <= low:
            self.payouts_seen.add(rec["payout_id"])
            self.balances[creator] -= milli
            self.payouts += 1
        else:
            self.payouts_refused += 1
            if milli <= high:
                self.undecided.append(rec["payout_id"])

    def account(self, p: int, r: Rec) -> None:
        rules = self.rules
        try:
            key = r.key.decode() if r.key is not None else None
        except UnicodeDecodeError:
            key = None
        if r.value is None:  # a tombstone
            if key is None or not _ID.fullmatch(key) or not self.ours(key, p):
                self.accounts_refused += 1
                return
            prev = self.accounts.get(key)
            self.accounts[key] = (prev[0] if prev is not None else self.home.get(key, ""), CLOSED)
            self.accounts_applied += 1
            return
        rec = _loads(r.value)
        if (not _valid_account(rec) or key != rec["creator_id"] or not self.ours(key, p)  # type: ignore[index]
                or rec["region"] not in rules.rates or rec["account_status"] not in rules.statuses  # type: ignore[index]
                or rec["payout_method"] not in rules.methods.get(rec["region"], ())):  # type: ignore[index]
            self.accounts_refused += 1
            return
        assert isinstance(rec, dict)
        self.accounts[key] = (rec["region"], rec["account_status"])
        self.accounts_applied += 1

    def result(self) -> dict:
        balances = dict(self.balances)
        credits = list(self.credits)
        for s in self.streaks.values():
            balances[s.creator] = balances.get(s.creator, 0) + s.milli * s.count
            credits.append((s.creator, s.ts, s.milli * s.count))
        return {"balances": balances, "credits": credits, "accepted": self.accepted, "payouts": self.payouts,
                "payouts_refused": self.payouts_refused, "payout_duplicates": self.payout_duplicates,
                "payouts_undecided": self.undecided, "accounts": dict(self.accounts),
                "accounts_applied": self.accounts_applied, "accounts_refused": self.accounts_refused}


def expected_inputs(inputs: dict[int, PartitionInputs], partitions: int, rules: Rules) -> dict:
    """Balances (milli-diamonds) per creator after end of session, with every streak credited and the applied
    payouts subtracted, of the partitions' inputs (each partition's in offset order, with record timestamps);
    also the credits (creator, ts, milli), the accepted gift events, the payouts applied, refused, repeated and
    undecided (their ids), and each creator's account as (region, status) at the end."""
    truth = _Truth(rules, partitions)
    for p in sorted(inputs):
        truth.run(p, inputs[p])
    return truth.result()


def expected(records: list[bytes], rates: dict[str, Fraction], partitions: int, max_future_ms: int,
             horizon_ms: int, max_bytes: int = 65536, *, default_region: str | None = None) -> dict:
    """Balances (milli-diamonds) per creator and credit events (creator, ts, milli) after end of session, of gift
    records alone (each partition's in record order).

    Accepted = valid, a known region (or none, with a default_region), inside [watermark - horizon, watermark +
    future] of its partition, first of its event_id. Plain gifts credit count x price; a streak (room, sender,
    gift, group) credits its highest cumulative count x price once, stamped with the time of its newest event."""
    rules = Rules(rates, max_future_ms, horizon_ms, max_bytes, default_region)
    return expected_inputs(route(partitions, gifts=((r, 0) for r in records)), partitions, rules)


def window_totals(credits: list[tuple[str, int, int]], windows: list[tuple[str, int, int]]) -> dict:
    """(creator, window name, start) -> milli-diamonds, for every window each credit falls in."""
    totals: dict[tuple[str, str, int], int] = defaultdict(int)
    for creator, ts, milli in credits:
        for name, size, hop in windows:
            start = ts - ts % hop
            while start > ts - size:
                totals[(creator, name, start)] += milli
                start -= hop
    return dict(totals)
