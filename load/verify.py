"""Verification of a load run (after the group has caught up), against what an independent computation says:

  * the offline replay (stream.runtime.replay.replay, same partition count) of the input topics' records, read back
    partition by partition in offset order, with the accounts' Kafka timestamps (the workers merge a partition's
    gifts, payouts and creator accounts by the times the records hold, a tombstone by its Kafka timestamp:
    stream.engine.order): live notices byte-identical to the
    replay's (the ones an account update sent included), notice ids unique (no duplicate notice), per-creator
    balances, creator accounts and applied payouts restored from the changelog equal to the replay's;
  * the naive ground truth (load/ground_truth.py, shares no code with the engine), given the same records: the
    changelog state with every open streak timed out and every window closed (end_of_stream)
    gives the same per-creator balances as the ground truth, the same accounts (region and status) and the same
    number of applied payouts, and no payout is one the ground truth cannot decide.
All three input topics are read whether or not this run produced to them: the workers consume all three.
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


def _region_status(account: Any) -> tuple[str, str] | None:
    return None if account is None else (account.region, account.account_status)


def _examples(keys: set) -> str:
    return f"; {len(keys)} differ, e.g. {sorted(keys)[:3]}" if keys else ""


async def verify(cfg: WorkerConfig, policy: Policy) -> dict[str, Any]:
    """Compare what the group committed with the offline replay and the independent ground truth."""
    from load.ground_truth import PartitionInputs, Rec, expected_inputs
    from stream.engine import model
    from stream.engine.order import Input
    from stream.engine.reference import Outputs, PartitionEngine
    from stream.kafka.routing import PartitionCache
    from stream.kafka.session_io import read_topic
    from stream.runtime.replay import AccountRecord, Session, replay
    from stream.state.changelog import restore_state

    started = time.monotonic()
    t = cfg.topics
    per_gifts = await read_topic(cfg, t.gifts)
    per_payouts = await read_topic(cfg, t.payouts)
    per_accounts = await read_topic(cfg, t.accounts)
    partitions = len(per_gifts)

    def flat(per_partition: dict[int, list]) -> list:
        # Partition by partition in offset order: each partition's subsequence is exactly what its worker saw (the
        # replay routes each record by its key again, as the harness's producer did).
        return [m for p in sorted(per_partition) for m in per_partition[p]]

    gifts, payouts, accounts = flat(per_gifts), flat(per_payouts), flat(per_accounts)
    session = Session([m.value or b"" for m in gifts], [m.value or b"" for m in payouts],
                      [AccountRecord(m.key, m.value, m.timestamp) for m in accounts])
    # The offline side runs the Python reference engine: the live workers run the compiled one by default, so
    # this also checks one implementation against the other.
    offline = replay(session, policy, partitions=partitions, engine="python", source=t.gifts,
                     topics={Input.PAYOUTS: t.payouts, Input.ACCOUNTS: t.accounts})
    checks: list[Check] = []

    live_notices = [m.value for ms in (await read_topic(cfg, t.notices)).values() for m in ms]
    want_notices = [model.encode(n) for n in offline.outputs.notices]
    decoded = [model.decode_notice(n) for n in live_notices]
    ids = [n.notice_id for n in decoded]
    dup = len(ids) - len(set(ids))
    same = sorted(live_notices) == sorted(want_notices)
    by_account = sum(n.trigger == "account" for n in decoded)
    apart = "" if same else _notices_apart(live_notices, want_notices)
    checks.append(Check("notices equal the offline replay's (byte for byte)", same,
                        f"{len(live_notices):,} live ({by_account:,} sent by an account update), "
                        f"{len(want_notices):,} offline{apart}"))
    checks.append(Check("no duplicate notice (unique notice ids)", dup == 0,
                        f"{len(set(ids)):,} unique ids, {dup:,} duplicates"))

    changelog = await read_topic(cfg, t.changelog)
    live_state: dict[str, int] = {}
    live_accounts: dict[str, Any] = {}
    live_payouts: set[str] = set()
    closed_balances: dict[str, int] = {}
    for p, msgs in changelog.items():
        state, _ = restore_state((m.key, m.value) for m in msgs)
        live_state.update({cid: s.balance for cid, s in state.creators.items()})
        live_accounts.update(state.accounts)
        live_payouts |= state.payouts_seen
        engine = PartitionEngine(policy, p, state, t.gifts, partitions=partitions, owners=PartitionCache(partitions))
        engine.end_of_stream(Outputs())  # time out open streaks, as the ground truth counts them
        closed_balances.update({cid: s.balance for cid, s in engine.state.creators.items()})
    states = [e.state for e in offline.engines.values()]
    want_balances = {cid: s.balance for st in states for cid, s in st.creators.items()}
    diff = {c for c in live_state.keys() | want_balances.keys() if live_state.get(c, 0) != want_balances.get(c, 0)}
    checks.append(Check("changelog balances equal the offline replay's", not diff,
                        f"{len(live_state):,} creators, {sum(live_state.values()) // 1000:,} diamonds"
                        + _examples(diff)))

    inputs = {p: PartitionInputs() for p in range(partitions)}
    for per_partition, field in ((per_gifts, "gifts"), (per_payouts, "payouts"), (per_accounts, "accounts")):
        for p, msgs in per_partition.items():
            getattr(inputs.setdefault(p, PartitionInputs()), field).extend(
                Rec(m.value, m.timestamp, m.key) for m in msgs)
    truth = expected_inputs(inputs, partitions, truth_rules(policy))

    want_accounts = {cid: a for st in states for cid, a in st.accounts.items()}
    diff = {c for c in live_accounts.keys() | want_accounts.keys() if live_accounts.get(c) != want_accounts.get(c)}
    truth_diff = {c for c in live_accounts.keys() | truth["accounts"].keys()
                  if _region_status(live_accounts.get(c)) != truth["accounts"].get(c)}
    statuses: dict[str, int] = {}
    for a in live_accounts.values():
        statuses[a.account_status] = statuses.get(a.account_status, 0) + 1
    checks.append(Check("changelog accounts equal the offline replay's (and the ground truth's region and status)",
                        not diff and not truth_diff,
                        f"{len(live_accounts):,} accounts {dict(sorted(statuses.items()))} from {len(accounts):,} "
                        f"records" + _examples(diff) + _examples(truth_diff)))

    want_payouts = {pid for st in states for pid in st.payouts_seen}
    diff = live_payouts ^ want_payouts
    undecided = truth["payouts_undecided"]
    checks.append(Check("payouts applied equal the offline replay's and the ground truth's",
                        not diff and len(live_payouts) == truth["payouts"] and not undecided,
                        f"{len(live_payouts):,} applied of {len(payouts):,} records (ground truth: "
                        f"{truth['payouts']:,} applied, {truth['payouts_refused']:,} refused, "
                        f"{truth['payout_duplicates']:,} repeated, {len(undecided):,} undecided"
                        + (f", e.g. {undecided[:3]}" if undecided else "") + ")" + _examples(diff)))

    truth_b = {c: b for c, b in truth["balances"].items() if b}
    live_b = {c: b for c, b in closed_balances.items() if b}
    diff = {c for c in truth_b.keys() | live_b.keys() if truth_b.get(c) != live_b.get(c)}
    checks.append(Check("balances (streaks timed out) equal the independent ground truth", not diff,
                        f"{len(truth_b):,} creators, {sum(truth_b.values()) // 1000:,} diamonds, "
                        f"{truth['accepted']:,} accepted events" + _examples(diff)))
    return {"passed": all(c.passed for c in checks), "checks": [asdict(c) for c in checks],
            "records": len(gifts), "payouts": len(payouts), "account_records": len(accounts),
            "partitions": partitions, "seconds": round(time.monotonic() - started, 2)}


def _notices_apart(live: list[bytes], want: list[bytes]) -> str:
    """Where the live notices and the replay's part, for the report: the ids only one side has, and those both
    have with other bytes (a few of each)."""
    from stream.engine import model

    mine = {model.decode_notice(n).notice_id: n for n in live}
    theirs = {model.decode_notice(w).notice_id: w for w in want}
    only_live = sorted(mine.keys() - theirs.keys())[:5]
    only_replay = sorted(theirs.keys() - mine.keys())[:5]
    changed = sorted(i for i in mine.keys() & theirs.keys() if mine[i] != theirs[i])[:5]
    return f"; only live: {only_live}, only offline: {only_replay}, different bytes: {changed}"
