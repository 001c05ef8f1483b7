"""The three-broker loopback cluster for tests (load/cluster.py drives it): used if it is up, else started for
the tests and stopped (its data wiped) after them, as `make test` does with the single node."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from contextlib import contextmanager

from aiokafka.errors import KafkaError

from load.cluster import Cluster
from stream.config import WorkerConfig
from tests.support.kafka_checks import committed_lag


@contextmanager
def cluster_for_tests(nodes: int = 3) -> Iterator[Cluster]:
    cluster = Cluster(nodes)
    untouched = not any(cluster.running(n) for n in cluster.node_ids)  # nobody else's nodes: ours to stop
    t0 = time.monotonic()
    cluster.up(fresh=untouched)  # a no-op when it runs; starts the missing nodes of a partly running one
    cluster.started_in_s = time.monotonic() - t0
    try:
        yield cluster
    finally:
        if untouched:
            cluster.down(wipe=True)


async def wait_drained_through_faults(cfg: WorkerConfig, timeout: float = 180) -> None:
    """tests/support/kafka_checks.wait_drained, but a failed look (a node just killed) is asked again."""
    deadline = time.monotonic() + timeout
    lag: object = "not asked yet"
    while time.monotonic() < deadline:
        try:
            lag = await committed_lag(cfg)
            if lag == 0:
                return
        except (KafkaError, OSError) as e:
            lag = repr(e)
        await asyncio.sleep(0.5)
    raise AssertionError(f"worker did not drain in {timeout:g} s: {lag}")
