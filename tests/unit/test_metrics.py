"""Metrics: the state-size gauges follow the engines' O(1) counts, and the lag is measured from the right end."""

from __future__ import annotations

from types import SimpleNamespace

from aiokafka import TopicPartition

from stream.engine.protocol import StateCounts, StateSizes
from stream.service.metrics import Metrics


class CountingEngine:
    """Counts only: the gauges are set after every batch, so they must never walk the tables (sizes())."""

    def __init__(self, creators: int) -> None:
        self.creators = creators

    def counts(self) -> StateCounts:
        return StateCounts(self.creators, 2, 3)

    def sizes(self) -> StateSizes:
        raise AssertionError("sizes() walks every creator and streak: not for the gauges")


def gauge(m: Metrics, name: str) -> float:
    value = m.registry.get_sample_value(name)
    assert value is not None
    return value


def test_state_size_gauges_sum_the_partitions_counts() -> None:
    m = Metrics()
    tasks = {0: SimpleNamespace(engine=CountingEngine(10)), 1: SimpleNamespace(engine=CountingEngine(7))}
    m.set_state_size(tasks)
    assert gauge(m, "giftstream_state_creators") == 17
    assert gauge(m, "giftstream_state_streaks") == 4
    assert gauge(m, "giftstream_state_dedupe_ids") == 6
    m.set_state_size({})  # every partition released
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
