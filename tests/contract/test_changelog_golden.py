"""The changelog's bytes, pinned: golden/changelog.json holds a small fixed session (its policy, its batches of
gift events and payouts) and, after each batch, the exact changelog records it must produce, then the exact
checkpoint body of the state it ends with and that state. Both encoders (the reference engine's changes through
stream.state.changelog.encode_changes, the compiled engine's take_changelog and its record batches) must write
those bytes, both checkpoint bodies (state_body, the native snapshot) too, and both decoders (restore_state and
the native ChangelogRestore) must read them back to the same state. The schema itself is
stream.state.changelog_schema.

Within one drain (and in a body) the order of the records is not part of the format (each key is written once,
and the engines list changed keys in hash order): records are compared sorted by key. Keys are written as text
(they are UTF-8), values as hex.

The fixture is made from the encoders of the day, on purpose only (a format change is a compatibility decision:
old changelogs and checkpoints must still be read):

    python -m tests.contract.test_changelog_golden --write
"""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

import msgspec
import pytest

from stream.engine import model
from stream.engine.native import NativePartitionEngine, native_available
from stream.engine.policy import parse_policy
from stream.engine.reference import Outputs, PartitionEngine
from stream.state import changelog_schema as schema
from stream.state.changelog import ChangelogWriter, StateRestore, body_records, engine_body, restore_state, state_body
from stream.state.tables import CreatorState, PartitionState, Streak

GOLDEN = Path(__file__).resolve().parent / "golden" / "changelog.json"
T0 = 1_764_000_000_000  # a whole hour

POLICY = {
    "policy_version": "golden-1",
    "account_statuses": {"verified": {"eligible": True}, "standard": {"eligible": True},
                         "restricted": {"eligible": False}},
    "accounts": {"missing_status": "standard", "default_region": "US"},
    "defaults": {"diamonds_per_coin": "1", "diamond_value_micro_usd": 5000, "threshold_cents": 1000,
                 "daily_cap_cents": 100000, "payout_method": "paypal", "eligible": True,
                 "fees": {"paypal": {"fixed_cents": 0, "rate_bps": 290}, "bank": {"fixed_cents": 25, "rate_bps": 0}}},
    "regions": {"US": {}, "ID": {"diamonds_per_coin": "1/2", "threshold_cents": 100}, "TR": {"eligible": False}},
    "windows": {"tumbling": ["10m"], "grace": "1m"},
    "streaks": {"timeout": "30s"},
    "limits": {"dedupe_horizon": "3m", "max_future": "1h", "max_record_bytes": 4096},
}
LONG_CREATOR = "creator-with-a-rather-long-id-0123456789"  # 40 bytes: a str8, not a fixstr


def _gift(eid: str, creator: str, ts: int, *, region: str | None = "US", diamonds: int = 5, repeat: int = 1,
          streak: bool = False, end: bool = False, room: str = "r1", sender: str = "s1", gift: int = 5655,
          group: str | None = None) -> str:
    rec = {"event_id": eid, "room_id": room, "creator_id": creator, "sender_id": sender, "gift_id": gift,
           "gift_type": 1 if streak else 0, "diamond_count": diamonds, "repeat_count": repeat, "repeat_end": end,
           "ts": ts}
    if region is not None:  # None: the record names no region
        rec["region"] = region
    if group is not None:
        rec["group_id"] = group
    return json.dumps(rec, separators=(",", ":"))


def _payout(pid: str, creator: str, milli: int) -> str:
    return json.dumps({"payout_id": pid, "creator_id": creator, "milli_diamonds": milli, "ts": T0},
                      separators=(",", ":"))


def _account(creator: str, region: str, status: str, age: int, ts: int, method: str = "paypal") -> list:
    """A creator-accounts record as the fixture holds it: [key, value, record timestamp]."""
    return [creator, json.dumps({"creator_id": creator, "region": region, "account_status": status,
                                 "payout_method": method, "age": age, "updated_ts": ts}, separators=(",", ":")), ts]


def _closing(creator: str, ts: int) -> list:
    """A tombstone of creator-accounts: [key, None, record timestamp]."""
    return [creator, None, ts]


def _session() -> list[dict]:
    """The batches: each a list of events, then creator-accounts records, then payouts; the changelog is drained
    after each."""
    s = 1000
    step1 = [
        _gift("1", "c1", T0 + 1 * s, diamonds=2500),  # crosses the US threshold: crossings 1, above
        _gift("2", "7000000000000000001", T0 + 2 * s, region="ID", diamonds=3, repeat=7),
        _gift("e-3", LONG_CREATOR, T0 + 3 * s, region="TR"),
        _gift("4", "big", T0 + 4 * s, diamonds=10_000_000, repeat=1_000_000),  # 10^16 milli: a uint64
        _gift("5", "c2", T0 + 5 * s, room="r2", sender="s9", gift=77, group="g1", streak=True, repeat=1),
        _gift("6", "c2", T0 + 6 * s, room="r2", sender="s9", gift=77, group="g1", streak=True, repeat=4),
        _gift("7", "c2", T0 + 7 * s, room="r3", sender="s3", gift=78, streak=True, repeat=2),  # no group
        _gift("8", "c2", T0 + 8 * s, room="r3", sender="s3", gift=78, streak=True, repeat=5, end=True),
        _gift("x" * 64, "c1", T0 + 9 * s),  # a 64-byte id: a str8 in its chunk
        *(_gift(str(100 + i), "c3" if i % 2 else "c1", T0 + (10 + i) * s, diamonds=i + 1) for i in range(12)),
    ]  # 21 ids in bucket T0: an array16
    step2 = [
        _gift("1", "c1", T0 + 30 * s),  # a duplicate: changes nothing
        _gift("200", "c3", T0 + 40 * s),  # bucket T0 again: its second chunk
        _gift("201", "c2", T0 + 62 * s, room="r2", sender="s9", gift=77, group="g1", streak=True, repeat=6,
              end=True),  # g1 ends: closed, kept (it has a group)
        _gift("202", "7000000000000000001", T0 + 63 * s, region="ID"),
        _gift("203", "c2", T0 + 64 * s, region=None, diamonds=3000),  # priced in its account's US; restricted
        _gift("204", "c6", T0 + 65 * s, region=None),  # no account, no region: the default region's (US)
    ]
    step3 = [  # 11 min on: the first window closes (pane tombstones), buckets T0 and T0+1m expire
        _gift("300", "c1", T0 + 660 * s),
        _gift("301", "c4", T0 + 661 * s, room="r4", sender="s4", gift=79, group="g2", streak=True, repeat=2),
        _gift("302", "c4", T0 + 662 * s, room="r5", sender="s5", gift=80, group="g3", streak=True, repeat=3,
              end=True),
        _gift("303", "c3", T0 + 663 * s, diamonds=2),
        _gift("304", "c5", T0 + 664 * s, region=None, diamonds=7),  # priced in its account's region, ID
    ]
    accounts1 = [
        _account("c2", "US", "restricted", 30, T0 + 20 * s),  # a balance, no notice while restricted
        _account("c5", "ID", "verified", 21, T0 + 21 * s),  # no creator state yet
    ]
    accounts2 = [
        _account("c2", "US", "verified", 30, T0 + 66 * s),  # eligible above the threshold: the notice goes now
        _closing("c1", T0 + 67 * s),  # closed without an account record: its region, no method, age 0
    ]
    accounts3 = [
        _closing("c2", T0 + 665 * s),  # keeps the region, method and age
        _account(LONG_CREATOR, "US", "standard", 150, T0 + 666 * s, method="bank"),  # moves it from TR to US
    ]
    return [
        {"events": [], "accounts": [], "payouts": []},  # nothing yet: the cursor record with no watermark
        # c1 is paid under its threshold: its low goes down with it, re-armed
        {"events": step1, "accounts": accounts1, "payouts": [_payout("p-1", "c1", 1_000_000)]},
        # big's low goes down, still above the threshold: not re-armed
        {"events": step2, "accounts": accounts2,
         "payouts": [_payout("9000000000000000000", "big", 2**40), _payout("p-1", "c1", 1)]},
        # c2, closed (no threshold), is paid under the threshold: its low goes down, nothing re-arms yet
        {"events": step3, "accounts": accounts3,
         "payouts": [_payout("p-" + "y" * 62, "c3", 1), _payout("p-c2", "c2", 2_000_000)]},
        # c2 verified again: re-armed at the account record (its balance is under the threshold: no notice)
        {"events": [], "accounts": [_account("c2", "US", "verified", 30, T0 + 668 * s)], "payouts": []},
        {"events": [_gift("400", "c2", T0 + 669 * s, diamonds=1000)], "accounts": [], "payouts": []},  # notice 2
    ]


# ---------------------------------------------------------------- reading and writing the fixture

Record = tuple[bytes, bytes | None]


def _to_json(records: list[Record]) -> list[list]:
    return [[k.decode(), None if v is None else v.hex()] for k, v in records]


def _from_json(rows: list[list]) -> list[Record]:
    return [(k.encode(), None if v is None else bytes.fromhex(v)) for k, v in rows]


def _sorted(records: list[Record]) -> list[Record]:
    keys = [k for k, _ in records]
    assert len(set(keys)) == len(keys), "a key written twice in one drain"
    return sorted(records, key=lambda r: r[0])


def _frame(records: list[Record]) -> bytes:
    """Records as a checkpoint body: [u32 key length][key][u32 value length][value], big-endian."""
    return b"".join(len(k).to_bytes(4, "big") + k + len(v).to_bytes(4, "big") + v for k, v in records)


def _state_view(st: PartitionState) -> dict:
    """The stored part of a state, as plain JSON values in a fixed order (the derived parts follow from it)."""
    return {
        "watermark": st.watermark, "close_cursor": st.close_cursor,
        "creators": {cid: [*msgspec.structs.astuple(c)[:-1], {str(p): t for p, t in sorted(c.panes.items())}]
                     for cid, c in sorted(st.creators.items())},
        "streaks": {k: list(msgspec.structs.astuple(s)) for k, s in sorted(st.streaks.items())},
        "seen_buckets": {str(b): ids for b, ids in sorted(st.seen_buckets.items())},
        "payouts_seen": sorted(st.payouts_seen),
        "accounts": {cid: list(msgspec.structs.astuple(a)) for cid, a in sorted(st.accounts.items())},
    }


def _run(engine, session: list[dict], drain, out: Outputs | None = None) -> list[list[Record]]:
    """The session through one engine; the changelog records drained after each step."""
    out, drains, offset = out if out is not None else Outputs(), [], 0
    for step in session:
        raws = [e.encode() for e in step["events"]]
        engine.process(raws, list(range(offset, offset + len(raws))), out)
        offset += len(raws)
        for key, value, ts in step["accounts"]:
            raw = None if value is None else value.encode()
            engine.apply_accounts([model.decode_account(key.encode(), raw, ts)], [raw], [0], out)
        for p in step["payouts"]:
            raw = p.encode()
            engine.apply_payouts([model.decode_payout(raw)], [raw], [0], out)
        drains.append(drain(engine))
    return drains


def _dumps(value: object, indent: str = "") -> str:
    """JSON with one line per record, event or list of scalars (so a format change shows as a readable diff)."""
    inner = indent + " "
    if isinstance(value, dict) and value:
        items = [f"{inner}{json.dumps(k)}: {_dumps(v, inner)}" for k, v in value.items()]
        return "{\n" + ",\n".join(items) + "\n" + indent + "}"
    if isinstance(value, list) and value and (all(isinstance(v, str) and len(v) > 40 for v in value)
                                              or any(isinstance(v, (dict, list)) for v in value)):
        return "[\n" + ",\n".join(inner + _dumps(v, inner) for v in value) + "\n" + indent + "]"
    return json.dumps(value)


def _policy(golden: dict):
    return parse_policy(golden["policy"], "<golden changelog policy>")


def generate() -> dict:
    policy = parse_policy(POLICY, "<golden changelog policy>")
    session = _session()
    engine, writer = PartitionEngine(policy), ChangelogWriter()
    drains = _run(engine, session, writer.drain)
    body = state_body(engine.state, writer.chunks)
    legacy = msgspec.msgpack.encode({"creator_id": "c9", "region": "US", "diamond_count": 5, "count": 3,
                                     "credited": 3, "last_ts": T0, "last_event_id": "e9", "open": False})
    legacy_creator = msgspec.msgpack.encode(("US", 2_500_000, 3_000_000, 500_000, 2, True))  # before `low`
    return {
        "about": "The changelog's exact bytes for a fixed session: see tests/contract/test_changelog_golden.py.",
        "regenerate": "python -m tests.contract.test_changelog_golden --write",
        "policy": POLICY,
        "steps": [{**step, "records": _to_json(_sorted(d))} for step, d in zip(session, drains, strict=True)],
        "chunks": {str(b): starts for b, starts in sorted(writer.chunks.items())},
        "body": {"records": _to_json(_sorted(body_records(body))),
                 "sorted_hex": _frame(_sorted(body_records(body))).hex()},
        "state": _state_view(engine.state),
        "legacy_streak": {"key": "s:r9\x1fs9\x1f1\x1fg9", "value": legacy.hex()},
        "legacy_creator": {"key": "c:c8", "value": legacy_creator.hex()},
    }


# ---------------------------------------------------------------- the tests

ENGINES = ["python", "native"]


@pytest.fixture(scope="module")
def golden() -> dict:
    return json.loads(GOLDEN.read_text())


def _engine(kind: str, policy, state: PartitionState | None = None):
    if kind == "native":
        if not native_available():
            pytest.skip("native engine not built")
        return NativePartitionEngine(policy, state=state)
    return PartitionEngine(policy, state=state)


def _all_records(golden: dict) -> list[Record]:
    return [r for step in golden["steps"] for r in _from_json(step["records"])]


def _chunks(golden: dict) -> dict[int, list[int]]:
    return {int(b): starts for b, starts in golden["chunks"].items()}


def test_the_fixture_is_what_the_generator_makes(golden):
    """The session and the bytes in the file are the generator's (a stale generator cannot regenerate it)."""
    assert _dumps(generate()) + "\n" == GOLDEN.read_text()


@pytest.mark.parametrize("kind", ENGINES)
def test_each_drain_writes_the_golden_records(golden, kind):
    """The reference engine's changes (encode_changes) and the native take_changelog, drained by the writer
    (which adds the tombstones of expired dedupe chunks)."""
    engine, writer = _engine(kind, _policy(golden)), ChangelogWriter()
    drains = _run(engine, golden["steps"], writer.drain)
    for i, (step, got) in enumerate(zip(golden["steps"], drains, strict=True)):
        assert _to_json(_sorted(got)) == step["records"], f"step {i}"
    assert writer.chunks == _chunks(golden)


@pytest.mark.parametrize("kind", ENGINES)
def test_the_session_holds_each_account_case(golden, kind):
    """Account records, closings (of an account and of a creator without one), creators without an account, and a
    notice an account record triggers: the fixture's records cover what they change."""
    engine, out = _engine(kind, _policy(golden)), Outputs()
    _run(engine, golden["steps"], ChangelogWriter().drain, out)
    assert [(n.creator_id, n.crossing_seq, n.trigger, n.account_status) for n in out.notices] == [
        ("c1", 1, "gift", "standard"), ("big", 1, "gift", "standard"), ("c2", 1, "account", "verified"),
        ("c2", 2, "gift", "verified")]
    assert not out.dead_letters
    assert (out.stats["accounts"], out.stats["accounts_closed"]) == (5, 2)
    assert out.stats["gifts_without_account"] > 0
    accounts = golden["state"]["accounts"]
    assert accounts["c1"] == ["US", "closed", "", 0, T0 + 67_000]
    closed = dict(_from_json(golden["steps"][3]["records"]))[b"a:c2"]
    assert msgspec.msgpack.decode(closed) == ["US", "closed", "paypal", 30, T0 + 665_000]
    assert accounts["c2"] == ["US", "verified", "paypal", 30, T0 + 668_000]
    assert golden["state"]["creators"][LONG_CREATOR][0] == "US"  # moved from TR by its account


def test_the_session_holds_each_rearm_case(golden):
    """The creator records after each step: a payout lowering `low` with a re-arm (c1) and without (big), a payout
    with no threshold lowering it (c2, closed: not re-armed), the re-arm at an account record, a notice setting low."""
    fields = list(schema.CREATOR_FIELDS)
    above, low, balance = fields.index("above"), fields.index("low"), fields.index("balance")

    def creator(step: int, cid: str) -> list:
        return msgspec.msgpack.decode(dict(_from_json(golden["steps"][step]["records"]))[f"c:{cid}".encode()])

    c1 = creator(1, "c1")
    assert not c1[above] and c1[low] == c1[balance] == 1_541_000
    big = creator(2, "big")
    assert big[above] and big[low] == big[balance] == 10**16 - 2**40
    c2 = creator(3, "c2")
    assert c2[above] and c2[low] == c2[balance] == 1_055_000  # closed: no threshold, not re-armed
    c2 = creator(4, "c2")
    assert not c2[above] and c2[low] == 1_055_000  # verified again: re-armed by the account record
    c2 = creator(5, "c2")
    assert c2[above] and c2[low] == c2[balance] == 2_055_000 and c2[fields.index("crossings")] == 2


@pytest.mark.parametrize("kind", ENGINES)
def test_the_record_batches_hold_the_golden_records(golden, kind):
    """drain_batches: the native engine writes its records straight into Kafka record batches."""
    if not native_available():
        pytest.skip("native engine not built")
    from stream._native import read_record_batches

    engine, writer = _engine(kind, _policy(golden)), ChangelogWriter()

    def drain(e) -> list[Record]:
        got = []
        for batch in writer.drain_batches(e, 300, False):  # small batches: a drain spans several
            for _offsets, values, _ts, keys in read_record_batches(batch._build(), True):
                got.extend(zip(keys, values, strict=True))
        return got

    drains = _run(engine, golden["steps"], drain)
    assert [_to_json(_sorted(d)) for d in drains] == [step["records"] for step in golden["steps"]]


@pytest.mark.parametrize("kind", ENGINES)
def test_the_checkpoint_body_is_the_golden_body(golden, kind):
    """state_body (reference) and the native snapshot: the same framed records (in hash order)."""
    engine, writer = _engine(kind, _policy(golden)), ChangelogWriter()
    _run(engine, golden["steps"], writer.drain)
    body = engine_body(engine, writer)
    records = body_records(body)  # every byte framed: nothing before, between or after the records
    assert _to_json(_sorted(records)) == golden["body"]["records"]
    assert _frame(_sorted(records)).hex() == golden["body"]["sorted_hex"]
    assert len(body) == len(golden["body"]["sorted_hex"]) // 2
    if kind == "python":
        assert body == state_body(engine.state, writer.chunks)


async def _restore(golden: dict, kind: str, source: str):
    policy = _policy(golden)
    restore = StateRestore(lambda st: _engine(kind, policy, st), native=kind == "native")
    if source == "changelog":
        records = _all_records(golden)
        for lo in range(0, len(records), 7):  # in chunks, as the worker's polls bring them
            part = records[lo:lo + 7]
            restore.apply([k for k, _ in part], [v for _, v in part])
    else:
        await restore.apply_body(bytes.fromhex(golden["body"]["sorted_hex"]))
    return await restore.finish()


@pytest.mark.parametrize("source", ["changelog", "body"])
@pytest.mark.parametrize("kind", ENGINES)
def test_both_decoders_read_the_golden_records_back(golden, kind, source):
    """restore_state (reference) and the native ChangelogRestore rebuild the golden state from the changelog
    and from the checkpoint body, with the writer's chunk starts."""
    engine, writer = asyncio.run(_restore(golden, kind, source))
    assert _state_view(engine.state) == golden["state"]
    assert writer.chunks == _chunks(golden)


def test_both_decoders_rebuild_the_same_derived_state(golden):
    """Beyond the stored parts: the dedupe set, which closed streaks expire when, which creators hold a pane."""
    if not native_available():
        pytest.skip("native engine not built")
    py, _ = asyncio.run(_restore(golden, "python", "changelog"))
    native, _ = asyncio.run(_restore(golden, "native", "changelog"))
    assert py.state == native.state
    state, _ = restore_state(_all_records(golden))
    assert state == py.state


@pytest.mark.parametrize("kind", ENGINES)
def test_both_decoders_read_the_older_streak_form(golden, kind):
    """Streaks written before the array form: a map of the field names."""
    key, value = golden["legacy_streak"]["key"].encode(), bytes.fromhex(golden["legacy_streak"]["value"])
    policy = _policy(golden)

    async def restore():
        r = StateRestore(lambda st: _engine(kind, policy, st), native=kind == "native")
        records = [(b"c:c9", msgspec.msgpack.encode(("US", 0, 0, 0, 0, False))), (key, value)]
        r.apply([k for k, _ in records], [v for _, v in records])
        return await r.finish()

    engine, _ = asyncio.run(restore())
    assert engine.state.streaks == {key[2:].decode(): Streak("c9", "US", 5, 3, 3, T0, "e9", False)}


@pytest.mark.parametrize("kind", ENGINES)
def test_both_decoders_read_the_older_creator_form(golden, kind):
    """Creator records written before `low`: six fields, and the low is the balance (CREATOR_FALLBACKS)."""
    key, value = golden["legacy_creator"]["key"].encode(), bytes.fromhex(golden["legacy_creator"]["value"])
    assert schema.CREATOR_FALLBACKS == {"low": "balance"}

    async def restore():
        r = StateRestore(lambda st: _engine(kind, _policy(golden), st), native=kind == "native")
        r.apply([key], [value])
        return await r.finish()

    engine, _ = asyncio.run(restore())
    assert engine.state.creators == {"c8": CreatorState("US", 2_500_000, 3_000_000, 500_000, 2, True, 2_500_000)}


if __name__ == "__main__":
    if sys.argv[1:] != ["--write"]:
        sys.exit(__doc__)
    GOLDEN.write_text(_dumps(generate()) + "\n")
    print(f"wrote {GOLDEN}")
