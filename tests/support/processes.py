"""Helpers for tests that run real processes (`giftstream worker`, prometheus) against the local broker."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import fields
from pathlib import Path

from load.drain import giftstream_cmd
from stream.config import Topics, WorkerConfig, dump_config

ROOT = Path(__file__).resolve().parents[2]
KAFKA_HOME = Path(os.environ.get("GIFTSTREAM_KAFKA_HOME", ROOT / ".local" / "kafka"))
BOOTSTRAP = os.environ.get("GIFTSTREAM_TEST_BOOTSTRAP", "127.0.0.1:19092")
SASL_BOOTSTRAP = os.environ.get("GIFTSTREAM_TEST_SASL_BOOTSTRAP", "127.0.0.1:19094")
SSL_BOOTSTRAP = os.environ.get("GIFTSTREAM_TEST_SSL_BOOTSTRAP", "127.0.0.1:19095")
KAFKA_CA = Path(os.environ.get("GIFTSTREAM_TEST_KAFKA_CA", KAFKA_HOME / "tls" / "ca.pem"))
# the SCRAM test user that deploy/kafka/kafka-up.sh creates (public test values, local broker only)
SCRAM_USER = os.environ.get("GIFTSTREAM_KAFKA_SCRAM_USER", "giftstream")
SCRAM_PASSWORD = os.environ.get("GIFTSTREAM_KAFKA_SCRAM_PASSWORD", "giftstream-test-secret")


def unique_topics(prefix: str) -> tuple[str, Topics]:
    """A unique suffix and Topics named with it, so tests never share topics or groups."""
    suffix = f"{prefix}-{uuid.uuid4().hex[:8]}"
    return suffix, Topics(**{f.name: f"{getattr(Topics(), f.name)}-{suffix}" for f in fields(Topics)})


def write_config(path: Path, topics: Topics, **settings) -> Path:
    """A worker config TOML (see stream.config.load_config): the given settings + [topics]."""
    path.write_text(dump_config(WorkerConfig(topics=topics, **{k: v for k, v in settings.items() if v is not None})))
    return path


def run_cli(*args: str, env: dict[str, str] | None = None, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([*giftstream_cmd(), *args], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})}, cwd=ROOT, stdin=subprocess.DEVNULL)


class Proc:
    """A background process with stdout+stderr in a file; stop() sends SIGTERM, then SIGKILL."""

    def __init__(self, argv: list[str], log: Path, env: dict[str, str] | None = None) -> None:
        self.log = log
        self._out = open(log, "wb")  # noqa: SIM115 (closed in stop)
        self.popen = subprocess.Popen(argv, stdout=self._out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                      env={**os.environ, **(env or {})}, cwd=ROOT, start_new_session=True)

    def alive(self) -> bool:
        return self.popen.poll() is None

    def output(self) -> str:
        if not self._out.closed:
            self._out.flush()
        return self.log.read_text(errors="replace")

    def stop(self, timeout: float = 20) -> int:
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(10)
        self._out.close()
        return self.popen.returncode

    def __enter__(self) -> Proc:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def http_get(url: str, timeout: float = 2) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def wait_until(what: str, check, timeout: float, proc: Proc | None = None, interval: float = 0.25):
    """Poll check() until it returns a truthy value; fail with `what` (and the process log) on timeout."""
    deadline = time.monotonic() + timeout
    last_error = None
    while time.monotonic() < deadline:
        if proc is not None and not proc.alive():
            raise AssertionError(f"{what}: process exited with {proc.popen.returncode}:\n{proc.output()[-3000:]}")
        try:
            result = check()
            if result:
                return result
        except (OSError, ValueError) as e:  # connection refused, not yet JSON, ...
            last_error = e
        time.sleep(interval)
    tail = f"\n--- log ---\n{proc.output()[-3000:]}" if proc is not None else ""
    raise AssertionError(f"timed out after {timeout:g} s waiting for {what} (last error: {last_error!r}){tail}")


def wait_ready(port: int, proc: Proc, timeout: float = 45) -> dict:
    """Wait for /readyz to answer 200 (every assigned partition restored)."""
    def ready():
        status, body = http_get(f"http://127.0.0.1:{port}/readyz")
        return json.loads(body) if status == 200 else None
    return wait_until(f"worker /readyz on port {port}", ready, timeout, proc)


def start_worker(config: Path, port: int, log: Path, env: dict[str, str] | None = None,
                 extra: tuple[str, ...] = ()) -> Proc:
    return Proc([*giftstream_cmd(), "worker", "--config", str(config), "--http-port", str(port), *extra],
                log, env)
