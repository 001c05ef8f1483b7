"""Structured JSON logs: one object per line with the message, level, logger and any `extra` fields."""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable

import orjson

_STANDARD = set(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {"message", "asctime"}
_SECRET_WORDS = ("password", "secret", "token")


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        doc = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key not in _STANDARD:
                doc[key] = _redact(key, value)
        if record.exc_info:
            doc["exc"] = self.formatException(record.exc_info)
        # Dataclasses go through str(), i.e. their repr, which leaves out repr=False fields such as
        # WorkerConfig.sasl_password; orjson's own dataclass support would serialize every field.
        return orjson.dumps(doc, default=str, option=orjson.OPT_PASSTHROUGH_DATACLASS).decode()


def _redact(key: str, value: object) -> object:
    """`***` for values under secret-looking keys, at any depth of dicts and lists."""
    if any(w in key.lower() for w in _SECRET_WORDS):
        return "***"
    if isinstance(value, dict):
        return {k: _redact(str(k), v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_redact("", v) for v in value]
    return value


class RepeatFilter(logging.Filter):
    """Lets through one warning or error per (logger, level, message template) every `window` seconds; the
    next one that passes carries `repeated`, the count held back since. A client retrying against a broker
    that is away logs the same line hundreds of times a second (aiokafka: 200-700 a second during an
    outage), which buries everything else and costs CPU. Info and debug lines pass untouched."""

    MAX_KEYS = 1024  # templates remembered at once (forgotten oldest first)

    def __init__(self, window: float = 10.0, clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__()
        self.window, self.clock = window, clock
        self._last: dict[tuple[str, int, str], list] = {}  # key -> [when it last passed, held back since]

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.WARNING:
            return True
        key = (record.name, record.levelno, str(record.msg))
        now = self.clock()
        seen = self._last.get(key)
        if seen is not None and now - seen[0] < self.window:
            seen[1] += 1
            return False
        if seen is not None and seen[1]:
            record.repeated = seen[1]
        self._last.pop(key, None)
        if len(self._last) >= self.MAX_KEYS:
            del self._last[next(iter(self._last))]
        self._last[key] = [now, 0]
        return True


def setup_logging(level: str = "INFO") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    handler.addFilter(RepeatFilter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    logging.getLogger("aiokafka").setLevel(logging.WARNING)
