"""Bytes of state per kind of thing held: per creator (balance and pane tallies), per streak (open or
closed), per dedupe id; in the live changelog (its compacted form: the last record of each key) and in a
checkpoint body. `python -m load.state_bytes --creators 100000` builds one partition's state the way
`giftstream load state-scale` does and prints the table docs/benchmarks.md quotes."""

from __future__ import annotations

import argparse
import time
from collections import defaultdict

from load.state_scale import build_partition
from stream.engine.native import make_engine
from stream.engine.policy import load_policy
from stream.state import changelog_schema as schema
from stream.state.changelog import ChangelogWriter, engine_body
from stream.state.changelog import restore_state as python_restore

KINDS = {schema.CREATOR: f"creator balance ({schema.CREATOR_PREFIX.decode()})",
         schema.PANE: f"pane tally ({schema.PANE_PREFIX.decode()})",
         schema.STREAK: f"streak ({schema.STREAK_PREFIX.decode()})",
         schema.DEDUPE: f"dedupe chunk ({schema.DEDUPE_PREFIX.decode()})",
         schema.PAYOUT: f"payout id ({schema.PAYOUT_PREFIX.decode()})",
         schema.CURSOR: f"cursor ({schema.CURSOR_KEY.decode()})"}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--creators", type=int, default=100_000)
    p.add_argument("--seed", type=int, default=1)
    args = p.parse_args()
    policy = load_policy()
    records, built = build_partition(policy, 0, 1, list(range(args.creators)), args.seed,
                                     int(time.time() * 1000) - 3_600_000, "gifts")
    live: dict[bytes, bytes | None] = {}
    for key, value in records:
        live[key] = value
    by_kind: dict[bytes, list[int]] = defaultdict(lambda: [0, 0])
    for key, value in live.items():
        if value is not None:
            slot = by_kind[key[:1]]
            slot[0] += 1
            slot[1] += len(key) + len(value)
    state, writer = python_restore(records)
    engine = make_engine(policy, 0, state, "gifts", partitions=1)
    body = engine_body(engine, ChangelogWriter(writer.chunks))
    n_streaks = len(state.streaks)
    n_open = sum(s.open for s in state.streaks.values())
    n_ids = len(state.seen)
    print(f"{built.creators:,} creators, {n_streaks:,} streaks ({n_open:,} open), {n_ids:,} dedupe ids, "
          f"{sum(len(c.panes) for c in state.creators.values()):,} pane tallies; {len(records):,} changelog records "
          f"written, {len(live):,} live keys; checkpoint body {len(body):,} bytes")
    print("| kind | live records | bytes (key + value) | bytes each |")
    print("|---|---:|---:|---:|")
    for kind, (count, size) in sorted(by_kind.items()):
        print(f"| {KINDS.get(kind, kind.decode())} | {count:,} | {size:,} | {size / count:,.1f} |")
    ids_bytes = by_kind[schema.DEDUPE][1]
    per_streak = by_kind[schema.STREAK][1] / max(1, n_streaks)
    per_creator = (by_kind[schema.CREATOR][1] + by_kind[schema.PANE][1]) / built.creators
    print(f"per dedupe id: {ids_bytes / max(1, n_ids):.1f} bytes; per streak: {per_streak:.1f}; "
          f"per creator (balance + its tallies): {per_creator:.1f}")


if __name__ == "__main__":
    main()
