"""The offline engine at production state: decode alone vs the full engine, same records, same run, as
the number of creators (and with it the state the engine holds) grows.

Usage: ``python -m load.bench_state [--creators 1000,1000000] [--events N] [--repeat R]
[--engine NAME=PATH.so ...] [--partitions P] [--cache DIR]``

For each creator count a session is generated with ``load.generator`` (the demo session's dirt rates,
``REALISTIC_DIRT``), traffic spread evenly over all creators (``--creator-zipf 0``; the generator's
default 1.2 sends most gifts to a few), 1,000,000 senders, ``--rate`` records per second of event time
(1,000: 6M records span 100 minutes, inside the 2 h dedupe horizon, so every dedupe id is still held at
the end; hourly and 5-minute-hop windows close all along). Then, ``--repeat`` times, interleaved (the
machine is shared: a slow spell hits every variant, not one):

  decode   ``stream.engine.model.decode_events`` (msgspec) over all records in batches of 20,000: "decode alone",
           the baseline the issue's ratios are to;
  engine   ``stream.runtime.replay.replay(records, policy, partitions=P)`` with each compiled engine given by
           ``--engine NAME=PATH`` (a stream/_native*.so, e.g. one built from an older commit: A/B in one
           process), or the installed one;
  floor    building the window totals the engine produced, as Python objects, from their fields
           (``map(WindowTotal, ...)`` over prebuilt columns): a lower bound on what producing that output
           costs in Python whatever the engine does (the engine's own flush also converts each field).

Reported: events/s (best of R and the spread), ratio to decode alone, the outputs the run must produce
(window totals, notices, late gifts, dead letters), the state held at the end, and the engine time split
into "decode" (the decode-alone time), "output floor" and the rest (state: lookups, inserts, closes).
"""

from __future__ import annotations

import argparse
import gc
import hashlib
import importlib.util
import os
import shutil
import sys
import tempfile
import time
from dataclasses import astuple
from pathlib import Path
from typing import Any

from load.bench_engine import current_rss_mib, decode_all, machine, peak_rss_mib, pre_read
from load.generator import REALISTIC_DIRT, TrafficConfig, generate
from stream.engine import native as engine_native
from stream.engine.model import WindowTotal
from stream.engine.policy import load_policy
from stream.runtime.replay import replay

DEFAULT_SEED = 20251124


def session_config(creators: int, events: int, rate: float, senders: int, creator_zipf: float,
                   seed: int) -> TrafficConfig:
    return TrafficConfig(seed=seed, events=events, creators=creators, senders=senders, creator_zipf=creator_zipf,
                         rate_per_s=rate, **REALISTIC_DIRT)


def session(cfg: TrafficConfig, cache: Path | None) -> list[bytes]:
    """The records of `cfg`, generated (slow: ~150,000 records/s) or read back from `cache`."""
    if cache is None:
        return pre_read(generate(cfg))
    key = hashlib.sha256(repr(astuple(cfg)).encode()).hexdigest()[:16]
    path = cache / f"session-{cfg.creators}-{cfg.events}-{key}.jsonl"
    if not path.exists():
        cache.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        with open(tmp, "wb") as f:
            for r in pre_read(generate(cfg)):
                f.write(r + b"\n")
        tmp.rename(path)
    return [line for line in path.read_bytes().split(b"\n") if line.strip()]


def load_native(path: str) -> Any:
    """A compiled engine from a .so file, as a module object of its own (not put in sys.modules). The file
    is copied first so that two builds at the same path over time are never the same mapped library."""
    d = tempfile.mkdtemp(prefix="giftstream-native-")
    copy = os.path.join(d, os.path.basename(path))
    shutil.copy(path, copy)
    spec = importlib.util.spec_from_file_location("stream._native", copy)
    if spec is None or spec.loader is None:
        raise SystemExit(f"{path}: not a loadable extension module")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def timed(run: Any) -> tuple[float, Any]:
    gc.collect()
    t0 = time.perf_counter()
    result = run()
    return time.perf_counter() - t0, result


def output_floor(window_totals: list[WindowTotal]) -> float:
    """Seconds to build these window totals again from their fields (columns prebuilt, not timed)."""
    fields = ("creator_id", "window", "window_start", "window_end", "milli_diamonds", "credits", "policy_version")
    cols = [[getattr(w, f) for w in window_totals] for f in fields]
    gc.collect()
    t0 = time.perf_counter()
    built = list(map(WindowTotal, *cols))
    t = time.perf_counter() - t0
    del built
    return t


def spread(ts: list[float]) -> str:
    return f"{min(ts):.2f}-{max(ts):.2f} s" if len(ts) > 1 else f"{ts[0]:.2f} s"


def bench_one(records: list[bytes], engines: dict[str, Any], args: argparse.Namespace, say: Any) -> dict:
    policy = load_policy()
    n = len(records)
    times: dict[str, list[float]] = {"decode": [], **{name: [] for name in engines}}
    info: dict[str, Any] = {}
    for rep in range(args.repeat):
        t, _ = timed(lambda: decode_all(records, policy.max_record_bytes))
        times["decode"].append(t)
        line = [f"decode {n / t:,.0f}"]
        for name, mod in engines.items():
            engine_native._native = mod
            t, res = timed(lambda: replay(records, policy, partitions=args.partitions))
            times[name].append(t)
            line.append(f"{name} {n / t:,.0f}")
            if rep == args.repeat - 1:
                sizes = [e.sizes() for e in res.engines.values()]
                o = res.outputs
                info[name] = {
                    "window_totals": len(o.window_totals), "notices": len(o.notices), "late": len(o.late),
                    "dead_letters": len(o.dead_letters), "summary": res.summary,
                    "creators": sum(s.creators for s in sizes), "streaks": sum(s.streaks for s in sizes),
                    "open_streaks": sum(s.open_streaks for s in sizes),
                    "dedupe_ids": sum(s.dedupe_ids for s in sizes),
                    "pane_tallies": sum(s.pane_tallies for s in sizes),
                    "floor_s": output_floor(o.window_totals),
                    "rss_mib": current_rss_mib(),
                }
            del res
        say(f"  repeat {rep + 1}: " + ", ".join(line) + " events/s")
    return {"n": n, "times": times, "info": info}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m load.bench_state", description=__doc__.splitlines()[0])
    ap.add_argument("--creators", default="1000,1000000", help="comma-separated creator counts")
    ap.add_argument("--events", type=int, default=6_000_000)
    ap.add_argument("--rate", type=float, default=1000.0, help="records per second of event time")
    ap.add_argument("--senders", type=int, default=1_000_000)
    ap.add_argument("--creator-zipf", type=float, default=0.0, help="0: every creator equally likely")
    ap.add_argument("--partitions", type=int, default=1)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--seed", type=int, default=DEFAULT_SEED)
    ap.add_argument("--engine", action="append", default=[], metavar="NAME=PATH",
                    help="a compiled engine (.so) to run, named; repeatable (default: the installed one)")
    ap.add_argument("--cache", type=Path, default=None, help="keep generated sessions here (uncompressed)")
    args = ap.parse_args(argv)
    counts = [int(c.replace("_", "")) for c in args.creators.split(",")]
    if args.events < 1 or args.repeat < 1 or args.partitions < 1 or min(counts) < 1:
        ap.error("--events, --repeat, --partitions and --creators must be >= 1")
    say = lambda *a: print(*a, flush=True)  # noqa: E731

    engines: dict[str, Any] = {}
    for spec in args.engine:
        name, sep, path = spec.partition("=")
        if not sep:
            ap.error(f"--engine wants NAME=PATH, not {spec!r}")
        engines[name] = load_native(path)
    if not engines:
        if engine_native._native is None:
            ap.error("the compiled engine is not built (make install)")
        engines["engine"] = engine_native._native

    say(f"machine: {machine()}")
    say(f"sessions: {args.events:,} records at {args.rate:,.0f}/s of event time, {args.senders:,} senders, "
        f"creator zipf {args.creator_zipf}, seed {args.seed}; engine partitions={args.partitions}; "
        f"{args.repeat} interleaved repeats; engines: {', '.join(engines)}")
    results = {}
    for c in counts:
        t0 = time.perf_counter()
        records = session(session_config(c, args.events, args.rate, args.senders, args.creator_zipf, args.seed),
                          args.cache)
        say(f"\n{c:,} creators: {len(records):,} records ({sum(map(len, records)) / 2**20:.0f} MiB) "
            f"ready in {time.perf_counter() - t0:.0f} s")
        results[c] = bench_one(records, engines, args, say)
        del records
        gc.collect()

    say("")
    say("| creators | variant | events/s (best) | spread (wall) | ratio to decode | µs/event | beyond decode µs/ev "
        "| window totals | notices | late | output floor µs/ev | rest µs/ev |")
    say("|---:|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for c, r in results.items():
        n, times = r["n"], r["times"]
        dec = min(times["decode"])
        say(f"| {c:,} | decode alone | {n / dec:,.0f} | {spread(times['decode'])} | 1.00 | {1e6 * dec / n:.2f} "
            f"| | | | | | |")
        for name in engines:
            t, i = min(times[name]), r["info"][name]
            floor_us = 1e6 * i["floor_s"] / n
            beyond = 1e6 * (t - dec) / n
            say(f"| {c:,} | {name} | {n / t:,.0f} | {spread(times[name])} | {dec / t:.2f} | {1e6 * t / n:.2f} "
                f"| {beyond:.2f} | {i['window_totals']:,} | {i['notices']:,} | {i['late']:,} | {floor_us:.2f} "
                f"| {beyond - floor_us:.2f} |")
    say("")
    for c, r in results.items():
        for name in engines:
            i = r["info"][name]
            say(f"{c:,} creators, {name}: held at the end {i['creators']:,} creators, {i['pane_tallies']:,} pane "
                f"tallies, {i['streaks']:,} streaks ({i['open_streaks']:,} open), {i['dedupe_ids']:,} dedupe ids; "
                f"outputs {i['window_totals']:,} window totals, {i['notices']:,} notices, {i['late']:,} late, "
                f"{i['dead_letters']:,} dead letters; output floor {i['floor_s']:.2f} s "
                f"(building {i['window_totals']:,} WindowTotal objects from prebuilt fields)")
    say(f"peak RSS {peak_rss_mib():.0f} MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
