"""A Kafka broker of a test module's own (deploy/kafka/kafka-up.sh with its own home and ports, the shared
broker's jars), so a test can kill -9 it and start it again without disturbing the other tests. It is
load.cluster.SingleNode (what the chaos harness drives) with a home and ports of its own."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from load.cluster import SINGLE_UP_SH, SingleNode
from tests.support.processes import KAFKA_HOME

# Each test module's broker has ports of its own (the port and the two after it: controller, SASL), away from the
# shared single node (19092-19095) and the cluster (19500-19701).
FAULTS_PORT = 19192  # tests/integration/test_kafka_faults.py
CHAOS_PORT = 19292  # tests/integration/test_load_chaos.py


class PrivateBroker(SingleNode):
    def __init__(self, home: Path, port: int) -> None:
        super().__init__({"GIFTSTREAM_KAFKA_HOME": str(home), "GIFTSTREAM_KAFKA_LIBS": str(KAFKA_HOME / "libs"),
                          "GIFTSTREAM_KAFKA_PORT": str(port), "GIFTSTREAM_KAFKA_CONTROLLER_PORT": str(port + 1),
                          "GIFTSTREAM_KAFKA_SASL_PORT": str(port + 2), "GIFTSTREAM_KAFKA_TLS": "0",
                          "GIFTSTREAM_KAFKA_HEAP_OPTS": "-Xms512m -Xmx512m"})
        self.port = port

    def start_in_background(self) -> subprocess.Popen:
        """Start it without waiting: clients that keep retrying race its start-up, as after a real restart."""
        return subprocess.Popen(["bash", str(SINGLE_UP_SH)], env=self.env, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)

    def stop(self) -> None:
        self.down()
        shutil.rmtree(self.home, ignore_errors=True)


@contextmanager
def started_private_broker(tmp_path_factory, name: str, port: int) -> Iterator[PrivateBroker]:
    """A PrivateBroker started in a fresh temporary home, stopped and wiped afterwards (a module fixture's body)."""
    broker = PrivateBroker(tmp_path_factory.mktemp(name), port)
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()
