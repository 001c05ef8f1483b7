"""Drain measurements on a pre-loaded topic: how fast a consumer (the native worker, a bare aiokafka loop,
or any other runner) gets through a fixed backlog. Shared by the worker benchmark and the load harness."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, replace
from pathlib import Path

from aiokafka.admin import AIOKafkaAdminClient

from load.generator import TrafficConfig, generate
from stream.config import Topics, WorkerConfig, dump_config
from stream.kafka.session_io import committed_offsets, end_offsets, produce_session
from stream.kafka.topics import create_topics, delete_topics

ROOT = Path(__file__).resolve().parents[1]


def giftstream_cmd() -> list[str]:
    """How to run this checkout's `giftstream`: the venv's script, else the module."""
    script = Path(sys.executable).parent / "giftstream"
    return [str(script)] if script.exists() else [sys.executable, "-m", "stream.cli"]


def free_port() -> int:
    """A loopback port nothing listens on (for a worker's HTTP side)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class DrainResult:
    name: str
    events: int
    seconds: float  # first progress seen -> backlog committed (steady state, no start-up)
    total_seconds: float  # process start -> backlog committed
    peak_rss_mb: float | None = None

    @property
    def events_per_second(self) -> float:
        return self.events / self.seconds if self.seconds else 0.0


def unique_config(bootstrap: str, prefix: str = "bench") -> WorkerConfig:
    suffix = uuid.uuid4().hex[:8]
    return WorkerConfig(bootstrap_servers=bootstrap, group_id=f"giftstream-{prefix}-{suffix}",
                        topics=Topics(**{k: f"{v}-{prefix}-{suffix}" for k, v in vars(Topics()).items()}))


def realistic_session(events: int, seed: int = 42) -> list[bytes]:
    return list(generate(TrafficConfig(seed=seed, events=events, creators=5_000, senders=500_000,
                                       rate_per_s=5_000.0)))


async def preload(cfg: WorkerConfig, records: list[bytes], partitions: int) -> float:
    await create_topics(cfg, partitions)
    started = time.perf_counter()
    await produce_session(records, cfg)
    return time.perf_counter() - started


async def group_committed(admin: AIOKafkaAdminClient, group: str, topic: str, ends: dict[int, int]) -> int:
    """Records of topic (up to ends) that the group has committed."""
    committed = await committed_offsets(admin, group, topic)
    return sum(min(committed.get(p, 0), end) for p, end in ends.items())


def worker_config_file(cfg: WorkerConfig, path: Path, **settings: object) -> Path:
    path.write_text(dump_config(replace(cfg, **settings)))
    return path


async def wait_committed(name: str, admin: AIOKafkaAdminClient, cfg: WorkerConfig, ends: dict[int, int],
                         events: int, proc: subprocess.Popen, log, started: float,
                         timeout: float) -> tuple[float, int, float]:
    """Wait until the runner's group has committed `events`: (time of its first commit, records committed then,
    time it finished). Raises when the runner exits or the timeout passes."""
    first: float | None = None
    first_done = 0
    while True:
        done = await group_committed(admin, cfg.group_id, cfg.topics.gifts, ends)
        now = time.perf_counter()
        if first is None and done > 0:
            first, first_done = now, done
        if done >= events:
            return first, first_done, time.perf_counter()
        if proc.poll() is not None:
            log.seek(0)
            raise RuntimeError(f"{name} exited with {proc.returncode}: {log.read()[-2000:]!r}")
        if now - started > timeout:
            raise TimeoutError(f"{name} committed {done}/{events} in {timeout}s")
        await asyncio.sleep(0.25)


def stop_process(proc: subprocess.Popen, log) -> None:
    """SIGTERM the runner, SIGKILL it after 30 s, close its log file."""
    proc.terminate()
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
    log.close()


async def drain_with_process(name: str, cfg: WorkerConfig, argv: list[str], events: int,
                             timeout: float = 600) -> DrainResult:
    """Start a runner process that commits offsets for cfg.group_id; time it through the backlog."""
    ends = await end_offsets(cfg, cfg.topics.gifts)
    admin = AIOKafkaAdminClient(bootstrap_servers=cfg.bootstrap_servers)
    await admin.start()
    started = time.perf_counter()
    # The runner's log goes to a file: an unread pipe would fill up and stall the runner.
    log = tempfile.TemporaryFile()  # noqa: SIM115 (closed in the finally below, after the process ends)
    proc = subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=log,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        first, first_done, finished = await wait_committed(name, admin, cfg, ends, events, proc, log, started,
                                                           timeout)
    finally:
        stop_process(proc, log)
        await admin.close()
    # Steady state: events committed after the first commit over the time they took.
    return DrainResult(name, events - first_done, finished - first, finished - started)


def native_worker_argv(config: Path) -> list[str]:
    return [sys.executable, "-m", "stream.cli", "worker", "--config", str(config), "--log-level", "WARNING"]


def bare_consumer_argv(cfg: WorkerConfig, batch: int) -> list[str]:
    return [sys.executable, "-m", "load.bare_consumer", "--bootstrap", cfg.bootstrap_servers,
            "--topic", cfg.topics.gifts, "--group", cfg.group_id, "--batch", str(batch)]


async def cleanup(cfg: WorkerConfig) -> None:
    await delete_topics(cfg)


def with_group(cfg: WorkerConfig, suffix: str) -> WorkerConfig:
    return replace(cfg, group_id=f"{cfg.group_id}-{suffix}")
