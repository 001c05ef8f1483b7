"""Metrics.set_state_size: the gauges follow the engines, and with `every` they are refreshed at most that
often (engine.sizes() walks the state tables, so the worker does not call it after every batch)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from aiokafka import TopicPartition

from stream.engine.reference import StateSizes
from stream.service import metrics as metrics_module
from stream.service.metrics import Metrics


class CountingEngine:
    def __init__(self, creators: int) -> None:
        self.creators, self.calls = creators, 0

    def sizes(self) -> StateSizes:
        self.calls += 1
        return StateSizes(self.creators, 2, 3, 4, 1, 5)


def gauge(m: Metrics, name: str) -> float:
    value = m.registry.get_sample_value(name)
    assert value is not None
    return value


def test_state_size_gauges_sum_the_partitions() -> None:
    m = Metrics()
    tasks = {0: SimpleNamespace(engine=CountingEngine(10)), 1: SimpleNamespace(engine=CountingEngine(7))}
    m.set_state_size(tasks)
    assert gauge(m, "giftstream_state_creators") == 17
    assert gauge(m, "giftstream_state_streaks") == 4
    assert gauge(m, "giftstream_state_dedupe_ids") == 6


def test_state_size_every_limits_how_often_the_engines_are_asked(monkeypatch: pytest.MonkeyPatch) -> None:
    now = [1000.0]
    monkeypatch.setattr(metrics_module.time, "monotonic", lambda: now[0])
    m = Metrics()
    engine = CountingEngine(10)
    tasks = {0: SimpleNamespace(engine=engine)}
    m.set_state_size(tasks, every=1.0)
    assert engine.calls == 1
    engine.creators = 11
    now[0] += 0.4
    m.set_state_size(tasks, every=1.0)  # too soon: skipped
    assert engine.calls == 1 and gauge(m, "giftstream_state_creators") == 10
    now[0] += 0.7
    m.set_state_size(tasks, every=1.0)
    assert engine.calls == 2 and gauge(m, "giftstream_state_creators") == 11
    m.set_state_size({}, every=0.0)  # without `every` (restore, release): always
    assert gauge(m, "giftstream_state_creators") == 0


class Positions:
    """A consumer's answers for observe_lag: read_uncommitted's last stable offset is always -1."""

    def __init__(self, lso: int | None, highwater: int, position: int) -> None:
        self.lso, self.hw, self.pos = lso, highwater, position

    def last_stable_offset(self, tp) -> int | None:
        return self.lso

    def highwater(self, tp) -> int:
        return self.hw

    async def position(self, tp) -> int:
        return self.pos


async def test_lag_under_read_uncommitted_is_measured_from_the_high_watermark() -> None:
    # Seen: an at-least-once worker reported lag 0 (max(0, -1 - position)) however far behind it was.
    tp = TopicPartition("gifts", 0)
    assert await Metrics().observe_lag(Positions(-1, 10, 4), [tp]) == {tp: 6}
    assert await Metrics().observe_lag(Positions(8, 10, 4), [tp]) == {tp: 4}  # read_committed: the LSO
