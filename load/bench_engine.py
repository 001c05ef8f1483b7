"""Offline engine throughput on one core: decode-only baseline vs the full engine, same records, same run.

Usage: ``python -m load.bench_engine [--events N] [--partitions P] [--repeat R] [--seed S]``

A realistic session is generated in memory with ``load.generator`` (skewed creators and senders, a viral
burst, streaks, and the dirt rates of ``load.make_demo_session``: 0.5% duplicates, 0.3% late by 10 min,
0.2% malformed, 2% of streaks missing their end) and kept as a list of bytes, as if pre-read from a file.
Then, each measured as the best of R fresh repeats (new engines, nothing cached between repeats):

  (a) decode only: ``stream.engine.model.decode_events`` (msgspec) over all records in batches of 20,000: the
      Python decoder, the floor of any engine written in Python;
  (b) the engine: ``stream.runtime.replay.replay(records, policy, partitions=P)`` (decode + route + engine), with
      the compiled engine (the default; it decodes natively, so it can beat (a));
  (c) the engine with ``partitions=1`` (no routing);
  (d) the Python reference engine, ``partitions=1``, once (it is several times slower): the ratio of (c)
      to (d) is what compiling the engine bought, measured in the same run;
  (e) (b)'s gift records with the run's creator accounts and payouts (``load.generator.generate_inputs`` with
      ``accounts=True``: an account for most creators, updates, tombstones, a payout every 500 gifts), merged per
      partition in the one order of the inputs (stream.engine.order): what the merge and the accounts cost. Its
      rate counts the gift records, so (e) / (b) is the price per gift.

"Events" are records: everything in the file, duplicates and malformed ones included. Also reported:
peak RSS (``resource.getrusage``, a high-water mark, sampled after each phase), the RSS still held with
run (b)'s result alive, and the size of the live state after run (b) (see ``state_size``).
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import os
import platform
import resource
import sys
import time
from collections.abc import Callable, Iterable
from itertools import islice
from typing import Any

from load.generator import REALISTIC_DIRT, TrafficConfig, generate, generate_inputs
from stream.engine import model
from stream.engine.policy import load_policy
from stream.kafka.session_files import AccountRecord
from stream.runtime.replay import DEFAULT_PARTITIONS, Session, replay
from stream.state.tables import PartitionState, snapshot

DEFAULT_EVENTS = 1_000_000
DEFAULT_SEED = 20251124
DECODE_BATCH = 20_000


def bench_config(events: int, seed: int = DEFAULT_SEED) -> TrafficConfig:
    """The demo session's dirt rates on a bigger population. 100 records/s of event time outside the
    burst: 1M records span about 2.5 h, so hourly windows close and dedupe ids expire during the run."""
    return TrafficConfig(
        seed=seed,
        events=events,
        creators=1_000,
        senders=100_000,
        rate_per_s=100.0,
        **REALISTIC_DIRT,
    )


def pre_read(generated: Iterable[bytes]) -> list[bytes]:
    """The records as `stream.runtime.replay.read_session` returns them from the session file (newline-joined,
    split again, blank lines dropped), done a chunk at a time so the blob never exists whole. Besides
    matching the file path exactly, this copies the records into exact-size bytes objects: the
    generator's orjson output carries ~4 KiB of buffer per record."""
    it = iter(generated)
    records: list[bytes] = []
    for chunk in iter(lambda: list(islice(it, 10_000)), []):
        records.extend(line for line in b"\n".join(chunk).split(b"\n") if line.strip())
    return records


def peak_rss_mib() -> float:
    """Peak resident set size of this process so far (Linux reports ru_maxrss in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def current_rss_mib() -> float | None:
    """Resident set size right now (Linux /proc; None elsewhere)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError, IndexError):
        return None


def best_of(repeat: int, run: Callable[[], Any]) -> tuple[float, Any]:
    """Best wall time of `repeat` fresh runs; returns it with the last run's result. The previous result
    is dropped and garbage collected before each run so runs do not pay for each other's garbage."""
    best = float("inf")
    result = None
    for _ in range(repeat):
        result = None
        gc.collect()
        t0 = time.perf_counter()
        result = run()
        best = min(best, time.perf_counter() - t0)
    return best, result


def decode_all(records: list[bytes], max_bytes: int) -> int:
    n = 0
    for lo in range(0, len(records), DECODE_BATCH):
        n += len(model.decode_events(records[lo:lo + DECODE_BATCH], max_bytes))
    return n


def state_size(states: list[PartitionState]) -> dict[str, Any]:
    """Live state after a run, summed over partitions, measured as msgpack snapshot bytes (what a
    restore reads; Python objects in memory cost several times more, see the RSS growth).

    snapshot_bytes is the whole state. tally_bytes is the snapshot of the tallies alone (creators with
    their balances and pane tallies, plus the pane -> creators index), so bytes_per_tally =
    tally_bytes / (creators + panes). Dedupe ids and closed streaks (kept for the dedupe horizon) are
    reported separately: on this traffic they are most of the state."""
    creators = sum(len(s.creators) for s in states)
    panes = sum(len(c.panes) for s in states for c in s.creators.values())
    streaks = sum(len(s.streaks) for s in states)
    open_streaks = sum(1 for s in states for k in s.streaks.values() if k.open)
    seen = sum(len(s.seen) for s in states)
    snap = sum(len(snapshot(s)) for s in states)
    tallies = sum(len(snapshot(PartitionState(creators=s.creators, pane_creators=s.pane_creators)))
                  for s in states)
    streak_bytes = sum(len(snapshot(PartitionState(streaks=s.streaks, streak_buckets=s.streak_buckets)))
                       for s in states)
    return {
        "creators": creators, "panes": panes, "streaks": streaks, "open_streaks": open_streaks,
        "dedupe_ids": seen, "snapshot_bytes": snap, "tally_bytes": tallies, "streak_bytes": streak_bytes,
        "bytes_per_tally": tallies / max(1, creators + panes),
        "bytes_per_tally_all": snap / max(1, creators + panes),
    }


def machine() -> str:
    model_name = "?"
    try:
        with open("/proc/cpuinfo") as f:
            model_name = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), "?")
    except OSError:
        pass
    return (f"{os.cpu_count()} cores ({model_name}), {platform.system()} {platform.machine()}, "
            f"{platform.python_implementation()} {platform.python_version()}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m load.bench_engine", description=__doc__.splitlines()[0])
    ap.add_argument("--events", type=int, default=DEFAULT_EVENTS)
    ap.add_argument("--partitions", type=int, default=DEFAULT_PARTITIONS)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--seed", type=int, default=DEFAULT_SEED)
    args = ap.parse_args(argv)
    if args.events < 1 or args.partitions < 1 or args.repeat < 1:
        ap.error("--events, --partitions and --repeat must be >= 1")
    say = lambda *a: print(*a, flush=True)  # noqa: E731

    policy = load_policy()
    say(f"machine: {machine()}")
    rss0 = peak_rss_mib()
    t0 = time.perf_counter()
    records = pre_read(generate(bench_config(args.events, args.seed)))
    n = len(records)
    say(f"generated {n:,} records ({sum(map(len, records)) / 2**20:.1f} MiB) in {time.perf_counter() - t0:.1f} s;"
        f" seed {args.seed}; best of {args.repeat}")
    rss_records = peak_rss_mib()

    t_dec = best_of(args.repeat, lambda: decode_all(records, policy.max_record_bytes))[0]
    rss_decode = peak_rss_mib()
    t_one = best_of(args.repeat, lambda: replay(records, policy, partitions=1))[0]
    rss_one = peak_rss_mib()
    t_ref = best_of(1, lambda: replay(records, policy, partitions=1, engine="python"))[0]
    gc.collect()
    live_before = current_rss_mib()
    t_p, res = best_of(args.repeat, lambda: replay(records, policy, partitions=args.partitions))
    rss_p = peak_rss_mib()
    gc.collect()
    live_after = current_rss_mib()
    size = state_size([e.state for e in res.engines.values()])
    summary = res.summary
    res = None
    inputs = generate_inputs(dataclasses.replace(bench_config(args.events, args.seed), accounts=True))
    session = Session(records, pre_read(inputs.payouts), [AccountRecord(k, v) for k, v in inputs.accounts])
    t_merged, merged = best_of(args.repeat, lambda: replay(session, policy, partitions=args.partitions))
    merged_summary = merged.summary
    merged = None

    rate = {k: n / t for k, t in (("decode", t_dec), ("one", t_one), ("p", t_p), ("ref", t_ref),
                                  ("merged", t_merged))}
    us = {k: 1e6 / r for k, r in rate.items()}
    P = args.partitions
    say("")
    say(f"(a) decode only          {rate['decode']:>12,.0f} events/s  {us['decode']:6.2f} µs/event")
    say(f"(c) engine, 1 partition  {rate['one']:>12,.0f} events/s  {us['one']:6.2f} µs/event"
        f"  ratio to decode {rate['one'] / rate['decode']:.2f}")
    say(f"(b) engine, {P} partitions {rate['p']:>12,.0f} events/s  {us['p']:6.2f} µs/event"
        f"  ratio to decode {rate['p'] / rate['decode']:.2f}")
    say(f"(d) Python reference engine, 1 partition {rate['ref']:>12,.0f} events/s  {us['ref']:6.2f} µs/event"
        f"  compiled / reference: {rate['one'] / rate['ref']:.1f}x")
    say(f"(e) engine, {P} partitions, with {len(session.accounts):,} account records and {len(session.payouts):,} "
        f"payouts merged in {rate['merged']:>12,.0f} gift events/s  {us['merged']:6.2f} µs/event  ratio to (b) "
        f"{rate['merged'] / rate['p']:.2f}; {merged_summary['accounts']:,} accounts, "
        f"{merged_summary['payouts']:,} payouts applied, {merged_summary['notices']:,} notices")
    say(f"    engine beyond decoding: {us['one'] - us['decode']:.2f} µs/event (1 partition), "
        f"{us['p'] - us['decode']:.2f} µs/event ({P} partitions)")
    say(f"    target 1,000,000 events/s: {'reached' if rate['p'] >= 1e6 else 'NOT reached'}"
        f" ({rate['p'] / 1e6:.0%} of it with {P} partitions, {rate['one'] / 1e6:.0%} with 1)")
    say("")
    say(f"session: accepted {summary['accepted']:,}, duplicates {summary['duplicates']:,}, "
        f"rejected {sum(summary['rejected'].values()):,}, credits {summary['credits']:,}, "
        f"streaks {summary['streaks']:,}, late {summary['late_gifts']:,}, notices {summary['notices']:,}, "
        f"window totals {summary['window_totals']:,}")
    say(f"peak RSS (ru_maxrss high-water mark): start {rss0:.0f} MiB, records in memory {rss_records:.0f} MiB, "
        f"after decode {rss_decode:.0f} MiB, after engine P=1 {rss_one:.0f} MiB, after engine P={P} "
        f"{rss_p:.0f} MiB")
    if live_before is not None and live_after is not None:
        say(f"current RSS with the last P={P} run's result alive (state + outputs), minus before the runs: "
            f"{live_after - live_before:+.0f} MiB (approximate: the allocator keeps freed memory)")
    say(f"live state after the P={P} run: {size['creators']:,} creators, {size['panes']:,} pane tallies, "
        f"{size['streaks']:,} streaks ({size['open_streaks']:,} open), {size['dedupe_ids']:,} dedupe ids")
    say(f"    snapshot (msgpack) {size['snapshot_bytes'] / 2**20:.1f} MiB in all: tallies "
        f"{size['tally_bytes'] / 2**10:.0f} KiB = {size['bytes_per_tally']:.0f} bytes per creator+pane tally, "
        f"streaks {size['streak_bytes'] / 2**20:.1f} MiB, dedupe ids and the rest "
        f"{(size['snapshot_bytes'] - size['tally_bytes'] - size['streak_bytes']) / 2**20:.1f} MiB "
        f"(whole snapshot / (creators + panes) = {size['bytes_per_tally_all']:.0f} bytes)")
    say("")
    say(f"| events | decode only (ev/s) | engine P=1 (ev/s) | engine P={P} (ev/s) | engine/decode P=1 | "
        f"engine/decode P={P} | reference engine P=1 (ev/s) | compiled/reference | peak RSS (MiB) | "
        f"B/tally (snapshot) |")
    say("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    say(f"| {n:,} | {rate['decode']:,.0f} | {rate['one']:,.0f} | {rate['p']:,.0f} | "
        f"{rate['one'] / rate['decode']:.2f} | {rate['p'] / rate['decode']:.2f} | {rate['ref']:,.0f} | "
        f"{rate['one'] / rate['ref']:.1f}x | {rss_p:.0f} | {size['bytes_per_tally']:.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
