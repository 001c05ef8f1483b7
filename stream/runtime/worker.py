"""The streaming worker: an aiokafka consumer group in, one Kafka transaction per partition batch out.

The worker manages one PartitionTask (stream.runtime.task) per assigned input partition; the task owns its engine,
changelog writer and transactional producer, its restore and its commit order. The worker's poll loop does,
over and over:
1. start the restores that are due (new tasks, and failed ones after their backoff), as background work:
   the loop keeps polling and the consumer keeps heartbeating however long a restore takes;
2. poll; a restored task's partitions are resumed, all others stay paused (never polled unprocessed);
3. hand the polled records to their tasks; each running task processes what its merge of the inputs can decide
   (stream.engine.order: one order by record timestamp) and commits it in its own transaction;
4. act on the typed outcomes: TaskCorrupted -> a new task restores from the last commit (with backoff),
   TaskMigrated -> close every task and rejoin the group;
5. note progress (commits, caught-up partitions) for /readyz and /healthz (`health()`);
6. write the local checkpoint of a running partition when one is due (stream.state.checkpoint), one at a time.
The rebalance callback only records what changed (new tasks, paused; revoked tasks, closed): it does no
broker I/O for restores, so its exceptions (which aiokafka logs and swallows) cannot leave a partition
polled without a task.

State across restarts and rebalances: every restore reads the changelog through one ChangelogReader (one
restore consumer for every partition). aiokafka 0.14 rebalances eagerly (every rebalance revokes everything,
then assigns), with the range assignor (gifts-p, payouts-p and creator-accounts-p together; a member keeps the
same partitions while the group's members stay the same). So a revoked running task leaves its state behind
(KeptState), and if the next assignment hands the partition back and its changelog has not moved, the task runs on
it at once.
A restarted worker starts from its local checkpoints, when state_dir holds them.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener, TopicPartition

from stream.config import WorkerConfig
from stream.engine.policy import Policy
from stream.engine.protocol import Outputs
from stream.kafka import aiokafka_patches, columnar_fetch
from stream.kafka.clients import KafkaClients, close_within
from stream.runtime.restore import ChangelogReader
from stream.runtime.task import (
    RESTORE_STALL_S,
    KeptState,
    OutputTopics,
    PartitionTask,
    TaskAwaitsRebalance,
    TaskCorrupted,
    TaskMigrated,
    TaskState,
    outcome_of,
)
from stream.service.metrics import Metrics
from stream.state.checkpoint import CheckpointStore

aiokafka_patches.install()
log = logging.getLogger(__name__)

REBALANCE_RECHECK_S = 0.5  # a restore that met a rebalance asks again this soon, if the rebalance left it here
RETRY_FIRST_S, RETRY_MAX_S = 1.0, 30.0  # restore retries back off from the first to the longest wait
LOOP_STALL_S = 120.0  # a consume loop that has not come back from a poll for this long is hung


class GcPacer:
    """Keeps CPython's full (generation 2) collections from stalling the consume loop.

    The dedupe state holds a few very large containers (the `seen` set, the per-minute id lists), and a
    full collection walks every element of every tracked container: with ~1.4 M event ids, 150-400 ms
    with the event loop stopped. Full collections also come often, about once a second at 48,000/s,
    because CPython starts one when the objects promoted since the last one exceed a quarter of the old
    ones, and each batch's in-flight ConsumerRecords are promoted. So after a batch, at most once every
    `freeze_every` seconds, gc.freeze() moves everything that is alive into the permanent generation,
    which collections skip; only objects made since then are walked. Objects freed by reference counting
    leave the permanent generation as usual; only garbage reference cycles that were caught by a freeze
    would stay, so every `full_every` seconds the pacer unfreezes and runs one full collection (one pause)
    before freezing again."""

    def __init__(self, freeze_every: float = 1.0, full_every: float = 600.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.freeze_every, self.full_every, self.clock = freeze_every, full_every, clock
        self._frozen_at = self._full_at = clock()

    def after_restore(self) -> None:
        """Once partitions are restored, before their traffic: one full collection now, then freeze what is
        left. The first batches otherwise pay for a full collection of everything start-up made (15 ms in
        the first batch of a fresh worker)."""
        gc.collect()
        gc.freeze()
        self._frozen_at = self.clock()

    def after_batch(self) -> None:
        now = self.clock()
        if now - self._full_at >= self.full_every:
            gc.unfreeze()
            gc.collect()
            self._full_at = now
        elif now - self._frozen_at < self.freeze_every:
            return
        gc.freeze()
        self._frozen_at = now


@dataclass(frozen=True)
class Health:
    """What /healthz (live) and /readyz (ready) answer, with the reasons and every task's state."""

    live: bool
    ready: bool
    reasons: list[str]
    partitions: dict[int, dict]


class _Rebalance(ConsumerRebalanceListener):
    def __init__(self, worker: Worker) -> None:
        self.worker = worker

    async def on_partitions_revoked(self, revoked: Iterable[TopicPartition]) -> None:
        await self.worker._on_revoked(revoked)

    async def on_partitions_assigned(self, assigned: Iterable[TopicPartition]) -> None:
        self.worker._on_assigned(assigned)


class Worker:
    """One member of the consumer group `cfg.group_id`: its poll loop (the module docstring numbers it), one
    PartitionTask per assigned partition, and the health /healthz and /readyz report. `clients` is the
    factory of every Kafka client it makes (tests hand it fakes). Run it with `await worker.run()`; `stop()`
    makes run() finish the batch in hand, commit it and leave the group."""

    def __init__(self, cfg: WorkerConfig, policy: Policy, metrics: Metrics | None = None,
                 worker_id: str = "worker", clients: KafkaClients | None = None) -> None:
        self.cfg = cfg
        self.policy = policy
        self.metrics = metrics or Metrics()
        self.worker_id = worker_id
        self.clients = clients or KafkaClients(cfg)
        self.tasks: dict[int, PartitionTask] = {}  # every owned partition's task, whatever its state
        self._stopping = asyncio.Event()
        self._lock = asyncio.Lock()  # a batch and a rebalance never interleave
        self._consumer: AIOKafkaConsumer | None = None
        self._plain_producer: AIOKafkaProducer | None = None  # at-least-once mode only
        self._outputs = OutputTopics(cfg)
        self._last_poll: float | None = None
        self._max_polled = cfg.batch_max_records  # getmany's max_records (chunks when fetching columnar)
        self._gc = GcPacer()
        self._lost: str | None = None  # why every task must be given up (TaskMigrated), until the rejoin
        self._assigned = False  # the group has given this member its assignment (False while rebalancing)
        self._reader = ChangelogReader(self.clients, cfg.topics.changelog, RESTORE_STALL_S, worker_id)
        self._checkpoints = CheckpointStore(cfg.state_dir, cfg.group_id, cfg.topics.changelog) if cfg.state_dir \
            else None
        self._kept: dict[int, KeptState] = {}  # revoked partitions' state, until the next assignment
        self._checkpointing: asyncio.Future | None = None  # the checkpoint being written, if any

    # ------------------------------------------------------------------ lifecycle

    def stop(self) -> None:
        """Ask the loop to finish the batch in hand, commit it and leave the group (SIGTERM)."""
        self._stopping.set()

    @property
    def ready(self) -> bool:
        """Assigned, and every owned partition is restored and running (health() says more: progress too)."""
        return self._assigned and all(task.state is TaskState.RUNNING for task in self.tasks.values())

    async def run(self) -> None:
        """Join the group and run the poll loop until stop(); then close every task (committing what is
        committed, writing final checkpoints) and the clients, each bounded by the close timeout. Returns
        normally after stop(); an error the loop cannot recover from (stream.runtime.task's typed outcomes
        cover the recoverable ones) propagates after the same shutdown."""
        cfg = self.cfg
        # Columnar fetching (stream/kafka/columnar_fetch.py): a poll returns chunks of columns, not one object per
        # record. getmany's max_records then counts chunks.
        chunk = min(1000, cfg.batch_max_records)
        columnar = cfg.columnar_fetch and columnar_fetch.install()
        self._max_polled = max(1, cfg.batch_max_records // chunk) if columnar else cfg.batch_max_records
        keyed = frozenset({cfg.topics.accounts})  # an account's tombstone is its key
        self._consumer = self.clients.group_consumer(self.worker_id, columnar_fetch.Columns(chunk, keyed_topics=keyed)
                                                     if columnar else None)
        self._subscribe()
        try:
            if not cfg.exactly_once:
                self._plain_producer = self.clients.plain_producer()
                await self._plain_producer.start()
            await self._consumer.start()
            log.info("worker started", extra={"worker": self.worker_id, "group": cfg.group_id,
                                              "exactly_once": cfg.exactly_once, "columnar_fetch": columnar})
            while not self._stopping.is_set():
                self._start_due_restores()
                data = await self._consumer.getmany(timeout_ms=self._poll_timeout_ms(), max_records=self._max_polled)
                self._last_poll = time.monotonic()
                # (also with no records polled: records may wait for another input, or a fetch stepped over a
                # marker only, which is committed past)
                async with self._lock:
                    await self._process(data)
                    self._gc.after_batch()
                if self._lost is not None:
                    await self._rejoin()
                await self._note_progress()
                self._start_due_checkpoint()
                if data:
                    rest = cfg.commit_interval_ms / 1000 - (time.monotonic() - self._last_poll)
                    if rest > 0:  # let the next batch gather: fewer, bigger transactions
                        await asyncio.sleep(rest)
        finally:
            await self._shutdown()

    def _poll_timeout_ms(self) -> int:
        """A task with a batch's worth still waiting its turn goes on at once; one whose records wait for a fresher
        fetch of another input (stream.engine.order's horizon; fetches answer within fetch_max_wait_ms) looks
        again that soon; else wait for records."""
        tasks = self.tasks.values()
        if any(task.capped for task in tasks):
            return 0
        if any(task.state is TaskState.RUNNING and task.has_pending() for task in tasks):
            return min(self.cfg.batch_max_ms, self.cfg.fetch_max_wait_ms)
        return self.cfg.batch_max_ms

    def _subscribe(self) -> None:
        t = self.cfg.topics
        self._consumer.subscribe([t.gifts, t.payouts, t.accounts], listener=_Rebalance(self))

    async def _shutdown(self) -> None:
        """Close every task, leave the group, close the clients: each step bounded, so a broker that is away
        cannot hold the process past its shutdown timeout."""
        async with self._lock:
            await self._final_checkpoints()
            await self._close_tasks(list(self.tasks))
        await self._reader.close()
        if self._consumer is not None:
            await close_within(self._consumer.stop(), "consumer stop", seconds=self.cfg.shutdown_timeout_ms / 2000)
        if self._plain_producer is not None:
            await close_within(self._plain_producer.stop(), "producer stop")
        log.info("worker stopped", extra={"worker": self.worker_id})

    def seconds_since_poll(self) -> float | None:
        """Seconds since the consume loop last came back from getmany (None before the first poll)."""
        return None if self._last_poll is None else time.monotonic() - self._last_poll

    def gifts_partitions(self) -> int:
        """Partition count of the gifts topic as the consumer knows it (0 before metadata arrives)."""
        if self._consumer is None:
            return 0
        return len(self._consumer.partitions_for_topic(self.cfg.topics.gifts) or ())

    # ------------------------------------------------------------------ rebalance

    def _on_assigned(self, assigned: Iterable[TopicPartition]) -> None:
        """Every assigned partition gets a task, in CREATED, and stays paused until it is restored. No I/O here.
        (Revocation, before every assignment, closed every task: aiokafka 0.14 rebalances eagerly.)"""
        assigned = list(assigned)
        self._assigned = True
        self._consumer.pause(*assigned)
        parts = sorted({tp.partition for tp in assigned if tp.topic == self.cfg.topics.gifts})
        topics: dict[int, set[str]] = {}
        for tp in assigned:
            topics.setdefault(tp.partition, set()).add(tp.topic)
        kept, self._kept = self._kept, {}  # a kept state not handed back now is dropped
        for p in parts:
            self.tasks[p] = self._new_task(p, kept.pop(p, None), frozenset(topics[p]))
        log.info("partitions assigned", extra={"worker": self.worker_id, "partitions": parts})

    async def _on_revoked(self, revoked: Iterable[TopicPartition]) -> None:
        # Every batch is committed or aborted before the lock is released, so there is nothing to flush. The
        # running tasks' state is kept until the assignment: it is used again if its partition comes back
        # unchanged; otherwise the next owner restores it.
        async with self._lock:
            self._assigned = False
            parts = sorted({tp.partition for tp in revoked if tp.topic == self.cfg.topics.gifts})
            await self._close_tasks(parts, keep=True)
            log.info("partitions revoked", extra={"worker": self.worker_id, "partitions": parts,
                                                  "kept": sorted(self._kept)})

    def _new_task(self, p: int, kept: KeptState | None = None, assigned: frozenset[str] | None = None
                  ) -> PartitionTask:
        return PartitionTask(p, self.cfg, self.policy, self.clients, self._consumer, self._outputs, self.metrics,
                             self.worker_id, self._reader, self._checkpoints, kept, self._plain_producer, assigned)

    async def _close_tasks(self, parts: Iterable[int], keep: bool = False) -> None:
        closing = [task for p in parts if (task := self.tasks.pop(p, None)) is not None]
        for task in closing if keep else ():
            if (kept := task.keep()) is not None:
                self._kept[task.partition] = kept
        await asyncio.gather(*(task.close() for task in closing))  # side by side: each close is bounded
        self.metrics.set_state_size(self._running())

    # ------------------------------------------------------------------ checkpoints

    def _start_due_checkpoint(self) -> None:
        """One partition's checkpoint at a time, beside the loop (the body is taken before the next batch)."""
        if self._checkpoints is None or (self._checkpointing is not None and not self._checkpointing.done()):
            return
        now = time.monotonic()
        due = [task for task in self.tasks.values() if task.checkpoint_due(now)]
        if due:
            oldest = min(due, key=lambda task: task.checkpointed_at)
            self._checkpointing = asyncio.ensure_future(oldest.write_checkpoint())

    async def _final_checkpoints(self) -> None:
        """At shutdown: every running partition's checkpoint, so the restart reads only the changelog's tail.
        Bounded by half the shutdown timeout: past it, the restart restores more from the changelog."""
        if self._checkpoints is None:
            return
        if self._checkpointing is not None:
            await asyncio.gather(self._checkpointing, return_exceptions=True)
        running = list(self._running().values())
        if running:
            await close_within(asyncio.gather(*(task.write_checkpoint() for task in running)), "final checkpoints",
                               seconds=self.cfg.shutdown_timeout_ms / 2000)

    async def _rejoin(self) -> None:
        """TaskMigrated: this member missed a rebalance. Give every task up and join the group again, as a new
        member; the group then decides who owns what (Kafka Streams' handleLostAll and re-subscribe)."""
        reason, self._lost = self._lost, None
        self._assigned = False
        async with self._lock:
            parts = sorted(self.tasks)
            await self._close_tasks(parts)
        log.warning("fenced: giving up every partition and rejoining the group",
                    extra={"worker": self.worker_id, "partitions": parts, "reason": reason})
        self._consumer.unsubscribe()
        self._subscribe()

    # ------------------------------------------------------------------ restores

    def _start_due_restores(self) -> None:
        now = time.monotonic()
        for task in self.tasks.values():
            if (task.state in (TaskState.CREATED, TaskState.RESTORING) and task.restoring is None
                    and now >= task.progress.retry_at):
                task.restoring = asyncio.ensure_future(self._restore(task))

    async def _restore(self, task: PartitionTask) -> None:
        """One restore attempt of a task, beside the poll loop. Failures are reported and retried with backoff;
        TaskMigrated hands the whole assignment back (the next loop turn rejoins)."""
        try:
            await task.restore()
        except asyncio.CancelledError:
            raise
        except (TaskCorrupted, TaskMigrated, TaskAwaitsRebalance) as outcome:
            pr = task.progress
            pr.last_error = str(outcome)
            # A rebalance revokes or keeps the task; if it keeps it, the restore goes on soon, without backing off.
            awaits_rebalance = isinstance(outcome, TaskAwaitsRebalance)
            retry_in_s = (REBALANCE_RECHECK_S if awaits_rebalance else
                          min(RETRY_MAX_S, RETRY_FIRST_S * 2 ** (pr.attempts - 1)))
            pr.retry_at = time.monotonic() + retry_in_s
            if awaits_rebalance:
                log.info("partition restore: waiting for the group's rebalance", extra={
                    "worker": self.worker_id, "partition": task.partition, "error": str(outcome)})
            elif isinstance(outcome, TaskMigrated):
                self._lost = f"partition {task.partition}: {outcome}"  # the loop rejoins the group
                log.warning("partition restore: not the owner any more", extra={
                    "worker": self.worker_id, "partition": task.partition, "error": str(outcome)})
            else:
                log.warning("partition restore failed; retrying", extra={
                    "worker": self.worker_id, "partition": task.partition, "attempt": pr.attempts,
                    "error": str(outcome), "retry_in_s": round(retry_in_s, 1)})
            return
        finally:
            task.restoring = None
        if self.tasks.get(task.partition) is task:  # still ours: poll it from its committed position
            self._consumer.resume(*task.inputs)
            self.metrics.set_state_size(self._running())
            if self.ready:
                self._gc.after_restore()
                log.info("all partitions restored", extra={"worker": self.worker_id, "partitions": sorted(self.tasks)})

    def _running(self) -> dict[int, PartitionTask]:
        return {p: t for p, t in self.tasks.items() if t.state is TaskState.RUNNING}

    # ------------------------------------------------------------------ batches

    async def _process(self, data: dict[TopicPartition, list]) -> None:
        for tp, msgs in data.items():
            task = self.tasks.get(tp.partition)
            if task is not None and task.state is TaskState.RUNNING and tp in task.kinds:
                task.add(tp, msgs)  # else not ours (any more) or not restored: read again from its committed position
        # Each partition's transaction starts as soon as that partition is processed, so its round trips
        # overlap the processing of the next partitions instead of all of them waiting for the slowest.
        commits: dict[int, asyncio.Task] = {}
        try:
            for p, task in sorted(self.tasks.items()):
                if task.state is not TaskState.RUNNING:
                    continue
                if not task.has_pending():
                    if past := task.past_non_records():  # only markers since the last commit: commit past them
                        commits[p] = asyncio.ensure_future(task.commit(Outputs(), [], past))
                    continue
                if task.snapshotting is not None:  # a checkpoint body is being taken from its engine
                    await asyncio.gather(task.snapshotting, return_exceptions=True)
                started = time.perf_counter()
                out = Outputs()
                positions, changelog, count, stamps = task.process(out)
                if not count:
                    continue  # every input's next record waits for another input
                self.metrics.record_batch(out, count, time.perf_counter() - started, stamps)
                commits[p] = asyncio.ensure_future(task.commit(out, changelog, positions))
                await asyncio.sleep(0)  # let it send its first requests
        finally:
            results = await asyncio.gather(*commits.values(), return_exceptions=True)
        for p, result in zip(commits, results, strict=True):
            if isinstance(result, BaseException):
                await self._failed(p, result)
        self.metrics.set_state_size(self._running())

    async def _failed(self, p: int, error: BaseException) -> None:
        """A batch's commit failed: act on its outcome."""
        outcome = outcome_of(error)
        if isinstance(outcome, TaskMigrated):
            self._lost = f"partition {p}: {outcome}"  # the loop rejoins once this batch is done
            return
        log.error("transaction failed; restoring partition from its last commit",
                  extra={"worker": self.worker_id, "partition": p, "error": str(outcome)})
        old = self.tasks.pop(p)
        await old.close()
        self._consumer.pause(*old.inputs)
        self.tasks[p] = task = self._new_task(p)
        task.progress.last_error = str(outcome)

    # ------------------------------------------------------------------ health

    async def _note_progress(self) -> None:
        """Lag gauges of the running partitions, and a running task's progress mark when it is caught up as of
        a fetch answered within the progress timeout (a partition with nothing to read progresses by being
        current)."""
        running = self._running().values()
        restoring = [t.progress for t in self.tasks.values() if t.state is not TaskState.RUNNING]
        self.metrics.restoring_partitions.set(len(restoring))
        self.metrics.restore_remaining.set(sum(pr.remaining for pr in restoring))
        lags = await self.metrics.observe_lag(self._consumer, [tp for task in running for tp in task.inputs])
        oldest_fetch_ms = time.time() * 1000 - self.cfg.progress_timeout_ms
        for task in running:
            if all(lags.get(tp) == 0 and (self._consumer.last_poll_timestamp(tp) or 0) >= oldest_fetch_ms
                   for tp in task.inputs):
                task.progressed_at = time.monotonic()

    def health(self) -> Health:
        """Ready: every owned partition is running and has made progress (a commit, or being caught up as of a
        recent fetch) within progress_timeout_ms; so not ready while restoring, while the broker is away, or
        while a partition is stuck behind. Live: the loop polls, and no owned partition has gone without
        progress (restore or commit) for liveness_timeout_ms; a worker that cannot go on is restarted."""
        now = time.monotonic()
        reasons: list[str] = []
        live = True
        stalled = self.seconds_since_poll()
        if stalled is not None and stalled > LOOP_STALL_S:
            live = False
            reasons.append(f"the consume loop has not polled for {stalled:.0f} s")
        if self._lost is not None:
            reasons.append(f"rejoining the group: {self._lost}")
        elif not self._assigned:
            reasons.append("waiting for the group's assignment")
        for p, task in sorted(self.tasks.items()):
            idle = now - task.progressed_at
            if task.state is not TaskState.RUNNING:
                reasons.append(f"partition {p} is {task.state.value}"
                               + (f" ({task.progress.last_error})" if task.progress.last_error else ""))
            elif idle * 1000 > self.cfg.progress_timeout_ms:
                reasons.append(f"partition {p} has made no progress for {idle:.0f} s")
            if idle * 1000 > self.cfg.liveness_timeout_ms:
                live = False
        ready = not reasons
        return Health(live, ready, reasons, {p: t.describe() for p, t in sorted(self.tasks.items())})
