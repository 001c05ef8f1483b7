"""Offline replay: run a recorded session (JSONL, optionally gzipped) through the engine, no broker.

Records are routed to partitions exactly as Kafka's default partitioner would route them by key
(creator_id), and each partition's subsequence keeps file order, so a replay with `partitions` equal to
the topic's partition count makes the same decisions as the live worker: byte-identical notices.
"""

from __future__ import annotations

import gc
import gzip
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from stream.engine import model
from stream.engine.native import make_engine
from stream.engine.policy import Policy
from stream.engine.protocol import Engine, Outputs
from stream.kafka.routing import PartitionCache

DEFAULT_PARTITIONS = 6


def read_session(path: str | Path) -> list[bytes]:
    """All records of a session file, one per non-empty line."""
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "rb") as f:
        data = f.read()
    return [line for line in data.split(b"\n") if line.strip()]


def write_session(path: str | Path, records: Iterable[bytes]) -> int:
    opener = gzip.open if str(path).endswith(".gz") else open
    n = 0
    with opener(path, "wb") as f:
        for r in records:
            f.write(r + b"\n")
            n += 1
    return n


@dataclass
class ReplayResult:
    outputs: Outputs
    engines: dict[int, Engine]
    records: int
    seconds: float
    partitions: int
    summary: dict = field(default_factory=dict)


def replay(records: list[bytes], policy: Policy, partitions: int = DEFAULT_PARTITIONS,
           batch_size: int = 20_000, final: bool = False, source: str = "replay",
           progress: Callable[[int], None] | None = None, engine: str | None = None) -> ReplayResult:
    """Run records through one engine per partition (`engine`: see stream.engine.native.make_engine)."""
    with _cyclic_gc_paused():
        return _replay(records, policy, partitions, batch_size, final, source, progress, engine)


@contextmanager
def _cyclic_gc_paused() -> Iterator[None]:
    """A replay makes no reference cycles (its records are bytes, its outputs gc-free structs), but it holds
    a million-record list that every full collection would walk again: pause the cyclic GC meanwhile."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def _replay(records: list[bytes], policy: Policy, partitions: int, batch_size: int, final: bool, source: str,
            progress: Callable[[int], None] | None, engine: str | None) -> ReplayResult:
    started = time.perf_counter()
    owners = PartitionCache(partitions)
    engines = {p: make_engine(policy, p, source_topic=source, kind=engine, track_changes=False, partitions=partitions,
                              owners=owners)
               for p in range(partitions)}
    routed = [engines[p] for p in range(partitions)]
    out = Outputs()
    for lo in range(0, len(records), batch_size):
        raws = records[lo:lo + batch_size]
        # The line number stands in for the offset.
        if partitions == 1:  # everything goes to partition 0 in file order: no routing
            if raws:
                engines[0].process(raws, lo, out)
        else:
            engines[0].process_routed(routed, raws, lo, out)
        for e in engines.values():
            e.clear_changes()  # offline there is no changelog to flush the changed keys to
        if progress:
            progress(len(raws))
    if final:
        for p in sorted(engines):
            engines[p].end_of_stream(out)
    seconds = time.perf_counter() - started
    result = ReplayResult(out, engines, len(records), seconds, partitions)
    result.summary = summarize(result)
    return result


def summarize(result: ReplayResult) -> dict:
    stats: Counter[str] = result.outputs.stats
    sizes = [e.sizes() for e in result.engines.values()]
    rejected = {k.split(".", 1)[1]: v for k, v in sorted(stats.items()) if k.startswith("rejected.")}
    return {
        "records": result.records,
        "partitions": result.partitions,
        "accepted": stats["events_in"] - stats["duplicates"] - sum(rejected.values()),
        "duplicates": stats["duplicates"],
        "rejected": rejected,
        "credits": stats["credits"],
        "milli_diamonds_credited": stats["milli_diamonds"],
        "streaks": stats["streaks"],
        "streak_timeouts": stats["streak_timeouts"],
        "open_streaks": sum(s.open_streaks for s in sizes),
        "late_gifts": stats["late"],
        "notices": stats["notices"],
        "window_totals": stats["window_totals"],
        "creators": sum(s.creators for s in sizes),
        "balance_milli_diamonds": sum(s.balance_milli_diamonds for s in sizes),
        "seconds": round(result.seconds, 3),
        "events_per_second": round(result.records / result.seconds) if result.seconds else None,
    }


def write_outputs(result: ReplayResult, out_dir: str | Path) -> dict[str, Path]:
    """One JSONL file per output topic plus summary.json; notices sorted by notice id."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    o = result.outputs
    files = {
        "payout-notices": sorted(o.notices, key=lambda n: n.notice_id),
        "creator-window-totals": o.window_totals,
        "gifts-late": o.late,
        "gifts-dlq": o.dead_letters,
    }
    paths = {}
    for name, records in files.items():
        paths[name] = out_dir / f"{name}.jsonl"
        write_session(paths[name], (model.encode(r) for r in records))
    paths["summary"] = out_dir / "summary.json"
    paths["summary"].write_bytes(model.encode(result.summary) + b"\n")
    return paths
