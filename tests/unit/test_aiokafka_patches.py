"""stream.kafka.aiokafka_patches, as the worker runs with it: OffsetFetch's top-level error is never read as
"no commit".
(tests/integration/test_kafka_faults.py shows the same on the real broker across a kill -9 and restart.)"""

from __future__ import annotations

import pytest
from aiokafka import errors as Errors
from aiokafka.consumer.group_coordinator import GroupCoordinator
from aiokafka.protocol.commit import OffsetFetchResponse_v2
from aiokafka.structs import OffsetAndMetadata, TopicPartition

import stream.runtime.worker  # noqa: F401  (the worker installs the fixes on import)


class FakeCoordinator:
    """Just what GroupCoordinator._do_fetch_commit_offsets uses: the group and one canned reply."""

    def __init__(self, response) -> None:
        self.group_id, self.response, self.dead = "g", response, 0

    async def _send_req(self, request):
        return self.response

    def coordinator_dead(self) -> None:
        self.dead += 1


@pytest.mark.parametrize("code, error", [(16, Errors.NotCoordinatorForGroupError),
                                         (14, Errors.GroupLoadInProgressError),
                                         (15, Errors.GroupCoordinatorNotAvailableError)])
async def test_a_top_level_coordinator_error_is_raised_not_read_as_no_commit(code, error):
    """The reply Kafka sends while the group's coordinator moves or loads: an error at the top, no partitions.
    aiokafka 0.14 returned {} (every partition "never committed"); it must raise the retriable error."""
    fake = FakeCoordinator(OffsetFetchResponse_v2(topics=[], error_code=code))
    with pytest.raises(error):
        await GroupCoordinator._do_fetch_commit_offsets(fake, [TopicPartition("gifts", 0)])
    assert error.retriable
    assert fake.dead == (0 if code == 14 else 1)  # look the coordinator up again where it moved


async def test_a_normal_reply_reads_as_before():
    reply = OffsetFetchResponse_v2(topics=[("gifts", [(0, 42, "", 0), (1, -1, "", 0), (2, 7, "m", 0)])],
                                   error_code=0)
    got = await GroupCoordinator._do_fetch_commit_offsets(FakeCoordinator(reply), [TopicPartition("gifts", 0)])
    assert got == {TopicPartition("gifts", 0): OffsetAndMetadata(42, ""),
                   TopicPartition("gifts", 2): OffsetAndMetadata(7, "m")}  # -1: really never committed


async def test_a_partition_level_coordinator_error_still_raises():
    reply = OffsetFetchResponse_v2(topics=[("gifts", [(0, -1, "", 16)])], error_code=0)
    with pytest.raises(Errors.NotCoordinatorForGroupError):
        await GroupCoordinator._do_fetch_commit_offsets(FakeCoordinator(reply), [TopicPartition("gifts", 0)])
