"""The one restore consumer (stream.runtime.restore.ChangelogReader) over fake clients: each read gets every
record of its partition from its start, in order, once, even when an earlier read of the same partition was
cancelled midway (a task closed during its restore, then made again)."""

from __future__ import annotations

import asyncio

from stream.config import WorkerConfig
from stream.runtime.restore import ChangelogReader
from tests.support.fake_kafka import FakeClients, FakeCluster

TOPIC = "changelog"


def cluster_with(records: int, partitions: int = 2) -> FakeCluster:
    cluster = FakeCluster(partitions)
    for p in range(partitions):
        for i in range(records):
            cluster.append(TOPIC, p, f"k{p}-{i}".encode(), f"v{i}".encode())
    return cluster


async def test_a_read_after_a_cancelled_read_of_its_partition_starts_from_its_own_start():
    cluster = cluster_with(30)
    clients = FakeClients(WorkerConfig(), cluster)
    clients.restore_poll_records = 3
    reader = ChangelogReader(clients, TOPIC, stall_s=5)
    first: list[bytes] = []

    def first_sink(keys, values):
        first.extend(keys)
        if len(first) >= 6:
            reading.cancel()  # the task is closed midway

    reading = asyncio.ensure_future(reader.read(0, 0, 30, first_sink))
    await asyncio.gather(reading, return_exceptions=True)
    assert reading.cancelled() and 6 <= len(first) < 30
    again: list[bytes] = []
    got = await asyncio.wait_for(reader.read(0, 0, 30, lambda keys, values: again.extend(keys)), 10)
    assert again == [f"k0-{i}".encode() for i in range(30)] and got == 30  # all of it, in order, once
    both: dict[int, list[bytes]] = {0: [], 1: []}
    got = await asyncio.wait_for(asyncio.gather(
        reader.read(0, 25, 30, lambda keys, values: both[0].extend(keys)),
        reader.read(1, 10, 30, lambda keys, values: both[1].extend(keys))), 10)
    await reader.close()
    assert both == {0: [f"k0-{i}".encode() for i in range(25, 30)], 1: [f"k1-{i}".encode() for i in range(10, 30)]}
    assert got == [5, 20]


async def test_a_read_that_gets_no_records_fails_after_the_stall_time():
    cluster = cluster_with(3)
    clients = FakeClients(WorkerConfig(), cluster)
    reader = ChangelogReader(clients, TOPIC, stall_s=0.3)
    try:
        await asyncio.wait_for(reader.read(0, 0, 10, lambda keys, values: None), 5)  # the end is never reached
    except TimeoutError as e:
        assert "no records" in str(e)
    else:
        raise AssertionError("a read short of its end must fail")
    finally:
        await reader.close()


async def test_raw_record_batches_reach_a_batch_sink_as_fetched_and_a_plain_sink_as_records():
    """A fetch's RawRecords go to the read's batch sink as they are (from the read's position on), or, for a
    read without one, to its sink as keys and values; records gathered before them go first."""
    import pytest
    from aiokafka import TopicPartition

    from stream.kafka import columnar_fetch
    from stream.runtime.restore import _Read
    from tests.integration.test_columnar_fetch import build_batch

    if not columnar_fetch.available():
        pytest.skip("native engine not built")
    raw = build_batch(10, [(f"k{i}".encode(), f"v{i}".encode(), 0, []) for i in range(10, 20)])
    raw += build_batch(20, [(f"k{i}".encode(), None, 0, []) for i in range(20, 25)])
    fetched = [columnar_fetch.RecordChunk("t", 0, [8, 9], [b"v8", b"v9"], [0, 0], [b"k8", b"k9"]),
               columnar_fetch.RawRecords("t", 0, raw, [0, 1], 10)]
    reader = ChangelogReader(FakeClients(WorkerConfig(), FakeCluster(1)), TOPIC, stall_s=5)

    def deliver(batch_sink) -> tuple[list, _Read]:
        got: list = []
        read = _Read(TopicPartition("t", 0), 9, 25, lambda k, v: got.append(("records", k, v)),
                     batch_sink and (lambda raw, take, first: batch_sink(got, raw, take, first)),
                     lambda n: None, asyncio.get_running_loop().create_future(), position=9)
        reader._deliver(read, fetched, 0.0)
        return got, read

    got, read = deliver(lambda got, raw_, take, first: got.append(("raw", raw_ is raw, take, first)) or (15, 24))
    assert got == [("records", [b"k9"], [b"v9"]), ("raw", True, [0, 1], 10)]
    assert (read.records, read.position) == (16, 25)
    got, read = deliver(None)
    assert got == [("records", [b"k9"], [b"v9"]),
                   ("records", [f"k{i}".encode() for i in range(10, 25)], [f"v{i}".encode() for i in range(10, 20)]
                    + [None] * 5)]
    assert (read.records, read.position) == (16, 25)
