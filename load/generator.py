"""Seeded synthetic gift traffic that looks like a real live-stream gift feed.

The generator simulates what a TikTokLive-style client sees:

* a population of creators (one live room each, one payout region each) and of senders, both drawn with
  Zipf–Mandelbrot weights, so that about 20% of the senders give about 97% of the gifts and a few
  creators receive most of them; a sender mostly gifts in one "home" room;
* streakable gifts (``gift_type == 1``: Rose, Finger Heart, ...) that send several events for one streak
  with a cumulative ``repeat_count`` (1, 2, 3 or jumps such as 1, 3, 7) and a final ``repeat_end = true``;
  non-streakable expensive gifts (``gift_type == 2``: Concert, Lion, Universe, ...) that arrive once with
  ``repeat_end = false``;
* a viral burst: a window of event time in which one creator gets ``burst_multiplier`` times their usual
  traffic (and the overall rate rises accordingly);
* the dirt of a real feed: streaks whose final event never arrives, exact duplicate resends (same bytes,
  same ``event_id``) shortly after the original, late events (``ts`` older than the current event time by
  ``late_by_ms``), small out-of-order jitter, and malformed records of every kind in ``MALFORMED_KINDS``.

Records are yielded in emission (arrival) order as ``bytes`` without a trailing newline. The same
``TrafficConfig`` always produces byte-identical output (``random.Random`` seeded from ``cfg.seed``; the
population depends only on the seed and the population sizes, not on ``events``).

Ground truth: ``GenerationStats`` counts every kind of record and the coins each creator must be credited
(``diamond_count × repeat_count`` once per non-streak event and once per streak with its final, or last
seen, count; duplicates and malformed records credit nothing, late events still do).

The gift ids and prices are illustrative (catalogs change); consumers must use the per-event fields.
"""

from __future__ import annotations

import gzip
import heapq
import math
import os
import queue
import random
import threading
from bisect import bisect_right
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from itertools import accumulate, islice
from pathlib import Path
from typing import BinaryIO

import orjson

__all__ = [
    "ACCOUNT_STATUSES",
    "BAD_ACCOUNT_KINDS",
    "BAD_PAYOUT_KINDS",
    "DEFAULT_REGION_MIX",
    "DEFAULT_START_TS_MS",
    "GIFT_CATALOG",
    "MALFORMED_KINDS",
    "MAX_RECORD_BYTES",
    "PAYOUT_METHODS",
    "REQUIRED_FIELDS",
    "GenerationStats",
    "Gift",
    "InputStats",
    "Inputs",
    "TrafficConfig",
    "TrafficGenerator",
    "generate",
    "generate_inputs",
    "write_jsonl",
]

DEFAULT_START_TS_MS = 1_764_000_000_000  # 2025-11-24T16:00:00Z, aligned to the hour and the day
SNOWFLAKE_EPOCH_MS = 1_288_834_974_657  # event ids are snowflake-like: (ms - epoch) << 22 | sequence
MAX_RECORD_BYTES = 64 * 1024  # records larger than this are "oversize"
DAY_MS = 86_400_000
FAR_TS_MS = 30 * DAY_MS  # far-future / far-past malformed timestamps are this far off

# Every kind of bad record the generator can emit; each malformed record picks one, evenly.
MALFORMED_KINDS: tuple[str, ...] = (
    "not_json",  # bytes that are not JSON at all (binary junk, an HTML error page, plain text)
    "truncated_json",  # a valid record cut short
    "wrong_type",  # e.g. diamond_count "5", ids as JSON numbers, repeat_end "false"
    "missing_field",  # one required field absent
    "nonpositive_diamond_count",  # diamond_count 0 or negative
    "zero_repeat_count",  # repeat_count 0
    "unknown_region",  # region "ZZ"
    "future_ts",  # ts 30 days after the current event time
    "past_ts",  # ts 30 days before the current event time
    "oversize",  # a valid-looking record padded beyond MAX_RECORD_BYTES
)

REQUIRED_FIELDS: tuple[str, ...] = (
    "event_id",
    "room_id",
    "creator_id",
    "sender_id",
    "gift_id",
    "gift_type",
    "diamond_count",
    "repeat_count",
    "repeat_end",
    "ts",
    "region",
)


@dataclass(frozen=True, slots=True)
class Gift:
    gift_id: int
    name: str
    diamond_count: int  # coin price of one unit
    gift_type: int  # 1 = streakable, 2 = not streakable
    weight: float  # relative popularity for ordinary senders
    whale_weight: float  # relative popularity for the top senders ("whales")

    @property
    def streakable(self) -> bool:
        return self.gift_type == 1


# Illustrative catalog (ids and prices from public gift lists; they change over time).
GIFT_CATALOG: tuple[Gift, ...] = (
    Gift(5655, "Rose", 1, 1, 40.0, 18.0),
    Gift(5269, "TikTok", 1, 1, 8.0, 3.0),
    Gift(6064, "GG", 1, 1, 6.0, 2.0),
    Gift(5827, "Ice Cream Cone", 1, 1, 8.0, 3.0),
    Gift(7934, "Heart Me", 1, 1, 10.0, 4.0),
    Gift(5487, "Finger Heart", 5, 1, 12.0, 10.0),
    Gift(5658, "Perfume", 20, 1, 3.0, 6.0),
    Gift(5879, "Doughnut", 30, 1, 2.5, 6.0),
    Gift(5660, "Hand Hearts", 100, 1, 1.2, 6.0),
    Gift(6267, "Corgi", 299, 2, 0.4, 3.0),
    Gift(7168, "Money Gun", 500, 2, 0.3, 3.0),
    Gift(7823, "Concert", 500, 2, 0.25, 2.5),
    Gift(11046, "Galaxy", 1000, 2, 0.12, 1.5),
    Gift(6369, "Lion", 29_999, 2, 0.004, 0.12),
    Gift(7312, "Universe", 34_999, 2, 0.002, 0.06),
)

# Payout region of a creator (ISO 3166 alpha-2) with relative weights.
DEFAULT_REGION_MIX: tuple[tuple[str, float], ...] = (
    ("US", 28.0),
    ("ID", 12.0),
    ("BR", 10.0),
    ("MX", 8.0),
    ("GB", 8.0),
    ("TR", 8.0),
    ("DE", 7.0),
    ("FR", 7.0),
    ("JP", 6.0),
    ("KR", 6.0),
)

# Streak shape: non-end events per streak = 1 + Geometric(_STREAK_CONTINUE), capped.
_STREAK_CONTINUE = 0.6
_STREAK_MAX_EVENTS = 60
_LOG_CONTINUE = math.log(_STREAK_CONTINUE)
_ID_MASK = (1 << 22) - 1
_GROUP_MASK = (1 << 16) - 1


# The dirt of a realistic session (the demo session's, also used by the engine benchmark): a viral burst,
# 0.5% duplicates, 0.3% gifts 10 minutes late, 0.2% malformed records, 2% of streaks missing their end.
REALISTIC_DIRT: dict[str, float | int] = {
    "burst_multiplier": 25.0, "burst_start_frac": 0.45, "burst_duration_frac": 0.08, "duplicate_rate": 0.005,
    "late_rate": 0.003, "late_by_ms": 600_000, "malformed_rate": 0.002, "streak_missing_end_rate": 0.02,
}


@dataclass(frozen=True, slots=True)
class TrafficConfig:
    """Everything that shapes the traffic; equal configs produce byte-identical output."""

    seed: int = 1
    events: int = 100_000  # total records emitted (gift events + duplicates + malformed)
    creators: int = 200
    senders: int = 20_000
    # Zipf–Mandelbrot weights w_k = (k + offset * population) ** -exponent, k = 1..population.
    # The sender defaults give the top 20% of senders ~97% of the gifts, for any population size.
    creator_zipf: float = 1.2
    creator_zipf_offset: float = 0.0
    sender_zipf: float = 1.8
    sender_zipf_offset: float = 0.004
    sender_affinity: float = 0.7  # probability that a gift goes to the sender's home room
    whale_fraction: float = 0.005  # top senders by weight who prefer expensive gifts
    start_ts_ms: int = DEFAULT_START_TS_MS
    rate_per_s: float = 1000.0  # mean records per second of event time (outside the burst)
    # Viral burst: from burst_start_frac to burst_start_frac + burst_duration_frac of the nominal
    # span (events / rate_per_s), one creator gets burst_multiplier x their usual traffic.
    burst_multiplier: float = 25.0  # <= 1 disables the burst
    burst_start_frac: float = 0.4
    burst_duration_frac: float = 0.08
    burst_creator_rank: int | None = None  # 0 = biggest creator; None = creators // 10 (at least 1)
    streak_missing_end_rate: float = 0.02  # fraction of streaks whose repeat_end event never arrives
    duplicate_rate: float = 0.005  # fraction of records that are exact resends of an earlier record
    duplicate_delay_ms: int = 5_000  # a resend arrives up to this long after the original
    late_rate: float = 0.003  # fraction of gifts (all their events) whose ts is late_by_ms old
    late_by_ms: int = 300_000
    out_of_order_ms: int = 2_000  # per-gift arrival delay (ts jitter), uniform in [0, out_of_order_ms)
    malformed_rate: float = 0.002  # fraction of records that are malformed
    oversize_bytes: int = 70_000  # padding of an "oversize" malformed record
    regions: tuple[tuple[str, float], ...] = DEFAULT_REGION_MIX
    # Creator accounts and payouts, for generate_inputs only (generate() makes gift records alone, whatever these
    # say; the gift records are the same either way). Off by default.
    accounts: bool = False  # generate_inputs also makes creator-accounts records and payouts
    account_share: float = 0.8  # creators with an account record
    account_before_start: float = 0.6  # of those, the accounts that exist before the first gift (others open later)
    account_updates: float = 0.6  # mean updates per account during the run (status both ways, method, age, region)
    account_close_rate: float = 0.05  # accounts closed by a tombstone during the run (about half reopen)
    bad_account_rate: float = 0.03  # account records that are bad (one of BAD_ACCOUNT_KINDS)
    payout_rate: float = 0.002  # payouts per gift record
    bad_payout_rate: float = 0.1  # payouts that must be refused (one of BAD_PAYOUT_KINDS)
    payout_duplicate_rate: float = 0.05  # payouts resent later (same payout_id: applied once)
    # A good payout is at most the creator's plain gifts so far at this many milli-diamonds per coin: the lowest
    # rate of the default policy (ID's 1/2 diamond), so it fits whatever region the engine prices them in.
    payout_milli_per_coin: int = 500

    def __post_init__(self) -> None:
        if self.events < 0:
            raise ValueError("events must be >= 0")
        if self.creators < 1 or self.senders < 1:
            raise ValueError("creators and senders must be >= 1")
        if not SNOWFLAKE_EPOCH_MS + FAR_TS_MS < self.start_ts_ms < 3_000_000_000_000:
            raise ValueError("start_ts_ms must be an epoch-ms time between 2011 and 2065")
        if not 0 < self.rate_per_s <= 1e8:
            raise ValueError("rate_per_s must be in (0, 1e8]")
        for name in (
            "sender_affinity",
            "whale_fraction",
            "streak_missing_end_rate",
            "late_rate",
            "burst_start_frac",
            "burst_duration_frac",
            "account_share",
            "account_before_start",
            "account_close_rate",
            "bad_account_rate",
            "payout_rate",
            "bad_payout_rate",
            "payout_duplicate_rate",
        ):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be in [0, 1]")
        for name in ("duplicate_rate", "malformed_rate"):
            if not 0.0 <= getattr(self, name) < 0.5:
                raise ValueError(f"{name} must be in [0, 0.5)")
        if self.creator_zipf < 0 or self.sender_zipf < 0:
            raise ValueError("zipf exponents must be >= 0")
        if self.creator_zipf_offset < 0 or self.sender_zipf_offset < 0:
            raise ValueError("zipf offsets must be >= 0")
        if min(self.late_by_ms, self.out_of_order_ms, self.duplicate_delay_ms) < 0:
            raise ValueError("delays must be >= 0")
        if not self.regions or any(w < 0 for _, w in self.regions) or sum(w for _, w in self.regions) <= 0:
            raise ValueError("regions needs at least one positive weight")
        if self.burst_creator_rank is not None and not 0 <= self.burst_creator_rank < self.creators:
            raise ValueError("burst_creator_rank out of range")
        if self.account_updates < 0 or self.payout_milli_per_coin < 1:
            raise ValueError("account_updates must be >= 0 and payout_milli_per_coin >= 1")

    @property
    def nominal_span_ms(self) -> float:
        """Event-time span the records would cover at rate_per_s (the burst shortens it)."""
        return self.events * 1000.0 / self.rate_per_s


@dataclass(slots=True)
class GenerationStats:
    """Counts per kind of record plus the ground-truth credit per creator (in coins)."""

    records: int = 0  # everything emitted
    gift_events: int = 0  # valid, first-sent gift events (single + streak events)
    single_gift_events: int = 0  # non-streakable gift events
    streaks: int = 0
    streak_events: int = 0  # events of streakable gifts, end events included
    streak_ends: int = 0  # events with repeat_end = true
    streaks_missing_end: int = 0
    duplicates: int = 0
    late_events: int = 0  # first-sent gift events whose ts is late_by_ms behind event time
    malformed: dict[str, int] = field(default_factory=lambda: dict.fromkeys(MALFORMED_KINDS, 0))
    coins_total: int = 0
    coins_by_creator: dict[str, int] = field(default_factory=dict)
    first_arrival_ms: int | None = None
    last_arrival_ms: int | None = None
    min_ts: int | None = None  # over valid gift events
    max_ts: int | None = None
    burst_creator_id: str | None = None
    burst_start_ms: int | None = None
    burst_end_ms: int | None = None

    @property
    def malformed_total(self) -> int:
        return sum(self.malformed.values())

    def to_dict(self) -> dict:
        d = asdict(self)
        d["malformed_total"] = self.malformed_total
        return d


# The catalog as parallel tables, for the generator's loop.
_GIFT_IDS = [g.gift_id for g in GIFT_CATALOG]
_GIFT_PRICES = [g.diamond_count for g in GIFT_CATALOG]
_GIFT_STREAKABLE = [g.streakable for g in GIFT_CATALOG]


@dataclass(frozen=True, slots=True)
class _Pacing:
    """When gift actions start: gaps of event time between them (exponential, these means) and the burst."""

    gap_ms: float  # mean ms between gift actions outside the burst
    burst_lo: int  # the burst's event-time window [burst_lo, burst_hi); empty without a burst
    burst_hi: int
    burst_p: float  # in the burst, the probability that an action goes to the burst creator
    burst_gap_ms: float  # mean ms between gift actions in the burst


@dataclass(frozen=True, slots=True)
class _Counts:
    """What one pass counted, for GenerationStats."""

    emitted: int
    last_arrival_ms: int
    single: int
    streaks: int
    streak_events: int
    streak_ends: int
    streaks_missing_end: int
    duplicates: int
    late_events: int
    coins_total: int
    min_ts: int
    max_ts: int


def _streak_events(rand: Callable[[], float], heap: list[tuple[int, int, bytes]], d: dict, idbase: int, seq: int,
                   tn: int, delay: int, budget: int, miss_p: float) -> tuple[bytes, int, int, int, int, bool]:
    """The events of one streak started at tn (d: its gift-shaped dict): the first is returned, the others are
    queued on heap at their arrival times. Returns (first record, events, last event's time, final count,
    next seq, whether the end event is missing)."""
    dumps, push = orjson.dumps, heapq.heappush
    missing = rand() < miss_p
    m = 1 + int(math.log(1.0 - rand()) / _LOG_CONTINUE)
    if m > _STREAK_MAX_EVENTS:
        m = _STREAK_MAX_EVENTS
    cap = budget if missing else budget - 1
    if m > cap:
        m = cap
    # cumulative counts: mostly +1, sometimes a jump, rarely a big combo
    c = 1 if rand() < 0.85 else 2 + int(rand() * 4)
    tk = tn
    b = b""
    for j in range(m):
        if j:
            r = rand()
            if r < 0.6:
                c += 1
            elif r < 0.97:
                c += 2 + int(rand() * 8)
            else:
                c += 10 + int(rand() * 90)
            tk += 150 + int(rand() * 1050)
        d["event_id"] = str(idbase | (seq & _ID_MASK))
        d["repeat_count"] = c
        d["ts"] = tk - delay
        if j:
            push(heap, (tk, seq, dumps(d)))
        else:
            b = dumps(d)
        seq += 1
    k = m
    if not missing:
        if m == 0:
            final = c
        else:
            final = c if rand() < 0.7 else c + 1 + int(rand() * 3)
            tk += 800 + int(rand() * 2200)
        d["event_id"] = str(idbase | (seq & _ID_MASK))
        d["repeat_count"] = final
        d["repeat_end"] = True
        d["ts"] = tk - delay
        if m:
            push(heap, (tk, seq, dumps(d)))
        else:
            b = dumps(d)
        seq += 1
        c = final
        k += 1
    return b, k, tk, c, seq, missing


def _zipf_cum(n: int, exponent: float, offset: float) -> list[float]:
    q = offset * n
    return list(accumulate((k + q) ** -exponent for k in range(1, n + 1)))


def _unique_ids(rng: random.Random, n: int, lo: int, hi: int) -> list[str]:
    seen: set[int] = set()
    out: list[str] = []
    while len(out) < n:
        v = rng.randrange(lo, hi)
        if v not in seen:
            seen.add(v)
            out.append(str(v))
    return out


class TrafficGenerator:
    """Builds the population from ``cfg.seed`` and yields records; ``stats`` is complete after iteration."""

    def __init__(self, cfg: TrafficConfig) -> None:
        self.cfg = cfg
        self.stats = GenerationStats()
        rng = random.Random(f"giftstream-population:{cfg.seed}")
        nc, ns = cfg.creators, cfg.senders

        self.creator_ids = _unique_ids(rng, nc, 6_700_000_000_000_000_000, 7_400_000_000_000_000_000)
        self.room_ids = _unique_ids(rng, nc, 7_300_000_000_000_000_000, 7_500_000_000_000_000_000)
        region_names = [r for r, _ in cfg.regions]
        region_cum = list(accumulate(w for _, w in cfg.regions))
        self.creator_regions = [
            region_names[bisect_right(region_cum, rng.random() * region_cum[-1], 0, len(region_cum) - 1)]
            for _ in range(nc)
        ]
        self.sender_ids = _unique_ids(rng, ns, 6_500_000_000_000_000_000, 7_400_000_000_000_000_000)

        self.creator_cum = _zipf_cum(nc, cfg.creator_zipf, cfg.creator_zipf_offset)
        self.sender_cum = _zipf_cum(ns, cfg.sender_zipf, cfg.sender_zipf_offset)
        c_cum, c_tot = self.creator_cum, self.creator_cum[-1]
        self.home = [bisect_right(c_cum, rng.random() * c_tot, 0, nc - 1) for _ in range(ns)]
        self.whales = max(1, round(ns * cfg.whale_fraction)) if cfg.whale_fraction > 0 else 0

        self.gift_cum = list(accumulate(g.weight for g in GIFT_CATALOG))
        self.whale_gift_cum = list(accumulate(g.whale_weight for g in GIFT_CATALOG))

        # Marginal share of each creator (home-room affinity plus independent draws).
        s_tot = self.sender_cum[-1]
        c_weights = [c_cum[0]] + [c_cum[i] - c_cum[i - 1] for i in range(1, nc)]
        share = [(1.0 - cfg.sender_affinity) * w / c_tot for w in c_weights]
        prev = 0.0
        for si, cum in enumerate(self.sender_cum):
            share[self.home[si]] += cfg.sender_affinity * (cum - prev) / s_tot
            prev = cum
        self.burst_rank = (
            cfg.burst_creator_rank if cfg.burst_creator_rank is not None else min(nc - 1, max(1, nc // 10))
        )
        self.burst_share = share[self.burst_rank]

        # Mean records per gift action, so that rate_per_s is a rate of records.
        whale_mass = self.sender_cum[self.whales - 1] / s_tot if self.whales else 0.0
        p_streak_normal = sum(g.weight for g in GIFT_CATALOG if g.streakable) / self.gift_cum[-1]
        p_streak_whale = sum(g.whale_weight for g in GIFT_CATALOG if g.streakable) / self.whale_gift_cum[-1]
        p_streak = whale_mass * p_streak_whale + (1.0 - whale_mass) * p_streak_normal
        mean_m = 1.0 + _STREAK_CONTINUE / (1.0 - _STREAK_CONTINUE)
        self.mean_records_per_action = p_streak * (mean_m + 1.0 - cfg.streak_missing_end_rate) + (
            1.0 - p_streak
        )

    def __iter__(self) -> Iterator[bytes]:
        return self._run()

    # ---------------------------------------------------------------------------------------------- emitting
    # One pass: _pacing() (when gift actions start, the burst), _emit() (the records), _count() (the stats).

    def _run(self, times: list[int] | None = None) -> Iterator[bytes]:
        rng = random.Random(f"giftstream-traffic:{self.cfg.seed}")
        return self._emit(rng, times)

    def timed(self, times: list[int]) -> Iterator[bytes]:
        """The records, as iterating does, each one's arrival time (ms of event time) appended to `times` as it is
        yielded (non-decreasing: the order they arrive in)."""
        return self._run(times)

    def _pacing(self) -> _Pacing:
        """Event-time pacing of the gift actions and the viral burst's window (recorded in the stats)."""
        cfg, st = self.cfg, self.stats
        start = cfg.start_ts_ms
        gap_ms = self.mean_records_per_action * 1000.0 / cfg.rate_per_s  # mean ms between gift actions
        span = cfg.nominal_span_ms
        if cfg.burst_multiplier > 1.0 and cfg.burst_duration_frac > 0.0:
            burst_lo = start + int(span * cfg.burst_start_frac)
            burst_hi = burst_lo + max(1, int(span * cfg.burst_duration_frac))
            boost = 1.0 + (cfg.burst_multiplier - 1.0) * self.burst_share
            st.burst_creator_id = self.creator_ids[self.burst_rank]
            st.burst_start_ms, st.burst_end_ms = burst_lo, burst_hi
        else:
            burst_lo = burst_hi = start - 1
            boost = 1.0
        return _Pacing(gap_ms, burst_lo, burst_hi, (boost - 1.0) / boost, gap_ms / boost)

    def _emit(self, rng: random.Random, times: list[int] | None = None) -> Iterator[bytes]:
        """The records in arrival order. Each iteration emits one record: the first of a new gift action
        (single gift, first event of a streak, or a malformed record) when no queued record (a streak's
        later events, a duplicate resend) is due before the action's start time, else the earliest queued one.

        The per-record loop is one function on purpose, with locals only and no per-record calls other than
        random / orjson / heapq: cut into a method per step it was measurably slower (docs/benchmarks.md).
        Only a streak's events (one call per streak) are built apart, by _streak_events. `times`: each record's
        arrival time is appended to it (see timed)."""
        cfg = self.cfg
        timed = times is not None
        note = times.append if times is not None else None
        st = self.stats
        rand = rng.random
        log = math.log
        dumps = orjson.dumps
        push = heapq.heappush
        pop = heapq.heappop

        n_total = cfg.events
        creator_ids, room_ids, regions = self.creator_ids, self.room_ids, self.creator_regions
        sender_ids, home, whales = self.sender_ids, self.home, self.whales
        c_cum, s_cum = self.creator_cum, self.sender_cum
        c_tot, s_tot = c_cum[-1], s_cum[-1]
        c_hi, s_hi = cfg.creators - 1, cfg.senders - 1
        g_cum, gw_cum = self.gift_cum, self.whale_gift_cum
        g_tot, gw_tot = g_cum[-1], gw_cum[-1]
        g_hi = len(GIFT_CATALOG) - 1
        gift_ids, gift_price, gift_streak = _GIFT_IDS, _GIFT_PRICES, _GIFT_STREAKABLE
        affinity = cfg.sender_affinity
        ooo = float(cfg.out_of_order_ms)
        late_p, late_by = cfg.late_rate, cfg.late_by_ms
        miss_p = cfg.streak_missing_end_rate
        dup_p = cfg.duplicate_rate / (1.0 - cfg.duplicate_rate)  # per original -> fraction of records
        dup_delay = float(cfg.duplicate_delay_ms)
        coins = st.coins_by_creator

        start = cfg.start_ts_ms
        pacing = self._pacing()
        gap_ms, burst_gap_ms = pacing.gap_ms, pacing.burst_gap_ms
        burst_lo, burst_hi, burst_p = pacing.burst_lo, pacing.burst_hi, pacing.burst_p
        burst_ci = self.burst_rank

        # Malformed records replace planned records at geometric gaps (mean 1 / malformed_rate).
        mal_p = cfg.malformed_rate
        mal_log = log(1.0 - mal_p) if mal_p > 0 else 0.0
        mal_kinds: list[str] = []
        planned = 0  # records planned so far (gift + malformed)
        next_mal = (1 + int(log(1.0 - rand()) / mal_log)) if mal_p > 0 else -1

        heap: list[tuple[int, int, bytes]] = []
        t = float(start)  # start time of the next gift action (ms, non-decreasing)
        emitted = pending = seq = 0
        streak_no = 0
        n_single = n_streaks = n_streak_ev = n_ends = n_missing = n_dup = n_late = 0
        coins_total = 0
        min_ts, max_ts = 1 << 62, -(1 << 62)
        key = start

        try:
            while emitted < n_total:
                budget = n_total - emitted - pending
                tn = int(t)
                if budget > 0 and (not heap or heap[0][0] > tn):
                    # ---- plan a new gift action at tn; its first record is emitted right now ----
                    in_burst = burst_lo <= tn < burst_hi
                    si = bisect_right(s_cum, rand() * s_tot, 0, s_hi)
                    if in_burst and rand() < burst_p:
                        ci = burst_ci
                    elif rand() < affinity:
                        ci = home[si]
                    else:
                        ci = bisect_right(c_cum, rand() * c_tot, 0, c_hi)
                    if si < whales:
                        gi = bisect_right(gw_cum, rand() * gw_tot, 0, g_hi)
                    else:
                        gi = bisect_right(g_cum, rand() * g_tot, 0, g_hi)
                    dc = gift_price[gi]
                    idbase = (tn - SNOWFLAKE_EPOCH_MS) << 22
                    creator_id = creator_ids[ci]
                    d = {
                        "event_id": "",
                        "room_id": room_ids[ci],
                        "creator_id": creator_id,
                        "sender_id": sender_ids[si],
                        "gift_id": gift_ids[gi],
                        "gift_type": 1 if gift_streak[gi] else 2,
                        "diamond_count": dc,
                        "repeat_count": 1,
                        "repeat_end": False,
                    }
                    streak = gift_streak[gi]
                    if streak:
                        d["group_id"] = str((tn << 16) | (streak_no & _GROUP_MASK))
                        streak_no += 1

                    if 0 < next_mal <= planned + 1:
                        # ---- a malformed record instead of a gift ----
                        if not mal_kinds:
                            mal_kinds = list(MALFORMED_KINDS)
                            rng.shuffle(mal_kinds)
                        kind = mal_kinds.pop()
                        d["event_id"] = str(idbase | (seq & _ID_MASK))
                        seq += 1
                        b = self._malformed(kind, d, regions[ci], tn, rng)
                        st.malformed[kind] += 1
                        next_mal += 1 + int(log(1.0 - rand()) / mal_log)
                        planned += 1
                        key = tn
                        t += -log(1.0 - rand()) * (burst_gap_ms if in_burst else gap_ms)
                    else:
                        if late_p and rand() < late_p:
                            delay = late_by + int(rand() * ooo)
                            late = True
                        else:
                            delay = int(rand() * ooo)
                            late = False
                        if not streak:
                            rc = 1 if rand() < 0.93 else 2 + int(rand() * 2)
                            d["repeat_count"] = rc
                            d["event_id"] = str(idbase | (seq & _ID_MASK))
                            seq += 1
                            ts = tn - delay
                            d["ts"] = ts
                            d["region"] = regions[ci]
                            b = dumps(d)
                            k = 1
                            tk = tn
                            credit = dc * rc
                            n_single += 1
                        else:
                            d["ts"] = 0  # the keys in the order of a single gift's
                            d["region"] = regions[ci]
                            b, k, tk, c, seq, missing = _streak_events(rand, heap, d, idbase, seq, tn, delay,
                                                                       budget, miss_p)
                            ts = tn - delay
                            if missing:
                                n_missing += 1
                            else:
                                n_ends += 1
                            credit = dc * c
                            n_streaks += 1
                            n_streak_ev += k
                        if late:
                            n_late += k
                        pending += k - 1
                        planned += k
                        coins_total += credit
                        coins[creator_id] = coins.get(creator_id, 0) + credit
                        if ts < min_ts:
                            min_ts = ts
                        if tk - delay > max_ts:
                            max_ts = tk - delay
                        key = tn
                        t += -log(1.0 - rand()) * (burst_gap_ms if in_burst else gap_ms)
                else:
                    key, _, b = pop(heap)
                    pending -= 1
                emitted += 1
                if timed:
                    note(key)  # type: ignore[misc]
                yield b
                if dup_p and rand() < dup_p and n_total - emitted - pending > 0:
                    # an exact resend of the record just emitted, arriving a little later
                    push(heap, (key + 50 + int(rand() * dup_delay), seq, b))
                    seq += 1
                    pending += 1
                    n_dup += 1
        finally:
            self._count(_Counts(emitted, key, n_single, n_streaks, n_streak_ev, n_ends, n_missing, n_dup, n_late,
                                coins_total, min_ts, max_ts))

    def _count(self, c: _Counts) -> None:
        """The stats of the records emitted so far (also after an early stop: the generator's finally)."""
        st = self.stats
        st.records = c.emitted
        st.single_gift_events = c.single
        st.streaks = c.streaks
        st.streak_events = c.streak_events
        st.streak_ends = c.streak_ends
        st.streaks_missing_end = c.streaks_missing_end
        st.gift_events = c.single + c.streak_events
        st.duplicates = c.duplicates
        st.late_events = c.late_events
        st.coins_total = c.coins_total
        st.first_arrival_ms = self.cfg.start_ts_ms if c.emitted else None
        st.last_arrival_ms = c.last_arrival_ms if c.emitted else None
        if c.single or c.streaks:
            st.min_ts, st.max_ts = c.min_ts, c.max_ts

    def _malformed(self, kind: str, d: dict, region: str, tn: int, rng: random.Random) -> bytes:
        """One bad record of ``kind``, built from the gift-shaped dict ``d`` (which is then discarded)."""
        d["ts"] = tn - int(rng.random() * self.cfg.out_of_order_ms)
        d["region"] = region
        if "group_id" in d:  # a one-event streak
            d["repeat_end"] = True
        if kind == "not_json":
            choice = rng.randrange(4)
            if choice == 0:
                junk = bytes(rng.randrange(256) for _ in range(rng.randrange(8, 64)))
                return b"\xff\xfe" + junk.replace(b"\n", b" ").replace(b"\r", b" ")
            if choice == 1:
                return (
                    b"<html><head><title>502 Bad Gateway</title></head><body>nginx<!-- req "
                    + d["event_id"].encode()
                    + b" --></body></html>"
                )
            if choice == 2:
                text = f"gift {d['gift_id']} x{d['repeat_count']} from {d['sender_id']} ({d['event_id']})"
                return text.encode()
            return b"event_id=" + d["event_id"].encode() + b"&room_id=" + d["room_id"].encode()
        if kind == "truncated_json":
            full = orjson.dumps(d)  # cut after the (unique) event_id so no two records are equal
            return full[: rng.randrange(len(d["event_id"]) + 16, len(full) - 1)]
        if kind == "wrong_type":
            choice = rng.randrange(5)
            if choice == 0:
                d["diamond_count"] = str(d["diamond_count"])
            elif choice == 1:
                d["repeat_count"] = str(d["repeat_count"])
            elif choice == 2:
                d["creator_id"] = int(d["creator_id"])
            elif choice == 3:
                d["ts"] = str(d["ts"])
            else:
                d["repeat_end"] = "false"
        elif kind == "missing_field":
            del d[REQUIRED_FIELDS[rng.randrange(len(REQUIRED_FIELDS))]]
        elif kind == "nonpositive_diamond_count":
            d["diamond_count"] = 0 if rng.random() < 0.5 else -d["diamond_count"]
        elif kind == "zero_repeat_count":
            d["repeat_count"] = 0
        elif kind == "unknown_region":
            d["region"] = "ZZ"
        elif kind == "future_ts":
            d["ts"] = tn + FAR_TS_MS
        elif kind == "past_ts":
            d["ts"] = tn - FAR_TS_MS
        elif kind == "oversize":
            d["padding"] = "x" * max(self.cfg.oversize_bytes, MAX_RECORD_BYTES + 1)
        else:  # pragma: no cover - MALFORMED_KINDS and this function must stay in sync
            raise AssertionError(kind)
        return orjson.dumps(d)


def generate(cfg: TrafficConfig) -> Iterator[bytes]:
    """Yield exactly ``cfg.events`` serialized records (no newline) in arrival order."""
    return iter(TrafficGenerator(cfg))


def write_jsonl(
    path: str | os.PathLike[str],
    cfg: TrafficConfig,
    progress: Callable[[int], object] | None = None,
    *,
    compresslevel: int = 6,
    chunk: int = 8192,
) -> GenerationStats:
    """Write the records newline-terminated to ``path`` (gzip when it ends in ``.gz``) and return stats.

    ``progress`` is called with the number of records produced since the previous call (so
    ``tqdm(...).update`` fits). Compression and file writes run in a helper thread (zlib releases the
    GIL), overlapping with generation. The file is written to a temporary name and renamed into place;
    gzip output has no timestamp or file name in its header, so equal configs give byte-identical files.
    Use ``compresslevel=1`` for big benchmark files (faster, ~30% larger).
    """
    path = Path(path)
    gen = TrafficGenerator(cfg)
    tmp = path.with_name(path.name + ".tmp")
    chunks: queue.Queue[bytes | None] = queue.Queue(maxsize=8)
    errors: list[BaseException] = []

    def writer(out: BinaryIO) -> None:
        while (data := chunks.get()) is not None:
            if errors:
                continue  # keep draining so the producer never blocks
            try:
                out.write(data)
            except BaseException as exc:
                errors.append(exc)

    try:
        with open(tmp, "wb") as raw:
            out: BinaryIO = (
                gzip.GzipFile(filename="", mode="wb", fileobj=raw, compresslevel=compresslevel, mtime=0)
                if path.name.endswith(".gz")
                else raw
            )
            thread = threading.Thread(target=writer, args=(out,), name="write_jsonl", daemon=True)
            thread.start()
            try:
                records = iter(gen)
                while not errors:
                    batch = list(islice(records, chunk))
                    if not batch:
                        break
                    n = len(batch)
                    batch.append(b"")
                    chunks.put(b"\n".join(batch))
                    if progress is not None:
                        progress(n)
            finally:
                chunks.put(None)
                thread.join()
                if out is not raw:
                    out.close()
            if errors:
                raise errors[0]
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return gen.stats


# ------------------------------------------------------------------------------------- accounts and payouts
# generate_inputs: the gift records (byte-identical to generate()'s) with their arrival times and, with
# TrafficConfig.accounts, the creator-accounts records and payouts of the same run, each stream in time order. They
# come from random streams of their own (seeded from cfg.seed), so the gifts do not depend on them.

# The account statuses of the default policy (stream/data/policy.default.toml): eligible for payouts or not.
ACCOUNT_STATUSES: tuple[str, ...] = ("verified", "standard", "restricted", "suspended")
_ELIGIBLE = ("verified", "standard")
_INELIGIBLE = ("restricted", "suspended")
_STATUS_WEIGHTS = (0.3, 0.45, 0.15, 0.1)
PAYOUT_METHODS: tuple[str, ...] = ("paypal", "bank")
_BANK_REGIONS = frozenset({"DE", "FR", "JP", "KR"})  # where the default policy's usual method is bank
# Bad creator-accounts records, each refused by the engine (a dead letter) and changing no account.
BAD_ACCOUNT_KINDS: tuple[str, ...] = (
    "unknown_status",  # account_status "on_hold" (not a status of the policy)
    "unknown_method",  # payout_method "crypto" (not offered in any region)
    "unknown_region",  # region "ZZ"
    "key_mismatch",  # the record's key is another creator's id
)
# Payouts that must be refused (dead letters), whatever order they are merged in.
BAD_PAYOUT_KINDS: tuple[str, ...] = (
    "too_large",  # more than 4 diamonds a coin of everything the creator gets in the run, and at least 10^10 diamonds
    "unknown_creator",  # for a creator id outside the population (no balance)
    "not_json",
    "missing_field",  # no milli_diamonds
    "zero_amount",  # milli_diamonds 0
)
_TOO_LARGE_MIN = 10**13  # milli-diamonds: 10^10 diamonds, above any balance a load run builds
_PLAIN_SLACK_MS = 1_800_000  # a plain gift counts towards payouts only if its ts is within this of its arrival


@dataclass(slots=True)
class InputStats:
    """What generate_inputs made besides the gifts."""

    account_records: int = 0  # every record of the accounts stream (tombstones and bad ones included)
    accounts: int = 0  # creators with an account
    accounts_before_start: int = 0  # accounts whose first record comes before the first gift
    statuses: dict[str, int] = field(default_factory=lambda: dict.fromkeys(ACCOUNT_STATUSES, 0))  # good records
    methods: dict[str, int] = field(default_factory=lambda: dict.fromkeys(PAYOUT_METHODS, 0))
    updates: int = 0  # good records of a creator after its first
    to_eligible: int = 0  # status changes from an ineligible status to an eligible one
    to_ineligible: int = 0
    region_moves: int = 0
    tombstones: int = 0
    reopened: int = 0  # accounts opened again after their tombstone
    kr_under_19: int = 0  # KR accounts of 18-year-olds (KR's min_age is 19 in the default policy)
    bad_accounts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(BAD_ACCOUNT_KINDS, 0))
    payouts: int = 0  # every record of the payouts stream
    good_payouts: int = 0  # sized within the creator's plain gifts so far
    good_payout_milli: int = 0
    payout_duplicates: int = 0  # resends of a good payout
    bad_payouts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(BAD_PAYOUT_KINDS, 0))

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(slots=True)
class Inputs:
    """A run's three input streams, each in time order (ms on the gifts' arrival clock): the gift records, the
    payout records and the creator-accounts records as (key, value) with value None for a tombstone. An account
    record's updated_ts and a payout's ts are its time."""

    gifts: list[bytes]
    gift_times: list[int]
    payouts: list[bytes] = field(default_factory=list)
    payout_times: list[int] = field(default_factory=list)
    accounts: list[tuple[bytes, bytes | None]] = field(default_factory=list)
    account_times: list[int] = field(default_factory=list)
    stats: GenerationStats = field(default_factory=GenerationStats)
    input_stats: InputStats = field(default_factory=InputStats)

    def in_time_order(self, since: int | None = None) -> Iterator[tuple[str, bytes | None, bytes | None, int]]:
        """(input, key, value) of every record (of those at or after `since`), in one order: by time, then
        accounts before gifts before payouts (the engine's tie rule), then each stream's own order. input is
        "accounts", "gifts" or "payouts"; key is given for accounts only (None: the record's creator_id); the time
        is the record's on the run's clock (a tombstone holds none: its producer stamps the Kafka record with it)."""
        streams = (
            ((t, 0, i, "accounts", k, v) for i, (t, (k, v)) in enumerate(zip(self.account_times, self.accounts,
                                                                             strict=True))),
            ((t, 1, i, "gifts", None, v) for i, (t, v) in enumerate(zip(self.gift_times, self.gifts, strict=True))),
            ((t, 2, i, "payouts", None, v) for i, (t, v) in enumerate(zip(self.payout_times, self.payouts,
                                                                         strict=True))),
        )
        for t, _, _, kind, key, value in heapq.merge(*streams):
            if since is None or t >= since:
                yield kind, key, value, t


def generate_inputs(cfg: TrafficConfig) -> Inputs:
    """The gift records of generate(cfg) with their arrival times; with cfg.accounts also the run's creator
    accounts and payouts (see TrafficConfig, BAD_ACCOUNT_KINDS, BAD_PAYOUT_KINDS). Equal configs give equal
    bytes. Payouts are sized against the plain gifts that arrived before them: at most what those credited the
    creator (at cfg.payout_milli_per_coin), minus what was paid already, so a payout fits the balance whenever it is
    merged after those gifts (a gift and a payout of one time are merged gift first). That holds when the records'
    timestamps follow the streams' times, as when each is stamped at send in this order (`load run`); stamped with
    their own times instead (a session file's, stream.engine.order.file_timestamps), a gift of the dirt with a
    far-future ts would hold its partition's later gifts back behind the payouts."""
    gen = TrafficGenerator(cfg)
    times: list[int] = []
    gifts = list(gen.timed(times))
    inputs = Inputs(gifts, times, stats=gen.stats)
    if not cfg.accounts or not gifts:
        return inputs
    first, last = times[0], times[-1]
    accounts = _accounts(gen, random.Random(f"giftstream-accounts:{cfg.seed}"), first, last, inputs.input_stats)
    inputs.account_times = [t for t, _, _ in accounts]
    inputs.accounts = [(k, v) for _, k, v in accounts]
    payouts = _payouts(gen, gifts, times, random.Random(f"giftstream-payouts:{cfg.seed}"), inputs.input_stats)
    inputs.payout_times = [t for t, _ in payouts]
    inputs.payouts = [v for _, v in payouts]
    return inputs


def _usual_method(region: str) -> str:
    return "bank" if region in _BANK_REGIONS else "paypal"


def _accounts(gen: TrafficGenerator, rng: random.Random, first: int, last: int,
              st: InputStats) -> list[tuple[int, bytes, bytes | None]]:
    """The accounts stream: (time, key, value), in time order."""
    cfg = gen.cfg
    dumps = orjson.dumps
    ids, regions = gen.creator_ids, gen.creator_regions
    region_names = [r for r, _ in cfg.regions]
    holders = [i for i in range(cfg.creators) if rng.random() < cfg.account_share]
    # Every status at least once (with four holders or more), the rest by weight.
    statuses = [*ACCOUNT_STATUSES[: len(holders)],
                *rng.choices(ACCOUNT_STATUSES, _STATUS_WEIGHTS, k=max(0, len(holders) - len(ACCOUNT_STATUSES)))]
    rng.shuffle(statuses)
    closing = {i for i in holders if rng.random() < cfg.account_close_rate}
    if holders and not closing and cfg.account_close_rate > 0:
        closing.add(holders[rng.randrange(len(holders))])  # at least one tombstone
    span = max(1, last - first)
    p_more = cfg.account_updates / (1.0 + cfg.account_updates)  # geometric count with that mean
    out: list[tuple[int, int, bytes, bytes | None]] = []  # (time, seq, key, value)
    seq = 0

    def emit(t: int, key: bytes, value: bytes | None) -> None:
        nonlocal seq
        out.append((t, seq, key, value))
        seq += 1

    def good(t: int, rec: dict) -> None:
        rec["updated_ts"] = t
        st.statuses[rec["account_status"]] += 1
        st.methods[rec["payout_method"]] += 1
        emit(t, rec["creator_id"].encode(), dumps(rec))

    for i, status in zip(holders, statuses, strict=True):
        cid, region = ids[i], regions[i]
        method = _usual_method(region) if rng.random() < 0.75 else ("paypal" if region in _BANK_REGIONS else "bank")
        age = 18 + min(62, int(rng.expovariate(1 / 12)))
        if region == "KR" and rng.random() < 0.35:
            age = 18
            st.kr_under_19 += 1
        if rng.random() < cfg.account_before_start:
            t0 = first - 1 - int(rng.random() * DAY_MS)
            st.accounts_before_start += 1
        else:
            t0 = first + int(rng.random() * span)
        rec = {"creator_id": cid, "region": region, "account_status": status, "payout_method": method, "age": age,
               "updated_ts": t0}
        st.accounts += 1
        good(t0, rec)
        later = max(1, last - max(t0, first))
        changes = []
        while rng.random() < p_more:
            changes.append(max(t0, first) + 1 + int(rng.random() * later))
        changes.sort()
        close_at = reopen_at = None
        if i in closing:
            close_at = max(t0, first) + 1 + int(rng.random() * later)
            if rng.random() < 0.5 and close_at < last:
                reopen_at = close_at + 1 + int(rng.random() * (last - close_at))
        for t in changes:
            if close_at is not None and close_at <= t and (reopen_at is None or t < reopen_at):
                continue  # closed then: no update
            r = rng.random()
            if r < 0.55:  # a status change, eligible <-> not
                now_eligible = rec["account_status"] in _ELIGIBLE
                rec["account_status"] = rng.choice(_INELIGIBLE if now_eligible else _ELIGIBLE)
                if now_eligible:
                    st.to_ineligible += 1
                else:
                    st.to_eligible += 1
            elif r < 0.75:
                rec["payout_method"] = "bank" if rec["payout_method"] == "paypal" else "paypal"
            elif r < 0.9:
                rec["age"] = min(150, rec["age"] + 1)  # a birthday
            else:
                moved = [r2 for r2 in region_names if r2 != rec["region"]]
                if moved:
                    rec["region"] = rng.choice(moved)
                    st.region_moves += 1
            st.updates += 1
            good(t, rec)
        if close_at is not None:
            emit(close_at, cid.encode(), None)
            st.tombstones += 1
            if reopen_at is not None:
                st.reopened += 1
                st.updates += 1
                good(reopen_at, rec)

    n_bad = max(len(BAD_ACCOUNT_KINDS), round(cfg.bad_account_rate * len(out))) \
        if holders and cfg.bad_account_rate > 0 else 0
    kinds: list[str] = []
    for _ in range(n_bad):
        if not kinds:
            kinds = list(BAD_ACCOUNT_KINDS)
            rng.shuffle(kinds)
        kind = kinds.pop()
        i = rng.randrange(cfg.creators)
        cid, region = ids[i], regions[i]
        rec = {"creator_id": cid, "region": region, "account_status": "standard", "payout_method":
               _usual_method(region), "age": 30, "updated_ts": first + int(rng.random() * span)}
        key = cid
        if kind == "unknown_status":
            rec["account_status"] = "on_hold"
        elif kind == "unknown_method":
            rec["payout_method"] = "crypto"
        elif kind == "unknown_region":
            rec["region"] = "ZZ"
        else:  # key_mismatch
            key = ids[(i + 1 + rng.randrange(max(1, cfg.creators - 1))) % cfg.creators] if cfg.creators > 1 \
                else cid + "0"
        st.bad_accounts[kind] += 1
        emit(rec["updated_ts"], key.encode(), dumps(rec))
    out.sort(key=lambda r: (r[0], r[1]))
    st.account_records = len(out)
    return [(t, k, v) for t, _, k, v in out]


def _plain_gift(raw: bytes, known: frozenset[str]) -> dict | None:
    """The record as a dict if it is a well-formed plain gift of a known region, else None."""
    try:
        d = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(d, dict) or d.get("gift_type") != 2 or d.get("region") not in known:
        return None
    for name in REQUIRED_FIELDS:
        v = d.get(name)
        if name == "repeat_end":
            if type(v) is not bool:
                return None
        elif name in ("gift_id", "gift_type", "diamond_count", "repeat_count", "ts"):
            if type(v) is not int:
                return None
        elif type(v) is not str:
            return None
    return d if d["diamond_count"] >= 1 and d["repeat_count"] >= 1 else None


def _payouts(gen: TrafficGenerator, gifts: list[bytes], times: list[int], rng: random.Random,
             st: InputStats) -> list[tuple[int, bytes]]:
    """The payouts stream: (time, value), in time order. A payout comes right after a gift record (at its time)."""
    cfg = gen.cfg
    dumps = orjson.dumps
    known = frozenset(r for r, _ in cfg.regions)
    rate = cfg.payout_milli_per_coin
    seen: set[str] = set()
    plain: dict[str, int] = {}  # creator -> coins of its plain gifts so far
    paid: dict[str, int] = {}  # creator -> milli-diamonds of its good payouts so far
    total = gen.stats.coins_by_creator  # everything each creator is credited in the run, in coins
    credited = sorted(total)
    out: list[tuple[int, bytes]] = []
    resend: list[tuple[int, int, bytes]] = []  # (gift index it follows, seq, value)
    kinds: list[str] = []
    n = 0
    for i, raw in enumerate(gifts):
        t = times[i]
        d = _plain_gift(raw, known)
        if d is not None and d["event_id"] not in seen and abs(t - d["ts"]) <= _PLAIN_SLACK_MS:
            seen.add(d["event_id"])
            plain[d["creator_id"]] = plain.get(d["creator_id"], 0) + d["diamond_count"] * d["repeat_count"]
        while resend and resend[0][0] <= i:
            out.append((t, heapq.heappop(resend)[2]))
            st.payouts += 1
        if not rng.random() < cfg.payout_rate:
            continue
        payout_id = f"po-{cfg.seed}-{n}"
        n += 1
        if rng.random() < cfg.bad_payout_rate:
            if not kinds:
                kinds = list(BAD_PAYOUT_KINDS)
                rng.shuffle(kinds)
            kind = kinds.pop()
            creator = credited[rng.randrange(len(credited))] if credited else gen.creator_ids[0]
            rec: dict = {"payout_id": payout_id, "creator_id": creator, "milli_diamonds": 1000, "ts": t}
            if kind == "too_large":
                rec["milli_diamonds"] = max(_TOO_LARGE_MIN, 4000 * total.get(creator, 0) + 1000)
            elif kind == "unknown_creator":
                rec["creator_id"] = str(rng.randrange(10**18, 6 * 10**18))  # below every population id
            elif kind == "missing_field":
                del rec["milli_diamonds"]
            elif kind == "zero_amount":
                rec["milli_diamonds"] = 0
            st.bad_payouts[kind] += 1
            value = (f"payout {payout_id} {creator} 1000".encode() if kind == "not_json" else dumps(rec))
            out.append((t, value))
            st.payouts += 1
            continue
        # A good payout: for the creator of this gift when it has money, else for the one with the most.
        creator = d["creator_id"] if d is not None else None
        if creator is None or plain.get(creator, 0) * rate - paid.get(creator, 0) < 1:
            creator = max(plain, key=lambda c: (plain[c] * rate - paid.get(c, 0), c), default=None)
        available = plain[creator] * rate - paid.get(creator, 0) if creator is not None else 0
        if available < 1:
            continue
        milli = available if rng.random() < 0.1 else max(1, int(available * (0.1 + 0.8 * rng.random())))
        paid[creator] = paid.get(creator, 0) + milli
        value = dumps({"payout_id": payout_id, "creator_id": creator, "milli_diamonds": milli, "ts": t})
        out.append((t, value))
        st.payouts += 1
        st.good_payouts += 1
        st.good_payout_milli += milli
        if rng.random() < cfg.payout_duplicate_rate:
            heapq.heappush(resend, (i + 1 + rng.randrange(2_000), n, value))
            st.payout_duplicates += 1
    while resend:  # resends due after the last gift
        out.append((times[-1], heapq.heappop(resend)[2]))
        st.payouts += 1
    return out
