"""The run over time: a Point per committed-offset poll, and the per-second series the plots draw."""

from __future__ import annotations

import bisect
import itertools
import math
from dataclasses import dataclass

from load.latency import LatencySample, percentiles


@dataclass
class Point:
    t: float  # seconds since the run started
    produced: int  # records handed to the producer by this run
    committed: int  # records of this run's range committed by the group (sum over partitions)
    end: int  # records in the topic since this run's baseline (end offsets)
    lag: int  # end offsets - committed offsets (whole topic)


def series(points: list[Point], samples: list[LatencySample], step: float = 1.0) -> dict[str, list]:
    """Per-`step` series for the plots: produced and committed rates, lag, latency p50/p99 of the records
    committed in that step."""
    if not points:
        return {"t": [], "produced_per_s": [], "committed_per_s": [], "lag": [], "latency_p50": [],
                "latency_p99": []}
    horizon = points[-1].t
    n = max(1, math.ceil(horizon / step))
    t, prod, comm, lag, p50, p99 = [], [], [], [], [], []
    by_bucket: dict[int, list[LatencySample]] = {}
    for s in samples:
        by_bucket.setdefault(min(n - 1, int(s.committed_at // step)), []).append(s)
    times = [p.t for p in points]
    for b in range(n):
        lo, hi = b * step, (b + 1) * step
        i0 = max(0, bisect.bisect_right(times, lo) - 1)
        i1 = max(0, bisect.bisect_right(times, hi) - 1)
        a, z = points[i0], points[i1]
        dt = z.t - a.t
        t.append(round(hi, 3))
        # A rate over less than half a step (the tail of the run) would be mostly noise: left out.
        prod.append((z.produced - a.produced) / dt if dt >= step / 2 else None)
        comm.append((z.committed - a.committed) / dt if dt >= step / 2 else None)
        lag.append(z.lag)
        pc = percentiles(by_bucket.get(b, []), (50, 99))
        p50.append(pc["p50"])
        p99.append(pc["p99"])
    return {"t": t, "produced_per_s": prod, "committed_per_s": comm, "lag": lag, "latency_p50": p50,
            "latency_p99": p99}


def poll_period(points: list[Point]) -> dict[str, float] | None:
    """Median and max time between successive committed-offset polls."""
    gaps = sorted(b.t - a.t for a, b in itertools.pairwise(points))
    return {"p50": round(gaps[len(gaps) // 2], 4), "max": round(gaps[-1], 4)} if gaps else None
