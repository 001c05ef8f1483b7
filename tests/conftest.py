from __future__ import annotations

import itertools
import sys
from pathlib import Path

import orjson
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

T0 = 1_764_000_000_000  # 2025-11-24T16:00:00Z, a whole hour
_ids = itertools.count(1)


def gift(**fields) -> bytes:
    """A valid gift event (a plain 5-coin gift to creator c1 in the US) with overrides."""
    rec = {"event_id": str(next(_ids)), "room_id": "r1", "creator_id": "c1", "sender_id": "s1",
           "gift_id": 5655, "gift_type": 0, "diamond_count": 5, "repeat_count": 1, "repeat_end": False,
           "ts": T0, "region": "US"}
    rec.update(fields)
    return orjson.dumps({k: v for k, v in rec.items() if v is not ...})


@pytest.fixture(params=["python", "native"])
def both_engines(request, monkeypatch):
    """Run the test once with each engine: make_engine (and so replay) picks the one GIFTSTREAM_ENGINE names."""
    from stream.engine.native import native_available

    if request.param == "native" and not native_available():
        pytest.fail("the native engine is not built (make install builds it)")
    monkeypatch.setenv("GIFTSTREAM_ENGINE", request.param)
    return request.param


@pytest.fixture(scope="session")
def policy():
    from stream.engine.policy import load_policy

    return load_policy()
