"""`giftstream worker` processes that load tools start and stop: each with a config TOML and a log file of its
own, its HTTP port, RSS sampled, its JSON log scanned for restores, rebalances and expulsions. Used by
`load state-scale` and `load run --chaos`."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import subprocess
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import orjson

from load.drain import free_port, giftstream_cmd
from stream.config import WorkerConfig, dump_config


def read_status_kb(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM (peak RSS) of a process, in kB, from /proc/<pid>/status ({} once it is gone)."""
    out: dict[str, int] = {}
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(("VmRSS:", "VmHWM:")):
                    name, value = line.split(":", 1)
                    out[name] = int(value.split()[0])
    except OSError:
        pass
    return out


@dataclass
class WorkerLogScan:
    """What a worker's JSON log says: restores, rebalances, expulsions."""

    restored: list[dict[str, Any]] = field(default_factory=list)  # "partition restored" lines
    assignments: int = 0  # "partitions assigned": one per generation this member took part in
    expulsions: list[str] = field(default_factory=list)  # heartbeats refused, fenced, not the owner any more
    errors: list[str] = field(default_factory=list)


EXPELLED_MARKS = ("local member_id was not recognized", "generation id is not  current", "generation id is not current",
                  "fenced: giving up every partition", "not the owner any more", "Heartbeat session expired")


class WorkerProc:
    """A `giftstream worker` process with its own config TOML and log file; RSS sampled while it runs."""

    def __init__(self, name: str, cfg: WorkerConfig, out: Path, extra: tuple[str, ...] = (),
                 checkpoints: bool = False) -> None:
        self.name = name
        self.port = free_port()
        self.config = out / f"{name}.toml"
        self.log = out / f"{name}.log"
        for n in range(2, 100):  # a worker started again (a second restart phase) keeps the first one's log
            if not self.log.exists():
                break
            self.log = out / f"{name}-{n}.log"
        # Checkpoints by worker name: the same worker started again finds its own.
        wcfg = replace(cfg, http_port=self.port, state_dir=str(out / f"state-{name}") if checkpoints else "")
        self.config.write_text(dump_config(wcfg))
        self._out = open(self.log, "wb")  # noqa: SIM115 (closed in stop)
        self.started = time.monotonic()
        self.popen = subprocess.Popen([*giftstream_cmd(), "worker", "--config", str(self.config),
                                       "--worker-id", name, *extra],
                                      stdout=self._out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                      start_new_session=True)
        self.peak_kb = 0
        self.rss_kb = 0
        self.exit_code: int | None = None
        self.stop_seconds: float | None = None
        self._log_pos = 0
        self.scan = WorkerLogScan()

    def alive(self) -> bool:
        return self.popen.poll() is None

    def sample_rss(self) -> None:
        st = read_status_kb(self.popen.pid)
        if st:
            self.rss_kb = st.get("VmRSS", 0)
            self.peak_kb = max(self.peak_kb, st.get("VmHWM", 0), self.rss_kb)

    def read_log(self) -> None:
        """Scan the log lines written since the last call."""
        with contextlib.suppress(OSError), open(self.log, "rb") as f:
            f.seek(self._log_pos)
            data = f.read()
            end = data.rfind(b"\n") + 1
            self._log_pos += end
            for line in data[:end].splitlines():
                self._scan(line)

    def _scan(self, line: bytes) -> None:
        try:
            doc = orjson.loads(line)
        except orjson.JSONDecodeError:
            text = line.decode(errors="replace")
            if "Traceback" in text or "Error" in text:
                self.scan.errors.append(text[:300])
            return
        if not isinstance(doc, dict):
            return
        msg = str(doc.get("msg", ""))
        if msg == "partition restored":
            self.scan.restored.append({k: doc.get(k) for k in ("ts", "partition", "changelog_records", "creators",
                                                               "attempts", "seconds")})
        elif msg == "partitions assigned":
            self.scan.assignments += 1
        if any(m in msg for m in EXPELLED_MARKS):
            self.scan.expulsions.append(f"{doc.get('ts')} {msg[:200]}")
        if doc.get("level") in ("error", "critical") and len(self.scan.errors) < 50:
            self.scan.errors.append(f"{doc.get('ts')} {msg[:300]}")

    async def readyz(self, session: Any) -> tuple[int | None, dict[str, Any] | None]:
        """(status, body) of /readyz; (None, None) while the HTTP side is not up."""
        import aiohttp

        try:
            async with session.get(f"http://127.0.0.1:{self.port}/readyz",
                                   timeout=aiohttp.ClientTimeout(total=2)) as r:
                return r.status, await r.json(content_type=None)
        except (TimeoutError, aiohttp.ClientError, ValueError, OSError):
            return None, None

    def terminate(self) -> None:
        if self.alive():
            self.popen.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        """SIGKILL (no shutdown at all: open transactions are left for the next owner to fence and abort)."""
        if self.alive():
            self.popen.kill()

    def pause(self) -> None:
        """SIGSTOP: the process stays, silent (no heartbeat, no commit), until resume()."""
        if self.alive():
            self.popen.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        if self.alive():
            self.popen.send_signal(signal.SIGCONT)

    async def exited(self, timeout: float) -> int | None:
        """Wait up to `timeout` s for the process to end; its exit code (-signal when a signal ended it), or None."""
        t = time.monotonic()
        while self.alive() and time.monotonic() - t < timeout:
            await asyncio.sleep(0.05)
        return self.popen.poll()

    async def stop(self, timeout: float = 30.0) -> None:
        """SIGTERM, wait up to `timeout` s, then SIGKILL; closes the log file."""
        t = time.monotonic()
        self.resume()  # a stopped process would not see the SIGTERM
        self.terminate()
        if await self.exited(timeout) is None:
            self.popen.kill()
        self.exit_code = self.popen.wait(10)
        if self.stop_seconds is None:
            self.stop_seconds = round(time.monotonic() - t, 2)
        self._out.close()
        self.read_log()
