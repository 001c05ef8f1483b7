"""Both engines on hostile records (deep, repeated keys at any depth and through escapes, ids outside the
contract, malformed JSON, and mixtures): the same dead letters with the same reasons, the same outputs."""

from __future__ import annotations

import msgspec
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from stream.engine import model
from stream.engine.native import native_available
from stream.engine.protocol import Outputs
from tests.support.differential import run_side_by_side
from tests.support.events import T0, gift

pytestmark = pytest.mark.skipif(not native_available(), reason="native engine not built")

KEYS = [b"a", b"\\u0061", b"event_id", b"event_\\u0069d", b"diamond_count", b"x"]
SCALARS = [b"1", b'"s"', b"true", b"null", b"-0", b"1.5", b'"\\u0041"']


@st.composite
def json_values(draw, depth: int) -> bytes:
    """A JSON value up to `depth` deep whose objects may repeat a key (plainly or through an escape)."""
    kind = draw(st.sampled_from(["scalar", "list", "object"] if depth > 0 else ["scalar"]))
    if kind == "scalar":
        return draw(st.sampled_from(SCALARS))
    items = draw(st.lists(json_values(depth - 1), max_size=3))
    if kind == "list":
        return b"[" + b",".join(items) + b"]"
    keys = draw(st.lists(st.sampled_from(KEYS), min_size=len(items), max_size=len(items)))
    return b"{" + b",".join(b'"' + k + b'":' + v for k, v in zip(keys, items, strict=True)) + b"}"


@st.composite
def hostile_records(draw) -> bytes:
    base = gift(event_id=draw(st.sampled_from(["e1", "e2", "e3"])), creator_id=draw(st.sampled_from(["c1", "c2"])),
                diamond_count=draw(st.sampled_from([1, 7])), ts=T0 + draw(st.integers(0, 10**6)))
    form = draw(st.sampled_from(["nested", "bomb", "repeat", "escaped repeat", "damaged", "id", "plain"]))
    if form == "nested":
        return base[:-1] + b',"x":' + draw(json_values(6)) + b"}"
    if form == "bomb":
        n = draw(st.sampled_from([30, 31, 32, 33, 127, 128, 129, 997]))
        return base[:-1] + b',"x":' + draw(st.sampled_from([b"[", b'{"a":['])) * n + \
            draw(st.sampled_from([b"]" * n, b"]" * (n - 1), b""])) + b"}"
    if form == "repeat":
        key = draw(st.sampled_from(["diamond_count", "event_id", "repeat_end", "x", "group_id"]))
        return base[:-1] + b"," + orjson.dumps({key: draw(st.sampled_from([1, "9", True]))})[1:]
    if form == "escaped repeat":
        return base[:-1] + b',"diamond_\\u0063ount":9999}'
    if form == "damaged":
        raw = base[:-1] + b',"x":' + draw(json_values(4)) + b"}"
        i = draw(st.integers(0, len(raw) - 1))
        return raw[:i] + draw(st.sampled_from([b"", b"{", b"]", b'"', b"\\", b","])) + raw[i + 1:]
    if form == "id":
        rec = orjson.loads(base)
        rec[draw(st.sampled_from(["event_id", "room_id", "creator_id", "sender_id", "group_id"]))] = \
            draw(st.sampled_from(["a\x1fb", "a b", "é", "a\n", "", "x" * 64, "x" * 65, "A-z_09"]))
        return orjson.dumps(rec)
    return base


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(records=st.lists(hostile_records(), min_size=1, max_size=10), cuts=st.lists(st.integers(0, 10), max_size=2))
def test_both_engines_reject_hostile_records_identically(policy, records, cuts):
    run_side_by_side(policy, [gift(event_id="first", ts=T0), *records], cuts)


@settings(max_examples=400, deadline=None)
@given(raw=hostile_records())
def test_the_structural_scan_agrees_with_msgspec_on_what_is_json(raw):
    """Where msgspec can judge (nothing deep), the scan's not_json is exactly msgspec's malformed input."""
    verdict = model.scan_structure(raw)
    if verdict is not None and verdict[0] == model.TOO_DEEP:
        return
    try:
        msgspec.json.decode(raw)
        is_json = True
    except (msgspec.DecodeError, UnicodeDecodeError):
        is_json = False
    except RecursionError:
        return  # msgspec cannot judge this one (that is why the scan exists)
    assert (verdict is None or verdict[0] != model.NOT_JSON) == is_json


@st.composite
def session_gift_records(draw) -> bytes:
    """Gift records as a session file may hold them: hostile ones, and ones whose key or time only Python reads
    (an invalid gift with a readable creator_id, a time out of range or of the wrong type, no creator_id)."""
    if draw(st.booleans()):
        return draw(hostile_records())
    rec = orjson.loads(gift(creator_id=draw(st.sampled_from(["c1", "c2", "c3", "ü", "9" * 20])),
                            ts=T0 + draw(st.integers(0, 10**6))))
    form = draw(st.sampled_from(["ts", "invalid gift", "no creator", "creator"]))
    raw_value = None  # JSON text put in place of the field's value
    if form == "ts":
        rec["ts"] = "RAW"
        raw_value = draw(st.sampled_from([b"-1", b"0", b"1.5", b"1e3", b"9223372036854775808", b"18446744073709551616",
                                          b"1000000000000000", b'"1"', b"true", b"null"]))
    elif form == "invalid gift":
        rec[draw(st.sampled_from(["diamond_count", "sender_id", "repeat_end"]))] = draw(st.sampled_from([-5, "", 7.5]))
    elif form == "no creator":
        del rec["creator_id"]
    else:
        rec["creator_id"] = "RAW"
        raw_value = draw(st.sampled_from([b"5", b"null", b'["c1"]', b'"\\ud800"', b'"c\\u0031"', b'""']))
    raw = orjson.dumps(rec)
    return raw if raw_value is None else raw.replace(b'"RAW"', raw_value)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(records=st.lists(session_gift_records(), max_size=12), partitions=st.sampled_from([1, 3, 6]))
def test_the_compiled_split_of_a_session_by_partition_is_the_python_one(policy, records, partitions):
    """The merged replay queues each partition's gifts with their merge times; the compiled split must give the
    Python rules' partition and time for every record, the ones its decoder declines included."""
    from stream.kafka.routing import PartitionCache
    from stream.runtime.replay import _split_gifts, _split_gifts_in_python

    assert _split_gifts(records, PartitionCache(partitions), policy) == \
        _split_gifts_in_python(records, PartitionCache(partitions))


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(records=st.lists(st.one_of(session_gift_records(), st.none()), max_size=12), lo=st.integers(0, 3))
def test_the_compiled_merge_times_of_gifts_are_the_python_ones(records, lo):
    from stream.engine import order

    assert order.gift_times(records, lo) == [order.record_time(order.Input.GIFTS, v) or 0 for v in records[lo:]]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(records=st.lists(st.one_of(hostile_records(), session_gift_records(), st.just(b"")), min_size=1, max_size=10),
       staged=st.integers(0, 11), cut=st.integers(0, 11), stale=st.sampled_from([None, "others", "skipped"]),
       max_bytes=st.sampled_from([None, 256]))
def test_a_gift_decoded_for_its_merge_time_is_processed_as_if_decoded_again(policy, records, staged, cut, stale,
                                                                             max_bytes):
    """The compiled engine keeps what Engine.gift_times decoded (stream._native's stage) for the process that takes
    those records next, and lets the stage go when other records come first. Either way the outputs, the changes
    and the state are those of an engine that kept nothing: records staged whole or in part, processed in one batch
    or two, a stage of other records (their strings elsewhere in their bytes) or one that skips the first record,
    and records over the engine's size limit that the time's decode takes whatever their size."""
    import dataclasses

    from stream.engine import order
    from stream.engine.native import NativePartitionEngine
    from stream.state.changelog import ChangelogWriter
    from tests.support.differential import assert_same_outputs

    if max_bytes is not None:
        policy = dataclasses.replace(policy, max_record_bytes=max_bytes)
    long = gift(event_id="long" + "x" * 60, room_id="r" * 64, sender_id="s" * 64, ts=T0 + 1)  # over 256 bytes
    records = [gift(event_id="first", ts=T0), long, *records]
    plain, staging = NativePartitionEngine(policy), NativePartitionEngine(policy)
    if stale == "others":
        others = [gift(event_id=f"other{i}", room_id="r" * 40, creator_id="c2", ts=T0 + i) for i in range(3)]
        assert staging.gift_times(others, 0) == order.gift_times(others, 0)
    elif stale == "skipped":
        assert staging.gift_times(records, 1) == order.gift_times(records, 1)
    assert staging.gift_times(records[:staged], 0) == order.gift_times(records[:staged], 0)
    outs = [Outputs(), Outputs()]
    logs = [ChangelogWriter(), ChangelogWriter()]
    for lo, hi in ((0, cut), (cut, len(records))):
        for engine, out in zip((plain, staging), outs, strict=True):
            if records[lo:hi]:
                engine.process(records[lo:hi], lo, out)
        assert dict(logs[0].drain(plain)) == dict(logs[1].drain(staging))
    assert_same_outputs(*outs)
    assert plain.state == staging.state
    assert staging._core.staged_count() == 0  # taken, or let go at the first record it did not hold next
