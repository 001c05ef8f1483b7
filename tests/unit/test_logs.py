"""stream.service.logs: JSON lines, and repeated warnings held back with a count (a client's retry storm)."""

from __future__ import annotations

import io
import logging

import orjson

from stream.service.logs import JsonFormatter, RepeatFilter


def _logger(clock) -> tuple[logging.Logger, io.StringIO]:
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(JsonFormatter())
    handler.addFilter(RepeatFilter(window=10.0, clock=clock))
    logger = logging.getLogger(f"test-repeat-{id(out)}")
    logger.handlers[:] = [handler]
    logger.propagate = False
    logger.setLevel(logging.DEBUG)
    return logger, out


def test_a_retry_storm_becomes_one_line_per_window_with_its_count():
    now = [0.0]
    logger, out = _logger(lambda: now[0])
    for i in range(500):  # 500 a second for 3 s, as aiokafka logs while the broker is away
        now[0] = i * 0.006
        logger.error("Unable connect to node with id %s: %s", 1, "refused")
    now[0] = 10.5
    logger.error("Unable connect to node with id %s: %s", 1, "refused")
    logger.warning("another message")
    logger.info("info always passes")
    logger.info("info always passes")
    lines = [orjson.loads(line) for line in out.getvalue().splitlines()]
    assert [(d["msg"], d.get("repeated")) for d in lines] == [
        ("Unable connect to node with id 1: refused", None),
        ("Unable connect to node with id 1: refused", 499),  # what was held back, said once
        ("another message", None), ("info always passes", None), ("info always passes", None)]


def test_distinct_templates_and_levels_are_counted_apart():
    now = [0.0]
    logger, out = _logger(lambda: now[0])
    for _ in range(3):
        logger.warning("a %s", 1)
        logger.error("a %s", 1)
        logger.warning("b")
    assert len(out.getvalue().splitlines()) == 3
