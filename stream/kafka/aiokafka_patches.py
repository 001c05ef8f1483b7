"""What the worker needs of aiokafka 0.14 beyond its public API: one correction and one note (`install()`,
idempotent), and one question to the group coordinator (`confirm_membership`). All are tied to this aiokafka
version.

The correction.

OffsetFetch replies from v2 on carry a top-level error code besides the per-partition ones. Kafka answers a
group whose coordinator is moving or still loading (right after a broker restart) with NOT_COORDINATOR or
COORDINATOR_LOAD_IN_PROGRESS at the top and no partitions. aiokafka 0.14 reads only the per-partition codes,
so that reply reads as "nothing committed": `consumer.committed(tp)` returns None, and the fetcher resets the
position by auto_offset_reset (the log start). A worker that believes it then re-reads, and may re-commit,
a partition from the start. With the fix the top-level error is raised exactly as the per-partition codes are,
so aiokafka's own retry loops (fetch_committed_offsets, the position refresh) ask again.

The note.

A fetch response tells, per partition, the end a reader can reach (high watermark, last stable offset), and
aiokafka keeps the last one. The merge of a partition's inputs (stream.engine.order) also needs to know which
fetch that end came from: it names fetches by the time they were sent. So `_proc_fetch_request` is wrapped to note,
on each partition the response updated, that send time (wall-clock ms) as `TopicPartitionState.fetch_sent_ms`, and
each new end with the send time of the fetch that first reported it in `TopicPartitionState.ends_seen` (rising;
clients.first_fetch_sent reads and prunes it).
"""

from __future__ import annotations

import collections
import time

import aiokafka
from aiokafka import errors as Errors
from aiokafka.consumer.fetcher import Fetcher
from aiokafka.consumer.group_coordinator import GroupCoordinator
from aiokafka.protocol.commit import OffsetFetchRequest
from aiokafka.protocol.group import HeartbeatRequest
from aiokafka.structs import OffsetAndMetadata, TopicPartition

SUPPORTED_AIOKAFKA = "0.14.0"
UNKNOWN_OFFSET = -1


def _raise_for(coordinator: GroupCoordinator, error_type: type[Errors.KafkaError], where: str) -> None:
    """Raise a group-level or partition-level OffsetFetch error the way aiokafka 0.14 handles partition ones."""
    if error_type is Errors.NotCoordinatorForGroupError:
        coordinator.coordinator_dead()  # find the coordinator again, then retry
        raise error_type()
    if error_type in (Errors.GroupLoadInProgressError, Errors.GroupCoordinatorNotAvailableError):
        if error_type is Errors.GroupCoordinatorNotAvailableError:
            coordinator.coordinator_dead()
        raise error_type()  # retriable: aiokafka waits and asks again
    if error_type is Errors.GroupAuthorizationFailedError:
        raise error_type(coordinator.group_id)
    raise Errors.KafkaError(f"OffsetFetch {where}: {error_type.__name__}")


async def _do_fetch_commit_offsets(self: GroupCoordinator, partitions) -> dict[TopicPartition, OffsetAndMetadata]:
    """aiokafka 0.14's GroupCoordinator._do_fetch_commit_offsets with the reply's top-level error checked."""
    by_topic: dict[str, list[int]] = collections.defaultdict(list)
    for tp in partitions:
        by_topic[tp.topic].append(tp.partition)
    response = await self._send_req(OffsetFetchRequest(self.group_id, list(by_topic.items())))
    top_level = getattr(response, "error_code", 0)  # v0 and v1 replies have none
    if top_level:
        _raise_for(self, Errors.for_code(top_level), f"for group {self.group_id}")
    offsets: dict[TopicPartition, OffsetAndMetadata] = {}
    for topic, topic_partitions in response.topics:
        for partition, offset, metadata, error_code in topic_partitions:
            tp = TopicPartition(topic, partition)
            if error_code:
                error_type = Errors.for_code(error_code)
                if error_type is Errors.UnknownTopicOrPartitionError:
                    continue  # as aiokafka: no offset for a topic that is gone
                _raise_for(self, error_type, f"for {tp}")
            if offset != UNKNOWN_OFFSET:
                offsets[tp] = OffsetAndMetadata(offset, metadata)
    return offsets


_proc_fetch_request = Fetcher._proc_fetch_request


async def _proc_fetch_request_noting_send_time(self: Fetcher, assignment, node_id, request) -> bool:
    sent_ms = int(time.time() * 1000)  # just before aiokafka sends it: never later than the broker's answer
    try:
        return await _proc_fetch_request(self, assignment, node_id, request)
    finally:
        for topic, partitions in request.topics:
            for partition, *_ in partitions:
                state = assignment.state_value(TopicPartition(topic, partition))
                # aiokafka stamps `timestamp` (ms, its receive time) on each partition the response updated; one
                # stamped in the very ms of the send is left unnoted (it could be the previous response's): an
                # older send time only makes the merge wait for the next fetch
                if state is not None and state.timestamp is not None and state.timestamp > sent_ms:
                    state.fetch_sent_ms = sent_ms
                    _note_end(state, sent_ms)


ENDS_SEEN = 4096  # ends kept per partition; dropping the oldest only makes clients.first_fetch_sent answer later


def reader_end(lso: int | None, highwater: int | None) -> int | None:
    """The end a reader can reach, from a fetch's last stable offset and high watermark: the LSO under
    read_committed; aiokafka gives -1 under read_uncommitted (and None for brokers too old to send one), where the
    high watermark is the end."""
    return lso if lso is not None and lso >= 0 else highwater


def _note_end(state, sent_ms: int) -> None:
    end = reader_end(state.lso, state.highwater)
    seen = getattr(state, "ends_seen", None)
    if seen is None:
        seen = state.ends_seen = collections.deque(maxlen=ENDS_SEEN)
    if end is not None and (not seen or end > seen[-1][0]):
        seen.append((end, sent_ms))


def install() -> None:
    """Patch aiokafka (once). Refuses another aiokafka version: the patched methods are version-specific."""
    if aiokafka.__version__ != SUPPORTED_AIOKAFKA:
        raise RuntimeError(f"stream.kafka.aiokafka_patches is written for aiokafka {SUPPORTED_AIOKAFKA}, found "
                           f"{aiokafka.__version__}: check that the OffsetFetch top-level error is handled and that "
                           "Fetcher._proc_fetch_request still stamps TopicPartitionState.timestamp, then update")
    GroupCoordinator._do_fetch_commit_offsets = _do_fetch_commit_offsets
    Fetcher._proc_fetch_request = _proc_fetch_request_noting_send_time


class NotAMember(Exception):
    """The group coordinator does not know this member at its generation: it was expelled."""


class GroupRebalancing(Exception):
    """The group is rebalancing: this member is still in it, and the rebalance decides what it owns next."""


async def confirm_membership(consumer: aiokafka.AIOKafkaConsumer) -> None:
    """Ask the group coordinator, now, whether this consumer is still a member at its generation (one
    Heartbeat). A process that was stopped (SIGSTOP, a long GC pause, a frozen VM) past the session timeout
    still believes in its old assignment until its next heartbeat; fencing a partition's producer on that
    belief would fence the owner the group chose instead. NotAMember when it is not (aiokafka's own heartbeat
    then rejoins as a new member); GroupRebalancing when the group is rebalancing, which may move the partition
    (the member rejoins as itself: leaving the group here would start yet another rebalance)."""
    coordinator = consumer._coordinator
    if coordinator is None or coordinator.member_id == "" or coordinator.generation < 0:
        raise NotAMember("not (yet) a member of the group")
    await coordinator.ensure_coordinator_known()
    response = await coordinator._send_req(
        HeartbeatRequest(coordinator.group_id, coordinator.generation, coordinator.member_id))
    if response.error_code:
        error = Errors.for_code(response.error_code)
        if error in (Errors.UnknownMemberIdError, Errors.IllegalGenerationError):
            coordinator.reset_generation()
        elif error is Errors.RebalanceInProgressError:
            coordinator.request_rejoin()
            raise GroupRebalancing(f"group {coordinator.group_id} generation {coordinator.generation}: "
                                   f"{error.__name__}")
        raise NotAMember(f"group {coordinator.group_id} generation {coordinator.generation}: {error.__name__}")
