"""Moving sessions in and out of Kafka: `replay --to-kafka` (a session file, or a recording) and `record`."""

from __future__ import annotations

import asyncio
import heapq
import time
from collections.abc import Callable
from pathlib import Path

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from stream.config import WorkerConfig
from stream.engine.order import Input, tombstone_times
from stream.kafka.recording import INPUT_NAMES, Header, Record, Recording, RecordingWriter, TopicInfo, new_header
from stream.kafka.routing import PartitionCache
from stream.kafka.session_files import key_of
from stream.kafka.topics import input_topics

MAX_PACE_JUMP_MS = 60_000


def bulk_producer(cfg: WorkerConfig, linger_ms: int) -> AIOKafkaProducer:
    """An idempotent producer sized for feeding big batches of gifts (not started)."""
    return AIOKafkaProducer(bootstrap_servers=cfg.bootstrap_servers, acks="all", enable_idempotence=True,
                            linger_ms=linger_ms, max_batch_size=1 << 20, max_request_size=16 << 20,
                            **cfg.kafka_security())


async def produce_session(records: list[bytes | None], cfg: WorkerConfig, topic: str | None = None,
                          speed: float | None = None,
                          progress: Callable[[int], None] | None = None, kind: Input = Input.GIFTS,
                          keys: list[bytes | None] | None = None, times: list[int | None] | None = None) -> int:
    """Produce records keyed by creator_id (or by `keys`) with Kafka's default partitioning (keyless ones to
    partition 0, as the offline replay routes them); a tombstone (None) is stamped with its time from `times` (the
    merge orders every other record by the time in its value: stream.engine.order). speed=None: as fast as possible;
    N: N times the event-time pace. kind: the input the records are for (gifts unless told)."""
    topic = topic or input_topics(cfg.topics)[kind]
    stamps = tombstone_times(records, times)
    producer = bulk_producer(cfg, linger_ms=20)
    await producer.start()
    try:
        n = len(await producer.partitions_for(topic))
        partition_of = PartitionCache(n)
        batches: dict[int, object] = {}
        pending: list[asyncio.Future] = []

        async def flush(p: int) -> None:
            batch = batches.pop(p)
            pending.append(await producer.send_batch(batch, topic, partition=p))

        wall0 = time.monotonic()
        ts0 = paced_ts = None
        sent = 0
        for i, raw in enumerate(records):
            key, ts = (keys[i], None) if keys is not None else key_of(raw)
            # Pace on event time, ignoring outliers (a far-future or far-past ts is bad input, not a clock).
            if speed and ts is not None and (paced_ts is None or paced_ts <= ts <= paced_ts + MAX_PACE_JUMP_MS):
                ts0 = ts if ts0 is None else ts0
                paced_ts = ts
                delay = wall0 + (ts - ts0) / 1000 / speed - time.monotonic()
                if delay > 0.005:
                    for p in list(batches):
                        await flush(p)
                    await asyncio.sleep(delay)
            p = 0 if key is None else partition_of[key]
            batch = batches.get(p)
            if batch is None:
                batch = batches[p] = producer.create_batch()
            if batch.append(key=key, value=raw, timestamp=stamps[i]) is None:
                await flush(p)
                batch = batches[p] = producer.create_batch()
                batch.append(key=key, value=raw, timestamp=stamps[i])
            sent += 1
            if progress and sent % 10_000 == 0:
                progress(10_000)
        for p in list(batches):
            await flush(p)
        await asyncio.gather(*pending)
        if progress:
            progress(sent % 10_000)
        return sent
    finally:
        await producer.stop()


async def end_offsets(cfg: WorkerConfig, topic: str) -> dict[int, int]:
    """partition -> the end a read_committed reader can reach (the last stable offset)."""
    consumer = AIOKafkaConsumer(bootstrap_servers=cfg.bootstrap_servers, isolation_level="read_committed",
                                **cfg.kafka_security())
    await consumer.start()
    try:
        await consumer._client.force_metadata_update()  # a topic created moments ago may not be known yet
        tps = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or ())]
        return {tp.partition: end for tp, end in (await consumer.end_offsets(tps)).items()}
    finally:
        await consumer.stop()


async def committed_offsets(admin: AIOKafkaAdminClient, group: str, topic: str) -> dict[int, int]:
    """partition -> the group's committed offset, for the partitions of topic that have one."""
    offsets = await admin.list_consumer_group_offsets(group)
    return {tp.partition: o.offset for tp, o in offsets.items() if tp.topic == topic and o.offset >= 0}


async def read_topic(cfg: WorkerConfig, topic: str, committed_only: bool = True) -> dict[int, list]:
    """Every record of a topic up to its current end, per partition, in offset order."""
    consumer = AIOKafkaConsumer(bootstrap_servers=cfg.bootstrap_servers, enable_auto_commit=False,
                                isolation_level="read_committed" if committed_only else "read_uncommitted",
                                max_partition_fetch_bytes=16 << 20, **cfg.kafka_security())
    await consumer.start()
    try:
        parts = sorted(consumer.partitions_for_topic(topic) or ())
        if not parts:
            await consumer._client.force_metadata_update()
            parts = sorted(consumer.partitions_for_topic(topic) or ())
        tps = [TopicPartition(topic, p) for p in parts]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        ends = await consumer.end_offsets(tps)
        out: dict[int, list] = {tp.partition: [] for tp in tps}
        remaining = {tp for tp in tps if ends[tp] > 0}
        while remaining:
            data = await consumer.getmany(*remaining, timeout_ms=1000)
            for tp, msgs in data.items():
                out[tp.partition].extend(msgs)
            for tp in list(remaining):
                if await consumer.position(tp) >= ends[tp]:
                    remaining.discard(tp)
        return out
    finally:
        await consumer.stop()


async def record(cfg: WorkerConfig, path: str | Path, since_ms: int | None = None, until_ms: int | None = None,
                 offsets: dict[tuple[Input, int], tuple[int | None, int | None]] | None = None,
                 progress: Callable[[int], None] | None = None) -> tuple[Header, int]:
    """Write the committed records of the three inputs to a recording (stream.kafka.recording), up to the end a
    read_committed reader reaches when the recording starts. since_ms/until_ms: the gifts' and payouts' records
    with a Kafka timestamp in [since, until); creator-accounts is a table, so it is recorded from its start (a gift
    in the range needs its account), up to until. offsets: (input, partition) -> [first, end) instead, either side
    open (None). An input whose topic does not exist is left out (the header lists the inputs recorded). Returns the
    header written and the records written."""
    topics = input_topics(cfg.topics)
    consumer = AIOKafkaConsumer(bootstrap_servers=cfg.bootstrap_servers, enable_auto_commit=False,
                                isolation_level="read_committed", max_partition_fetch_bytes=16 << 20,
                                **cfg.kafka_security())
    await consumer.start()
    try:
        await consumer._client.force_metadata_update()  # a topic created moments ago may not be known yet
        parts = {kind: sorted(consumer.partitions_for_topic(topic) or ()) for kind, topic in topics.items()}
        if not parts[Input.GIFTS]:
            raise ValueError(f"giftstream record: topic {topics[Input.GIFTS]} does not exist")
        tps = {TopicPartition(topics[kind], p): (kind, p) for kind, ps in parts.items() for p in ps}
        firsts = await consumer.beginning_offsets(list(tps))
        ends = await consumer.end_offsets(list(tps))
        ranges: dict[Input, dict[int, tuple[int, int]]] = {kind: {} for kind, ps in parts.items() if ps}
        for tp, (kind, p) in tps.items():
            lo, hi = firsts[tp], ends[tp]
            if since_ms is not None and kind is not Input.ACCOUNTS:
                lo = await _offset_at(consumer, tp, since_ms, hi)
            if until_ms is not None:
                hi = await _offset_at(consumer, tp, until_ms, hi)
            want_lo, want_hi = (offsets or {}).get((kind, p), (None, None))
            lo = max(firsts[tp], lo if want_lo is None else want_lo)
            hi = min(ends[tp], hi if want_hi is None else want_hi)
            ranges[kind][p] = (lo, max(lo, hi))
        header = new_header({kind: TopicInfo(topics[kind], len(ps)) for kind, ps in parts.items() if ps}, ranges)
        todo = {tp for tp, (kind, p) in tps.items() if ranges[kind][p][0] < ranges[kind][p][1]}
        consumer.assign(list(tps))
        for tp in tps:
            kind, p = tps[tp]
            consumer.seek(tp, ranges[kind][p][0])
        consumer.pause(*(tp for tp in tps if tp not in todo))
        with RecordingWriter(path, header) as out:
            while todo:
                data = await consumer.getmany(*todo, timeout_ms=1000)
                for tp, msgs in data.items():
                    kind, p = tps[tp]
                    end = ranges[kind][p][1]
                    for m in msgs:
                        if m.offset >= end:
                            break
                        out.write(Record(kind, p, m.offset, m.timestamp, m.key, m.value, m.timestamp_type,
                                         tuple(m.headers)))
                    if progress:
                        progress(len(msgs))
                for tp in list(todo):
                    kind, p = tps[tp]
                    if await consumer.position(tp) >= ranges[kind][p][1]:
                        todo.discard(tp)
                        consumer.pause(tp)
        return header, out.records
    finally:
        await consumer.stop()


async def _offset_at(consumer: AIOKafkaConsumer, tp: TopicPartition, ms: int, end: int) -> int:
    """The first offset of tp whose Kafka timestamp is at or after ms (end when there is none)."""
    found = (await consumer.offsets_for_times({tp: ms}))[tp]
    return end if found is None else min(found.offset, end)


async def produce_recording(recording: Recording, cfg: WorkerConfig, speed: float | None = None,
                            progress: Callable[[int], None] | None = None) -> dict[Input, int]:
    """Produce a recording's records to the config's input topics, each to the partition it was on, with its key,
    value, Kafka timestamp and headers as recorded, in the order of their timestamps (each partition's in offset
    order). The topics must have the recorded partition counts (the engine's partition checks depend on it). The
    offsets are the target's: a dead letter names the new offset. speed: None as fast as possible; N: N times the
    recorded pace. Returns the records produced per input."""
    topics = input_topics(cfg.topics)
    producer = bulk_producer(cfg, linger_ms=20)
    await producer.start()
    try:
        for kind in {kind for kind, _ in recording.logs}:
            info = recording.header.topic(kind)
            have = len(await producer.partitions_for(topics[kind]))
            if info is not None and have != info.partitions:
                raise ValueError(f"replay --to-kafka: {topics[kind]} has {have} partitions, the recording's "
                                 f"{info.topic} had {info.partitions}")
        batches: dict[tuple[Input, int], object] = {}
        pending: list[asyncio.Future] = []
        sent = dict.fromkeys(Input, 0)

        async def flush(at: tuple[Input, int]) -> None:
            pending.append(await producer.send_batch(batches.pop(at), topics[at[0]], partition=at[1]))

        streams = [log.records(kind, p) for (kind, p), log in sorted(recording.logs.items())]
        wall0 = time.monotonic()
        ts0 = paced_ts = None
        for n, r in enumerate(heapq.merge(*streams, key=lambda r: r.timestamp), 1):
            if r.key is None and r.value is None:
                raise ValueError(f"replay --to-kafka: {INPUT_NAMES[r.input]}-{r.partition}@{r.offset} has neither "
                                 "key nor value, which a producer cannot send")
            if speed and (paced_ts is None or paced_ts <= r.timestamp <= paced_ts + MAX_PACE_JUMP_MS):
                ts0 = r.timestamp if ts0 is None else ts0
                paced_ts = r.timestamp
                delay = wall0 + (r.timestamp - ts0) / 1000 / speed - time.monotonic()
                if delay > 0.005:
                    for at in list(batches):
                        await flush(at)
                    await asyncio.sleep(delay)
            at = (r.input, r.partition)
            batch = batches.get(at) or batches.setdefault(at, producer.create_batch())
            headers = list(r.headers)
            if batch.append(key=r.key, value=r.value, timestamp=r.timestamp, headers=headers) is None:
                await flush(at)
                batch = batches[at] = producer.create_batch()
                batch.append(key=r.key, value=r.value, timestamp=r.timestamp, headers=headers)
            sent[r.input] += 1
            if progress and n % 10_000 == 0:
                progress(10_000)
        for at in list(batches):
            await flush(at)
        await asyncio.gather(*pending)
        if progress:
            progress(sum(sent.values()) % 10_000)
        return sent
    finally:
        await producer.stop()
