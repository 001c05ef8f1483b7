"""One input partition's lifecycle in the worker: restore, process, commit, close (after Kafka Streams'
StreamTask). The worker (stream.runtime.worker) creates, drives and closes tasks; a task owns everything of its
partition: the engine and its state, the changelog writer and the transactional producer.

    CREATED --restore()--> RESTORING --> RUNNING --close()--> CLOSED
       ^                       |             |
       +--- restore failed ----+             +--- commit failed: TaskCorrupted (the worker makes a new task)

A task is made when its partition is assigned, with the partition paused. The worker's poll loop restores it
(never the rebalance callback, so the consumer keeps polling and heartbeating whatever the restore costs) and
resumes the partition once state and positions match. Failures come out as one of two typed outcomes
(`outcome_of` decides which):
- TaskCorrupted: something failed while this member still owns the partition (broker away, a timeout, a
  missing topic). The engine may be ahead of what was committed, so the task is closed dirty and a new one
  restores from the last commit, with backoff.
- TaskMigrated: the producer was fenced or the group no longer knows this member: another member owns the
  partition. Every task is closed dirty and the worker rejoins the group; it never restores a partition on its
  own, which would fence the owner the group chose.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import time
from dataclasses import dataclass

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka import errors as Errors
from aiokafka.structs import OffsetAndMetadata

from stream.config import WorkerConfig
from stream.engine import model
from stream.engine.native import make_engine, resolve_kind
from stream.engine.order import FINISHED, UNKNOWN, Input, feed, new_queues, runs
from stream.engine.policy import Policy
from stream.engine.protocol import Engine, Outputs
from stream.kafka.aiokafka_patches import GroupRebalancing, NotAMember
from stream.kafka.clients import (
    CLOSE_TIMEOUT_S,
    PRODUCER_BATCH_BYTES,
    KafkaClients,
    close_within,
    fetched_up_to,
    first_fetch_sent,
)
from stream.kafka.columnar_fetch import columns_of
from stream.kafka.routing import PartitionCache, partition_for
from stream.kafka.topics import input_topics
from stream.runtime.restore import ChangelogReader
from stream.service.metrics import Metrics
from stream.state.changelog import ChangelogWriter, Record, RecordBatchBuilder, StateRestore, cursor_record, engine_body
from stream.state.checkpoint import Checkpoint, CheckpointInvalid, CheckpointStore

log = logging.getLogger(__name__)

CHANGELOG_BATCH_BYTES = PRODUCER_BATCH_BYTES  # native changelog record batches, the producers' batch size
NATIVE_CHANGELOG = RecordBatchBuilder is not None  # changelog as native record batches, else as records
STEP_TIMEOUT_S = 60.0  # longest wait for one broker step of a restore (fencing, metadata, offsets)
RESTORE_STALL_S = 30.0  # a changelog read that gets no records for this long fails (and is retried)
RESTORE_LOG_EVERY_S = 5.0  # a restore under way logs its progress this often
PENDING_PER_INPUT = 4  # batches' worth of records an input may hold waiting for the others before it is paused


class TaskState(enum.Enum):
    CREATED = "created"
    RESTORING = "restoring"
    RUNNING = "running"
    CLOSED = "closed"


class TaskCorrupted(Exception):
    """The task's state may be ahead of its last commit: close it dirty, restore a new one."""


class TaskMigrated(Exception):
    """Another member owns the partition now: close every task dirty and rejoin the group."""


class TaskAwaitsRebalance(Exception):
    """The group is rebalancing and may move the partition: do nothing with it (above all, fence nobody) until
    the rebalance has decided, then restore again if it is still ours. The member stays in the group."""


# Errors that mean this member lost the partition: a newer producer epoch exists for its transactional.id,
# or the group has moved to a generation without this member (at-least-once commits, confirm_membership).
MIGRATED_ERRORS = (Errors.ProducerFenced, Errors.InvalidProducerEpoch, Errors.CommitFailedError,
                   Errors.IllegalGenerationError, Errors.UnknownMemberIdError, Errors.RebalanceInProgressError,
                   NotAMember)


def outcome_of(error: BaseException) -> TaskCorrupted | TaskMigrated | TaskAwaitsRebalance:
    """The one place that decides what a failure means for the task."""
    if isinstance(error, TaskCorrupted | TaskMigrated | TaskAwaitsRebalance):
        return error
    if isinstance(error, GroupRebalancing):
        return TaskAwaitsRebalance(f"{type(error).__name__}: {error}")
    if isinstance(error, MIGRATED_ERRORS):
        return TaskMigrated(f"{type(error).__name__}: {error}")
    return TaskCorrupted(f"{type(error).__name__}: {error}")


class PolicyRefusesState(Exception):
    """The restored state needs what the policy does not have (Policy.cannot_price): an operator's mistake; the
    task retries with backoff and reports it (/readyz), and a worker restarted with a fixed policy goes on."""


class MissingTopics(Exception):
    """Topics the worker writes to do not exist (it never creates them: `giftstream topics create` does)."""


class OutputTopics:
    """The partition counts of the output topics: checked to exist with one whole-cluster metadata fetch,
    shared by the restores that start together (each one made its own: 96 of them at 96 partitions, most of
    the worker's start-up CPU on a cluster with many topics), and again only when a fetch is older than
    CHECK_EVERY_S or failed."""

    CHECK_EVERY_S = 30.0

    def __init__(self, cfg: WorkerConfig) -> None:
        t = cfg.topics
        self.names = (t.changelog, t.notices, t.window_totals, t.late, t.dlq)
        self.partitions: dict[str, int] = {}
        self._checked: asyncio.Future | None = None
        self._checked_at = 0.0

    async def learn(self, producer: AIOKafkaProducer) -> None:
        """Make sure the output topics exist (MissingTopics names the ones that do not), and fetch their
        metadata into this producer now (it otherwise asks on its first send to each topic, in the middle of a
        transaction)."""
        stale = time.monotonic() - self._checked_at > self.CHECK_EVERY_S
        if self._checked is None or (self._checked.done() and (stale or self._checked.exception())):
            self._checked_at = time.monotonic()
            self._checked = asyncio.ensure_future(self._check(producer))
        await asyncio.shield(self._checked)
        for topic in self.names:
            self.partitions[topic] = len(await producer.partitions_for(topic))

    async def _check(self, producer: AIOKafkaProducer) -> None:
        cluster = await producer.client.fetch_all_metadata()
        missing = [t for t in self.names if not cluster.partitions_for_topic(t)]
        if missing:
            raise MissingTopics(f"output topics do not exist: {', '.join(missing)} (create them with "
                                "`giftstream topics create`)")


@dataclass
class RestoreProgress:
    """What /readyz and the logs say of a task that is not running yet."""

    attempts: int = 0
    source: str | None = None  # where the state comes from: kept, checkpoint or changelog
    changelog_start: int | None = None  # the offset the changelog is read from
    changelog_read: int = 0  # records read from there
    changelog_end: int | None = None
    last_error: str | None = None
    retry_at: float = 0.0  # monotonic time of the next attempt

    @property
    def remaining(self) -> int:
        """Changelog records still to read (an offset count: transaction markers included)."""
        if self.changelog_end is None or self.changelog_start is None:
            return 0
        return max(0, self.changelog_end - self.changelog_start - self.changelog_read)


@dataclass
class KeptState:
    """A revoked partition's state, kept until the next assignment: if the partition comes back and nobody has
    written its changelog since (its end is still `changelog_end`), the task runs on it without a restore."""

    engine: Engine
    writer: ChangelogWriter
    changelog_end: int  # the changelog partition's end right after this state's last commit
    checkpoint_offset: int


class PartitionTask:
    def __init__(self, partition: int, cfg: WorkerConfig, policy: Policy, clients: KafkaClients,
                 consumer: AIOKafkaConsumer, outputs: OutputTopics, metrics: Metrics, worker_id: str,
                 reader: ChangelogReader, checkpoints: CheckpointStore | None = None, kept: KeptState | None = None,
                 plain_producer: AIOKafkaProducer | None = None, assigned: frozenset[str] | None = None) -> None:
        """assigned: the input topics the group assigned this partition of (None: all three); an input topic that
        does not exist has no partition to assign, and counts as an input with nothing in it."""
        self.partition = partition
        self.cfg, self.policy, self.clients, self.consumer = cfg, policy, clients, consumer
        self.reader, self.checkpoints, self.kept = reader, checkpoints, kept
        self.outputs, self.metrics, self.worker_id = outputs, metrics, worker_id
        self.input_tps: dict[Input, TopicPartition] = {
            kind: TopicPartition(topic, partition) for kind, topic in input_topics(cfg.topics).items()
            if assigned is None or topic in assigned}
        self.inputs = tuple(self.input_tps.values())
        self.kinds = {tp: kind for kind, tp in self.input_tps.items()}
        self.engine: Engine | None = None
        # The merge (stream.engine.order): each input's records waiting for their turn.
        self.pending = new_queues()  # queues reading through the engine replace these once it is restored
        self._paused: set[TopicPartition] = set()
        self.capped = False  # the last batch stopped at batch_max_records with records of its turn still waiting
        self.state = TaskState.CREATED
        self.progress = RestoreProgress()
        self.writer: ChangelogWriter | None = None
        self.producer: AIOKafkaProducer | None = plain_producer  # at-least-once: the worker's shared one
        self._owns_producer = plain_producer is None  # exactly-once: one per restore attempt
        self.committed: dict[TopicPartition, int] = {}  # the consumed positions of the last commit
        self.progressed_at = time.monotonic()  # last restore progress, commit, or caught-up fetch
        self.restoring: asyncio.Future | None = None  # the restore attempt under way, if any
        # Where the changelog partition stands after the last commit: its exact end (None: unknown), to tell
        # whether anybody wrote it while the partition was away (KeptState); and an offset at or before the
        # first record of the last commit, which a checkpoint of the state may claim.
        self.changelog_end: int | None = None
        self.checkpoint_offset: int | None = None
        self.checkpointed_at = time.monotonic()
        self.snapshotting: asyncio.Future | None = None  # a checkpoint body being taken in a thread
        # The engine holds exactly the state of the last commit: no batch processed since (a failed commit
        # leaves it ahead; a task whose commit was fenced stays RUNNING until the worker rejoins). Only a clean
        # state is kept across a rebalance or written to a checkpoint.
        self.clean = False
        self._logged_at = 0.0

    # ------------------------------------------------------------------ restore

    async def restore(self) -> None:
        """Bring the task from CREATED to RUNNING, in this order:
        1. confirm with the group coordinator that this member still owns its assignment, then start the
           partition's transactional producer: init_transactions fences any older owner of the partition and
           completes its open transaction, so nothing can be committed for it after this;
        2. check that the output topics exist and learn their partition counts;
        3. the state of the last commit (after 1, so nobody can change the changelog any more), from the first
           of these that holds: the state kept from before the last rebalance when the changelog has not moved
           since; the local checkpoint and the changelog from its offset; the whole changelog (_restore_state);
        4. read the group's committed offsets of the inputs, gifts-p, payouts-p and creator-accounts-p (after 1, so
           they match 3);
        5. commit a first transaction that changes nothing (see _first_transaction);
        6. seek the consumer to those offsets (the log start where the group never committed).
        Any failure raises its outcome (outcome_of); the worker retries or rejoins."""
        self.state = TaskState.RESTORING
        self.progress.attempts += 1
        started = time.perf_counter()
        try:
            if self.cfg.exactly_once:
                await asyncio.wait_for(self.clients.confirm_membership(self.consumer), STEP_TIMEOUT_S)
                self.producer = self.clients.transactional_producer(self.partition)
                await asyncio.wait_for(self.producer.start(), STEP_TIMEOUT_S)
            await asyncio.wait_for(self.outputs.learn(self.producer), STEP_TIMEOUT_S)
            self.engine, self.writer = await self._restore_state()
            refused = self.policy.cannot_price(self.engine.priced_in())
            if refused:  # the engine would stop at the first such streak or notice: refuse before any batch
                raise PolicyRefusesState("the state cannot be priced: " + "; ".join(refused))
            positions = await asyncio.wait_for(self._committed_positions(), STEP_TIMEOUT_S)
            if self.cfg.exactly_once:
                await asyncio.wait_for(self._first_transaction(positions), STEP_TIMEOUT_S)
        except BaseException as e:
            self.engine = self.writer = None
            await self._close_producer()  # the next attempt starts a new one (a producer starts once)
            if isinstance(e, asyncio.CancelledError):
                raise
            raise outcome_of(e) from e
        for tp in self.inputs:
            self.consumer.seek(tp, positions[tp])
        self.pending = new_queues(self.engine.gift_times)
        self.committed = positions
        self.clean = True
        self.state = TaskState.RUNNING
        self.progressed_at = self.checkpointed_at = time.monotonic()
        seconds = time.perf_counter() - started
        self.metrics.restore_seconds.observe(seconds)
        self.metrics.restores.labels(self.progress.source).inc()
        log.info("partition restored", extra={"worker": self.worker_id, "partition": self.partition,
                                              "source": self.progress.source,
                                              "changelog_records": self.progress.changelog_read,
                                              "creators": self.engine.counts().creators,
                                              "attempts": self.progress.attempts, "seconds": round(seconds, 3)})

    async def _restore_state(self) -> tuple[Engine, ChangelogWriter]:
        """The partition's state as of the last commit: the kept one, a checkpoint plus the changelog's tail, or
        the whole changelog, whichever is the first that can be trusted."""
        p, pr = self.partition, self.progress
        begin, end = await asyncio.wait_for(self.reader.bounds(p), STEP_TIMEOUT_S)
        pr.changelog_end, pr.changelog_read = end, 0
        kept, self.kept = self.kept, None
        if kept is not None and kept.changelog_end == end:
            pr.source, pr.changelog_start = "kept", end
            self.changelog_end, self.checkpoint_offset = end, kept.checkpoint_offset
            return kept.engine, kept.writer
        del kept  # the changelog moved on: that state is stale
        restore = self._new_state_restore()
        pr.source, pr.changelog_start = "changelog", begin
        checkpoint = await self._usable_checkpoint(begin, end)
        if checkpoint is not None:
            try:
                await restore.apply_body(checkpoint.body)
                pr.source, pr.changelog_start = "checkpoint", checkpoint.changelog_offset
            except ValueError as e:
                await self._refuse_checkpoint("corrupt", str(e))
                restore = self._new_state_restore()
        try:
            await self.reader.read(p, pr.changelog_start, end, restore.apply, self._note_read, restore.apply_batches)
            engine, writer = await restore.finish()
        except ValueError:
            if pr.source == "checkpoint":  # the tail did not fit it: the next attempt reads the whole changelog
                await self._refuse_checkpoint("corrupt", "the changelog's tail does not fit it")
            raise
        self.changelog_end, self.checkpoint_offset = end, end
        return engine, writer

    def _new_state_restore(self) -> StateRestore:
        # The engine dead-letters records of creators that hash to another partition (wrong key).
        partitions = len(self.consumer.partitions_for_topic(self.cfg.topics.gifts) or ())

        owners = PartitionCache(partitions)

        def engine_for(state):
            return make_engine(self.policy, self.partition, state, self.cfg.topics.gifts, self.cfg.engine,
                               partitions=partitions, owners=owners)

        return StateRestore(engine_for, native=resolve_kind(self.cfg.engine) == "native")

    def _note_read(self, records: int) -> None:
        self.progress.changelog_read = records
        self.progressed_at = now = time.monotonic()
        if now - self._logged_at >= RESTORE_LOG_EVERY_S:
            self._logged_at = now
            pr = self.progress
            log.info("restoring", extra={"worker": self.worker_id, "partition": self.partition,
                                         "source": pr.source, "changelog_read": records,
                                         "changelog_remaining": pr.remaining, "changelog_end": pr.changelog_end})

    async def _usable_checkpoint(self, begin: int, end: int) -> Checkpoint | None:
        """The local checkpoint if it can be trusted: intact, within the changelog's bounds (a changelog that
        was deleted and made again, or truncated, has other bounds), and younger than checkpoint_max_age_ms
        (the changelog forgets tombstones after its delete.retention.ms; the tail must still hold them)."""
        if self.checkpoints is None:
            return None
        try:
            checkpoint = await asyncio.to_thread(self.checkpoints.load, self.partition)
        except CheckpointInvalid as e:
            await self._refuse_checkpoint("corrupt", str(e))
            return None
        if checkpoint is None:
            self.metrics.checkpoints_refused.labels("missing").inc()
            return None
        age_ms = time.time() * 1000 - checkpoint.written_ms
        if age_ms > self.cfg.checkpoint_max_age_ms:
            await self._refuse_checkpoint("stale", f"written {age_ms / 1000:.0f} s ago")
            return None
        if not (begin <= checkpoint.changelog_offset and checkpoint.changelog_end <= end):
            await self._refuse_checkpoint("outside_changelog", f"offsets [{checkpoint.changelog_offset}, "
                                          f"{checkpoint.changelog_end}] are not within the changelog's "
                                          f"[{begin}, {end}]")
            return None
        return checkpoint

    async def _refuse_checkpoint(self, reason: str, detail: str) -> None:
        self.metrics.checkpoints_refused.labels(reason).inc()
        log.warning("checkpoint not used; restoring from the changelog", extra={
            "worker": self.worker_id, "partition": self.partition, "reason": reason, "detail": detail})
        await asyncio.to_thread(self.checkpoints.discard, self.partition)

    async def _committed_positions(self) -> dict[TopicPartition, int]:
        """Where the group's last commit left each input; the log start where it never committed.
        consumer.committed returns None only when the broker says "no commit" (stream.kafka.aiokafka_patches)."""
        positions: dict[TopicPartition, int] = {}
        for tp in self.inputs:
            committed = await self.consumer.committed(tp)
            if committed is None:
                committed = (await self.consumer.beginning_offsets([tp]))[tp]
            positions[tp] = committed
        return positions

    async def _first_transaction(self, positions: dict[TopicPartition, int]) -> None:
        """Commit a transaction that changes nothing: the state's own `m` record and the committed position of
        gifts-p again (a new group: where it starts reading, the log start). A producer's first transaction looks
        up the group coordinator and connects to it; left to the first batch, its offsets step took 26-31 ms
        instead of 7-11, at the moment a fresh worker starts to fall behind."""
        prod, gifts = self.producer, self.input_tps[Input.GIFTS]
        await prod.begin_transaction()
        try:
            key, value = cursor_record(self.engine.watermark, self.engine.close_cursor)
            sent = await (await prod.send(self.cfg.topics.changelog, value, key=key, partition=self.partition))
            await prod.send_offsets_to_transaction({gifts: OffsetAndMetadata(positions[gifts], "")},
                                                   self.cfg.group_id)
            await prod.commit_transaction()
            self._note_changelog_written(sent, 1)
        except BaseException:
            await self._abort()
            raise

    # ------------------------------------------------------------------ batches

    def add(self, tp: TopicPartition, msgs: list) -> None:
        """Polled records of one of the inputs: they wait for their turn in the merge."""
        kind = self.kinds[tp]
        offsets, values, stamps, keys = columns_of(msgs, with_keys=kind is Input.ACCOUNTS)
        now_ms = int(time.time() * 1000)  # later than any fetch that brought them: the safe side when not known
        sent_ms = first_fetch_sent(self.consumer, tp, offsets[-1]) if offsets else None
        self.pending[kind].add(offsets, values, stamps, keys,
                               arrived_ms=now_ms if sent_ms is None else min(now_ms, sent_ms))

    def has_pending(self) -> bool:
        return any(len(p) for p in self.pending)

    def process(self, out: Outputs) -> tuple[dict[TopicPartition, int], list, int, list[int]]:
        """Run the engine over the records whose turn has come in the merged order of the inputs (stream.engine.order).
        Returns the positions after them, the changelog of what changed, the record count and the gifts' timestamps.
        Records of an input wait while another input may still deliver an earlier one (see `_horizon`)."""
        engine = self.engine
        positions: dict[TopicPartition, int] = {}
        count = 0
        stamps: list[int] = []
        for run in runs(self.pending, lambda: [self._horizon(kind) for kind in Input], lambda: engine.watermark,
                        self.policy.max_future_ms):
            self.clean = False  # until this batch commits
            queue = self.pending[run.input]
            # At most batch_max_records a batch, as a poll would hand over: records gathered while an input was
            # waited for must not make one long call that stops the event loop (and the heartbeat).
            records = queue.take(min(run.hi, queue.start + self.cfg.batch_max_records - count))
            count += feed(engine, run.input, records, out, self.input_tps[run.input].topic)
            positions[self.input_tps[run.input]] = records[0][-1] + 1
            if run.input is Input.GIFTS:
                stamps += records[2]
            if count >= self.cfg.batch_max_records:
                break  # the rest next time (`capped`: the worker polls again at once)
        # (a batch that took exactly the last record waiting is not capped: nothing would be left to go on with,
        # and the worker would poll without ever waiting, starving the heartbeat)
        self.capped = count >= self.cfg.batch_max_records and self.has_pending()
        if count:
            positions.update(self.past_non_records(positions))
        self._pause_full_inputs()
        if not count:
            return positions, [], 0, stamps
        if NATIVE_CHANGELOG:
            changelog = self.writer.drain_batches(engine, CHANGELOG_BATCH_BYTES, self.cfg.exactly_once)
        else:
            changelog = self.writer.drain(engine)
        return positions, changelog, count, stamps

    def past_non_records(self, positions: dict[TopicPartition, int] | None = None) -> dict[TopicPartition, int]:
        """The inputs with nothing waiting whose consumer position is past their processed records (`positions`,
        else the last commit's): the offsets between are no records (a transaction's commit or abort marker, an
        aborted batch, compacted offsets), which the consumer has stepped over. Committing the position, as Kafka
        Streams does, keeps the group's lag from counting them forever: a transactional producer ends every
        partition it writes with a marker, so the lag never came back to 0."""
        past: dict[TopicPartition, int] = {}
        for kind, tp in self.input_tps.items():
            if len(self.pending[kind]):
                continue
            position = fetched_up_to(self.consumer, tp).position
            if position is not None and position > (positions or {}).get(tp, self.committed.get(tp, 0)):
                past[tp] = position
        return past

    def _horizon(self, kind: Input) -> int:
        """How far this input, while it has nothing waiting, lets the others go (stream.engine.order, rule 4): a
        record of another input first reported by a fetch sent by this wall-clock ms may go past it. FINISHED when
        it is not assigned (its topic does not exist); S - max_task_idle_ms when it is caught up (its position at
        the end a read_committed reader can reach) as of a fetch sent at S. UNKNOWN while it has records on the
        broker not polled yet, or before its first fetch: the others wait for them (Kafka Streams' rule), so the
        order depends neither on which fetch came back first nor on how far behind the worker is."""
        tp = self.input_tps.get(kind)
        if tp is None:
            return FINISHED
        position, end, sent_ms = fetched_up_to(self.consumer, tp)
        if position is None or end is None or sent_ms is None or position < end:
            return UNKNOWN
        return sent_ms - self.cfg.max_task_idle_ms

    def _pause_full_inputs(self) -> None:
        """An input holding more than PENDING_PER_INPUT batches waiting for another is paused until it drains."""
        limit = PENDING_PER_INPUT * self.cfg.batch_max_records
        for kind, tp in self.input_tps.items():
            full = len(self.pending[kind]) > limit
            if full and tp not in self._paused:
                self.consumer.pause(tp)
                self._paused.add(tp)
            elif not full and tp in self._paused:
                self.consumer.resume(tp)
                self._paused.discard(tp)

    async def commit(self, out: Outputs, changelog: list, positions: dict[TopicPartition, int]) -> None:
        """Commit one processed batch. Exactly-once, in this order:
        1. check that no position moves backwards (it would re-read, and re-credit, what is committed);
        2. begin the producer's transaction;
        3. hand over every output: notices, window totals, late gifts, dead letters, changelog records;
        4. wait until all of them are delivered (see below);
        5. add the consumed positions of the inputs to the transaction;
        6. commit it.
        A crash anywhere leaves all of it or none of it. Any failure aborts (best effort) and raises the task's
        outcome (outcome_of): its engine is then ahead of the commit and must not be used again.
        At-least-once (comparison only): outputs, flush, then the consumer commits the positions."""
        for tp, offset in positions.items():
            if offset < self.committed.get(tp, 0):
                raise TaskCorrupted(f"{tp.topic}-{tp.partition}: position {offset} is behind the committed "
                                    f"{self.committed[tp]}")
        offsets = {tp: OffsetAndMetadata(offset, "") for tp, offset in positions.items()}
        prod = self.producer
        try:
            if not self.cfg.exactly_once:
                delivered, last_changelog = await self._send_outputs(out, changelog)
                await asyncio.gather(*delivered)
                await self.consumer.commit(offsets)
            else:
                await prod.begin_transaction()
                try:
                    delivered, last_changelog = await self._send_outputs(out, changelog)
                    # The offsets go once the outputs are written. Kafka 4 checks a transaction's first produce to
                    # a partition with the transaction coordinator (KIP-890); if AddOffsetsToTxn is being written
                    # at that moment the check fails, the broker answers NOT_ENOUGH_REPLICAS and the producer
                    # sends again after retry_backoff_ms: 20-30 ms more for several percent of the transactions.
                    await asyncio.gather(*delivered)
                    await prod.send_offsets_to_transaction(offsets, self.cfg.group_id)
                    await prod.commit_transaction()
                except BaseException as e:
                    self.metrics.transactions_aborted.inc()
                    if not isinstance(outcome_of(e), TaskMigrated):  # a fenced producer cannot abort: the
                        await self._abort()  # new owner's fencing has aborted its transaction already
                    raise
        except asyncio.CancelledError:
            raise
        except Exception as e:
            raise outcome_of(e) from e
        self.committed.update(positions)
        self.progressed_at = time.monotonic()
        self.clean = True
        if last_changelog is not None:
            self._note_changelog_written(last_changelog[0].result(), last_changelog[1])

    def _note_changelog_written(self, sent: object, count: int) -> None:
        """After a commit: where the changelog partition stands. `sent`, the RecordMetadata of the last changelog
        batch of the commit (its base offset), and `count`, its records. A transaction ends with one commit
        marker, so the partition's end is one past the batch's last record, plus one."""
        base = getattr(sent, "offset", None)
        if base is None:  # not known: the state is never kept across a rebalance
            self.changelog_end = None
            return
        self.changelog_end = base + count + (1 if self.cfg.exactly_once else 0)
        self.checkpoint_offset = base

    async def _abort(self) -> None:
        """Abort the open transaction; a failed abort is logged, not raised (the error that led here is)."""
        try:
            await asyncio.wait_for(self.producer.abort_transaction(), CLOSE_TIMEOUT_S)
        except Exception:  # fenced, broken or unreachable: closing the task replaces the producer
            log.warning("abort failed", exc_info=True, extra={"worker": self.worker_id, "partition": self.partition})

    async def _send_outputs(self, out: Outputs, changelog: list) -> tuple[list[asyncio.Future],
                                                                          tuple[asyncio.Future, int] | None]:
        """Hand the batch's outputs to the producer; returns the futures of their delivery, and the last changelog
        batch's future with its record count. changelog: records (Python changelog) or native record batches
        (drain_batches)."""
        t, prod, p = self.cfg.topics, self.producer, self.partition
        encode = model.encode
        delivered: list[asyncio.Future] = []
        keyed = [
            (t.notices, [(n.creator_id.encode(), encode(n)) for n in out.notices]),
            (t.window_totals, [(w.creator_id.encode(), encode(w)) for w in out.window_totals]),
            (t.late, [(g.creator_id.encode(), encode(g)) for g in out.late]),
        ]
        for topic, records in keyed:
            if records:
                n = self.outputs.partitions[topic]
                by_p: dict[int, list[Record]] = {}
                for key, value in records:
                    by_p.setdefault(partition_for(key, n), []).append((key, value))
                for q, recs in by_p.items():
                    delivered += await _send_batches(prod, topic, q, recs)
        if out.dead_letters:
            # Dead letters stay on the partition number they came from, so they keep their order.
            delivered += await _send_batches(prod, t.dlq, p % self.outputs.partitions[t.dlq],
                                             [(None, encode(d)) for d in out.dead_letters])
        last: tuple[asyncio.Future, int] | None = None
        if NATIVE_CHANGELOG:
            for batch in changelog:
                delivered.append(await prod.send_batch(batch, t.changelog, partition=p))
                last = delivered[-1], batch.record_count()
        else:
            counts: list[int] = []
            delivered += await _send_batches(prod, t.changelog, p, changelog, counts)
            if counts:
                last = delivered[-1], counts[-1]
        return delivered, last

    def keep(self) -> KeptState | None:
        """The state to keep across a rebalance (before close): a running task's whose engine holds exactly its
        last commit (`clean`) and whose changelog end after that commit is known."""
        if not self._clean_running() or self.changelog_end is None:
            return None
        return KeptState(self.engine, self.writer, self.changelog_end, self.checkpoint_offset)

    # ------------------------------------------------------------------ checkpoints

    def _clean_running(self) -> bool:
        return self.state is TaskState.RUNNING and self.clean and self.checkpoint_offset is not None

    def checkpoint_due(self, now: float) -> bool:
        return (self.checkpoints is not None and self._clean_running()
                and (now - self.checkpointed_at) * 1000 >= self.cfg.checkpoint_interval_ms)

    async def write_checkpoint(self) -> None:
        """Write the state of the last commit to the local checkpoint, in a thread: first its body (the worker
        waits for `snapshotting` before it runs this partition's engine again, so the state does not change under
        it; the other partitions go on), then the file."""
        if self.checkpoints is None or not self._clean_running():
            return
        started = time.perf_counter()
        offset, end = self.checkpoint_offset, self.changelog_end or self.checkpoint_offset
        self.snapshotting = asyncio.ensure_future(asyncio.to_thread(engine_body, self.engine, self.writer))
        try:
            body = await self.snapshotting
        finally:
            self.snapshotting = None
        checkpoint = Checkpoint(self.cfg.topics.changelog, self.partition, offset, end, int(time.time() * 1000), body)
        self.checkpointed_at = time.monotonic()
        taken = time.perf_counter() - started
        try:
            size = await asyncio.to_thread(self.checkpoints.write, checkpoint)
        except OSError as e:  # a full or broken disk costs restart time, never correctness
            log.warning("checkpoint not written", extra={"worker": self.worker_id, "partition": self.partition,
                                                         "error": repr(e)})
            return
        self.metrics.checkpoints_written.inc()
        self.metrics.checkpoint_bytes.labels(str(self.partition)).set(size)
        log.info("checkpoint written", extra={"worker": self.worker_id, "partition": self.partition,
                                              "changelog_offset": checkpoint.changelog_offset, "bytes": size,
                                              "snapshot_s": round(taken, 3),
                                              "seconds": round(time.perf_counter() - started, 3)})

    # ------------------------------------------------------------------ close

    async def close(self) -> None:
        """Give the partition up: drop the state (the next owner restores it from the changelog) and close the
        producer. Clean or dirty alike: every batch is committed or aborted before its task can be closed, and
        an open transaction of a closed producer is aborted by the next owner's fencing (or times out)."""
        if self.restoring is not None and not self.restoring.done():
            self.restoring.cancel()
            await asyncio.gather(self.restoring, return_exceptions=True)
        if self.snapshotting is not None:  # the thread reads the engine: let it finish before it is dropped
            await asyncio.gather(self.snapshotting, return_exceptions=True)
        self.state = TaskState.CLOSED
        self.engine = self.writer = None
        await self._close_producer()

    async def _close_producer(self) -> None:
        if self._owns_producer and self.producer is not None:
            producer, self.producer = self.producer, None
            await close_within(producer.stop(), "producer stop", self.partition)

    def describe(self) -> dict:
        """The task as /readyz shows it."""
        idle = round(time.monotonic() - self.progressed_at, 1)
        doc: dict = {"state": self.state.value, "seconds_since_progress": idle}
        if self.state is not TaskState.RUNNING:
            pr = self.progress
            doc.update(attempts=pr.attempts, source=pr.source, changelog_start=pr.changelog_start,
                       changelog_read=pr.changelog_read, changelog_remaining=pr.remaining,
                       changelog_end=pr.changelog_end, last_error=pr.last_error)
        return doc


async def _send_batches(prod: AIOKafkaProducer, topic: str, partition: int,
                        records: list[tuple[bytes | None, bytes | None]],
                        counts: list[int] | None = None) -> list[asyncio.Future]:
    """Append records into producer batches directly: far cheaper than one send() per record. Returns the
    batches' delivery futures (and appends each batch's record count to `counts`, when given)."""
    delivered = []
    batch = prod.create_batch()

    async def send() -> None:
        if counts is not None:
            counts.append(batch.record_count())
        delivered.append(await prod.send_batch(batch, topic, partition=partition))

    for key, value in records:
        if batch.append(key=key, value=value, timestamp=None) is None:
            await send()
            batch = prod.create_batch()
            batch.append(key=key, value=value, timestamp=None)
    if batch.record_count():
        await send()
    return delivered
