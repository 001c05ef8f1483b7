"""Write the demo "recorded session" shipped with the repo.

Usage: ``python -m load.make_demo_session [OUT] [--seed N] [--events N] [--stats PATH]``

The default output is ``stream/data/demo-session.jsonl.gz``: about 20,000 records from 40 creators and
3,000 senders over a little more than 3 hours of event time (so three 1-hour tumbling windows close), with
a viral burst, 0.5% duplicates, 0.3% late events (10 minutes late), 0.2% malformed records and 2% of the
streaks missing their final event. The output is byte-identical for the same arguments.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import orjson

from load.generator import REALISTIC_DIRT, GenerationStats, TrafficConfig, write_jsonl

DEFAULT_OUT = Path("stream/data/demo-session.jsonl.gz")
DEMO_EVENTS = 20_000


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
    args = ap.parse_args(argv)

    args.out.parent.mkdir(parents=True, exist_ok=True)
    stats = write_jsonl(args.out, demo_config(args.seed, args.events))
    if args.stats is not None:
        args.stats.write_bytes(
            orjson.dumps(stats.to_dict(), option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS)
        )
    info = {"path": str(args.out), "bytes": args.out.stat().st_size, **summary(stats)}
    sys.stdout.buffer.write(orjson.dumps(info, option=orjson.OPT_INDENT_2) + b"\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
