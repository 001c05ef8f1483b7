"""`giftstream load run --chaos`: faults at seeded times while the load flows, and how long each took to heal.

The run (load.run.LoadRun) produces at its rate and verifies as always; a Chaos beside it starts the workers
(load.workers.WorkerProc: `giftstream worker` processes) and injects the planned faults into them and into the
brokers (load.cluster.Cluster for the three-broker cluster, SingleNode for `make kafka-up`'s):

  worker-kill   SIGKILL a worker and start it again at once (a crash, and its supervisor's restart)
  worker-term   SIGTERM a worker (a rolling deploy) and start it again once it has exited
  worker-stop   SIGSTOP a worker for its session timeout plus STOP_PAST_SESSION_S (a VM or GC pause: the group
                expels it, its partitions move), then SIGCONT (the zombie wakes and must give them up)
  broker-kill   SIGKILL the broker that leads the most gifts partitions (the single node: it), start it again
                after BROKER_DOWN_S and wait until every partition has its full ISR again
  worker-add    start one more worker (a scale-out, a rebalance), SIGTERM it ADD_HOLD_S later (the scale-in)

The plan (plan_faults, pure) is deterministic from the seed: `count` faults, the kinds taken in turn and shuffled,
one per slot of equal length between `first_at` and the end of producing minus `tail`, each at a seeded time in
the first half of its slot, its target worker drawn too. Faults run one after another: one that is due while the
last is still acting waits for it (`overlapped` in the report when the one before had not healed yet).

A fault has healed (heal_time, pure) at the first committed-offset poll at which every gifts partition has
committed at least the end offset it had when the fault began, and the total lag is back under its level
before the fault (the highest lag polled in the PRE_FAULT_S before it), counting from the fault's start (a
worker-add from the end of its action: judged_from). Its recovery time is measured from the fault's start, and
its window runs from its start to its healing. The latency around a fault is that of the records in flight in
its window (sent before it ended, committed after it began); "outside the fault windows" is every record after
the warm-up in flight in no window. A chain of overlapping faults heals to the level before its first fault.
"""

from __future__ import annotations

import asyncio
import bisect
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from enum import StrEnum
from pathlib import Path
from typing import Any, Protocol

from load.latency import LatencySample, percentiles
from load.workers import WorkerProc
from stream.config import WorkerConfig


class FaultKind(StrEnum):
    WORKER_KILL = "worker-kill"
    WORKER_TERM = "worker-term"
    WORKER_STOP = "worker-stop"
    BROKER_KILL = "broker-kill"
    WORKER_ADD = "worker-add"


ALL_KINDS = tuple(FaultKind)
STOP_PAST_SESSION_S = 2.0
BROKER_DOWN_S = 2.0
ADD_HOLD_S = 8.0
PRE_FAULT_S = 5.0
READY_TIMEOUT_S = 120.0


@dataclass(frozen=True)
class PlannedFault:
    at: float  # seconds after producing started
    kind: FaultKind
    worker: int  # index of the target among the run's workers (worker faults)


def plan_faults(seed: int, kinds: Sequence[FaultKind], count: int, duration: float, workers: int,
                first_at: float = 5.0, tail: float = 5.0, min_slot_s: float = 4.0) -> list[PlannedFault]:
    """`count` faults of `kinds` over [first_at, duration - tail], one per slot (see the module docstring)."""
    if count <= 0 or not kinds:
        return []
    span = duration - tail - first_at
    slot = span / count
    if slot < min_slot_s:
        raise ValueError(f"{count} faults in {span:g} s of producing leave {slot:.1f} s each; a fault needs at "
                         f"least {min_slot_s:g} s (a longer --duration or fewer --faults)")
    rng = random.Random(seed)
    order = [kinds[i % len(kinds)] for i in range(count)]
    rng.shuffle(order)
    return [PlannedFault(round(first_at + i * slot + rng.uniform(0, slot / 2), 3), kind, rng.randrange(workers))
            for i, kind in enumerate(order)]


@dataclass
class FaultRecord:
    """What one fault did, filled in as it runs and after the run (heal)."""

    kind: str
    planned_at: float
    at: float = 0.0  # when its action began (later than planned when the fault before it was still acting)
    target: str = ""  # the worker's name or "broker <node id>"
    action_s: float = 0.0  # how long the action took (down, stopped, restarted, held)
    details: dict[str, Any] = field(default_factory=dict)
    overlapped: bool = False  # the fault before had not healed when this one began
    pre_fault_lag: int | None = None
    max_lag: int | None = None
    healed_at: float | None = None
    recovery_s: float | None = None  # healed_at - at
    latency_s: dict[str, float | None] = field(default_factory=dict)  # records sent in [at, healed_at]


@dataclass(frozen=True)
class OffsetsSample:
    t: float
    committed: dict[int, int]
    ends: dict[int, int]

    @property
    def lag(self) -> int:
        return sum(max(0, end - self.committed.get(p, 0)) for p, end in self.ends.items())


def pre_fault_lag(samples: Sequence[OffsetsSample], began: float) -> int | None:
    """The highest lag polled in the PRE_FAULT_S before `began` (the last poll before it when none is that close)."""
    times = [s.t for s in samples]
    i0 = bisect.bisect_left(times, began)
    before = samples[bisect.bisect_left(times, began - PRE_FAULT_S):i0]
    if before:
        return max(s.lag for s in before)
    return samples[i0 - 1].lag if i0 else None


def heal_time(samples: Sequence[OffsetsSample], began: float, acted: float, level: int | None = None
              ) -> tuple[float | None, int | None, int]:
    """(healed_at or None, the lag level to heal to, max lag from `began` to healed or the end) from the polls, in
    time order. `level`: the lag to heal to (default: pre_fault_lag; a fault that began before the one before it had
    healed is given that one's level, the steady state before both)."""
    times = [s.t for s in samples]
    i0 = bisect.bisect_left(times, began)
    if i0 == 0:
        return None, None, 0
    pre_lag = pre_fault_lag(samples, began) if level is None else level
    ends_then = samples[i0 - 1].ends
    max_lag = 0
    for s in samples[i0:]:
        max_lag = max(max_lag, s.lag)
        if s.t < acted:
            continue
        if s.lag <= pre_lag and all(s.committed.get(p, 0) >= end for p, end in ends_then.items()):
            return s.t, pre_lag, max_lag
    return None, pre_lag, max_lag


def judged_from(rec: FaultRecord) -> float:
    """When a fault's healing starts to count: a worker-add disrupts when the new member joins and again when it
    leaves, so after its action; every other fault at once (a killed or stopped worker's partitions cannot pass
    their ends until they move, a single broker's until it is back; a cluster heals before the broker returns)."""
    return rec.at + rec.action_s if rec.kind == FaultKind.WORKER_ADD.value else rec.at


class Brokers(Protocol):
    """What chaos needs of the brokers: load.cluster.Cluster and SingleNode both are."""

    node_ids: tuple[int, ...]

    def kill(self, node: int) -> None: ...
    def start(self, node: int) -> None: ...
    async def leader_counts(self, topic: str) -> dict[int, int]: ...
    async def wait_healthy(self, timeout: float = 120, topics: list[str] | None = None) -> float: ...


@dataclass
class ChaosOptions:
    kinds: tuple[FaultKind, ...] = ALL_KINDS
    faults: int = 10
    duration: float = 60.0  # seconds of producing the faults are spread over (the run's --duration)
    workers: int = 2
    seed: int = 1
    session_timeout_ms: int = 6_000  # the workers': a stopped one is expelled after it
    out: Path = Path("out/chaos")
    worker_args: tuple[str, ...] = ()


class Chaos:
    """The workers of a chaos run and the faults injected into them and the brokers.

    The plan is made here, so a plan that does not fit the duration is refused (ValueError) before any worker
    starts. start() starts `workers` workers and waits until each is ready; run(clock) injects the plan (an
    asyncio task beside the load); observe() takes every committed-offset poll; report() heals the faults
    against the polls and the latencies; stop() stops every worker it started (SIGTERM, then SIGKILL)."""

    def __init__(self, cfg: WorkerConfig, brokers: Brokers, opts: ChaosOptions) -> None:
        self.opts = opts
        self.brokers = brokers
        self.cfg = replace(cfg, session_timeout_ms=opts.session_timeout_ms)
        self.workers: list[WorkerProc] = []  # the base workers, a slot each: a restarted one takes its slot
        self.extra: list[WorkerProc] = []  # the worker-add ones while they run
        self.retired: list[WorkerProc] = []  # every process that ended, and how
        self.records: list[FaultRecord] = []
        self.samples: list[OffsetsSample] = []
        self.unexpected_exits: list[str] = []
        self.plan = plan_faults(opts.seed, opts.kinds, opts.faults, opts.duration, opts.workers)
        self._added = 0
        self._clock: Callable[[], float] = time.monotonic

    # ------------------------------------------------------------ workers
    def _worker(self, name: str) -> WorkerProc:
        self.opts.out.mkdir(parents=True, exist_ok=True)
        return WorkerProc(name, self.cfg, self.opts.out, self.opts.worker_args)

    async def start(self) -> None:
        self.workers = [self._worker(f"w{i + 1}") for i in range(self.opts.workers)]
        await asyncio.gather(*(self._ready(w) for w in self.workers))

    async def _ready(self, w: WorkerProc, timeout: float = READY_TIMEOUT_S) -> float:
        """Wait until the worker answers 200 on /readyz; seconds it took (raises when it exits or times out)."""
        import aiohttp

        t = time.monotonic()
        async with aiohttp.ClientSession() as session:
            while time.monotonic() - t < timeout:
                if not w.alive():
                    w.read_log()
                    raise RuntimeError(f"worker {w.name} exited with {w.popen.poll()}: see {w.log}")
                status, _ = await w.readyz(session)
                if status == 200:
                    return time.monotonic() - t
                await asyncio.sleep(0.1)
        raise TimeoutError(f"worker {w.name} not ready after {timeout:g} s: see {w.log}")

    def _check_alive(self) -> None:
        """A worker that ended without being told to is a defect: noted, and started again (the run goes on)."""
        for i, w in enumerate(self.workers):
            if not w.alive():
                w.read_log()
                self.unexpected_exits.append(f"{w.name} exited with {w.popen.poll()} at {self._clock():.1f} s "
                                             f"(log {w.log})")
                self.retired.append(w)
                self.workers[i] = self._worker(w.name)

    async def stop(self) -> None:
        for w in [*self.workers, *self.extra]:
            await w.stop(timeout=30)
            self.retired.append(w)
        self.workers, self.extra = [], []

    # ------------------------------------------------------------ faults
    def observe(self, t: float, committed: dict[int, int], ends: dict[int, int]) -> None:
        self.samples.append(OffsetsSample(t, dict(committed), dict(ends)))

    async def run(self, clock: Callable[[], float]) -> None:
        """Inject the plan, each fault when `clock` (seconds since producing started) reaches it, then return."""
        self._clock = clock
        for planned in self.plan:
            wait = planned.at - clock()
            while wait > 0:
                await asyncio.sleep(min(wait, 0.5))
                self._check_alive()
                wait = planned.at - clock()
            self._check_alive()
            rec = FaultRecord(planned.kind.value, planned.at, at=round(clock(), 3))
            self.records.append(rec)
            t0 = time.monotonic()
            try:
                await self._inject(planned, rec)
            except (RuntimeError, TimeoutError, OSError) as e:  # a worker that would not start again, a broker...
                rec.details["error"] = f"{type(e).__name__}: {e}"  # reported and checked; the run goes on
            rec.action_s = round(time.monotonic() - t0, 3)
        self._check_alive()

    async def _inject(self, planned: PlannedFault, rec: FaultRecord) -> None:
        kind = planned.kind
        if kind is FaultKind.BROKER_KILL:
            await self._broker_kill(rec)
            return
        if kind is FaultKind.WORKER_ADD:
            self._added += 1
            w = self._worker(f"x{self._added}")
            self.extra.append(w)
            rec.target = w.name
            rec.details["ready_s"] = round(await self._ready(w), 3)
            await asyncio.sleep(ADD_HOLD_S)
            await w.stop(timeout=30)
            rec.details["exit_code"], rec.details["stop_s"] = w.exit_code, w.stop_seconds
            self.extra.remove(w)
            self.retired.append(w)
            return
        i = planned.worker % len(self.workers)
        w = self.workers[i]
        rec.target = w.name
        if kind is FaultKind.WORKER_STOP:
            w.pause()
            await asyncio.sleep(self.cfg.session_timeout_ms / 1000 + STOP_PAST_SESSION_S)
            w.resume()
            return
        if kind is FaultKind.WORKER_KILL:
            w.kill()
            rec.details["exit_code"] = await w.exited(30)
        else:  # WORKER_TERM: a clean shutdown, then the same worker again
            t = time.monotonic()
            w.terminate()
            rec.details["exit_code"] = await w.exited(60)
            rec.details["exit_s"] = round(time.monotonic() - t, 3)
        await w.stop(timeout=5)  # reaped, its log closed
        self.retired.append(w)
        self.workers[i] = nw = self._worker(w.name)
        rec.details["ready_s"] = round(await self._ready(nw), 3)

    async def _broker_kill(self, rec: FaultRecord) -> None:
        topic = self.cfg.topics.gifts
        counts = await self.brokers.leader_counts(topic)
        node = max(counts, key=lambda n: (counts[n], -n))
        rec.target = f"broker {node}"
        rec.details["led"] = counts[node]
        await asyncio.to_thread(self.brokers.kill, node)
        await asyncio.sleep(BROKER_DOWN_S)
        t = time.monotonic()
        await asyncio.to_thread(self.brokers.start, node)
        rec.details["start_s"] = round(time.monotonic() - t, 3)
        rec.details["in_sync_s"] = round(await self.brokers.wait_healthy(timeout=180), 3)

    # ------------------------------------------------------------ after the run
    def report(self, samples: list[LatencySample], warmup: float) -> dict[str, Any]:
        """Heal every fault against the polls; latencies around and outside the faults; a summary per kind."""
        windows: list[tuple[float, float]] = []
        last_end = self.samples[-1].t if self.samples else 0.0
        prev_healed: float | None = 0.0
        level: int | None = None  # the steady lag before a chain of overlapping faults
        for rec in self.records:
            rec.overlapped = prev_healed is None or prev_healed > rec.at
            if not rec.overlapped:
                level = pre_fault_lag(self.samples, rec.at)
            healed, rec.pre_fault_lag, rec.max_lag = heal_time(self.samples, rec.at, judged_from(rec), level)
            rec.healed_at = None if healed is None else round(healed, 3)
            rec.recovery_s = None if healed is None else round(healed - rec.at, 3)
            end = healed if healed is not None else last_end
            windows.append((rec.at, end))
            # the records in flight at any moment of the window: sent before its end, committed after its start
            rec.latency_s = percentiles([s for s in samples if s.committed_at >= rec.at
                                         and s.committed_at - s.latency <= end], (50, 99))
            prev_healed = healed
        outside = [s for s in samples if s.committed_at >= warmup
                   and not any(s.committed_at >= a and s.committed_at - s.latency <= b for a, b in windows)]
        by_kind: dict[str, dict[str, Any]] = {}
        for kind in [k.value for k in ALL_KINDS if any(r.kind == k.value for r in self.records)]:
            recs = [r for r in self.records if r.kind == kind]
            rec_s = sorted(r.recovery_s for r in recs if r.recovery_s is not None)
            by_kind[kind] = {"faults": len(recs), "healed": len(rec_s),
                             "recovery_p50_s": rec_s[len(rec_s) // 2] if rec_s else None,
                             "recovery_max_s": rec_s[-1] if rec_s else None,
                             "p99_in_fault_max_s": max((r.latency_s.get("p99") or 0 for r in recs), default=None)}
        return {"seed": self.opts.seed, "workers": self.opts.workers, "session_timeout_ms": self.cfg.session_timeout_ms,
                "plan": [asdict(p) for p in self.plan],
                "faults": [asdict(r) for r in self.records], "by_kind": by_kind,
                "healed": sum(r.healed_at is not None for r in self.records),
                "latency_outside_faults_s": percentiles(outside, (50, 99)),
                "outside_records": sum(s.records for s in outside),
                "unexpected_exits": list(self.unexpected_exits),
                "worker_exits": [{"worker": w.name, "exit_code": w.exit_code, "stop_s": w.stop_seconds,
                                  "log": str(w.log)} for w in self.retired]}


def checks(chaos_report: dict[str, Any]) -> list[tuple[str, bool, str]]:
    """The chaos run's own checks, beside the verification's: every fault acted and healed, every SIGTERM ended
    its worker cleanly, no worker ended by itself."""
    faults, healed = chaos_report["faults"], chaos_report["healed"]
    failed = [f"{f['kind']} at {f['at']} s: {f['details']['error']}" for f in faults if "error" in f["details"]]
    termed = [f for f in faults if f["kind"] in (FaultKind.WORKER_TERM.value, FaultKind.WORKER_ADD.value)]
    unclean = [f"{f['target']} at {f['at']} s: {f['details'].get('exit_code')}" for f in termed
               if f["details"].get("exit_code") != 0]
    exits = chaos_report["unexpected_exits"]
    return [("every fault acted and healed (every partition past its ends at the fault, lag back under its level)",
             healed == len(faults) and not failed, f"{healed} of {len(faults)} faults healed"
             + (f"; actions failed: {'; '.join(failed)}" if failed else "")),
            ("every SIGTERM ended its worker with exit code 0", not unclean,
             f"{len(termed)} SIGTERMs" + (f"; not clean: {'; '.join(unclean)}" if unclean else "")),
            ("no worker ended on its own", not exits, "; ".join(exits) if exits else "none")]


def kinds_arg(text: str) -> tuple[FaultKind, ...]:
    """`all` or a comma-separated list of kinds."""
    if text.strip() == "all":
        return ALL_KINDS
    try:
        return tuple(FaultKind(k.strip()) for k in text.split(",") if k.strip())
    except ValueError as e:
        raise ValueError(f"{e}: the kinds are {', '.join(k.value for k in ALL_KINDS)} or all") from e


def fmt_s(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.2f} s"
