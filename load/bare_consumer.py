"""The ceiling: a bare aiokafka consume loop (getmany, touch every value, commit per batch), no processing.

Run as `python -m load.bare_consumer --bootstrap B --topic T --group G`; used by the drain benchmarks."""

from __future__ import annotations

import argparse
import asyncio

from aiokafka import AIOKafkaConsumer


async def consume(bootstrap: str, topic: str, group: str, batch: int) -> None:
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False,
                                auto_offset_reset="earliest", isolation_level="read_committed",
                                max_partition_fetch_bytes=8 << 20, fetch_max_bytes=64 << 20)
    await consumer.start()
    try:
        size = 0
        while True:
            data = await consumer.getmany(timeout_ms=200, max_records=batch)
            for msgs in data.values():
                for m in msgs:
                    size += len(m.value)
            if data:
                await consumer.commit()
    finally:
        await consumer.stop()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--bootstrap", required=True)
    p.add_argument("--topic", required=True)
    p.add_argument("--group", required=True)
    p.add_argument("--batch", type=int, default=50_000)
    a = p.parse_args()
    asyncio.run(consume(a.bootstrap, a.topic, a.group, a.batch))


if __name__ == "__main__":
    main()
