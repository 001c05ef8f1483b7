"""A Kafka broker of a test module's own (deploy/kafka/kafka-up.sh with its own home and ports, the shared
broker's jars), so a test can kill -9 it and start it again without disturbing the other tests."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

from tests.support.processes import KAFKA_HOME, ROOT

UP = ROOT / "deploy" / "kafka" / "kafka-up.sh"
DOWN = ROOT / "deploy" / "kafka" / "kafka-down.sh"


class PrivateBroker:
    def __init__(self, home: Path, port: int) -> None:
        self.home, self.port = home, port
        self.bootstrap = f"127.0.0.1:{port}"
        self.env = {**os.environ, "GIFTSTREAM_KAFKA_HOME": str(home), "GIFTSTREAM_KAFKA_LIBS": str(KAFKA_HOME / "libs"),
                    "GIFTSTREAM_KAFKA_PORT": str(port), "GIFTSTREAM_KAFKA_CONTROLLER_PORT": str(port + 1),
                    "GIFTSTREAM_KAFKA_SASL_PORT": str(port + 2), "GIFTSTREAM_KAFKA_TLS": "0",
                    "GIFTSTREAM_KAFKA_HEAP_OPTS": "-Xms512m -Xmx512m", "GIFTSTREAM_KAFKA_FRESH": "0"}

    def start(self) -> None:
        """Start (or restart, keeping its data) and wait until it answers and its coordinators are up."""
        done = subprocess.run(["bash", str(UP)], env=self.env, capture_output=True, text=True, timeout=120)
        if done.returncode:
            raise RuntimeError(f"private broker did not start:\n{done.stdout}\n{done.stderr}")

    def start_in_background(self) -> subprocess.Popen:
        """Start it without waiting: clients that keep retrying race its start-up, as after a real restart."""
        return subprocess.Popen(["bash", str(UP)], env=self.env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def pid(self) -> int:
        return int((self.home / "kafka.pid").read_text())

    def kill(self) -> None:
        """kill -9: no clean shutdown, no controlled leadership move."""
        pid = self.pid()
        os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 30
        while Path(f"/proc/{pid}").exists() and "Z" not in _state(pid):
            assert time.monotonic() < deadline, f"broker {pid} survived SIGKILL"
            time.sleep(0.1)

    def stop(self) -> None:
        subprocess.run(["bash", str(DOWN)], env=self.env, capture_output=True, timeout=60)
        shutil.rmtree(self.home, ignore_errors=True)


def _state(pid: int) -> str:
    try:
        return next(line for line in Path(f"/proc/{pid}/status").read_text().splitlines()
                    if line.startswith("State:"))
    except (OSError, StopIteration):
        return "Z"
