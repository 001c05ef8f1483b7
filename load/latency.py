"""End-to-end latency of produced records: from each batch's send time to the poll that first sees its
offsets committed by the group.

The worker commits the offsets in the same transaction as the notices, window totals and changelog of the
batch, so this is the latency to committed outputs. Resolution: one poll interval (a record is stamped at the
first poll that sees it committed, so latencies are overstated by up to one interval, half of it on average).
"""

from __future__ import annotations

import bisect
import math
from collections import deque
from dataclasses import dataclass


@dataclass
class LatencySample:
    committed_at: float  # seconds since the run started
    latency: float  # seconds
    records: int


class LatencyTracker:
    """Per-record latency from batch send times and the group's committed offsets over time (pure).

    sent(p, base, count, t): records [base, base + count) of partition p were handed to the producer at t.
    committed(p, offset, t): at t the group's committed offset of p was `offset` (records < offset done).
    Either may come first for a record (a producer ack can arrive after the commit poll saw its offsets):
    a batch registered below the committed offset is stamped with the first poll that covered it."""

    def __init__(self) -> None:
        self.samples: list[LatencySample] = []
        self._pending: dict[int, deque[list[float]]] = {}  # p -> [base, end, send_time] in offset order
        self._committed: dict[int, int] = {}
        self._history: dict[int, tuple[list[int], list[float]]] = {}  # p -> (committed offsets, times)

    def sent(self, partition: int, base: int, count: int, send_time: float) -> None:
        if count <= 0:
            return
        end = base + count
        offsets, times = self._history.get(partition, ([], []))
        # Records already covered by a poll: each at the first poll whose offset passed it.
        while base < end and offsets and base < offsets[-1]:
            i = bisect.bisect_right(offsets, base)  # first poll with committed offset > base
            upto = min(end, offsets[i])
            self.samples.append(LatencySample(times[i], max(0.0, times[i] - send_time), upto - base))
            base = upto
        if base < end:
            q = self._pending.setdefault(partition, deque())
            q.append([base, end, send_time])
            if len(q) > 1 and q[-2][0] > base:  # out of order (never with one idempotent producer): re-sort
                self._pending[partition] = deque(sorted(q))

    def committed(self, partition: int, offset: int, t: float) -> None:
        if offset <= self._committed.get(partition, -1):
            return
        self._committed[partition] = offset
        offsets, times = self._history.setdefault(partition, ([], []))
        offsets.append(offset)
        times.append(t)
        q = self._pending.get(partition)
        while q and q[0][0] < offset:
            base, end, send_time = q[0]
            upto = min(end, offset)
            self.samples.append(LatencySample(t, max(0.0, t - send_time), int(upto - base)))
            if end > offset:
                q[0][0] = offset
                break
            q.popleft()

    def pending_records(self) -> int:
        return int(sum(end - base for q in self._pending.values() for base, end, _ in q))

    def measured_records(self) -> int:
        return sum(s.records for s in self.samples)


def percentiles(samples: list[LatencySample], qs: tuple[float, ...] = (50, 90, 99)) -> dict[str, float | None]:
    """Record-weighted percentiles (nearest rank) of the samples' latencies, and the max."""
    total = sum(s.records for s in samples)
    out: dict[str, float | None] = {f"p{q:g}": None for q in qs}
    out["max"] = None
    if not total:
        return out
    ordered = sorted(samples, key=lambda s: s.latency)
    for q in qs:
        rank = max(1, math.ceil(q / 100 * total))
        seen = 0
        for s in ordered:
            seen += s.records
            if seen >= rank:
                out[f"p{q:g}"] = s.latency
                break
    out["max"] = ordered[-1].latency
    return out
