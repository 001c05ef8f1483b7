"""Write the demo "recorded session" shipped with the repo, and its creators' accounts.

Usage: ``python -m load.make_demo_session [OUT] [--seed N] [--events N] [--stats PATH] [--accounts PATH]``

The default output is ``stream/data/demo-session.jsonl.gz``: about 20,000 records from 40 creators and
3,000 senders over a little more than 3 hours of event time (so three 1-hour tumbling windows close), with
a viral burst, 0.5% duplicates, 0.3% late events (10 minutes late), 0.2% malformed records and 2% of the
streaks missing their final event. The output is byte-identical for the same arguments.

``--accounts PATH`` (the bundled one: ``stream/data/demo-accounts.jsonl``, which ``giftstream replay`` reads with
the bundled session) also writes the creator-accounts records of the session's creators (demo_accounts): every
status of the default policy, both payout methods, a KR creator under 19, an account closed by a tombstone line,
an account update that makes a creator eligible (its notice is triggered by the account), and two creators left
without an account; their updated_ts fall inside the session, so the merge by record timestamp decides which
gifts an account applies to. The accounts are derived from the session alone and are byte-identical for the
same session; the step checks with an offline replay that each of these shows.
"""

from __future__ import annotations

import argparse
import random
import sys
from collections import Counter
from pathlib import Path

import orjson

from load.generator import REALISTIC_DIRT, GenerationStats, TrafficConfig, write_jsonl

DEFAULT_OUT = Path("stream/data/demo-session.jsonl.gz")
DEFAULT_ACCOUNTS = Path("stream/data/demo-accounts.jsonl")
DEMO_EVENTS = 20_000
MIN_MS = 60_000
# The region's usual payout method (the default policy's) and the other one a creator may choose instead.
_BANK_REGIONS = {"DE", "FR", "JP", "KR"}
_ELIGIBLE_REGIONS = {"US", "GB", "DE", "FR", "BR", "MX", "ID", "JP", "KR"}  # the default policy's (TR is not)


def demo_config(seed: int = 20251124, events: int = DEMO_EVENTS) -> TrafficConfig:
    return TrafficConfig(
        seed=seed,
        events=events,
        creators=40,
        senders=3_000,
        # ~1.68 records/s: 20,000 records span ~3 h 10 min of event time including the burst
        rate_per_s=1.68 * events / DEMO_EVENTS if events else 1.68,
        **REALISTIC_DIRT,
    )


def summary(stats: GenerationStats) -> dict:
    d = stats.to_dict()
    coins = d.pop("coins_by_creator")
    d["creators_credited"] = len(coins)
    d["top_creators_coins"] = sorted(coins.values(), reverse=True)[:5]
    if stats.first_arrival_ms is not None and stats.last_arrival_ms is not None:
        d["span_hours"] = round((stats.last_arrival_ms - stats.first_arrival_ms) / 3_600_000, 3)
    return d


def _account(creator_id: str, region: str, status: str, method: str, age: int, ts: int) -> bytes:
    """A creator-accounts record (its fields in the order of schemas' creator account)."""
    return orjson.dumps({"creator_id": creator_id, "region": region, "account_status": status,
                         "payout_method": method, "age": age, "updated_ts": ts})


def _usual_method(region: str) -> str:
    return "bank" if region in _BANK_REGIONS else "paypal"


def _other_method(region: str) -> str:
    return "paypal" if region in _BANK_REGIONS else "bank"


def demo_accounts(records: list[bytes], start_ms: int) -> list[bytes]:
    """The creator-accounts records of a demo session (its records, its first arrival time), in time order.

    Who gets which account is decided from the session: each creator's region and coins, and when a replay of
    the gifts alone (no accounts: every creator then has the policy's missing status, standard) sends its notice.
    Times are minutes after `start_ms`:
      * the biggest creator: verified (a lower threshold) from minute 1;
      * the account trigger: of the creators whose no-account notice comes between minutes 10 and 90, the one
        with the smallest id (so `giftstream replay`, which lists notices by id, shows it): restricted from
        minute 5, verified 40 minutes after its no-account notice would have come: the update sends it;
      * the biggest JP creator: suspended from minute 8 (no notice);
      * the biggest BR or MX creator: restricted from minute 6 and staying so;
      * the biggest creator whose no-account notice comes after 2 h 15: standard from minute 12, closed by a
        tombstone at 2 h (no notice);
      * every KR creator: 18 years old (KR's min_age is 19: no notice);
      * the two creators with the fewest gifts (of the rest): no account;
      * everyone else: verified or standard, mostly with the region's usual method, from a time in the first
        75 minutes (gifts before it are gifts without an account).
    """
    from stream.engine.policy import load_policy
    from stream.kafka.session_files import tombstone_line
    from stream.runtime.replay import replay

    gifts = Counter()
    coins: Counter[str] = Counter()
    regions: dict[str, Counter[str]] = {}
    for raw in records:
        try:
            d = orjson.loads(raw)
        except orjson.JSONDecodeError:
            continue
        if not isinstance(d, dict) or type(d.get("creator_id")) is not str or d.get("region") not in \
                _ELIGIBLE_REGIONS | {"TR"} or type(d.get("diamond_count")) is not int or \
                type(d.get("repeat_count")) is not int:
            continue
        cid = d["creator_id"]
        gifts[cid] += 1
        coins[cid] += max(0, d["diamond_count"]) * max(0, d["repeat_count"])
        regions.setdefault(cid, Counter())[d["region"]] += 1
    region = {cid: r.most_common(1)[0][0] for cid, r in regions.items()}
    notice_at = {n.creator_id: n.trigger_ts for n in replay(records, load_policy(), engine="python").outputs.notices}
    by_coins = sorted(coins, key=lambda c: (-coins[c], c))
    eligible = [c for c in by_coins if region[c] in _ELIGIBLE_REGIONS and region[c] != "KR"]
    rng = random.Random("giftstream-demo-accounts")
    at = lambda minutes: start_ms + int(minutes * MIN_MS)  # noqa: E731
    out: list[tuple[int, bytes]] = []
    taken: set[str] = set()

    def take(cid: str) -> str:
        taken.add(cid)
        return cid

    top = take(eligible[0])
    out.append((at(1), _account(top, region[top], "verified", _usual_method(region[top]), 27, at(1))))
    trigger = take(min(c for c in eligible if c not in taken and at(10) <= notice_at.get(c, 0) <= at(90)))
    r = region[trigger]
    out.append((at(5), _account(trigger, r, "restricted", _usual_method(r), 31, at(5))))
    upgrade = notice_at[trigger] + 40 * MIN_MS
    out.append((upgrade, _account(trigger, r, "verified", _other_method(r), 31, upgrade)))
    suspended = take(next(c for c in by_coins if region[c] == "JP" and c not in taken))
    out.append((at(8), _account(suspended, "JP", "suspended", "bank", 41, at(8))))
    restricted = take(next(c for c in by_coins if region[c] in ("BR", "MX") and c not in taken))
    out.append((at(6), _account(restricted, region[restricted], "restricted", "paypal", 24, at(6))))
    closed = take(next(c for c in eligible if c not in taken and notice_at.get(c, 0) > at(135)))
    out.append((at(12), _account(closed, region[closed], "standard", _usual_method(region[closed]), 33, at(12))))
    out.append((at(120), tombstone_line(closed, at(120))))
    for i, cid in enumerate(sorted(c for c in by_coins if region[c] == "KR")):
        out.append((at(15 + i), _account(take(cid), "KR", "standard", "bank", 18, at(15 + i))))
    for cid in sorted((c for c in by_coins if c not in taken), key=lambda c: (gifts[c], c))[:2]:
        taken.add(cid)  # no account
    for cid in sorted(c for c in by_coins if c not in taken):
        r = region[cid]
        status = "verified" if rng.random() < 0.35 else "standard"
        method = _usual_method(r) if rng.random() < 0.8 else _other_method(r)
        ts = at(rng.uniform(0, 75))
        out.append((ts, _account(cid, r, status, method, 19 + rng.randrange(37), ts)))
    out.sort(key=lambda t: t[0])  # the accounts topic in time order, as a compacted topic's records arrive
    return [line for _, line in out]


def check_demo_accounts(records: list[bytes], accounts_path: Path) -> dict:
    """Replay the session with its accounts (the reference engine) and check that the demo shows what
    demo_accounts promises; returns what it saw. Raises AssertionError when something is missing."""
    from stream.engine.policy import CLOSED, load_policy
    from stream.kafka.session_files import read_accounts
    from stream.runtime.replay import Session, replay

    accounts = read_accounts(accounts_path)
    result = replay(Session(records, accounts=accounts), load_policy(), engine="python")
    values = [orjson.loads(a.value) for a in accounts if a.value is not None]
    final = {cid: a for e in result.engines.values() for cid, a in e.state.accounts.items()}
    creators = {cid for e in result.engines.values() for cid in e.state.creators}
    seen = {
        "account_records": len(accounts),
        "statuses": sorted({v["account_status"] for v in values}),
        "methods": sorted({v["payout_method"] for v in values}),
        "kr_under_19": sorted(v["creator_id"] for v in values if v["region"] == "KR" and v["age"] < 19),
        "closed": sorted(cid for cid, a in final.items() if a.account_status == CLOSED),
        "without_account": sorted(creators - set(final)),
        "account_triggered_notices": sorted(n.notice_id for n in result.outputs.notices if n.trigger == "account"),
        "notices": len(result.outputs.notices),
        "gifts_without_account": result.summary["gifts_without_account"],
    }
    assert seen["statuses"] == ["restricted", "standard", "suspended", "verified"], seen
    assert seen["methods"] == ["bank", "paypal"], seen
    assert seen["kr_under_19"] and seen["closed"] and seen["without_account"], seen
    assert seen["account_triggered_notices"], seen
    assert result.summary["accounts_closed"] == 1, result.summary
    refused = [d for d in result.outputs.dead_letters if d.source_topic == "creator-accounts"]
    assert not refused, refused
    return seen


def write_demo_accounts(session: Path, out: Path, start_ms: int) -> dict:
    """demo_accounts of the session file into `out` (one record a line), checked (check_demo_accounts)."""
    from stream.kafka.session_files import read_session

    records = read_session(session)
    lines = demo_accounts(records, start_ms)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(b"".join(line + b"\n" for line in lines))
    return {"path": str(out), **check_demo_accounts(records, out)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m load.make_demo_session", description=__doc__.splitlines()[0])
    ap.add_argument(
        "out", nargs="?", type=Path, default=DEFAULT_OUT, help=f"output file (default {DEFAULT_OUT})"
    )
    ap.add_argument("--seed", type=int, default=20251124)
    ap.add_argument("--events", type=int, default=DEMO_EVENTS)
    ap.add_argument(
        "--stats", type=Path, default=None, help="also write the full stats (ground truth) as JSON"
    )
    ap.add_argument(
        "--accounts", type=Path, default=None,
        help=f"also write the session's creator accounts (JSONL; the bundled ones: {DEFAULT_ACCOUNTS})",
    )
    args = ap.parse_args(argv)

    args.out.parent.mkdir(parents=True, exist_ok=True)
    cfg = demo_config(args.seed, args.events)
    stats = write_jsonl(args.out, cfg)
    if args.stats is not None:
        args.stats.write_bytes(
            orjson.dumps(stats.to_dict(), option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS)
        )
    info = {"path": str(args.out), "bytes": args.out.stat().st_size, **summary(stats)}
    if args.accounts is not None:
        info["accounts"] = write_demo_accounts(args.out, args.accounts, cfg.start_ts_ms)
    sys.stdout.buffer.write(orjson.dumps(info, option=orjson.OPT_INDENT_2) + b"\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
