"""Offline replay: run a recorded session (JSONL, optionally gzipped) through the engine, no broker.

Records are routed to partitions exactly as Kafka's default partitioner would route them by key
(creator_id), and each partition's subsequence keeps file order, so a replay with `partitions` equal to
the topic's partition count makes the same decisions as the live worker: byte-identical notices.

A session may hold the payouts and the creator accounts too (`Session`): then each partition's three inputs are
merged in the one order the live worker uses (stream.engine.order: by the time each record holds), and numbered
within its partition as Kafka numbers offsets.
"""

from __future__ import annotations

import gc
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from stream.engine import model
from stream.engine.native import make_engine, split_gifts
from stream.engine.order import FINISHED, UNKNOWN, Input, feed, gift_time, new_queues, runs, valid_time
from stream.engine.policy import Policy
from stream.engine.protocol import Engine, Outputs
from stream.kafka.recording import INPUT_NAMES, PartitionLog, Recording
from stream.kafka.routing import PartitionCache
from stream.kafka.session_files import AccountRecord, key_of, write_session

DEFAULT_PARTITIONS = 6


@dataclass
class Session:
    """Everything a replay reads: the gift records and, optionally, the payouts and creator-accounts records."""

    gifts: list[bytes]
    payouts: list[bytes] = field(default_factory=list)
    accounts: list[AccountRecord] = field(default_factory=list)

    @property
    def merged(self) -> bool:
        """More inputs than the gifts: the replay merges them per partition."""
        return bool(self.payouts or self.accounts)

    def __len__(self) -> int:
        return len(self.gifts) + len(self.payouts) + len(self.accounts)


@dataclass
class ReplayResult:
    outputs: Outputs
    engines: dict[int, Engine]
    records: int
    seconds: float
    partitions: int
    summary: dict = field(default_factory=dict)


def replay(records: list[bytes] | Session, policy: Policy, partitions: int = DEFAULT_PARTITIONS,
           batch_size: int = 20_000, final: bool = False, source: str = "replay",
           progress: Callable[[int], None] | None = None, engine: str | None = None,
           topics: dict[Input, str] | None = None) -> ReplayResult:
    """Run records (gift records, or a Session of all three inputs) through one engine per partition (`engine`:
    see stream.engine.native.make_engine). topics: the input topic names dead letters give as their source (the
    gifts' is `source`)."""
    with _cyclic_gc_paused():
        if isinstance(records, Session) and records.merged:
            return _replay_merged(records, policy, partitions, batch_size, final, source, progress, engine,
                                  topics or {})
        gifts = records.gifts if isinstance(records, Session) else records
        return _replay(gifts, policy, partitions, batch_size, final, source, progress, engine)


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


def _engines(policy: Policy, partitions: int, source: str, engine: str | None,
             owners: PartitionCache | None = None) -> dict[int, Engine]:
    """One engine per partition, sharing one partition cache (`owners`, else a new one), with no changelog to track
    (offline)."""
    owners = owners or PartitionCache(partitions)
    return {p: make_engine(policy, p, source_topic=source, kind=engine, track_changes=False, partitions=partitions,
                           owners=owners)
            for p in range(partitions)}


def _replay(records: list[bytes], policy: Policy, partitions: int, batch_size: int, final: bool, source: str,
            progress: Callable[[int], None] | None, engine: str | None) -> ReplayResult:
    started = time.perf_counter()
    engines = _engines(policy, partitions, source, engine)
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


def _replay_merged(session: Session, policy: Policy, partitions: int, batch_size: int, final: bool, source: str,
                   progress: Callable[[int], None] | None, engine: str | None,
                   topics: dict[Input, str]) -> ReplayResult:
    """Each partition's inputs merged (stream.engine.order.plan), the payouts and accounts queued whole, the gifts
    split and merged GIFT_CHUNK records at a time (see `_Merge`)."""
    started = time.perf_counter()
    owners = PartitionCache(partitions)  # the engines' and the routing's
    engines = _engines(policy, partitions, source, engine, owners)
    names = {Input.GIFTS: source, Input.PAYOUTS: topics.get(Input.PAYOUTS, "payouts"),
             Input.ACCOUNTS: topics.get(Input.ACCOUNTS, "creator-accounts")}
    merge = _Merge(engines, names, policy, batch_size, progress)

    def route(kind: Input, keys: list[bytes | None], values: list[bytes | None], kafka_ts: list[int],
              times: list[int | None]) -> None:
        """Each record to its partition's input (Kafka's partitioner on its key, as produced; keyless to 0), its
        offset counting from 0 per partition as Kafka's do."""
        shares: dict[int, list[int]] = {}
        for i, key in enumerate(keys):
            shares.setdefault(0 if key is None else owners[key], []).append(i)
        for p, idx in shares.items():
            share_times = [times[i] for i in idx]
            merge.pending[p][kind].add(list(range(len(idx))), [values[i] for i in idx], [kafka_ts[i] for i in idx],
                                       [keys[i] for i in idx], None if None in share_times else share_times)

    keyed = [key_of(r) for r in session.payouts]  # (creator_id, ts): the ts is the record's time when it is valid
    route(Input.PAYOUTS, [k for k, _ in keyed], session.payouts, [0] * len(keyed),
          [valid_time(t) if k is not None else None for k, t in keyed])
    route(Input.ACCOUNTS, [a.key for a in session.accounts], [a.value for a in session.accounts],
          [a.ts or 0 for a in session.accounts], [None] * len(session.accounts))
    offsets = [0] * partitions  # each partition's next gift offset
    in_order = [engines[p] for p in range(partitions)]
    for lo in range(0, len(session.gifts), GIFT_CHUNK):
        for p, (raws, times) in enumerate(_split_gifts(session.gifts[lo:lo + GIFT_CHUNK], owners, policy, in_order)):
            if raws:
                merge.pending[p][Input.GIFTS].add(list(range(offsets[p], offsets[p] + len(raws))), raws,
                                                  [0] * len(raws), None, times)
                offsets[p] += len(raws)
        merge.run(sorted(engines), gifts_complete=False)
    merge.run(sorted(engines), gifts_complete=True)
    return merge.result(final, len(session), started)


def _split_gifts(raws: list[bytes], owners: PartitionCache, policy: Policy,
                 engines: Sequence[Engine] = ()) -> list[tuple[list[bytes], list[int]]]:
    """A session's gift records split by the partition of their key (creator_id), each share in file order, with
    each record's merge time: in the compiled module when it is built (the same rules: _gift_key_and_time decides
    what its decoder does not take as a valid gift). engines[p]: partition p's, which keeps what was decoded of its
    share when it is a compiled one (Engine.gift_times)."""
    split = split_gifts(raws, owners.partitions, policy, _gift_key_and_time, engines)
    return split if split is not None else _split_gifts_in_python(raws, owners)


def _split_gifts_in_python(raws: list[bytes], owners: PartitionCache) -> list[tuple[list[bytes], list[int]]]:
    shares: list[tuple[list[bytes], list[int]]] = [([], []) for _ in range(owners.partitions)]
    for raw in raws:
        key, time = _gift_key_and_time(raw)
        values, times = shares[0 if key is None else owners[key]]
        values.append(raw)
        times.append(time)
    return shares


def _gift_key_and_time(raw: bytes) -> tuple[bytes | None, int]:
    """A gift record's key (its creator_id; None when it cannot be read) and merge time (its ts when it is a valid
    time, else stream.engine.order.gift_time's)."""
    key, ts = key_of(raw)
    time = valid_time(ts) if key is not None else None
    return key, time if time is not None else gift_time(raw)


def replay_recording(recording: Recording, policy: Policy, batch_size: int = 20_000, final: bool = False,
                     progress: Callable[[int], None] | None = None, engine: str | None = None) -> ReplayResult:
    """Run a recording (stream.kafka.recording) as the live worker ran it: every record on the partition and at the
    offset it was on, its key and Kafka timestamp as recorded, the dead letters naming the recorded topics. Each
    partition's gifts are merged GIFT_CHUNK records at a time (see `_Merge`)."""
    with _cyclic_gc_paused():
        started = time.perf_counter()
        partitions = recording.partitions()
        names = {kind: info.topic for kind in Input if (info := recording.header.topic(kind)) is not None}
        engines = _engines(policy, partitions, names.get(Input.GIFTS, "gifts"), engine)
        merge = _Merge(engines, names, policy, batch_size, progress)
        gifts: dict[int, PartitionLog] = {}
        for (kind, p), log in recording.logs.items():
            if not 0 <= p < partitions:
                raise ValueError(f"the recording has {INPUT_NAMES[kind]}-{p} but {partitions} partitions")
            if kind is Input.GIFTS:
                gifts[p] = log
            else:
                merge.pending[p][kind].add(log.offsets, log.values, log.timestamps, log.keys)
        for p in sorted(engines):
            log = gifts.get(p)
            for lo in range(0, len(log.offsets) if log else 0, GIFT_CHUNK):
                hi = lo + GIFT_CHUNK
                merge.pending[p][Input.GIFTS].add(log.offsets[lo:hi], log.values[lo:hi], log.timestamps[lo:hi],
                                                  log.keys[lo:hi])
                merge.run([p], gifts_complete=False)
            merge.run([p], gifts_complete=True)
        return merge.result(final, len(recording), started)


# Gift records a merged replay queues at a time: the merge reads each gift's time before the engine processes it,
# and both find the record's bytes in the CPU's cache only while few records lie between the two reads.
GIFT_CHUNK = 16_384


class _Merge:
    """An offline run of stream.engine.order over each partition's inputs. The payouts and accounts are queued
    whole; the gifts may come in chunks. While more gifts may come, a partition's gift input counts as an input
    that may still deliver anything (UNKNOWN) whenever its queue is empty, as live: the others' records wait for
    it. Runs cut where a chunk ends are planned again with the next chunk, as a live worker's batches are, so the
    order is the one a single pass over every record makes. Each partition's outputs are kept apart and come out
    in partition order, as when the partitions are merged one after another."""

    def __init__(self, engines: dict[int, Engine], names: dict[Input, str], policy: Policy, batch_size: int,
                 progress: Callable[[int], None] | None) -> None:
        self.engines, self.names, self.policy = engines, names, policy
        self.batch_size, self.progress = batch_size, progress
        self.pending = {p: new_queues(e.gift_times) for p, e in engines.items()}
        self.outputs = {p: Outputs() for p in engines}

    def run(self, partitions: Iterable[int], gifts_complete: bool) -> None:
        """Every run the merge can decide now in these partitions."""
        horizons = [FINISHED] * len(Input)
        if not gifts_complete:
            horizons[Input.GIFTS] = UNKNOWN
        for p in partitions:
            e, queues, out = self.engines[p], self.pending[p], self.outputs[p]
            for run in runs(queues, lambda: horizons, lambda e=e: e.watermark, self.policy.max_future_ms):
                for lo in range(run.lo, run.hi, self.batch_size):
                    n = feed(e, run.input, queues[run.input].take(min(run.hi, lo + self.batch_size)), out,
                             self.names[run.input])
                    e.clear_changes()
                    if self.progress:
                        self.progress(n)

    def result(self, final: bool, records: int, started: float) -> ReplayResult:
        """The outputs of every partition in partition order (after its end of stream when `final`)."""
        out = Outputs()
        for p in sorted(self.engines):
            if final:
                self.engines[p].end_of_stream(self.outputs[p])
            out.extend(self.outputs[p])
        seconds = time.perf_counter() - started
        result = ReplayResult(out, self.engines, records, seconds, len(self.engines))
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
        "accounts": stats["accounts"],
        "accounts_closed": stats["accounts_closed"],
        "payouts": stats["payouts"],
        "gifts_without_account": stats["gifts_without_account"],
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
