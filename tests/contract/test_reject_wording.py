"""Dead letters, word for word: for every reject reason, the compiled engine's dead letter (reason, detail, raw
bytes) is the reference engine's, and the details the engines decide themselves are model.py's templates (the one
place their wording is written; the compiled core hands back only the parameters). The records cover every reason
of model.REJECT_REASONS: gifts, payouts and creator-accounts records. Without the compiled engine only the reference
engine's side runs."""

from __future__ import annotations

import re
from pathlib import Path

import orjson
import pytest

from stream.engine import model
from stream.engine.native import NativePartitionEngine, native_available
from stream.engine.reference import Outputs, PartitionEngine
from stream.kafka.routing import PartitionCache, partition_for
from tests.support.events import T0, account, gift

needs_native = pytest.mark.skipif(not native_available(), reason="native engine not built")

PARTITIONS = 2


def _creator_of(partition: int, prefix: str) -> str:
    return next(f"{prefix}{i}" for i in range(1000) if partition_for(f"{prefix}{i}".encode(), PARTITIONS) == partition)


OURS, THEIRS = _creator_of(0, "c"), _creator_of(1, "c")


def _payout(pid: str, creator: str, milli: int) -> bytes:
    return orjson.dumps({"payout_id": pid, "creator_id": creator, "milli_diamonds": milli, "ts": T0})


def _events(policy) -> list[bytes]:
    """One record (at least) per reject reason, after a first event that sets the watermark."""
    deep = b'{"a":' * (model.MAX_JSON_DEPTH + 1) + b"1" + b"}" * (model.MAX_JSON_DEPTH + 1)
    return [
        gift(event_id="first", creator_id=OURS, ts=T0),
        b"not json", b"[1, 2]", gift(ts=...), gift(diamond_count="5"), gift(event_id="a b"),
        gift(diamond_count=0), gift(creator_id=OURS, region="ZZ"), gift(creator_id=OURS, region="it's"),
        gift(creator_id=OURS, region='a"b\u00e9'),
        gift(creator_id=OURS, ts=T0 + policy.max_future_ms + 1),
        gift(creator_id=OURS, ts=T0 - policy.dedupe_horizon_ms - 1),
        gift(creator_id=OURS, extra="x" * policy.max_record_bytes), deep, gift()[:-1] + b',"ts":1}',
        gift(creator_id=THEIRS),
    ]


# creator-accounts records (key, value, record time): one per reject an account can get
ACCOUNTS = [
    (OURS.encode(), account(creator_id=OURS), T0),  # a good one
    (THEIRS.encode(), account(creator_id=THEIRS), T0),
    (THEIRS.encode(), None, T0),
    (OURS.encode(), account(creator_id=OURS, region="ZZ"), T0),
    (OURS.encode(), account(creator_id=OURS, region="it's"), T0),
    (OURS.encode(), account(creator_id=OURS, account_status="gold"), T0),
    (OURS.encode(), account(creator_id=OURS, account_status="closed"), T0),
    (OURS.encode(), account(creator_id=OURS, payout_method="cheque"), T0),
    (b"c-other", account(creator_id=OURS), T0),
    (None, account(creator_id=OURS), T0),
    (b"\xff", account(creator_id=OURS), T0),
    (b"a b", None, T0),
    (None, None, T0),
    (OURS.encode(), b"not json", T0),
    (OURS.encode(), account(creator_id=OURS, age=...), T0),
]


def _dead_letters(engine, events: list[bytes]) -> Outputs:
    out = engine.process(events, list(range(100, 100 + len(events))))
    payouts = [_payout("p1", THEIRS, 5), _payout("p2", OURS, 10**15), _payout("p3", OURS, 1), b'{"payout_id":1}']
    engine.apply_payouts([model.decode_payout(p) for p in payouts], payouts, [7, 8, 9, 10], out)
    engine.apply_accounts([model.decode_account(*a) for a in ACCOUNTS], [a[1] for a in ACCOUNTS],
                          list(range(200, 200 + len(ACCOUNTS))), out)
    return out


def _engines(policy) -> list:
    py = PartitionEngine(policy, partitions=PARTITIONS, owners=PartitionCache(PARTITIONS))
    return [py, NativePartitionEngine(policy, partitions=PARTITIONS)] if native_available() else [py]


@pytest.fixture(scope="module")
def both(policy):
    """The dead letters of the reference engine, and of the compiled one when it is built."""
    events = _events(policy)
    return [_dead_letters(engine, events) for engine in _engines(policy)]


def test_every_reason_has_a_record_here(both):
    assert {d.reason for d in both[0].dead_letters} == set(model.REJECT_REASONS)
    assert {d.source_topic for d in both[0].dead_letters} == {"gifts", "payouts", "creator-accounts"}


@needs_native
def test_every_reason_is_worded_alike_by_both_engines(both):
    py, native = both
    assert native.dead_letters == py.dead_letters
    assert {k: v for k, v in native.stats.items() if k.startswith("rejected.")} == \
        {k: v for k, v in py.stats.items() if k.startswith("rejected.")}


def test_the_rejects_the_engines_decide_are_worded_by_model(both, policy):
    """The engines' own rejects (the decoder's are msgspec's) are model.py's templates, filled in."""
    r, us = model.EVENT_REJECTIONS, policy.regions["US"].milli_diamonds_per_coin
    expected = [
        r.wrong_partition.of(creator_id=THEIRS, owner=1, partitions=PARTITIONS, partition=0),
        *(r.unknown_region.of(region=region, policy_version=policy.version) for region in ["ZZ", "it's", 'a"b\u00e9']),
        r.too_far_future.of(ts=T0 + policy.max_future_ms + 1, max_future_ms=policy.max_future_ms, watermark=T0),
        r.too_old.of(ts=T0 - policy.dedupe_horizon_ms - 1, dedupe_horizon_ms=policy.dedupe_horizon_ms, watermark=T0),
        model.PAYOUT_WRONG_PARTITION.of(payout_id="p1", creator_id=THEIRS, owner=1, partitions=PARTITIONS,
                                        partition=0),
        model.PAYOUT_OVER_BALANCE.of(payout_id="p2", milli_diamonds=10**15, balance=5 * us),
        model.ACCOUNT_WRONG_PARTITION.of(creator_id=THEIRS, owner=1, partitions=PARTITIONS, partition=0),
        model.ACCOUNT_WRONG_PARTITION.of(creator_id=THEIRS, owner=1, partitions=PARTITIONS, partition=0),
        *(model.ACCOUNT_UNKNOWN_REGION.of(creator_id=OURS, region=region, policy_version=policy.version)
          for region in ["ZZ", "it's"]),
        *(model.ACCOUNT_UNKNOWN_STATUS.of(creator_id=OURS, status=status, policy_version=policy.version)
          for status in ["gold", "closed"]),
        model.ACCOUNT_UNKNOWN_METHOD.of(creator_id=OURS, method="cheque", region="US", policy_version=policy.version),
        model.ACCOUNT_KEY_MISMATCH.of(key="c-other", creator_id=OURS),
        model.ACCOUNT_KEY_MISMATCH.of(key=None, creator_id=OURS),
        model.ACCOUNT_KEY_MISMATCH.of(key=b"\xff", creator_id=OURS),
        model.ACCOUNT_BAD_TOMBSTONE.of(key=b"a b"),
        model.ACCOUNT_BAD_TOMBSTONE.of(key=None),
    ]
    for out in both:
        got = [(d.reason, d.detail) for d in out.dead_letters]
        assert sorted(g for g in got if g in expected) == sorted(expected)


def test_a_gift_without_a_region_and_nothing_to_name_one_is_worded_by_model(policy):
    """Without accounts.default_region, a region-less gift of a creator with no account region is unknown_region,
    in the no_region template's words (and alike from both engines)."""
    import dataclasses

    strict = dataclasses.replace(policy, default_region=None)
    outs = []
    records = [gift(event_id="first", creator_id=OURS), gift(creator_id=OURS, region=...)]  # the same for each
    for engine in _engines(strict):
        out = engine.process(records, [0, 1])
        outs.append(out.dead_letters)
    assert [(d.reason, d.detail) for d in outs[0]] == [
        model.EVENT_REJECTIONS.no_region.of(creator_id=OURS, policy_version=strict.version)]
    assert all(o == outs[0] for o in outs)


def test_the_compiled_core_words_no_reject_itself():
    """No reason code or engine reject wording is written in native/src: they come from model.py."""
    source = "".join(p.read_text() for p in (Path(__file__).resolve().parents[2] / "native" / "src").glob("*.rs"))
    for reason in model.REJECT_REASONS:
        assert f'"{reason}"' not in source
    rejections = [*model.EVENT_REJECTIONS, model.PAYOUT_WRONG_PARTITION, model.PAYOUT_OVER_BALANCE,
                  model.ACCOUNT_WRONG_PARTITION, model.ACCOUNT_UNKNOWN_REGION, model.ACCOUNT_UNKNOWN_STATUS,
                  model.ACCOUNT_UNKNOWN_METHOD, model.ACCOUNT_KEY_MISMATCH, model.ACCOUNT_BAD_TOMBSTONE]
    for rejection in rejections:
        for fragment in re.split(r"\{[^}]*\}", rejection.template):
            assert len(fragment.strip()) < 12 or fragment.strip() not in source, fragment
