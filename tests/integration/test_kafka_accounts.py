"""Accounts, payouts and gifts on the real broker, in one order: a payout waiting beside the gift that credits its
money, a rebuild by a new group, and the offline replay of the same three inputs all give the same bytes."""

from __future__ import annotations

import uuid
from collections import Counter
from dataclasses import replace

import orjson
import pytest

from stream.config import Topics, WorkerConfig
from stream.engine import model
from stream.engine.order import Input
from stream.engine.policy import load_policy
from stream.kafka.recording import read_recording
from stream.kafka.session_files import AccountRecord
from stream.kafka.session_io import produce_session, read_topic, record
from stream.kafka.topics import create_topics, delete_topics
from stream.runtime.replay import ReplayResult, Session, replay, replay_recording
from stream.state.changelog import restore_state
from tests.support.events import T0
from tests.support.kafka_checks import PARTITIONS, run_until_drained

pytestmark = pytest.mark.kafka


def gift(i: int, creator: str, coins: int, ts: int) -> bytes:
    return orjson.dumps({"event_id": f"e{i}", "room_id": "r", "creator_id": creator, "sender_id": "s", "gift_id": 1,
                         "gift_type": 2, "diamond_count": coins, "repeat_count": 1, "repeat_end": False, "ts": ts})


def payout(pid: str, creator: str, milli: int, ts: int) -> bytes:
    return orjson.dumps({"payout_id": pid, "creator_id": creator, "milli_diamonds": milli, "ts": ts})


def account(creator: str, status: str, ts: int, region: str = "US", method: str = "paypal", age: int = 30) -> bytes:
    return orjson.dumps({"creator_id": creator, "region": region, "account_status": status, "payout_method": method,
                         "age": age, "updated_ts": ts})


def three_inputs(creators: int = 40) -> Session:
    """Per creator: two 2,000-coin gifts (US standard threshold $10 = 2,000 diamonds), a payout of the first
    one's money between them; every third creator suspended at first and verified after its first gift, every
    fifth on a bank account in DE, one closed."""
    gifts, payouts, accounts = [], [], []
    for k in range(creators):
        c, t = f"c{k}", T0 + 1000 * k
        if k % 3 == 0:
            accounts.append(AccountRecord(c.encode(), account(c, "suspended", t)))
            accounts.append(AccountRecord(c.encode(), account(c, "verified", t + 150)))
        elif k % 5 == 0:
            accounts.append(AccountRecord(c.encode(), account(c, "standard", t, "DE", "bank")))
        if k == 1:  # closed between its payout and its second gift (in its input's time order)
            accounts.append(AccountRecord(c.encode(), None, t + 250))
        gifts.append(gift(2 * k, c, 2_000, t + 100))
        payouts.append(payout(f"p{k}", c, 2_000_000, t + 200))
        gifts.append(gift(2 * k + 1, c, 2_000, t + 300))
    return Session(gifts, payouts, accounts)


async def produce(cfg: WorkerConfig, s: Session) -> None:
    """All three inputs before any worker runs: a worker then finds them all waiting."""
    await produce_session([a.value for a in s.accounts], cfg, kind=Input.ACCOUNTS, keys=[a.key for a in s.accounts],
                          times=[a.ts for a in s.accounts])
    await produce_session(s.payouts, cfg, kind=Input.PAYOUTS)
    await produce_session(s.gifts, cfg)


async def outputs(cfg: WorkerConfig) -> dict[str, list[bytes]]:
    t = cfg.topics
    got = {name: sorted(m.value for ms in (await read_topic(cfg, topic)).values() for m in ms)
           for name, topic in (("notices", t.notices), ("dlq", t.dlq), ("totals", t.window_totals))}
    balances = {}
    for msgs in (await read_topic(cfg, t.changelog)).values():
        state, _ = restore_state((m.key, m.value) for m in msgs)
        balances.update({cid: (c.balance, c.crossings) for cid, c in state.creators.items()})
    got["balances"] = sorted(orjson.dumps([cid, *v]) for cid, v in balances.items())
    return got


def offline(cfg: WorkerConfig, s: Session) -> dict[str, list[bytes]]:
    return outputs_of(replay(s, load_policy(), partitions=PARTITIONS, source=cfg.topics.gifts,
                             topics={Input.PAYOUTS: cfg.topics.payouts, Input.ACCOUNTS: cfg.topics.accounts}))


def outputs_of(r: ReplayResult) -> dict[str, list[bytes]]:
    balances = {cid: (c.balance, c.crossings) for e in r.engines.values() for cid, c in e.state.creators.items()}
    return {"notices": sorted(model.encode(n) for n in r.outputs.notices),
            "dlq": sorted(model.encode(d) for d in r.outputs.dead_letters),
            "totals": sorted(model.encode(w) for w in r.outputs.window_totals),
            "balances": sorted(orjson.dumps([cid, *v]) for cid, v in balances.items())}


async def test_a_gift_and_the_payout_of_its_money_both_waiting_at_start(cfg):
    # Seen before the merge: the batch applied its payout first: "payout p1 of 2000000 exceeds the balance 0".
    await produce_session([gift(1, "c-w", 2_000, T0)], cfg)
    await produce_session([payout("p1", "c-w", 2_000_000, T0 + 1)], cfg, kind=Input.PAYOUTS)
    await run_until_drained(cfg)
    got = await outputs(cfg)
    assert got["dlq"] == []
    assert [model.decode_notice(n).notice_id for n in got["notices"]] == ["pn-c-w-1"]
    assert got["balances"] == [orjson.dumps(["c-w", 0, 1])]


async def test_a_rebuild_by_a_new_group_and_the_offline_replay_give_the_live_runs_bytes(cfg, tmp_path):
    # Seen before the merge: a new group over the same topics rejected every payout (a balance of 9,000,000
    # instead of 1,999,000) and missed a notice.
    s = three_inputs()
    await produce(cfg, s)
    await run_until_drained(cfg)
    live = await outputs(cfg)
    suffix = uuid.uuid4().hex[:8]
    t = cfg.topics
    rebuild = replace(cfg, group_id=f"{cfg.group_id}-rebuild", topics=Topics(
        gifts=t.gifts, payouts=t.payouts, accounts=t.accounts,
        **{k: f"{v}-{suffix}" for k, v in vars(t).items() if k not in ("gifts", "payouts", "accounts")}))
    await create_topics(rebuild, PARTITIONS)
    try:
        await run_until_drained(rebuild)
        again = await outputs(rebuild)
    finally:
        await delete_topics(replace(rebuild, topics=replace(rebuild.topics, gifts="-", payouts="-", accounts="-")))
    want = offline(cfg, s)
    await record(cfg, tmp_path / "rec.jsonl.gz")  # `giftstream record`, replayed as `giftstream replay FILE`
    r = replay_recording(read_recording(tmp_path / "rec.jsonl.gz"), load_policy())
    from_recording = outputs_of(r)
    for name in ("notices", "dlq", "totals", "balances"):
        assert live[name] == want[name], name
        assert again[name] == want[name], name
        assert from_recording[name] == want[name], name
    notices = [model.decode_notice(n) for n in live["notices"]]
    assert Counter(n.trigger for n in notices)["account"] > 0  # the suspended ones, notified once verified
    assert not [n for n in notices if n.creator_id == "c1" and n.crossing_seq > 1]  # closed: no second notice
    assert all(n.net_cents == n.payable_cents - n.service_fee_cents - n.method_fee_cents for n in notices)
