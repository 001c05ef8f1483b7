"""GcPacer: freezes the heap after a batch at most once per freeze_every, and now and then unfreezes for one
full collection (so garbage cycles caught by a freeze do not stay forever)."""

from __future__ import annotations

import gc

import pytest

from stream.runtime.worker import GcPacer


@pytest.fixture
def calls(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    seen: list[str] = []
    monkeypatch.setattr(gc, "freeze", lambda: seen.append("freeze"))
    monkeypatch.setattr(gc, "unfreeze", lambda: seen.append("unfreeze"))
    monkeypatch.setattr(gc, "collect", lambda *a: seen.append("collect") or 0)
    return seen


def test_freezes_at_most_once_per_interval(calls: list[str]) -> None:
    now = [100.0]
    pacer = GcPacer(freeze_every=1.0, full_every=600.0, clock=lambda: now[0])
    pacer.after_batch()
    assert calls == []
    now[0] += 0.5
    pacer.after_batch()
    assert calls == []
    now[0] += 0.6
    pacer.after_batch()
    assert calls == ["freeze"]
    now[0] += 0.1
    pacer.after_batch()
    assert calls == ["freeze"]


def test_full_collection_now_and_then(calls: list[str]) -> None:
    now = [0.0]
    pacer = GcPacer(freeze_every=1.0, full_every=10.0, clock=lambda: now[0])
    for _ in range(10):
        now[0] += 1.0
        pacer.after_batch()
    assert calls == ["freeze"] * 9 + ["unfreeze", "collect", "freeze"]
    now[0] += 1.0
    pacer.after_batch()
    assert calls[-1] == "freeze" and calls.count("collect") == 1


def test_really_freezes() -> None:
    before = gc.get_freeze_count()
    keep = [[i] for i in range(100)]  # tracked containers, alive
    try:
        GcPacer(freeze_every=0.0, full_every=1e9).after_batch()
        assert gc.get_freeze_count() >= before + len(keep)
    finally:
        gc.unfreeze()


def test_after_restore_collects_once_and_freezes(calls: list[str]) -> None:
    now = [50.0]
    pacer = GcPacer(freeze_every=1.0, full_every=600.0, clock=lambda: now[0])
    now[0] += 30.0  # start-up took a while: the first batch would freeze at once
    pacer.after_restore()
    assert calls == ["collect", "freeze"]
    now[0] += 0.5
    pacer.after_batch()  # the freeze at restore counts: nothing again this soon
    assert calls == ["collect", "freeze"]
