"""`giftstream worker` with a count of every Kafka request it sends, by request type (issue 16 measurements).

Run as `python -m load.counting_worker OUT.json worker --config C.toml ...`: the arguments after OUT.json are
`giftstream`'s. aiokafka's AIOKafkaConnection.send is wrapped to count requests by class name (and by the
connection's client kind: producer, consumer, admin); OUT.json is rewritten every 0.5 s with the totals and
a monotonic timestamp (and the seconds spent waiting for responses, by type), so a caller can take rates over
any window. Nothing else changes."""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from collections import Counter


def install(path: str) -> None:
    from aiokafka import conn

    counts: Counter = Counter()
    waited: Counter = Counter()  # seconds from send to response, summed by request type
    original = conn.AIOKafkaConnection.send

    async def timed(aw, name: str):
        started = time.perf_counter()
        try:
            return await aw
        finally:
            waited[name] += time.perf_counter() - started

    def send(self, request, expect_response=True):
        name = type(request).__name__
        counts[name] += 1
        aw = original(self, request, expect_response)
        return timed(aw, name) if expect_response else aw

    conn.AIOKafkaConnection.send = send

    def dump() -> None:
        while True:
            snap = {"t": time.monotonic(), "counts": dict(counts), "waited_s": dict(waited)}
            tmp = path + ".tmp"
            with open(tmp, "w") as f:
                json.dump(snap, f)
            os.replace(tmp, path)
            time.sleep(0.5)

    threading.Thread(target=dump, daemon=True).start()


def main() -> None:
    path, argv = sys.argv[1], sys.argv[2:]
    install(path)
    from stream.cli import main as giftstream_main

    sys.exit(giftstream_main(argv))


if __name__ == "__main__":
    main()
