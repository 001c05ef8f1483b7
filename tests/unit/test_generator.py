"""Tests for the synthetic gift-traffic generator (load/generator.py)."""

from __future__ import annotations

import contextlib
import gzip
import hashlib
from collections import Counter, defaultdict
from dataclasses import replace
from itertools import pairwise
from pathlib import Path

import orjson
import pytest

from load.generator import (
    ACCOUNT_STATUSES,
    BAD_ACCOUNT_KINDS,
    BAD_PAYOUT_KINDS,
    DEFAULT_REGION_MIX,
    MALFORMED_KINDS,
    MAX_RECORD_BYTES,
    PAYOUT_METHODS,
    REQUIRED_FIELDS,
    TrafficConfig,
    TrafficGenerator,
    generate,
    generate_inputs,
    write_jsonl,
)

KNOWN_REGIONS = {r for r, _ in DEFAULT_REGION_MIX}
FIELD_TYPES = {
    "event_id": str,
    "room_id": str,
    "creator_id": str,
    "sender_id": str,
    "gift_id": int,
    "gift_type": int,
    "diamond_count": int,
    "repeat_count": int,
    "repeat_end": bool,
    "ts": int,
    "region": str,
}
DAY_MS = 86_400_000

# One shared, dirtier-than-default sample keeps every test fast while covering all record kinds.
SAMPLE_CFG = TrafficConfig(
    seed=42,
    events=50_000,
    creators=60,
    senders=2_000,
    rate_per_s=50.0,
    duplicate_rate=0.01,
    late_rate=0.01,
    late_by_ms=600_000,
    malformed_rate=0.01,
    streak_missing_end_rate=0.05,
)


def is_valid(raw: bytes) -> dict | None:
    """A consumer-side validator: the parsed gift if the record is well-formed, else None."""
    if len(raw) > MAX_RECORD_BYTES:
        return None
    try:
        d = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(d, dict):
        return None
    for name, typ in FIELD_TYPES.items():
        v = d.get(name)
        if type(v) is not typ:  # bool is not int here, and ids must not be numbers
            return None
    if "group_id" in d and not isinstance(d["group_id"], str):
        return None
    if d["diamond_count"] <= 0 or d["repeat_count"] < 1 or d["region"] not in KNOWN_REGIONS:
        return None
    if abs(d["ts"] - SAMPLE_CFG.start_ts_ms) > 7 * DAY_MS:
        return None
    for name in ("event_id", "room_id", "creator_id", "sender_id"):
        if not d[name].isdigit() or int(d[name]) >= 1 << 64:
            return None
    return d


@pytest.fixture(scope="module")
def sample() -> tuple[list[bytes], TrafficGenerator]:
    gen = TrafficGenerator(SAMPLE_CFG)
    return list(gen), gen


@pytest.fixture(scope="module")
def originals(sample) -> list[dict]:
    """Valid gift events in arrival order, duplicates removed (first copy kept)."""
    records, _ = sample
    seen: set[str] = set()
    out = []
    for raw in records:
        d = is_valid(raw)
        if d is not None and d["event_id"] not in seen:
            seen.add(d["event_id"])
            out.append(d)
    return out


def test_deterministic_and_seed_sensitive() -> None:
    cfg = replace(SAMPLE_CFG, events=5_000)
    a = list(generate(cfg))
    assert a == list(generate(cfg))
    assert a != list(generate(replace(cfg, seed=cfg.seed + 1)))


def test_population_does_not_depend_on_event_count() -> None:
    small, big = TrafficGenerator(replace(SAMPLE_CFG, events=10)), TrafficGenerator(SAMPLE_CFG)
    assert small.creator_ids == big.creator_ids and small.sender_ids == big.sender_ids


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_exact_record_count_and_whole_streaks_for_small_counts(seed: int) -> None:
    for n in range(0, 40):
        cfg = replace(SAMPLE_CFG, seed=seed, events=n, streak_missing_end_rate=0.0, duplicate_rate=0.2)
        gen = TrafficGenerator(cfg)
        records = list(gen)
        assert len(records) == n == gen.stats.records
        ends = Counter()
        groups = set()
        for raw in records:
            d = is_valid(raw)
            if d is not None and "group_id" in d:
                groups.add(d["group_id"])
                ends[d["group_id"]] += d["repeat_end"]
        # no streak is cut off by the end of the run
        assert all(ends[g] >= 1 for g in groups)


def test_record_count_and_stats_add_up(sample) -> None:
    records, gen = sample
    st = gen.stats
    assert len(records) == SAMPLE_CFG.events == st.records
    assert st.records == st.gift_events + st.duplicates + st.malformed_total
    assert st.gift_events == st.single_gift_events + st.streak_events
    assert st.streak_ends == st.streaks - st.streaks_missing_end
    assert all(b"\n" not in r and b"\r" not in r for r in records)


def test_valid_records_have_field_types(sample, originals) -> None:
    _, gen = sample
    assert len(originals) == gen.stats.gift_events
    creator_room: dict[str, str] = {}
    creator_region: dict[str, str] = {}
    for d in originals:
        assert set(d) - {"group_id"} == set(REQUIRED_FIELDS)
        assert d["gift_type"] in (1, 2)
        assert ("group_id" in d) == (d["gift_type"] == 1)
        if d["gift_type"] == 2:
            assert d["repeat_end"] is False and 1 <= d["repeat_count"] <= 3
        # a creator has one room and one region
        assert creator_room.setdefault(d["creator_id"], d["room_id"]) == d["room_id"]
        assert creator_region.setdefault(d["creator_id"], d["region"]) == d["region"]
    assert len(set(creator_room.values())) == len(creator_room)
    # event time spans about events / rate (the burst makes it a little shorter)
    span_s = (gen.stats.last_arrival_ms - gen.stats.first_arrival_ms) / 1000
    nominal_s = SAMPLE_CFG.events / SAMPLE_CFG.rate_per_s
    assert 0.8 * nominal_s < span_s < 1.05 * nominal_s


def test_streaks(sample, originals) -> None:
    _, gen = sample
    groups: dict[str, list[dict]] = defaultdict(list)
    for d in originals:
        if "group_id" in d:
            groups[d["group_id"]].append(d)
    assert len(groups) == gen.stats.streaks
    missing = 0
    jumps = 0
    for events in groups.values():
        keys = {(e["room_id"], e["sender_id"], e["gift_id"], e["creator_id"]) for e in events}
        assert len(keys) == 1
        counts = [e["repeat_count"] for e in events]
        assert counts == sorted(counts)
        jumps += any(b - a > 1 for a, b in pairwise(counts))
        ends = [e["repeat_end"] for e in events]
        if not any(ends):
            missing += 1
        else:
            assert ends.count(True) == 1 and ends[-1] is True
        ts = [e["ts"] for e in events]
        assert ts == sorted(ts)
    assert missing == gen.stats.streaks_missing_end
    assert 0.03 < missing / len(groups) < 0.07
    assert jumps > 0.1 * len(groups)
    assert sum(len(v) > 2 for v in groups.values()) > 0.3 * len(groups)


def test_ground_truth_coins(sample, originals) -> None:
    """Crediting by the design's counting rule reproduces the generator's ground truth exactly."""
    _, gen = sample
    coins: Counter[str] = Counter()
    last_in_streak: dict[str, dict] = {}
    for d in originals:
        if "group_id" in d:
            last_in_streak[d["group_id"]] = d
        else:
            coins[d["creator_id"]] += d["diamond_count"] * d["repeat_count"]
    for d in last_in_streak.values():
        coins[d["creator_id"]] += d["diamond_count"] * d["repeat_count"]
    assert dict(coins) == gen.stats.coins_by_creator
    assert sum(coins.values()) == gen.stats.coins_total


def test_sender_and_creator_skew(originals) -> None:
    per_sender = Counter(d["sender_id"] for d in originals)
    total = sum(per_sender.values())
    ranked = sorted(per_sender.values(), reverse=True)
    assert sum(ranked[: SAMPLE_CFG.senders // 5]) / total > 0.9  # top 20% of the population
    assert sum(ranked[: len(ranked) // 5]) / total > 0.8  # top 20% of those who gave at all
    per_creator = sorted(Counter(d["creator_id"] for d in originals).values(), reverse=True)
    assert sum(per_creator[:5]) / total > 0.4


def test_burst(sample, originals) -> None:
    _, gen = sample
    st = gen.stats
    assert st.burst_creator_id is not None
    inside = [d for d in originals if st.burst_start_ms <= d["ts"] < st.burst_end_ms]
    outside = [d for d in originals if not st.burst_start_ms <= d["ts"] < st.burst_end_ms]

    def share(ds: list[dict]) -> float:
        return sum(d["creator_id"] == st.burst_creator_id for d in ds) / len(ds)

    assert share(inside) > 5 * share(outside)
    # and the event rate rises during the burst
    inside_rate = len(inside) / (st.burst_end_ms - st.burst_start_ms)
    burst_ms = st.burst_end_ms - st.burst_start_ms
    outside_rate = len(outside) / (st.last_arrival_ms - st.first_arrival_ms - burst_ms)
    assert inside_rate > 1.5 * outside_rate


def test_duplicates_are_exact_resends(sample) -> None:
    records, gen = sample
    first_at: dict[bytes, int] = {}
    by_id: dict[str, bytes] = {}
    dups = 0
    for i, raw in enumerate(records):
        if raw in first_at:
            dups += 1
            assert i - first_at[raw] < 2_000  # shortly after (5 s at ~50 records/s, with slack)
            continue
        first_at[raw] = i
        d = is_valid(raw)
        if d is not None:
            assert d["event_id"] not in by_id, "different bytes under one event_id"
            by_id[d["event_id"]] = raw
    assert dups == gen.stats.duplicates
    assert 0.007 < dups / len(records) < 0.013


def test_late_events(sample, originals) -> None:
    _, gen = sample
    late = 0
    high = -(1 << 62)
    for d in originals:
        if d["ts"] < high - SAMPLE_CFG.late_by_ms // 2:
            late += 1
        high = max(high, d["ts"])
    assert late == gen.stats.late_events
    assert 0.005 < late / len(originals) < 0.02


def test_malformed_kinds_and_rate(sample) -> None:
    records, gen = sample
    st = gen.stats
    bad = [r for r in records if is_valid(r) is None]
    bad_unique = len(set(bad))
    assert bad_unique == st.malformed_total
    assert 0.007 < st.malformed_total / len(records) < 0.013
    counts = list(st.malformed.values())
    assert set(st.malformed) == set(MALFORMED_KINDS)
    assert min(counts) >= 1 and max(counts) - min(counts) <= 1  # evenly chosen
    assert any(len(r) > MAX_RECORD_BYTES for r in bad)
    assert any(b'"region":"ZZ"' in r for r in bad)
    parsed = []
    for r in bad:
        with contextlib.suppress(orjson.JSONDecodeError):
            parsed.append(orjson.loads(r))
    assert len(parsed) < len(bad)  # some are not JSON at all
    assert any(set(REQUIRED_FIELDS) - set(d) for d in parsed)  # missing fields
    assert any(type(d.get(k)) is not FIELD_TYPES[k] for d in parsed for k in FIELD_TYPES if k in d)
    int_ts = [d["ts"] for d in parsed if type(d.get("ts")) is int]
    assert any(ts - SAMPLE_CFG.start_ts_ms > 20 * DAY_MS for ts in int_ts)  # far future
    assert any(SAMPLE_CFG.start_ts_ms - ts > 20 * DAY_MS for ts in int_ts)  # far past


def test_write_jsonl_gz_and_plain(tmp_path) -> None:
    cfg = replace(SAMPLE_CFG, events=3_000)
    expected = list(generate(cfg))
    seen: list[int] = []
    gz = tmp_path / "s.jsonl.gz"
    st = write_jsonl(gz, cfg, progress=seen.append, chunk=1000)
    assert sum(seen) == 3_000 and st.records == 3_000
    with gzip.open(gz, "rb") as f:
        assert f.read().split(b"\n") == [*expected, b""]
    first = gz.read_bytes()
    write_jsonl(gz, cfg)
    assert gz.read_bytes() == first  # byte-identical gzip (no mtime / name in the header)
    plain = tmp_path / "s.jsonl"
    write_jsonl(plain, cfg)
    assert plain.read_bytes() == b"".join(r + b"\n" for r in expected)
    assert not list(tmp_path.glob("*.tmp"))


def test_config_validation() -> None:
    with pytest.raises(ValueError):
        TrafficConfig(events=-1)
    with pytest.raises(ValueError):
        TrafficConfig(duplicate_rate=0.9)
    with pytest.raises(ValueError):
        TrafficConfig(creators=3, burst_creator_rank=3)


def test_make_demo_session_small(tmp_path, capsys) -> None:
    from load.make_demo_session import main

    out = tmp_path / "sessions" / "demo.jsonl.gz"
    stats_path = tmp_path / "stats.json"
    assert main([str(out), "--events", "500", "--stats", str(stats_path)]) == 0
    with gzip.open(out, "rb") as f:
        assert len(f.read().split(b"\n")) == 501
    assert orjson.loads(stats_path.read_bytes())["records"] == 500
    assert orjson.loads(capsys.readouterr().out)["records"] == 500


def test_the_bundled_demo_accounts_are_what_make_demo_session_writes(tmp_path) -> None:
    """stream/data/demo-accounts.jsonl is regenerated by `python -m load.make_demo_session --accounts PATH` from the
    bundled session, byte for byte, and the demo shows what the accounts step promises."""
    from importlib import resources

    from load.generator import DEFAULT_START_TS_MS
    from load.make_demo_session import write_demo_accounts

    data = resources.files("stream.data")
    out = tmp_path / "accounts.jsonl"
    seen = write_demo_accounts(Path(str(data.joinpath("demo-session.jsonl.gz"))), out, DEFAULT_START_TS_MS)
    assert out.read_bytes() == data.joinpath("demo-accounts.jsonl").read_bytes()
    assert seen["account_triggered_notices"] and seen["closed"] and seen["kr_under_19"]
    assert len(seen["without_account"]) == 2


# ------------------------------------------------------------------ creator accounts and payouts (generate_inputs)

INPUTS_CFG = replace(SAMPLE_CFG, events=30_000, accounts=True)


@pytest.fixture(scope="module")
def inputs():
    return generate_inputs(INPUTS_CFG)


def test_the_gift_records_are_pinned_byte_for_byte() -> None:
    """generate()'s bytes as they were before accounts and payouts came to the generator (sha256 of the JSONL)."""
    records = generate(replace(SAMPLE_CFG, events=5_000))
    digest = hashlib.sha256(b"".join(r + b"\n" for r in records)).hexdigest()
    assert digest == "48035e898792d259aa79a328d78c07fd5912bcba5ba1cbb2f8e6f775b94c1a4e"


def test_inputs_are_off_by_default_and_never_change_the_gifts(inputs) -> None:
    off = generate_inputs(replace(INPUTS_CFG, accounts=False))
    gifts = list(generate(replace(INPUTS_CFG, accounts=False)))
    assert off.gifts == gifts and not off.payouts and not off.accounts and not off.account_times
    assert list(generate(INPUTS_CFG)) == gifts  # generate() ignores the option
    assert inputs.gifts == gifts  # and the gifts of generate_inputs do not depend on it
    assert len(inputs.gift_times) == len(gifts) and inputs.gift_times == sorted(inputs.gift_times)
    assert inputs.gift_times[0] == INPUTS_CFG.start_ts_ms


def test_inputs_are_deterministic_and_seed_sensitive(inputs) -> None:
    again = generate_inputs(INPUTS_CFG)
    assert (again.payouts, again.payout_times, again.accounts, again.account_times) == (
        inputs.payouts, inputs.payout_times, inputs.accounts, inputs.account_times)
    other = generate_inputs(replace(INPUTS_CFG, seed=INPUTS_CFG.seed + 1))
    assert other.payouts != inputs.payouts and other.accounts != inputs.accounts


def test_accounts_have_every_kind(inputs) -> None:
    st = inputs.input_stats
    assert inputs.account_times == sorted(inputs.account_times) and len(inputs.accounts) == st.account_records
    good, tombstones, bad = [], [], Counter()
    first, last = inputs.gift_times[0], inputs.gift_times[-1]
    for (key, value), t in zip(inputs.accounts, inputs.account_times, strict=True):
        if value is None:
            tombstones.append(key)
            assert first <= t <= last  # closed during the run
            continue
        d = orjson.loads(value)
        assert list(d) == ["creator_id", "region", "account_status", "payout_method", "age", "updated_ts"]
        assert d["updated_ts"] == t
        if d["account_status"] not in ACCOUNT_STATUSES:
            bad["unknown_status"] += 1
        elif d["payout_method"] not in PAYOUT_METHODS:
            bad["unknown_method"] += 1
        elif d["region"] not in KNOWN_REGIONS:
            bad["unknown_region"] += 1
        elif key != d["creator_id"].encode():
            bad["key_mismatch"] += 1
        else:
            good.append(d)
    assert dict(bad) == {k: v for k, v in st.bad_accounts.items() if v} and set(bad) == set(BAD_ACCOUNT_KINDS)
    assert len(tombstones) == st.tombstones >= 1
    assert {d["account_status"] for d in good} == set(ACCOUNT_STATUSES)
    assert {d["payout_method"] for d in good} == set(PAYOUT_METHODS)
    assert any(d["updated_ts"] < first for d in good) and any(d["updated_ts"] > first for d in good)
    per_creator = defaultdict(list)
    for d in good:
        per_creator[d["creator_id"]].append(d)
    assert len(per_creator) == st.accounts and sum(len(v) - 1 for v in per_creator.values()) == st.updates > 0
    eligible = {"verified", "standard"}
    ways = Counter((a["account_status"] in eligible, b["account_status"] in eligible)
                   for ds in per_creator.values() for a, b in pairwise(ds)
                   if a["account_status"] != b["account_status"])
    assert ways[(True, False)] > 0 and ways[(False, True)] > 0  # status changes both ways
    assert st.to_eligible > 0 and st.to_ineligible > 0
    population = set(TrafficGenerator(INPUTS_CFG).creator_ids)
    assert set(per_creator) <= population and len(per_creator) < len(population)  # some have none


def test_payouts_fit_the_plain_gifts_before_them_and_some_must_fail(inputs) -> None:
    """Re-derived from the records: each good payout is at most the creator's plain gifts that arrived before it
    (at the lowest rate, 1/2 diamond a coin) minus what was paid before; the bad ones are of every kind."""
    st = inputs.input_stats
    assert inputs.payout_times == sorted(inputs.payout_times) and len(inputs.payouts) == st.payouts
    plain: Counter[str] = Counter()
    paid: Counter[str] = Counter()
    seen: set[str] = set()
    ids: Counter[str] = Counter()
    good = bad = 0
    gifts = iter(zip(inputs.gift_times, inputs.gifts, strict=True))
    pending = next(gifts, None)
    for t, raw in zip(inputs.payout_times, inputs.payouts, strict=True):
        while pending is not None and pending[0] <= t:  # a gift of the same time comes first
            d = is_valid(pending[1])
            if d is not None and d["gift_type"] == 2 and d["event_id"] not in seen:
                seen.add(d["event_id"])
                plain[d["creator_id"]] += d["diamond_count"] * d["repeat_count"]
            pending = next(gifts, None)
        try:
            p = orjson.loads(raw)
        except orjson.JSONDecodeError:
            bad += 1
            continue
        ids[p["payout_id"]] += 1
        if ids[p["payout_id"]] > 1:
            continue  # a resend
        milli = p.get("milli_diamonds", 0)
        if 1 <= milli <= plain[p["creator_id"]] * 500 - paid[p["creator_id"]]:
            paid[p["creator_id"]] += milli
            good += 1
            assert p["ts"] == t
        else:
            bad += 1
    assert good == st.good_payouts > 20 and sum(paid.values()) == st.good_payout_milli
    assert bad == sum(st.bad_payouts.values()) and all(st.bad_payouts[k] >= 1 for k in BAD_PAYOUT_KINDS)
    assert sum(n - 1 for n in ids.values()) == st.payout_duplicates > 0


def test_in_time_order_merges_the_streams_with_the_tie_rule(inputs) -> None:
    order = list(inputs.in_time_order())
    assert Counter(kind for kind, _, _, _ in order) == {"gifts": len(inputs.gifts), "payouts": len(inputs.payouts),
                                                       "accounts": len(inputs.accounts)}
    assert [v for kind, _, v, _ in order if kind == "payouts"] == inputs.payouts
    assert [(k, v) for kind, k, v, _ in order if kind == "accounts"] == inputs.accounts
    assert [t for kind, _, _, t in order if kind == "accounts"] == inputs.account_times
    assert [t for *_, t in order] == sorted(t for *_, t in order)
    # a payout follows the gift it comes after (same time, gifts first)
    first_payout = next(i for i, (kind, _, _, _) in enumerate(order) if kind == "payouts")
    assert order[first_payout - 1][0] == "gifts"
    later = list(inputs.in_time_order(since=inputs.gift_times[0]))
    assert len(order) - len(later) == sum(t < inputs.gift_times[0] for t in inputs.account_times) > 0
