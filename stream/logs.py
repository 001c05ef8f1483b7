"""Structured JSON logs: one object per line with the message, level, logger and any `extra` fields."""

from __future__ import annotations

import logging
import sys
import time

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


def setup_logging(level: str = "INFO") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    logging.getLogger("aiokafka").setLevel(logging.WARNING)
