"""Worker settings: one dataclass, filled from defaults, a TOML file, environment and flags (in that order)."""

from __future__ import annotations

import json
import os
import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any


@dataclass
class Topics:
    gifts: str = "gifts"
    payouts: str = "payouts"
    accounts: str = "creator-accounts"
    notices: str = "payout-notices"
    window_totals: str = "creator-window-totals"
    late: str = "gifts-late"
    dlq: str = "gifts-dlq"
    changelog: str = "giftstream-state-changelog"


@dataclass
class WorkerConfig:
    bootstrap_servers: str = "127.0.0.1:19092"
    group_id: str = "giftstream"
    policy: str | None = None  # policy TOML path; None = built-in
    batch_max_records: int = 50_000  # getmany bound on records per batch
    batch_max_ms: int = 200  # getmany bound on waiting when no record is buffered
    fetch_max_wait_ms: int = 20  # broker-side wait of a fetch with no new data (see SETTING_HELP)
    commit_interval_ms: int = 0  # least time from one batch to the next (one transaction per partition each)
    max_task_idle_ms: int = 100  # the merge's slack for records appended a little apart (see help)
    session_timeout_ms: int = 10_000  # a silent (killed) worker's partitions move after this long
    progress_timeout_ms: int = 15_000  # /readyz: longest a partition may go without progress
    liveness_timeout_ms: int = 120_000  # /healthz: longest a partition may go without progress
    shutdown_timeout_ms: int = 20_000  # SIGTERM: longest the worker takes to finish, commit and leave
    exactly_once: bool = True  # transactions + read_committed; off = at-least-once, for comparison
    http_port: int = 0  # /metrics /healthz /readyz /creators; 0 = off
    security_protocol: str = "PLAINTEXT"  # PLAINTEXT, SSL, SASL_PLAINTEXT, SASL_SSL
    sasl_mechanism: str | None = None  # SCRAM-SHA-256 or SCRAM-SHA-512
    sasl_username: str | None = None
    sasl_password: str | None = field(default=None, repr=False)  # never logged
    ssl_cafile: str | None = None
    state_dir: str = ""  # local checkpoints of each partition's state; empty = none (restores read the changelog)
    checkpoint_interval_ms: int = 60_000  # least time between two checkpoints of a partition
    checkpoint_max_age_ms: int = 43_200_000  # older checkpoints are not used (under the changelog's tombstone life)
    engine: str = "auto"  # native (compiled), python (reference) or auto (native when built)
    columnar_fetch: bool = True  # polls return chunks of columns (stream/kafka/columnar_fetch.py) when available
    topics: Topics = field(default_factory=Topics)

    def kafka_security(self) -> dict[str, Any]:
        """Connection settings for aiokafka clients."""
        opts: dict[str, Any] = {"security_protocol": self.security_protocol}
        if self.security_protocol in ("SSL", "SASL_SSL"):
            from aiokafka.helpers import create_ssl_context

            opts["ssl_context"] = create_ssl_context(cafile=self.ssl_cafile)
        if self.security_protocol.startswith("SASL"):
            opts.update(sasl_mechanism=self.sasl_mechanism, sasl_plain_username=self.sasl_username,
                        sasl_plain_password=self.sasl_password)
        return opts


ENV_PREFIX = "GIFTSTREAM_"
ENGINES = ("auto", "native", "python")

SETTING_HELP = {
    "bootstrap_servers": "Kafka bootstrap servers, host:port[,host:port]",
    "group_id": "consumer group; also part of every transactional.id (one per input partition)",
    "policy": "payout policy TOML (rates, thresholds, fees, windows); empty = the built-in policy",
    "batch_max_records": "getmany bound: most records handled (and committed) per batch",
    "batch_max_ms": "getmany bound: longest wait when nothing is buffered, in ms (a batch is whatever has "
                    "arrived: getmany never waits for more)",
    "fetch_max_wait_ms": "longest time the broker holds a fetch that has no new data, in ms; also the longest "
                         "a fetch of idle partitions (payouts) can delay the next fetch of gifts (aiokafka keeps "
                         "one fetch in flight per broker), so it bounds a latency stall",
    "session_timeout_ms": "how long a silent (killed) worker keeps its partitions before they move",
    "progress_timeout_ms": "readiness: longest an owned partition may go without progress (a commit, or being "
                           "caught up as of a fetch answered within this time) before /readyz says 503",
    "liveness_timeout_ms": "liveness: longest an owned partition may go without progress (restore or commit) "
                           "before /healthz says 503, so the orchestrator restarts a worker that cannot go on",
    "state_dir": "directory for local checkpoints of each partition's state (a restart then reads only the "
                 "changelog's tail); empty = none. Give each worker its own (a StatefulSet volume)",
    "checkpoint_interval_ms": "least time between two local checkpoints of a partition, in ms (written between "
                              "batches, off the commit path; and at shutdown)",
    "checkpoint_max_age_ms": "a local checkpoint older than this is not used, in ms; keep it under the changelog's "
                             "delete.retention.ms (24 h by default), the time the changelog keeps tombstones",
    "shutdown_timeout_ms": "longest a SIGTERM'd worker takes to finish its batch, commit and leave the group; "
                           "past it the batch in hand is abandoned (its transaction never commits)",
    "commit_interval_ms": "least time between the starts of two batches, in ms: each batch is one transaction "
                          "per partition, so a longer interval means fewer, bigger transactions (less CPU in "
                          "the worker and the broker) and up to that much more latency; 0 = next batch at once",
    "max_task_idle_ms": "the inputs of a partition (gifts, payouts, creator-accounts) are merged by the time each "
                        "record holds (stream/engine/order.py); an input with records on the broker not yet "
                        "fetched always holds the others back, and one that is caught up lets a record of another "
                        "input go once it was caught up as of a fetch sent this long, in ms, after the fetch that "
                        "brought that record: the slack for producers that append a record that belongs before "
                        "another a little after it. While another input is empty, every record waits about this "
                        "long; 0 = as soon as the same fetch or a later one says caught up (Kafka Streams' "
                        "max.task.idle.ms = 0; exact only when every record is appended after all, of any input, that "
                        "belong before it, which gifts appended out of time order break)",
    "exactly_once": "true: transactions + read_committed; false: at-least-once (comparison only)",
    "http_port": "port for /metrics /healthz /readyz /creators/<id>; 0 = no HTTP",
    "security_protocol": "PLAINTEXT, SSL, SASL_PLAINTEXT or SASL_SSL",
    "sasl_mechanism": "SCRAM-SHA-256 or SCRAM-SHA-512 (with SASL_*)",
    "sasl_username": "SASL user",
    "sasl_password": "SASL password (prefer the environment variable; never logged)",
    "ssl_cafile": "CA bundle that signed the brokers' certificates (with SSL / SASL_SSL)",
    "engine": "native (the compiled engine), python (the reference engine) or auto (native when built)",
    "columnar_fetch": "true: read fetched record batches natively into columns (no object per record)",
    "topics": "[topics] table: gifts, payouts, accounts, notices, window_totals, late, dlq, changelog topic names",
}


def settings_help() -> str:
    """The epilog of `giftstream worker --help`: every setting, its default and its variable."""
    defaults = WorkerConfig()
    lines = ["settings (TOML key / environment variable, default: meaning):"]
    for f in fields(WorkerConfig):
        default = "see below" if f.name == "topics" else repr(getattr(defaults, f.name))
        env = "" if f.name == "topics" else f" / {ENV_PREFIX}{f.name.upper()}"
        lines.append(f"  {f.name}{env}, default {default}:\n      {SETTING_HELP[f.name]}")
    lines.append("  topics defaults: " + ", ".join(f"{k}={v}" for k, v in vars(defaults.topics).items()))
    lines.append("precedence: defaults < --config TOML < environment < command-line flags")
    return "\n".join(lines)


def load_config(path: str | Path | None = None, env: dict[str, str] | None = None,
                **overrides: Any) -> WorkerConfig:
    """Defaults < TOML file < GIFTSTREAM_* environment < explicit overrides (command-line flags)."""
    cfg = WorkerConfig()
    if path:
        data = tomllib.loads(Path(path).read_text())
        for key, value in data.items():
            if key == "topics":
                for tkey, tval in value.items():
                    _set(cfg.topics, tkey, tval, f"{path}: topics.{tkey}")
            else:
                _set(cfg, key, value, f"{path}: {key}")
    env = os.environ if env is None else env
    for f in fields(WorkerConfig):
        raw = env.get(ENV_PREFIX + f.name.upper())
        if raw is not None and f.name != "topics":
            _set(cfg, f.name, raw, ENV_PREFIX + f.name.upper())
    for key, value in overrides.items():
        if value is not None:
            _set(cfg, key, value, f"--{key.replace('_', '-')}")
    return cfg


def dump_config(cfg: WorkerConfig) -> str:
    """The TOML that load_config reads back to cfg (settings left at None are omitted)."""

    def value(v: Any) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        return str(v) if isinstance(v, int) else json.dumps(str(v))  # a JSON string is a TOML basic string

    lines = [f"{f.name} = {value(getattr(cfg, f.name))}" for f in fields(WorkerConfig)
             if f.name != "topics" and getattr(cfg, f.name) is not None]
    lines += ["", "[topics]"] + [f"{k} = {value(v)}" for k, v in vars(cfg.topics).items()]
    return "\n".join(lines) + "\n"


def _set(obj: Any, key: str, value: Any, where: str) -> None:
    types = {f.name: f.type for f in fields(obj)}
    if key not in types:
        raise ValueError(f"{where}: unknown setting (known: {', '.join(sorted(types))})")
    current = getattr(obj, key)
    kind = types[key]
    if isinstance(value, str) and ("int" in kind or "bool" in kind):
        if "bool" in kind:
            if value.lower() not in ("1", "0", "true", "false", "yes", "no", "on", "off"):
                raise ValueError(f"{where}: expected true/false, got {value!r}")
            value = value.lower() in ("1", "true", "yes", "on")
        else:
            try:
                value = int(value)
            except ValueError:
                raise ValueError(f"{where}: expected an integer, got {value!r}") from None
    if current is not None and not isinstance(value, type(current)):
        raise ValueError(f"{where}: expected {type(current).__name__}, got {value!r}")
    if key == "engine" and value not in ENGINES:
        raise ValueError(f"{where}: expected one of {', '.join(ENGINES)}, got {value!r}")
    setattr(obj, key, value)
