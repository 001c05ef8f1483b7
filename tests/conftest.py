"""Fixtures every kind of test shares. Helpers (inputs, fakes, the broker, processes) are in tests/support/."""

from __future__ import annotations

import os
import re

import pytest

CLUSTER_SKIP = ("needs the three-broker loopback cluster, which it starts (deploy/kafka/kafka-cluster.sh): "
                "set GIFTSTREAM_TEST_CLUSTER=1 or select it with -m cluster")


def pytest_collection_modifyitems(config, items):
    """@pytest.mark.cluster tests start three more brokers and take minutes: a plain `pytest` (`make test`) skips
    them, shown as skipped. They run with GIFTSTREAM_TEST_CLUSTER=1, or when -m names `cluster` (not as
    `not cluster`, which deselects them as any marker)."""
    if os.environ.get("GIFTSTREAM_TEST_CLUSTER") == "1" or re.search(r"(?<!not )\bcluster\b", config.option.markexpr):
        return
    for item in items:
        if item.get_closest_marker("cluster"):
            item.add_marker(pytest.mark.skip(reason=CLUSTER_SKIP))


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
