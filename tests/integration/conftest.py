"""Fixtures the broker tests share."""

from __future__ import annotations

import pytest

from stream.kafka.topics import delete_topics
from tests.support.kafka_checks import topics_of_its_own
from tests.support.processes import BOOTSTRAP


@pytest.fixture
async def cfg():
    """A worker config whose group and topics no other test uses, on the shared test broker; its topics are
    deleted afterwards."""
    c = await topics_of_its_own(BOOTSTRAP)
    yield c
    await delete_topics(c)
