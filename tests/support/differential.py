"""The two engines side by side on the same batches: the same outputs, changelog records and state."""

from __future__ import annotations

import itertools

from stream.engine import model
from stream.engine.native import NativePartitionEngine
from stream.engine.reference import Outputs, PartitionEngine
from stream.state.changelog import ChangelogWriter


def assert_same_outputs(a: Outputs, b: Outputs) -> None:
    assert a.notices == b.notices
    assert a.window_totals == b.window_totals
    assert a.late == b.late
    assert a.dead_letters == b.dead_letters  # reasons, details and raw bytes
    assert a.stats == b.stats


def run_side_by_side(policy, records: list[bytes], cuts: list[int], payouts: list[bytes] = ()) -> None:
    """Both engines over the same batches (payouts applied between batches), checking after every batch."""
    py, native = PartitionEngine(policy), NativePartitionEngine(policy)
    py_log, native_log = ChangelogWriter(), ChangelogWriter()
    bounds = sorted({min(c, len(records)) for c in cuts} | {0, len(records)})
    for n, (lo, hi) in enumerate(itertools.pairwise(bounds)):
        outs = []
        for eng in (py, native):
            out = eng.process(records[lo:hi], list(range(lo, hi)))
            if n < len(payouts):
                raw = payouts[n]
                eng.apply_payouts([model.decode_payout(raw)], [raw], [n], out)
            outs.append(out)
        assert_same_outputs(*outs)
        py_records, native_records = py_log.drain(py), native_log.drain(native)
        assert len(py_records) == len(native_records)  # one record per changed key, no more
        assert dict(py_records) == dict(native_records)
    outs = [Outputs(), Outputs()]
    py.end_of_stream(outs[0])
    native.end_of_stream(outs[1])
    assert_same_outputs(*outs)
    assert py.state == native.state
    assert py.sizes() == native.sizes()
