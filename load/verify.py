"""Verification of a load run (after the group has caught up), against what an independent computation says:

  * the offline replay (stream.runtime.replay.replay, same partition count) of the topic's records, read back
    partition by partition: live notices byte-identical to the replay's, notice ids unique (no duplicate
    notice), per-creator balances restored from the changelog equal to the replay's;
  * the naive ground truth (load/ground_truth.py, shares no code with the engine): the changelog state with
    every open streak timed out and every window closed (end_of_stream) gives the same per-creator
    balances as the ground truth.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Any

from load.ground_truth import Rules
from stream.config import WorkerConfig
from stream.engine.policy import Policy


@dataclass
class Check:
    name: str
    passed: bool
    detail: str


def truth_rules(policy: Policy) -> Rules:
    """The policy's numbers the ground truth needs, as plain values (it shares no code with the engine)."""
    return Rules(rates={r: rp.diamonds_per_coin for r, rp in policy.regions.items()},
                 max_future_ms=policy.max_future_ms, horizon_ms=policy.dedupe_horizon_ms,
                 max_bytes=policy.max_record_bytes, default_region=policy.default_region,
                 statuses=frozenset(policy.statuses),
                 methods={r: frozenset(rp.fees) for r, rp in policy.regions.items()})


async def verify(cfg: WorkerConfig, policy: Policy) -> dict[str, Any]:
    """Compare what the group committed with the offline replay and the independent ground truth."""
    from load.ground_truth import expected
    from stream.engine import model
    from stream.engine.reference import Outputs, PartitionEngine
    from stream.kafka.routing import PartitionCache
    from stream.kafka.session_io import read_topic
    from stream.runtime.replay import replay
    from stream.state.changelog import restore_state

    started = time.monotonic()
    t = cfg.topics
    per_partition = await read_topic(cfg, t.gifts)
    partitions = len(per_partition)
    # Partition by partition in offset order: each partition's subsequence is exactly what its worker saw.
    records = [m.value or b"" for p in sorted(per_partition) for m in per_partition[p]]
    # The offline side runs the Python reference engine: the live workers run the compiled one by default, so
    # this also checks one implementation against the other.
    offline = replay(records, policy, partitions=partitions, engine="python")
    checks: list[Check] = []

    live_notices = [m.value for ms in (await read_topic(cfg, t.notices)).values() for m in ms]
    want_notices = [model.encode(n) for n in offline.outputs.notices]
    ids = [model.decode_notice(n).notice_id for n in live_notices]
    dup = len(ids) - len(set(ids))
    same = sorted(live_notices) == sorted(want_notices)
    checks.append(Check("notices equal the offline replay's (byte for byte)", same,
                        f"{len(live_notices):,} live, {len(want_notices):,} offline"))
    checks.append(Check("no duplicate notice (unique notice ids)", dup == 0,
                        f"{len(set(ids)):,} unique ids, {dup:,} duplicates"))

    changelog = await read_topic(cfg, t.changelog)
    live_state: dict[str, int] = {}
    closed_balances: dict[str, int] = {}
    for p, msgs in changelog.items():
        state, _ = restore_state((m.key, m.value) for m in msgs)
        live_state.update({cid: s.balance for cid, s in state.creators.items()})
        engine = PartitionEngine(policy, p, state, t.gifts, partitions=partitions, owners=PartitionCache(partitions))
        engine.end_of_stream(Outputs())  # time out open streaks, as the ground truth counts them
        closed_balances.update({cid: s.balance for cid, s in engine.state.creators.items()})
    want_balances = {cid: s.balance for e in offline.engines.values() for cid, s in e.state.creators.items()}
    diff = {c for c in live_state.keys() | want_balances.keys() if live_state.get(c, 0) != want_balances.get(c, 0)}
    checks.append(Check("changelog balances equal the offline replay's", not diff,
                        f"{len(live_state):,} creators, {sum(live_state.values()) // 1000:,} diamonds"
                        + (f"; {len(diff)} differ, e.g. {sorted(diff)[:3]}" if diff else "")))

    rates = {r: rp.diamonds_per_coin for r, rp in policy.regions.items()}
    truth = expected(records, rates, partitions, policy.max_future_ms, policy.dedupe_horizon_ms,
                     policy.max_record_bytes)
    truth_b = {c: b for c, b in truth["balances"].items() if b}
    live_b = {c: b for c, b in closed_balances.items() if b}
    diff = {c for c in truth_b.keys() | live_b.keys() if truth_b.get(c) != live_b.get(c)}
    checks.append(Check("balances (streaks timed out) equal the independent ground truth", not diff,
                        f"{len(truth_b):,} creators, {sum(truth_b.values()) // 1000:,} diamonds, "
                        f"{truth['accepted']:,} accepted events"
                        + (f"; {len(diff)} differ, e.g. {sorted(diff)[:3]}" if diff else "")))
    return {"passed": all(c.passed for c in checks), "checks": [asdict(c) for c in checks],
            "records": len(records), "partitions": partitions, "seconds": round(time.monotonic() - started, 2)}
