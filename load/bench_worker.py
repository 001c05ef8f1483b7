"""Worker drain benchmark: a pre-loaded topic (millions of events) drained, in one run, by
  1. a bare aiokafka consume loop (the ceiling: fetch + commit, no processing),
  2. the native worker with exactly-once on (transactions, read_committed, changelog),
  3. the native worker with exactly-once off (at-least-once, same outputs),
each in its own process and consumer group, so they read the same bytes from the same broker.

  python -m load.bench_worker [--events 2000000] [--partitions 6] [--bootstrap 127.0.0.1:19092]
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
from pathlib import Path

from load.drain import (
    bare_consumer_argv,
    cleanup,
    drain_with_process,
    native_worker_argv,
    preload,
    realistic_session,
    unique_config,
    with_group,
    worker_config_file,
)


async def run(events: int, partitions: int, bootstrap: str, batch: int) -> None:
    cfg = unique_config(bootstrap)
    records = realistic_session(events)
    print(f"pre-loading {len(records):,} events into {cfg.topics.gifts} ({partitions} partitions) ...", flush=True)
    seconds = await preload(cfg, records, partitions)
    print(f"  produced in {seconds:.1f} s ({len(records) / seconds:,.0f}/s)", flush=True)
    results = []
    runs = [cfg]
    try:
        with tempfile.TemporaryDirectory() as tmp:
            bare = with_group(cfg, "bare")
            results.append(await drain_with_process("bare aiokafka consume (ceiling)", bare,
                                                    bare_consumer_argv(bare, batch), len(records)))
            print(f"  {results[-1].name}: {results[-1].events_per_second:,.0f} events/s", flush=True)
            for name, eos in (("native worker, exactly-once", True), ("native worker, at-least-once", False)):
                c = with_group(cfg, "eos" if eos else "alo")
                # Each run writes its outputs to its own topics so the runs do not interfere.
                c.topics = type(c.topics)(**{k: (v if k == "gifts" else f"{v}-{c.group_id[-3:]}")
                                             for k, v in vars(c.topics).items()})
                from stream.topics import create_topics

                runs.append(c)
                await create_topics(c, partitions)
                config = worker_config_file(c, Path(tmp) / f"{c.group_id}.toml", exactly_once=eos,
                                            batch_max_records=batch)
                results.append(await drain_with_process(name, c, native_worker_argv(config), len(records)))
                print(f"  {results[-1].name}: {results[-1].events_per_second:,.0f} events/s", flush=True)
    finally:
        for c in runs:  # the runs share the gifts topic: delete only at the very end
            await cleanup(c)
    ceiling = results[0].events_per_second
    print()
    print(f"| runner ({len(records):,} events, {partitions} partitions, batch {batch:,}) | events/s "
          f"| share of bare ceiling | wall incl. start-up |")
    print("|---|---:|---:|---:|")
    for r in results:
        print(f"| {r.name} | {r.events_per_second:,.0f} | {r.events_per_second / ceiling:.0%} "
              f"| {r.total_seconds:.1f} s |")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--events", type=int, default=2_000_000)
    p.add_argument("--partitions", type=int, default=6)
    p.add_argument("--batch", type=int, default=50_000, help="getmany max_records")
    p.add_argument("--bootstrap", default="127.0.0.1:19092")
    a = p.parse_args()
    asyncio.run(run(a.events, a.partitions, a.bootstrap, a.batch))


if __name__ == "__main__":
    main()
