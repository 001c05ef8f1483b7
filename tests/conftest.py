"""Fixtures every kind of test shares. Helpers (inputs, fakes, the broker, processes) are in tests/support/."""

from __future__ import annotations

import pytest


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
