"""/creators/<id>'s answer, computed from an engine's state (stream.engine.creator_view)."""

from __future__ import annotations

import orjson
import pytest

from stream.engine import model
from stream.engine.creator_view import creator_view
from stream.engine.native import make_engine
from tests.support.events import T0, gift

pytestmark = pytest.mark.usefixtures("both_engines")

HOUR = 3_600_000


def test_a_creator_shows_the_windows_still_open_with_their_tallies(policy):
    eng = make_engine(policy)
    eng.process([gift(diamond_count=5, ts=T0 + 60_000), gift(diamond_count=3, ts=T0 + 7 * 60_000)], [0, 1])
    view = creator_view("c1", 0, eng.creator("c1"), policy, eng.watermark, eng.close_cursor)
    assert (view.balance_milli_diamonds, view.balance_cents, view.notices) == (8_000, 4, 0)
    by_window = {}
    for w in view.open_windows:
        by_window.setdefault(w.window, []).append((w.window_start - T0, w.milli_diamonds, w.credits))
    assert by_window["tumbling-1h"] == [(0, 8_000, 2)]
    # the 1 h windows hopping by 5 min that hold T0+1 min start from T0-55 min; those holding T0+7 min too
    # start from T0-50 min to T0+5 min (the last holds only the second gift)
    hop = by_window["hopping-1h-5m"]
    assert hop[0] == (-55 * 60_000, 5_000, 1) and hop[-1] == (5 * 60_000, 3_000, 1)
    assert all(not w.final for w in view.open_windows)


def test_windows_the_watermark_has_closed_are_not_shown(policy):
    eng = make_engine(policy)
    # the watermark moves at most max_future (1 h) per gift: walk it to T0 + 3 h
    eng.process([gift(ts=T0 + 60_000)] + [gift(creator_id="c2", ts=T0 + k * HOUR // 2) for k in range(1, 7)],
                list(range(7)))
    view = creator_view("c1", 0, eng.creator("c1"), policy, eng.watermark, eng.close_cursor)
    assert [w.window for w in view.open_windows] == ["tumbling-1d"]
    doc = orjson.loads(model.encode(view))
    assert list(doc)[:3] == ["creator_id", "partition", "region"] and doc["open_windows"][0]["final"] is False
