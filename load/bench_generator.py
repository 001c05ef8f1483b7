"""Speed of the traffic generator: events/s of load.generator.generate() on the engine benchmark's session
(load.bench_engine.bench_config), optionally against the generator of another git revision.

    python -m load.bench_generator --events 1000000 --rounds 3 --against 07a770d

Each measurement runs in a fresh process and times the iteration only (the population is built before the
clock starts); with --against the two alternate (ABBA), so drift on a shared machine hits both alike.
`--one FILE` is one measurement of the generator module in FILE (for a profiler or valgrind)."""

from __future__ import annotations

import argparse
import gc
import importlib.util
import json
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path
from types import ModuleType

CURRENT = str(Path(__file__).with_name("generator.py"))
ROOT = Path(__file__).resolve().parents[1]  # the children run here, so they import this tree's `load`


def _load(path: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location("_generator_under_test", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def measure_one(path: str, events: int) -> dict[str, float]:
    """events/s (wall clock and CPU time) of iterating the generator in `path` over the benchmark session."""
    from load.bench_engine import bench_config

    module = _load(path)
    gen = module.TrafficGenerator(module.TrafficConfig(**asdict(bench_config(events))))
    records = iter(gen)
    gc.collect()
    wall, cpu = time.perf_counter(), time.process_time()
    n = sum(1 for _ in records)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    return {"events": n, "wall_per_s": n / wall, "cpu_per_s": n / cpu}


def _child(path: str, events: int) -> dict[str, float]:
    out = subprocess.run([sys.executable, "-m", "load.bench_generator", "--one", path, "--events", str(events)],
                         capture_output=True, text=True, check=True, cwd=ROOT).stdout
    return json.loads(out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m load.bench_generator", description=__doc__.split("\n\n")[0])
    ap.add_argument("--events", type=int, default=1_000_000)
    ap.add_argument("--rounds", type=int, default=3, help="measurements of each generator (default 3)")
    ap.add_argument("--against", metavar="REV", help="also measure load/generator.py of this git revision")
    ap.add_argument("--one", metavar="FILE", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.one:
        print(json.dumps(measure_one(args.one, args.events)))
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        targets = {"current": CURRENT}
        if args.against:
            old = Path(tmp) / "generator_old.py"
            old.write_bytes(subprocess.run(["git", "show", f"{args.against}:load/generator.py"], check=True,
                                           capture_output=True, cwd=ROOT).stdout)
            targets = {args.against: str(old), "current": CURRENT}
        runs: dict[str, list[dict[str, float]]] = {name: [] for name in targets}
        names = list(targets)
        for r in range(args.rounds):
            for name in names if r % 2 == 0 else names[::-1]:
                got = _child(targets[name], args.events)
                runs[name].append(got)
                print(f"round {r + 1} {name:>10}: {got['wall_per_s']:,.0f} events/s "
                      f"(CPU time: {got['cpu_per_s']:,.0f})", file=sys.stderr, flush=True)
    def stat(name: str, kind: str) -> tuple[float, float]:
        xs = [x[kind] for x in runs[name]]
        return statistics.median(xs), max(xs)

    print(f"{args.events:,} events, {args.rounds} runs each: events/s, median / best")
    print(f"{'':>12}  {'wall clock':>21}  {'CPU time':>21}")
    for name in runs:
        (wm, wb), (cm, cb) = stat(name, "wall_per_s"), stat(name, "cpu_per_s")
        print(f"{name:>12}  {wm:>10,.0f} / {wb:>8,.0f}  {cm:>10,.0f} / {cb:>8,.0f}")
    if args.against:
        (wm, wb), (cm, cb) = stat("current", "wall_per_s"), stat("current", "cpu_per_s")
        (om, ob), (pm, pb) = stat(args.against, "wall_per_s"), stat(args.against, "cpu_per_s")
        print(f"{'current/old':>12}  {wm / om:>10.3f} / {wb / ob:>8.3f}  {cm / pm:>10.3f} / {cb / pb:>8.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
