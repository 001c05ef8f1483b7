"""Hostile input found by an outside tester: deep nesting, repeated keys, ids outside the contract, records
on a partition that does not own their creator. Each becomes a dead letter with its reason, never a crash,
never a credit, and both engines decide the same."""

from __future__ import annotations

import orjson
import pytest

from stream.engine import model
from stream.engine.native import make_engine
from stream.kafka.routing import PartitionCache, partition_for
from stream.runtime.replay import replay
from tests.support.events import T0, gift

pytestmark = pytest.mark.usefixtures("both_engines")  # every test runs on both engines


def nested(depth: int, **fields) -> bytes:
    """A valid gift whose unknown field "x" makes the record `depth` levels deep (the object itself is 1)."""
    assert depth >= 2
    return gift(**fields)[:-1] + b',"x":' + b"[" * (depth - 1) + b"]" * (depth - 1) + b"}"


def run(policy, records: list[bytes], **engine_args):
    eng = make_engine(policy, **engine_args)
    out = eng.process(records, list(range(len(records))))
    return eng, out


def balance(eng, creator: str = "c1") -> int:
    c = eng.creator(creator)
    return c.balance if c is not None else 0


# ------------------------------------------------------------------------------------- 1. nesting depth

BOMB = b'{"x":' + b"[" * 997 + b"]" * 997 + b"}"  # 2 KB; msgspec raised RecursionError on it


def test_deep_records_are_dead_letters_and_the_rest_of_the_batch_counts(policy):
    assert model.MAX_JSON_DEPTH == 32
    records = [gift(), BOMB, nested(33), gift(), nested(32), nested(150)]
    eng, out = run(policy, records)
    assert [(d.reason, d.offset) for d in out.dead_letters] == [("too_deep", 1), ("too_deep", 2), ("too_deep", 5)]
    assert balance(eng) == 3 * 5_000  # before, after, and the depth-32 gift
    assert out.stats["rejected.too_deep"] == 3


def test_no_decoder_lets_a_deep_record_escape_as_an_exception(policy):
    deep_payout = b'{"payout_id":"p1","creator_id":"c1","milli_diamonds":1,"ts":1,"x":' + b"[" * 997 + b"]" * 997 + b"}"
    assert model.decode_event(BOMB)[0] == model.TOO_DEEP
    assert [type(d) for d in model.decode_events([gift(), BOMB], policy.max_record_bytes)] == \
        [model.GiftEvent, tuple]
    assert model.decode_payout(deep_payout)[0] == model.TOO_DEEP
    assert type(model.decode_payout(deep_payout[:-2000] + b"}")) is model.Payout
    result = replay([gift(), BOMB, gift()], policy, partitions=2, batch_size=2, final=True)
    assert [d.reason for d in result.outputs.dead_letters] == ["too_deep"]
    assert result.summary["credits"] == 2


# ------------------------------------------------------------------------------------- 2. repeated keys

def with_field(raw: bytes, text: bytes) -> bytes:
    return raw[:-1] + b"," + text + b"}"


def test_a_repeated_key_at_any_depth_is_a_dead_letter(policy):
    records = [
        gift(),
        with_field(gift(diamond_count=1), b'"diamond_count":9999999'),  # msgspec kept the last one
        with_field(gift(), b'"x":{"a":1,"a":2}'),  # nested, unknown: serde never looked
        with_field(gift(), b'"x":[{"a":1,"\\u0061":2}]'),  # the same key once unescaped
        with_field(gift(), b'"diamond_\\u0063ount":5'),  # a known key, spelled with an escape
        with_field(gift(), b'"x":[{"a":1},{"a":2}],"y":{"a":{"a":1}}'),  # same names, different objects: fine
    ]
    eng, out = run(policy, records)
    assert [(d.reason, d.offset) for d in out.dead_letters] == [("duplicate_key", i) for i in (1, 2, 3, 4)]
    assert balance(eng) == 2 * 5_000
    raw = b'{"payout_id":"p1","creator_id":"c1","milli_diamonds":1,"ts":1,"milli_diamonds":5000}'
    assert model.decode_payout(raw)[0] == model.DUPLICATE_KEY
    eng.apply_payouts([model.decode_payout(raw)], [raw], [7], out)
    assert out.dead_letters[-1].reason == "duplicate_key" and balance(eng) == 2 * 5_000


def test_the_first_violation_in_document_order_is_the_reason(policy):
    deep = b'"d":' + b"[" * 40 + b"]" * 40
    dup = b'"x":{"a":1,"a":2}'
    records = [with_field(gift(), deep + b"," + dup), with_field(gift(), dup + b"," + deep),
               with_field(gift(), deep)[:-1] + b",}",  # malformed after the deep part: not JSON at all
               with_field(gift(), dup)[:-1] + b"]"]
    _, out = run(policy, records)
    assert [d.reason for d in out.dead_letters] == ["too_deep", "duplicate_key", "not_json", "not_json"]


# ------------------------------------------------------------------------------------- 3. ids

BAD_IDS = ["a\x1fb", "a\n", "a b", "é", "x" * 65, "a.b", ""]


def test_ids_outside_the_pattern_are_dead_letters_and_streaks_cannot_merge(policy):
    # Joined with U+001F these two streaks had one key: c2's units were credited to c1.
    one = [gift(gift_type=1, room_id="a\x1fb", sender_id="c", creator_id="c1", group_id="g", repeat_count=n,
                repeat_end=n == 3, ts=T0 + n) for n in (1, 2, 3)]
    two = [gift(gift_type=1, room_id="a", sender_id="b\x1fc", creator_id="c2", group_id="g", repeat_count=n,
                repeat_end=n == 9, ts=T0 + n) for n in (5, 9)]
    bad = [gift(**{field: value}) for field in ("event_id", "room_id", "creator_id", "sender_id")
           for value in BAD_IDS] + [gift(group_id=v) for v in BAD_IDS if v]
    good = [gift(group_id=""), gift(event_id="A-z_09", room_id="x" * 64, sender_id="-", creator_id="c1")]
    eng, out = run(policy, [*one, *two, *bad, *good])
    assert [d.reason for d in out.dead_letters] == ["invalid_value"] * (len(one) + len(two) + len(bad))
    assert balance(eng, "c2") == 0 and balance(eng, "c1") == 2 * 5_000  # only the two good gifts
    raw = b'{"payout_id":"p\\u001f1","creator_id":"c1","milli_diamonds":1,"ts":1}'
    assert model.decode_payout(raw)[0] == model.INVALID_VALUE


def test_the_schemas_hold_every_id_to_the_models_pattern():
    import json
    from pathlib import Path

    schema = Path(__file__).resolve().parents[2] / "schemas/gift-event.schema.json"
    props = json.loads(schema.read_text())["properties"]
    for field in ("event_id", "room_id", "creator_id", "sender_id"):
        assert props[field]["pattern"] == model.ID_PATTERN, field
    assert props["group_id"]["pattern"] == model.GROUP_ID_PATTERN
    accounts = Path(__file__).resolve().parents[2] / "schemas/creator-account.schema.json"
    assert json.loads(accounts.read_text())["properties"]["creator_id"]["pattern"] == model.ID_PATTERN


def test_hostile_account_records_are_dead_letters(policy):
    """The account decoder holds records to the same structure and id rules as the gift decoder."""
    from tests.support.events import account

    records = [account()[:-1] + b',"x":' + b"[" * 40 + b"]" * 40 + b"}",  # too deep
               account()[:-1] + b',"age":31}',  # a key twice: msgspec would keep the last
               account(creator_id="a\x1fb"), account(creator_id="a\n"), account(creator_id="x" * 65),
               account(region="US", payout_method="x" * 33)]
    reasons = ["too_deep", "duplicate_key", "invalid_value", "invalid_value", "invalid_value", "invalid_value"]
    eng = make_engine(policy)
    keys = [b"c1", b"c1", b"a\x1fb", b"a\n", b"x" * 65, b"c1"]
    out = eng.process([], None)
    eng.apply_accounts([model.decode_account(k, r, T0) for k, r in zip(keys, records, strict=True)], records, None, out)
    assert [d.reason for d in out.dead_letters] == reasons
    assert eng.account("c1") is None and not out.stats.get("accounts")


# ------------------------------------------------------------------------------------- 4. partition ownership

def owned_by(partition: int, partitions: int) -> str:
    return next(c for c in (f"c{i}" for i in range(1000)) if partition_for(c.encode(), partitions) == partition)


def test_nothing_is_credited_or_paid_on_a_partition_that_does_not_own_the_creator(policy):
    mine, theirs = owned_by(0, 4), owned_by(1, 4)
    records = [gift(creator_id=mine), gift(creator_id=theirs, diamond_count=5_000),  # would cross the threshold
               gift(creator_id=theirs, gift_type=1, group_id="g", repeat_end=True)]
    eng, out = run(policy, records, partition=0, partitions=4, owners=PartitionCache(4))
    assert [(d.reason, d.offset) for d in out.dead_letters] == [("wrong_partition", 1), ("wrong_partition", 2)]
    assert out.dead_letters[0].detail == f"creator {theirs} belongs to partition 1 of 4, not 0"
    assert balance(eng, mine) == 5_000 and eng.creator(theirs) is None and not out.notices
    raw = orjson.dumps({"payout_id": "p1", "creator_id": theirs, "milli_diamonds": 1, "ts": T0})
    eng.apply_payouts([model.decode_payout(raw)], [raw], [9], out)
    assert (out.dead_letters[-1].reason, out.dead_letters[-1].detail) == \
        ("wrong_partition", f"payout p1 is for creator {theirs}, who belongs to partition 1 of 4, not 0")
    assert out.stats["rejected.wrong_partition"] == 3


def test_an_engine_knows_how_many_partitions_there_are(policy):
    assert make_engine(policy, 3, partitions=4, owners=PartitionCache(4)).partitions == 4
    for partition, partitions in ((4, 4), (-1, 4), (1, 1), (0, 0)):
        with pytest.raises(ValueError):
            make_engine(policy, partition, partitions=partitions, owners=PartitionCache(max(partitions, 1)))
