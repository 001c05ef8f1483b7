"""The two engines side by side on the same inputs: the same outputs, changelog records and state.

The inputs are gift records (bytes) with payouts and creator-accounts records interleaved in one fixed order
(tests.support.accounts: `PayoutInput`, `AccountInput`), as stream.engine.order merges a partition's three topics."""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass

import msgspec

from stream.engine import model
from stream.engine.native import NativePartitionEngine
from stream.engine.protocol import StateCounts
from stream.engine.reference import Outputs, PartitionEngine
from stream.kafka.routing import PartitionCache
from stream.state.changelog import ChangelogWriter, restore_state
from stream.state.tables import RETENTION_BUCKET_MS, PartitionState
from tests.support.accounts import Input, PayoutInput


@dataclass
class SideBySide:
    """What a side-by-side run leaves: both engines, and every output of the reference engine (the native one's are
    the same)."""

    py: PartitionEngine
    native: NativePartitionEngine
    outputs: Outputs


def assert_same_outputs(a: Outputs, b: Outputs) -> None:
    assert a.notices == b.notices
    assert a.window_totals == b.window_totals
    assert a.late == b.late
    assert a.dead_letters == b.dead_letters  # reasons, details and raw bytes
    assert a.stats == b.stats


def feed(engine, items: Sequence[Input], first_offset: int, out: Outputs) -> None:
    """Items in their order: each run of gift records one batch, each run of payouts or of account records one
    call; an item's offset is its index (plus first_offset)."""
    i = 0
    while i < len(items):
        kind = type(items[i])
        j = i
        while j < len(items) and type(items[j]) is kind:
            j += 1
        run, offsets = items[i:j], list(range(first_offset + i, first_offset + j))
        if kind is bytes:
            engine.process(list(run), offsets, out)
        elif kind is PayoutInput:
            engine.apply_payouts([model.decode_payout(p.raw) for p in run], [p.raw for p in run], offsets, out)
        else:
            engine.apply_accounts([model.decode_account(a.key, a.value, a.ts) for a in run], [a.value for a in run],
                                  offsets, out)
        i = j


def comparable(st: PartitionState) -> PartitionState:
    """A state with each bucket's closed streaks sorted, each once, and only those that expire with it: a restore
    lists them by key, a running engine as they closed, and it leaves a streak a straggler moved to a newer bucket
    in the older one too (which the expiry skips). What expires when is all these lists decide."""
    buckets: dict[int, list[str]] = {}
    for bucket, keys in st.streak_buckets.items():
        live = sorted({k for k in keys if (s := st.streaks.get(k)) is not None and not s.open
                       and s.last_ts - s.last_ts % RETENTION_BUCKET_MS == bucket})
        if live:
            buckets[bucket] = live
    return msgspec.structs.replace(st, streak_buckets=buckets)


def run_side_by_side(policy, records: Sequence[Input], cuts: list[int], payouts: Sequence[bytes] = (), *,
                     partition: int = 0, partitions: int = 1, restore: bool = False) -> SideBySide:
    """Both engines over the same inputs, cut into steps at `cuts` (payouts[n], when given, applied after step n),
    checking the outputs and the changelog records after every step, and the state at the end. restore: also
    rebuild the native engine from its changelog (natively, and restore_state from the same records) and require
    the same state, and the same outputs from there on."""
    owners = PartitionCache(partitions) if partitions > 1 else None
    py = PartitionEngine(policy, partition, partitions=partitions, owners=owners)
    native = NativePartitionEngine(policy, partition, partitions=partitions)
    py_log, native_log = ChangelogWriter(), ChangelogWriter()
    total, native_records = Outputs(), []
    bounds = sorted({min(c, len(records)) for c in cuts} | {0, len(records)})
    for n, (lo, hi) in enumerate(itertools.pairwise(bounds)):
        outs = []
        for eng in (py, native):
            out = Outputs()
            feed(eng, records[lo:hi], lo, out)
            if n < len(payouts):
                raw = payouts[n]
                eng.apply_payouts([model.decode_payout(raw)], [raw], [n], out)
            outs.append(out)
        assert_same_outputs(*outs)
        total.extend(outs[0])
        py_records, step_records = py_log.drain(py), native_log.drain(native)
        assert len(py_records) == len(step_records)  # one record per changed key, no more
        assert dict(py_records) == dict(step_records)
        native_records += step_records
    engines = [py, native]
    if restore:
        from stream._native import ChangelogRestore

        rebuilt = ChangelogRestore()
        rebuilt.apply([k for k, _ in native_records], [v for _, v in native_records])
        restored = NativePartitionEngine(policy, partition, partitions=partitions)
        starts = restored.adopt(rebuilt)
        state, writer = restore_state(native_records)
        assert restored.state == state
        assert comparable(restored.state) == comparable(native.state)
        assert dict(starts) == writer.chunks == native_log.chunks
        assert restored.sizes() == native.sizes()
        engines.append(restored)
    for cid in [*py.state.accounts, *py.state.creators, "nobody"]:
        assert py.account(cid) == native.account(cid)
    outs = [Outputs() for _ in engines]
    for eng, out in zip(engines, outs, strict=True):
        eng.end_of_stream(out)
    for out in outs[1:]:
        assert_same_outputs(outs[0], out)
    total.extend(outs[0])
    assert py.state == native.state
    assert py.sizes() == native.sizes()
    for eng in (py, native):  # the O(1) counts are the walked sizes' table lengths
        sizes = eng.sizes()
        assert eng.counts() == StateCounts(sizes.creators, sizes.streaks, sizes.dedupe_ids)
    if restore:
        assert comparable(engines[2].state) == comparable(native.state)
    return SideBySide(py, native, total)

