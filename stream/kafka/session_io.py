"""Moving recorded sessions in and out of Kafka: `replay --to-kafka` and `record`."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from stream.config import WorkerConfig
from stream.engine.order import Input, tombstone_times
from stream.kafka.routing import PartitionCache
from stream.kafka.session_files import SESSION_FILES, account_lines, key_of, write_session

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
    topic = topic or {Input.GIFTS: cfg.topics.gifts, Input.PAYOUTS: cfg.topics.payouts,
                      Input.ACCOUNTS: cfg.topics.accounts}[kind]
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


async def record_topic(cfg: WorkerConfig, topic: str) -> list[bytes]:
    """A topic's committed records as session lines (a raw newline inside a record becomes a space)."""
    per_partition = await read_topic(cfg, topic)
    return [(m.value or b"").replace(b"\n", b" ") for p in sorted(per_partition) for m in per_partition[p]]


async def record_session(cfg: WorkerConfig, directory: str | Path) -> dict[str, int]:
    """The committed records of the three inputs into a recorded session directory (stream.kafka.session_files);
    returns the records written per file."""
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    t = cfg.topics
    written = {}
    for kind, topic in ((Input.GIFTS, t.gifts), (Input.PAYOUTS, t.payouts), (Input.ACCOUNTS, t.accounts)):
        if kind is Input.ACCOUNTS:
            per_partition = await read_topic(cfg, topic)
            lines = account_lines((m.key, m.value, m.timestamp) for p in sorted(per_partition)
                                  for m in per_partition[p])
        else:
            lines = await record_topic(cfg, topic)
        written[SESSION_FILES[kind]] = write_session(out / SESSION_FILES[kind], lines)
    return written
