"""The same processing on Faust (faust-streaming): a faust.App whose one agent feeds the same engine as the
native worker (one per input partition) with the same policy, and sends the notices, window totals, late
gifts and dead letters to the same output topics as raw bytes.

It exists to compare the native worker with Faust on the same input (`giftstream load compare`,
load/harness_compare.py), not to
replace the worker. What it does NOT do, on purpose and unlike the native worker:
  * processing guarantee at_least_once (Faust's default): outputs are sent, events acked, and Faust
    commits the acked offsets every broker_commit_interval / broker_commit_every; a crash between a send
    and a commit re-sends outputs. No transactions.
  * no changelog: engine state lives in memory only (store memory://, no Faust tables either), so a
    restart or a rebalance that moves a partition starts that partition from an empty state. Run one
    runner per group, on a fresh group, for comparisons.
  * payouts and creator accounts are not consumed (so it prices every gift in its own region, with no account).
The consumer group is the app id (`--group`), so load/drain.py can watch its committed offsets.

Two ways to consume, both documented Faust paths:
  --mode events  the normal per-event path: `async for event in stream.events()`, one engine call per event
  --mode take    batches: `async for events in stream.take_events(N, within=S)`, one engine call per
                 partition per batch

  python -m stream.runtime.faust_app worker --bootstrap 127.0.0.1:19092 --group G --topic gifts [--config TOML]
      [--mode events|take] [--take 10000] [--within 0.2] [--log-level warning]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from stream.config import Topics, WorkerConfig, load_config
from stream.engine import model
from stream.engine.native import make_engine
from stream.engine.policy import Policy, load_policy
from stream.engine.protocol import Engine, Outputs
from stream.kafka.routing import PartitionCache


class FaustRunner:
    """The faust.App plus one engine per input partition (created on the partition's first event)."""

    def __init__(self, cfg: WorkerConfig, policy: Policy, mode: str = "events", take: int = 10_000,
                 within: float = 0.2) -> None:
        import faust

        if mode not in ("events", "take"):
            raise ValueError(f"--mode must be events or take, got {mode!r}")
        self.cfg, self.policy, self.mode = cfg, policy, mode
        self.engines: dict[int, Engine] = {}
        self.events_in = 0
        t: Topics = cfg.topics
        self.app = faust.App(
            cfg.group_id,  # the app id is the consumer group id
            broker=f"kafka://{cfg.bootstrap_servers}",
            store="memory://",
            # Faust makes a data directory even for the memory store; keep it out of the working directory.
            datadir=str(Path(tempfile.gettempdir()) / f"giftstream-faust-{cfg.group_id}"),
            processing_guarantee="at_least_once",
            value_serializer="raw",
            key_serializer="raw",
            consumer_auto_offset_reset="earliest",
            web_enabled=False,
            topic_allow_declare=False,  # the topics exist (giftstream topics create); never re-declare them
            topic_disable_leader=True,  # no leader-assignor topic needed: no tables
        )
        raw = {"key_type": bytes, "value_type": bytes, "key_serializer": "raw", "value_serializer": "raw"}
        self.gifts = self.app.topic(t.gifts, **raw)
        self.out_topics = {name: self.app.topic(getattr(t, name), **raw)
                           for name in ("notices", "window_totals", "late", "dlq")}
        agent: Callable[[Any], Awaitable[None]] = self._per_event if mode == "events" else self._batched(
            take, within)
        self.app.agent(self.gifts, name="giftstream-faust")(agent)

    def engine(self, partition: int) -> Engine:
        e = self.engines.get(partition)
        if e is None:
            # The partition count is in the consumer's metadata once a partition is assigned (it is: a
            # record of it arrived); the engine needs it to tell which creators this partition owns.
            partitions = self.app.consumer.topic_partitions(self.cfg.topics.gifts)
            if not partitions:
                raise RuntimeError(f"no partition count for topic {self.cfg.topics.gifts} in the metadata")
            e = self.engines[partition] = make_engine(self.policy, partition, source_topic=self.cfg.topics.gifts,
                                                      kind=self.cfg.engine, partitions=partitions,
                                                      owners=PartitionCache(partitions))
        return e

    async def _per_event(self, stream: Any) -> None:
        async for event in stream.events():
            msg = event.message
            out = self.engine(msg.partition).process([event.value or b""], [msg.offset])
            self.events_in += 1
            await self._send(out)

    def _batched(self, take: int, within: float) -> Callable[[Any], Awaitable[None]]:
        async def agent(stream: Any) -> None:
            async for events in stream.take_events(take, within=within):
                by_p: dict[int, tuple[list[bytes], list[int]]] = {}
                for event in events:
                    msg = event.message
                    raws, offsets = by_p.setdefault(msg.partition, ([], []))
                    raws.append(event.value or b"")
                    offsets.append(msg.offset)
                out = Outputs()
                for p, (raws, offsets) in by_p.items():  # events of a partition stay in offset order
                    self.engine(p).process(raws, offsets, out)
                self.events_in += len(events)
                await self._send(out)

        return agent

    async def _send(self, out: Outputs) -> None:
        if not (out.notices or out.window_totals or out.late or out.dead_letters):
            return
        encode = model.encode
        o = self.out_topics
        for n in out.notices:
            await o["notices"].send(key=n.creator_id.encode(), value=encode(n))
        for w in out.window_totals:
            await o["window_totals"].send(key=w.creator_id.encode(), value=encode(w))
        for g in out.late:
            await o["late"].send(key=g.creator_id.encode(), value=encode(g))
        for d in out.dead_letters:
            await o["dlq"].send(key=None, value=encode(d))


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m stream.runtime.faust_app", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("command", choices=["worker"])
    p.add_argument("--config", help="worker config TOML (topics, group, bootstrap), as for `giftstream worker`")
    p.add_argument("--bootstrap", help="Kafka bootstrap servers (default: the config's or 127.0.0.1:19092)")
    p.add_argument("--group", help="consumer group = Faust app id (default: the config's group_id + '-faust')")
    p.add_argument("--topic", help="input gifts topic (default: the config's)")
    p.add_argument("--policy", help="policy TOML (default: the built-in policy)")
    p.add_argument("--mode", choices=["events", "take"], default="events")
    p.add_argument("--take", type=int, default=10_000, help="--mode take: events per batch")
    p.add_argument("--within", type=float, default=0.2, help="--mode take: seconds to wait for a full batch")
    p.add_argument("--log-level", default="warning")
    a = p.parse_args(argv)
    cfg = load_config(a.config, bootstrap_servers=a.bootstrap)
    cfg.group_id = a.group or f"{cfg.group_id}-faust"
    if a.topic:
        cfg.topics.gifts = a.topic
    runner = FaustRunner(cfg, load_policy(a.policy or cfg.policy), a.mode, a.take, a.within)
    import faust

    # faust.Worker runs the app until SIGTERM/SIGINT (it installs the handlers) and then exits.
    faust.Worker(runner.app, loglevel=a.log_level, quiet=True).execute_from_commandline()


if __name__ == "__main__":
    sys.exit(main())
