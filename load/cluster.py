"""The loopback Kafka cluster (deploy/kafka/kafka-cluster.sh, kafka-node.sh) from Python, for tests and chaos
runs: bring it up or down, stop / SIGKILL / start one node, and ask the cluster who leads which partition and
whether every replica is back in sync.

    cluster = Cluster()                      # KAFKA_NODES=3, <repo>/.local/kafka-cluster, ports 19500..19700
    cluster.up()                             # kafka-cluster.sh up (no-op when it runs)
    node = max((await cluster.leader_counts("gifts")).items(), key=lambda kv: kv[1])[0]
    cluster.kill(node)                       # SIGKILL; cluster.stop(node) is SIGTERM
    cluster.start(node)                      # back, answering on its port
    await cluster.wait_healthy()             # every partition led, its ISR = its replicas, all brokers registered

The shell calls (up, down, kill, stop, start) block: from a running event loop, `await asyncio.to_thread(...)`
them so clients on that loop keep going.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from aiokafka.errors import KafkaError, for_code

ROOT = Path(__file__).resolve().parents[1]
CLUSTER_SH = ROOT / "deploy" / "kafka" / "kafka-cluster.sh"
NODE_SH = ROOT / "deploy" / "kafka" / "kafka-node.sh"
SINGLE_UP_SH = ROOT / "deploy" / "kafka" / "kafka-up.sh"
SINGLE_DOWN_SH = ROOT / "deploy" / "kafka" / "kafka-down.sh"


@dataclass(frozen=True)
class PartitionState:
    topic: str
    partition: int
    leader: int  # -1: none
    replicas: tuple[int, ...]
    isr: tuple[int, ...]

    @property
    def healthy(self) -> bool:
        return self.leader >= 0 and set(self.isr) == set(self.replicas)


class Cluster:
    def __init__(self, nodes: int = 3, home: Path | str | None = None, port_base: int = 19400,
                 env: dict[str, str] | None = None) -> None:
        self.nodes, self.port_base = nodes, port_base
        self.home = Path(home) if home else ROOT / ".local" / "kafka-cluster"
        self.env = {**os.environ, **(env or {}), "KAFKA_NODES": str(nodes),
                    "GIFTSTREAM_KAFKA_CLUSTER_HOME": str(self.home),
                    "GIFTSTREAM_KAFKA_CLUSTER_PORT_BASE": str(port_base)}
        self.env.setdefault("GIFTSTREAM_PYTHON", sys.executable)  # the scripts' probes need aiokafka
        self.node_ids = tuple(range(1, nodes + 1))
        self.bootstrap = ",".join(f"127.0.0.1:{self.port(n)}" for n in self.node_ids)

    def port(self, node: int) -> int:
        return self.port_base + 100 * node

    def _run(self, argv: list[str], timeout: float) -> subprocess.CompletedProcess:
        done = subprocess.run(["bash", *argv], env=self.env, capture_output=True, text=True, timeout=timeout,
                              stdin=subprocess.DEVNULL)
        if done.returncode:
            raise RuntimeError(f"{' '.join(argv)} exited with {done.returncode}:\n{done.stdout}\n{done.stderr}")
        return done

    # ------------------------------------------------------------ the whole cluster
    def is_up(self) -> bool:
        """Every node runs and answers on its port."""
        return subprocess.run(["bash", str(CLUSTER_SH), "status"], env=self.env, capture_output=True,
                              timeout=60).returncode == 0

    def up(self, fresh: bool = False) -> None:
        """Start every node that is not running and wait until all are registered and coordinators answer."""
        self._run([str(CLUSTER_SH), "up", *(["--fresh"] if fresh else [])], timeout=240)

    def down(self, wipe: bool = False) -> None:
        self._run([str(CLUSTER_SH), "down", *(["--wipe"] if wipe else [])], timeout=120)

    # ------------------------------------------------------------ one node
    def kill(self, node: int) -> None:
        """SIGKILL the node and wait until it is gone (no clean shutdown, no leadership handed over)."""
        self._run([str(NODE_SH), "kill", str(node)], timeout=60)

    def stop(self, node: int) -> None:
        """SIGTERM: a clean shutdown (its leaderships move first); SIGKILL after the scripts' stop timeout."""
        self._run([str(NODE_SH), "stop", str(node)], timeout=120)

    def start(self, node: int) -> None:
        """Start the node (data kept) and wait until it answers; its replicas catch up afterwards (wait_healthy)."""
        self._run([str(NODE_SH), "start", str(node)], timeout=180)

    def running(self, node: int) -> bool:
        return subprocess.run(["bash", str(NODE_SH), "status", str(node)], env=self.env, capture_output=True,
                              timeout=60).returncode == 0

    def pid(self, node: int) -> int | None:
        try:
            return int((self.home / f"node-{node}" / "kafka.pid").read_text())
        except (OSError, ValueError):
            return None

    # ------------------------------------------------------------ what the cluster says
    async def _ask(self, call, attempts: int = 20):
        """call(admin) on a fresh admin client; again (another node) while one fails: a node just killed is
        still in the metadata until the controller fences it, and a request sent to it fails."""
        for attempt in range(attempts):
            admin = AIOKafkaAdminClient(bootstrap_servers=self.bootstrap, request_timeout_ms=10_000)
            try:
                await admin.start()
                return await call(admin)
            except (KafkaError, OSError):
                if attempt == attempts - 1:
                    raise
            finally:
                await admin.close()
            await asyncio.sleep(0.25)

    async def brokers(self) -> list[int]:
        """Node ids of the brokers the metadata lists (registered and not fenced)."""
        cluster = await self._ask(lambda admin: admin.describe_cluster())
        return sorted(b["node_id"] for b in cluster["brokers"])

    async def partitions(self, topics: list[str] | None = None) -> list[PartitionState]:
        """Leader, replicas and ISR of every partition of `topics` (None: every topic, internal ones included)."""
        async def describe(admin: AIOKafkaAdminClient) -> list:
            described = await admin.describe_topics(topics)
            for t in described:  # e.g. a topic created moments ago and not yet known to the broker asked: again
                if t["error_code"]:
                    raise for_code(t["error_code"])(f"metadata of {t['topic']}")
            return described

        states = []
        for t in await self._ask(describe):
            states += [PartitionState(t["topic"], p["partition"], p["leader"], tuple(p["replicas"]), tuple(p["isr"]))
                       for p in t["partitions"]]
        return states

    async def topic_config(self, topic: str, name: str) -> str | None:
        """The value of the topic's config `name` (None: not set and no default)."""
        async def describe(admin: AIOKafkaAdminClient) -> str | None:
            (response,) = await admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, topic, {name: None})])
            error_code, message, _, _, entries = response.resources[0][:5]
            if error_code:  # e.g. a topic created moments ago and not yet known to the broker asked: again
                raise for_code(error_code)(f"config of {topic}: {message}")
            return {entry[0]: entry[1] for entry in entries}.get(name)

        return await self._ask(describe)

    async def leaders(self, topic: str) -> dict[int, int]:
        """partition -> its leader's node id (-1: none)."""
        return {p.partition: p.leader for p in await self.partitions([topic])}

    async def leader_counts(self, topic: str) -> dict[int, int]:
        """node id -> partitions of `topic` it leads (every node listed, 0 included)."""
        counts = Counter(p.leader for p in await self.partitions([topic]) if p.leader >= 0)
        return {n: counts.get(n, 0) for n in self.node_ids}

    async def wait_healthy(self, timeout: float = 120, topics: list[str] | None = None) -> float:
        """Wait until every node is a registered broker and every partition (of `topics`; None: all) has a
        leader and its full ISR. Returns the seconds it took."""
        t0 = time.monotonic()
        last: object = None
        while True:
            try:
                brokers = await self.brokers()
                bad = [p for p in await self.partitions(topics) if not p.healthy]
                if brokers == list(self.node_ids) and not bad:
                    return time.monotonic() - t0
                last = f"brokers {brokers}, {len(bad)} partitions not in sync, e.g. {bad[:3]}"
            except Exception as e:  # a node just killed: a request to it fails, the next one goes elsewhere
                last = repr(e)
            if time.monotonic() - t0 > timeout:
                raise TimeoutError(f"cluster not healthy after {timeout:g} s: {last}")
            await asyncio.sleep(0.5)


class SingleNode:
    """The single node (deploy/kafka/kafka-up.sh, `make kafka-up`) as a one-node Cluster for the chaos harness:
    node id 1, SIGKILLed and started again (data kept) through the same script. `env` takes the script's
    settings (GIFTSTREAM_KAFKA_HOME, GIFTSTREAM_KAFKA_PORT, ...) for a broker of its own; by default the one
    `make kafka-up` runs."""

    node_ids = (1,)

    def __init__(self, env: dict[str, str] | None = None) -> None:
        self.env = {**os.environ, **(env or {}), "GIFTSTREAM_KAFKA_FRESH": "0"}  # a restart keeps the data
        self.env.setdefault("GIFTSTREAM_PYTHON", sys.executable)
        self.home = Path(self.env.get("GIFTSTREAM_KAFKA_HOME", ROOT / ".local" / "kafka"))
        self.bootstrap = f"127.0.0.1:{self.env.get('GIFTSTREAM_KAFKA_PORT', '19092')}"

    def pid(self, node: int = 1) -> int | None:
        try:
            return int((self.home / "kafka.pid").read_text())
        except (OSError, ValueError):
            return None

    def kill(self, node: int = 1) -> None:
        """kill -9 and wait until it is gone: no clean shutdown, no flush beyond what the OS has."""
        pid = self.pid()
        if pid is None:
            raise RuntimeError(f"no broker pid in {self.home / 'kafka.pid'}")
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 30
        while _running(pid):
            if time.monotonic() > deadline:
                raise RuntimeError(f"broker {pid} survived SIGKILL")
            time.sleep(0.05)

    def start(self, node: int = 1) -> None:
        """Start it (or again, keeping its data) and wait until it answers and its coordinators are up."""
        done = subprocess.run(["bash", str(SINGLE_UP_SH)], env=self.env, capture_output=True, text=True,
                              timeout=180, stdin=subprocess.DEVNULL)
        if done.returncode:
            raise RuntimeError(f"kafka-up.sh exited with {done.returncode}:\n{done.stdout}\n{done.stderr}")

    def down(self, wipe: bool = False) -> None:
        subprocess.run(["bash", str(SINGLE_DOWN_SH), *(["--wipe"] if wipe else [])], env=self.env,
                       capture_output=True, timeout=120, stdin=subprocess.DEVNULL)

    async def leader_counts(self, topic: str) -> dict[int, int]:
        return {1: 1}  # it leads everything

    async def wait_healthy(self, timeout: float = 120, topics: list[str] | None = None) -> float:
        return 0.0  # one replica: in sync once it answers, which start() waited for


def _running(pid: int) -> bool:
    """The process exists and is not a zombie (a killed child of ours stays one until reaped)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            return not any(line.startswith("State:") and "Z" in line for line in f)
    except OSError:
        return False


def main(argv: list[str] | None = None) -> int:
    """python -m load.cluster leaders TOPIC | healthy [TIMEOUT]: the leader counts, or wait for a full ISR."""
    import argparse

    ap = argparse.ArgumentParser(prog="python -m load.cluster", description=main.__doc__)
    ap.add_argument("--nodes", type=int, default=int(os.environ.get("KAFKA_NODES", "3")))
    sub = ap.add_subparsers(dest="what", required=True)
    sub.add_parser("leaders").add_argument("topic")
    sub.add_parser("healthy").add_argument("timeout", type=float, nargs="?", default=120)
    args = ap.parse_args(argv)
    cluster = Cluster(args.nodes)
    if args.what == "leaders":
        print(asyncio.run(cluster.leader_counts(args.topic)))
    else:
        print(f"healthy after {asyncio.run(cluster.wait_healthy(args.timeout)):.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
