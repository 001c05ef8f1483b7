"""Smoke test for the local Kafka broker (deploy/kafka/kafka-up.sh) with aiokafka.

Checks, against a real broker:
  1. AIOKafkaAdminClient: create a 3-partition topic and a compacted topic
     (cleanup.policy=compact), read the config back.
  2. Plain (idempotent) producer: produce keyed records to both topics.
  3. Transactional producer (transactional_id): one committed transaction that
     also commits consumer offsets via send_offsets_to_transaction(offsets,
     group_id), and one aborted transaction.
  4. Consumer with isolation_level="read_committed" sees the committed
     transactional records only; a read_uncommitted consumer sees both.
  5. Consumer group: subscribe, consume, commit(); committed offsets are
     visible through consumer.committed() and the admin client; the offsets
     committed inside the transaction are visible for their group.

Usage: .venv/bin/python deploy/kafka/smoke.py --bootstrap 127.0.0.1:19092 [-v]
Exit status 0 only if every check passes. Topics/groups get a unique suffix per
run, and are deleted at the end unless --keep is given.

kafka-up.sh also asks it two questions while a broker starts, each one request
on a raw connection (no authentication, so they work on the SASL listener too):
  smoke.py --probe PORT               does the broker answer ApiVersions?
  smoke.py --coordinator KIND PORT    is the group (0) or transaction (1)
                                      coordinator ready? (the first lookup
                                      creates __consumer_offsets /
                                      __transaction_state)
  smoke.py --brokers N PORT           does the broker's metadata list N brokers
                                      (the loopback cluster, kafka-cluster.sh)?
Exit status 0 for yes.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import logging
import struct
import sys
import time
import uuid

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from aiokafka.protocol.admin import ApiVersionRequest_v0
from aiokafka.protocol.api import RequestHeader_v1
from aiokafka.protocol.coordination import FindCoordinatorRequest_v1
from aiokafka.protocol.metadata import MetadataRequest_v1
from aiokafka.structs import OffsetAndMetadata

STEP_TIMEOUT = 30.0

failures: list[str] = []


def check(ok: bool, what: str) -> None:
    print(f"[{'PASS' if ok else 'FAIL'}] {what}", flush=True)
    if not ok:
        failures.append(what)


async def consume_all(consumer: AIOKafkaConsumer, want: int, idle_s: float = 3.0):
    """Poll until `want` records arrived and then `idle_s` without new ones
    (so we also notice records that should NOT be there)."""
    records = []
    last_new = time.monotonic()
    deadline = time.monotonic() + STEP_TIMEOUT
    while time.monotonic() < deadline:
        batch = await consumer.getmany(timeout_ms=500)
        got = [r for rs in batch.values() for r in rs]
        if got:
            records.extend(got)
            last_new = time.monotonic()
        elif len(records) >= want and time.monotonic() - last_new >= idle_s:
            break
    return records


async def ask(port: int, request, timeout_s: float = 3.0):
    """One request on a fresh connection to 127.0.0.1:port; the decoded response (None if no answer)."""
    correlation_id = 0x47495354
    payload = RequestHeader_v1(request, correlation_id, "kafka-up").encode() + request.encode()
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), timeout_s)
    except (TimeoutError, OSError):
        return None
    try:
        writer.write(struct.pack(">i", len(payload)) + payload)
        size = struct.unpack(">i", await asyncio.wait_for(reader.readexactly(4), timeout_s))[0]
        body = await asyncio.wait_for(reader.readexactly(size), timeout_s)
    except (TimeoutError, OSError, asyncio.IncompleteReadError):
        return None
    finally:
        writer.close()
    if struct.unpack(">i", body[:4])[0] != correlation_id:
        return None
    return request.RESPONSE_TYPE.decode(io.BytesIO(body[4:]))


async def broker_answers(port: int) -> bool:
    response = await ask(port, ApiVersionRequest_v0())
    return response is not None and response.error_code == 0


async def coordinator_ready(kind: int, port: int) -> bool:
    response = await ask(port, FindCoordinatorRequest_v1("giftstream-warmup", kind))
    return response is not None and response.error_code == 0


async def brokers_registered(want: int, port: int) -> bool:
    response = await ask(port, MetadataRequest_v1(None))  # None: no topics, only the brokers
    return response is not None and len(response.brokers) == want


async def main(bootstrap: str, keep: bool) -> int:
    run = uuid.uuid4().hex[:8]
    topic = f"smoke-events-{run}"
    compacted = f"smoke-compacted-{run}"
    out_topic = f"smoke-out-{run}"
    txn_group = f"smoke-txn-group-{run}"
    group = f"smoke-group-{run}"
    print(f"bootstrap={bootstrap} run={run}")

    # ------------------------------------------------------------ admin
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=15000)
    await asyncio.wait_for(admin.start(), STEP_TIMEOUT)
    try:
        resp = await asyncio.wait_for(
            admin.create_topics(
                [
                    NewTopic(topic, num_partitions=3, replication_factor=1),
                    NewTopic(out_topic, num_partitions=3, replication_factor=1),
                    NewTopic(
                        compacted,
                        num_partitions=1,
                        replication_factor=1,
                        topic_configs={"cleanup.policy": "compact"},
                    ),
                ]
            ),
            STEP_TIMEOUT,
        )
        errs = [(t[0], t[1]) for t in resp.topic_errors if t[1] != 0]
        check(not errs, f"create_topics (3 partitions + compacted) errors={errs}")

        meta = await asyncio.wait_for(admin.describe_topics([topic]), STEP_TIMEOUT)
        nparts = len(meta[0]["partitions"]) if meta else 0
        check(nparts == 3, f"describe_topics: {topic} has {nparts} partitions")

        cfg = await asyncio.wait_for(
            admin.describe_configs(
                [ConfigResource(ConfigResourceType.TOPIC, compacted, {"cleanup.policy": None})]
            ),
            STEP_TIMEOUT,
        )
        policy = None
        for r in cfg:
            for res in r.resources:
                for entry in res[4]:
                    if entry[0] == "cleanup.policy":
                        policy = entry[1]
        check(policy == "compact", f"describe_configs: cleanup.policy={policy!r}")

        # -------------------------------------------------------- plain produce
        producer = AIOKafkaProducer(
            bootstrap_servers=bootstrap, acks="all", enable_idempotence=True
        )
        await asyncio.wait_for(producer.start(), STEP_TIMEOUT)
        try:
            for i in range(9):
                await producer.send(topic, key=f"k{i}".encode(), value=f"v{i}".encode())
            for i in range(4):
                await producer.send(compacted, key=b"same-key", value=f"c{i}".encode())
            await asyncio.wait_for(producer.flush(), STEP_TIMEOUT)
            md = await asyncio.wait_for(
                producer.send_and_wait(topic, key=b"k9", value=b"v9"), STEP_TIMEOUT
            )
            check(md.offset >= 0, f"plain produce: 10 records to {topic}, 4 to {compacted}")
        finally:
            await producer.stop()

        # -------------------------------------------------------- group consume + commit
        consumer = AIOKafkaConsumer(
            topic,
            bootstrap_servers=bootstrap,
            group_id=group,
            auto_offset_reset="earliest",
            enable_auto_commit=False,
        )
        await asyncio.wait_for(consumer.start(), STEP_TIMEOUT)
        try:
            recs = await consume_all(consumer, 10, idle_s=1.0)
            check(len(recs) == 10, f"group consumer read {len(recs)}/10 records")
            await asyncio.wait_for(consumer.commit(), STEP_TIMEOUT)
            committed = 0
            for p in range(3):
                off = await consumer.committed(TopicPartition(topic, p))
                committed += off or 0
            check(committed == 10, f"consumer.commit(): committed offsets sum={committed}")
        finally:
            await consumer.stop()
        offs = await asyncio.wait_for(admin.list_consumer_group_offsets(group), STEP_TIMEOUT)
        total = sum(o.offset for tp, o in offs.items() if tp.topic == topic)
        check(total == 10, f"admin.list_consumer_group_offsets({group}) sum={total}")

        # compacted topic readable (compaction itself is asynchronous; just read back)
        cc = AIOKafkaConsumer(
            compacted, bootstrap_servers=bootstrap, auto_offset_reset="earliest"
        )
        await asyncio.wait_for(cc.start(), STEP_TIMEOUT)
        try:
            crecs = await consume_all(cc, 4, idle_s=0.5)
            check(
                [r.value for r in crecs][-1:] == [b"c3"],
                f"compacted topic read back {len(crecs)} records, last={crecs[-1].value if crecs else None!r}",
            )
        finally:
            await cc.stop()

        # -------------------------------------------------------- transactions
        txp = AIOKafkaProducer(
            bootstrap_servers=bootstrap,
            transactional_id=f"smoke-txn-{run}",
            acks="all",
            enable_idempotence=True,
        )
        await asyncio.wait_for(txp.start(), STEP_TIMEOUT)
        try:
            # committed transaction: outputs + offsets of "consumed" input
            await txp.begin_transaction()
            for i in range(3):
                await txp.send(out_topic, key=f"t{i}".encode(), value=b"committed")
            await txp.send_offsets_to_transaction(
                {
                    TopicPartition(topic, 0): OffsetAndMetadata(1, ""),
                    TopicPartition(topic, 1): 2,
                },
                txn_group,
            )
            await asyncio.wait_for(txp.commit_transaction(), STEP_TIMEOUT)
            check(True, "transaction 1: begin/send/send_offsets_to_transaction/commit")

            # aborted transaction
            await txp.begin_transaction()
            for i in range(2):
                await txp.send(out_topic, key=f"a{i}".encode(), value=b"aborted")
            await asyncio.wait_for(txp.abort_transaction(), STEP_TIMEOUT)
            check(True, "transaction 2: begin/send/abort")

            # and the context-manager form, committed
            async with txp.transaction():
                await txp.send(out_topic, key=b"t3", value=b"committed")
            check(True, "transaction 3: async with producer.transaction() committed")
        finally:
            await txp.stop()

        rc = AIOKafkaConsumer(
            out_topic,
            bootstrap_servers=bootstrap,
            auto_offset_reset="earliest",
            isolation_level="read_committed",
        )
        await asyncio.wait_for(rc.start(), STEP_TIMEOUT)
        try:
            recs = await consume_all(rc, 4)
            vals = sorted(r.value for r in recs)
            check(
                vals == [b"committed"] * 4,
                f"read_committed consumer sees only committed records: {len(recs)} {set(vals)}",
            )
        finally:
            await rc.stop()

        ru = AIOKafkaConsumer(
            out_topic,
            bootstrap_servers=bootstrap,
            auto_offset_reset="earliest",
            isolation_level="read_uncommitted",
        )
        await asyncio.wait_for(ru.start(), STEP_TIMEOUT)
        try:
            recs = await consume_all(ru, 6, idle_s=1.0)
            n_ab = sum(1 for r in recs if r.value == b"aborted")
            check(
                len(recs) == 6 and n_ab == 2,
                f"read_uncommitted consumer sees aborted records too: {len(recs)} (aborted={n_ab})",
            )
        finally:
            await ru.stop()

        toffs = await asyncio.wait_for(
            admin.list_consumer_group_offsets(txn_group), STEP_TIMEOUT
        )
        got = {(tp.topic, tp.partition): o.offset for tp, o in toffs.items()}
        check(
            got == {(topic, 0): 1, (topic, 1): 2},
            f"offsets committed via send_offsets_to_transaction for {txn_group}: {got}",
        )

        if not keep:
            await asyncio.wait_for(
                admin.delete_topics([topic, compacted, out_topic]), STEP_TIMEOUT
            )
    finally:
        await admin.close()

    if failures:
        print(f"SMOKE FAILED: {len(failures)} check(s) failed")
        return 1
    print("SMOKE OK")
    return 0


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bootstrap", default="127.0.0.1:19092")
    ap.add_argument("--keep", action="store_true", help="don't delete the topics")
    ap.add_argument("-v", "--verbose", action="store_true")
    ap.add_argument("--probe", type=int, metavar="PORT", help="only: does the broker on PORT answer ApiVersions?")
    ap.add_argument("--coordinator", type=int, nargs=2, metavar=("KIND", "PORT"),
                    help="only: is the group (KIND 0) or transaction (KIND 1) coordinator ready?")
    ap.add_argument("--brokers", type=int, nargs=2, metavar=("N", "PORT"),
                    help="only: does the metadata of the broker on PORT list N brokers?")
    args = ap.parse_args()
    if args.probe is not None:
        sys.exit(0 if asyncio.run(broker_answers(args.probe)) else 1)
    if args.coordinator is not None:
        sys.exit(0 if asyncio.run(coordinator_ready(*args.coordinator)) else 1)
    if args.brokers is not None:
        sys.exit(0 if asyncio.run(brokers_registered(*args.brokers)) else 1)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        code = asyncio.run(main(args.bootstrap, args.keep))
    except Exception as exc:
        import traceback

        traceback.print_exc()
        print(f"SMOKE FAILED: {type(exc).__name__}: {exc}")
        code = 1
    sys.exit(code)
