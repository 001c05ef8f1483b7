"""The offline replay alone, for A/B runs between two trees: best of R replays of make bench's records at P=1 and at
P=P, in one process (no decode-only or reference-engine phases). Prints one JSON line {partitions: events/s}.

Usage: ``python -m load.bench_replay [--events N] [--partitions P] [--repeat R]`` (run it alternately from each tree).
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
import time

from load.bench_engine import DEFAULT_EVENTS, bench_config, pre_read
from load.generator import generate
from stream.engine.policy import load_policy
from stream.runtime.replay import replay


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m load.bench_replay", description=__doc__.splitlines()[0])
    ap.add_argument("--events", type=int, default=DEFAULT_EVENTS)
    ap.add_argument("--partitions", type=int, default=6)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args(argv)
    policy = load_policy()
    records = pre_read(generate(bench_config(args.events)))
    rates = {}
    for partitions in sorted({1, args.partitions}):
        best = float("inf")
        for _ in range(args.repeat):
            gc.collect()
            t0 = time.perf_counter()
            replay(records, policy, partitions=partitions)
            best = min(best, time.perf_counter() - t0)
        rates[partitions] = round(len(records) / best)
    print(json.dumps(rates))
    return 0


if __name__ == "__main__":
    sys.exit(main())
