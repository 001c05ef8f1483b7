"""Kafka security against the local broker's SASL_PLAINTEXT (SCRAM) and SSL listeners (deploy/kafka/kafka-up.sh):
the worker works with the right credentials, fails fast and clearly with wrong ones, and never logs a secret."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import socket
import time
from dataclasses import replace

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from load.drain import free_port
from stream.config import WorkerConfig, load_config
from stream.engine.policy import load_policy
from stream.kafka.connect import ConnectionCheckError, check_connection
from stream.kafka.session_io import read_topic
from stream.kafka.topics import create_topics, delete_topics
from stream.runtime.replay import replay
from stream.service.logs import JsonFormatter
from tests.support.events import gift
from tests.support.processes import (
    KAFKA_CA,
    SASL_BOOTSTRAP,
    SCRAM_PASSWORD,
    SCRAM_USER,
    SSL_BOOTSTRAP,
    http_get,
    run_cli,
    start_worker,
    unique_topics,
    wait_ready,
    wait_until,
    write_config,
)

pytestmark = [pytest.mark.kafka, pytest.mark.timeout(90)]
WRONG_PASSWORD = "not-the-password-0451"
FAST = 15.0  # seconds within which a bad credential must be reported


def listening(bootstrap: str) -> bool:
    host, port = bootstrap.rsplit(":", 1)
    try:
        with socket.create_connection((host, int(port)), timeout=2):
            return True
    except OSError:
        return False


@pytest.fixture(scope="module")
def sasl_listener() -> str:
    if not listening(SASL_BOOTSTRAP):  # `make test` runs kafka-up.sh, which configures this listener
        pytest.fail(f"no SASL listener at {SASL_BOOTSTRAP}: (re)start the broker with deploy/kafka/kafka-up.sh "
                    "(it restarts a running broker whose config lacks the listener)")
    return SASL_BOOTSTRAP


def sasl_config(mechanism: str = "SCRAM-SHA-256", password: str | None = SCRAM_PASSWORD, **kw) -> WorkerConfig:
    return WorkerConfig(bootstrap_servers=SASL_BOOTSTRAP, security_protocol="SASL_PLAINTEXT",
                        sasl_mechanism=mechanism, sasl_username=SCRAM_USER, sasl_password=password, **kw)


def json_lines(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


# ------------------------------------------------------------------ right credentials

def test_worker_with_scram_sha256_creates_topics_consumes_and_produces(sasl_listener, tmp_path):
    suffix, topics = unique_topics("sasl")
    config = write_config(tmp_path / "worker.toml", topics, bootstrap_servers=sasl_listener,
                          group_id=f"giftstream-{suffix}", security_protocol="SASL_PLAINTEXT",
                          sasl_mechanism="SCRAM-SHA-256", sasl_username=SCRAM_USER, batch_max_ms=100)
    assert SCRAM_PASSWORD not in config.read_text()
    env = {"GIFTSTREAM_SASL_PASSWORD": SCRAM_PASSWORD}  # as in Kubernetes: from a Secret, into the env
    cfg = load_config(config, env=env)

    created = run_cli("topics", "create", "--partitions", "1", "--config", str(config), env=env)
    assert created.returncode == 0, created.stderr
    assert topics.gifts in created.stderr
    records = [gift(creator_id="sasl-c1", diamond_count=5), gift(creator_id="sasl-c1", diamond_count=99),
               b"definitely not json", gift(creator_id="sasl-c1", diamond_count=1)]
    session = tmp_path / "session.jsonl"
    session.write_bytes(b"\n".join(records) + b"\n")
    port = free_port()
    worker = start_worker(config, port, tmp_path / "worker.log", env=env, extra=("--log-level", "DEBUG"))
    try:
        wait_ready(port, worker)
        produced = run_cli("replay", "--to-kafka", str(session), "--quiet", "--config", str(config), env=env)
        assert produced.returncode == 0, produced.stderr

        expected = replay(records, load_policy(), partitions=1).engines[0].state.creators["sasl-c1"].balance
        assert expected > 0

        def balance():
            status, body = http_get(f"http://127.0.0.1:{port}/creators/sasl-c1")
            return status == 200 and json.loads(body)["balance_milli_diamonds"] == expected
        wait_until("the worker credited the gifts it consumed over SASL", balance, 30, worker)

        # its transactional outputs are readable over SASL too (read_committed)
        dlq = asyncio.run(read_topic(cfg, topics.dlq))
        dead = [json.loads(m.value) for msgs in dlq.values() for m in msgs]
        assert [d["reason"] for d in dead] == ["not_json"]
    finally:
        rc = worker.stop(timeout=30)
        run_cli("topics", "delete", "--config", str(config), env=env)
    log = worker.output()
    assert rc == 0, log[-3000:]
    lines = json_lines(log)
    assert any(line["msg"] == "worker started" for line in lines)
    assert any(line["level"] == "debug" for line in lines) or len(lines) > 3
    for text in (log, created.stdout + created.stderr, produced.stdout + produced.stderr):
        assert SCRAM_PASSWORD not in text, "a secret leaked into the output"


async def test_scram_sha512_client_roundtrip(sasl_listener):
    suffix, topics = unique_topics("sasl512")
    cfg = sasl_config("SCRAM-SHA-512", topics=topics, group_id=f"giftstream-{suffix}")
    info = await check_connection(cfg)
    assert info.bootstrap == sasl_listener
    assert all(f"{host}:{port}" == sasl_listener for _, host, port in info.brokers)
    assert topics.gifts in await create_topics(cfg, 1)
    try:
        assert await round_trip(cfg, "sha512") == ["sha512"]
    finally:
        await delete_topics(cfg)


async def round_trip(cfg: WorkerConfig, creator: str) -> list[str]:
    """Produce one gift over cfg's secured connection and read the gifts topic back over it."""
    producer = AIOKafkaProducer(bootstrap_servers=cfg.bootstrap_servers, acks="all", **cfg.kafka_security())
    await producer.start()
    try:
        await producer.send_and_wait(cfg.topics.gifts, gift(creator_id=creator), key=creator.encode())
    finally:
        await producer.stop()
    got = await read_topic(cfg, cfg.topics.gifts)
    return [json.loads(m.value)["creator_id"] for msgs in got.values() for m in msgs]


# ------------------------------------------------------------------ wrong credentials

async def test_wrong_password_is_a_clear_error_within_seconds(sasl_listener):
    cfg = sasl_config(password=WRONG_PASSWORD)
    started = time.monotonic()
    with pytest.raises(ConnectionCheckError) as err:
        await asyncio.wait_for(check_connection(cfg), FAST)
    assert time.monotonic() - started < FAST
    message = str(err.value)
    assert "rejected the credentials" in message and "sasl_password" in message and SCRAM_USER in message
    assert WRONG_PASSWORD not in message and SCRAM_PASSWORD not in message

    # what aiokafka alone does: it gives up quickly too, but only says "Unable to bootstrap"
    consumer = AIOKafkaConsumer(bootstrap_servers=cfg.bootstrap_servers, **cfg.kafka_security())
    started = time.monotonic()
    with pytest.raises(Exception) as raw:
        await asyncio.wait_for(consumer.start(), FAST)
    await consumer.stop()
    assert not isinstance(raw.value, asyncio.TimeoutError), "aiokafka hung on a bad password"
    assert time.monotonic() - started < FAST

    # an unknown mechanism and a non-SASL client on the SASL port are explained as well
    with pytest.raises(ConnectionCheckError, match="does not accept SASL mechanism PLAIN"):
        await check_connection(replace(cfg, sasl_mechanism="PLAIN", sasl_password=SCRAM_PASSWORD))
    with pytest.raises(ConnectionCheckError, match="security_protocol"):
        await check_connection(WorkerConfig(bootstrap_servers=cfg.bootstrap_servers))
    with pytest.raises(ValueError, match="sasl_password"):
        await check_connection(replace(cfg, sasl_password=None))


def test_worker_with_wrong_password_exits_fast_without_leaking_it(sasl_listener, tmp_path):
    _, topics = unique_topics("badpw")
    config = write_config(tmp_path / "worker.toml", topics, bootstrap_servers=sasl_listener,
                          security_protocol="SASL_PLAINTEXT", sasl_mechanism="SCRAM-SHA-256",
                          sasl_username=SCRAM_USER)
    env = {"GIFTSTREAM_SASL_PASSWORD": WRONG_PASSWORD}
    started = time.monotonic()
    result = run_cli("worker", "--config", str(config), "--http-port", str(free_port()), "--log-level", "DEBUG",
                     env=env, timeout=FAST + 10)
    elapsed = time.monotonic() - started
    assert elapsed < FAST, f"took {elapsed:.1f} s"
    assert result.returncode == 3, (result.returncode, result.stderr)
    assert "giftstream: cannot use Kafka:" in result.stderr
    assert "rejected the credentials" in result.stderr and "sasl_password" in result.stderr
    errors = [line for line in json_lines(result.stderr) if line["level"] == "error"]
    assert errors and "rejected the credentials" in errors[0]["error"]
    assert "Traceback" not in result.stderr
    for secret in (WRONG_PASSWORD, SCRAM_PASSWORD):
        assert secret not in result.stdout + result.stderr

    topics_result = run_cli("topics", "create", "--config", str(config), env=env, timeout=FAST + 10)
    assert topics_result.returncode == 3 and "rejected the credentials" in topics_result.stderr
    assert WRONG_PASSWORD not in topics_result.stderr


# ------------------------------------------------------------------ TLS

@pytest.fixture(scope="module")
def ssl_listener() -> str:
    if not listening(SSL_BOOTSTRAP):
        if not KAFKA_CA.exists():
            pytest.skip(f"no SSL listener at {SSL_BOOTSTRAP}: the broker runs with GIFTSTREAM_KAFKA_TLS=0")
        pytest.fail(f"{KAFKA_CA} exists but nothing listens on {SSL_BOOTSTRAP}: restart deploy/kafka/kafka-up.sh")
    return SSL_BOOTSTRAP


async def test_tls_listener_with_the_local_ca(ssl_listener):
    suffix, topics = unique_topics("tls")
    cfg = WorkerConfig(bootstrap_servers=ssl_listener, security_protocol="SSL", ssl_cafile=str(KAFKA_CA),
                       topics=topics, group_id=f"giftstream-{suffix}")
    assert (await check_connection(cfg)).bootstrap == ssl_listener
    await create_topics(cfg, 1)
    try:
        assert await round_trip(cfg, "tls") == ["tls"]
    finally:
        await delete_topics(cfg)

    with pytest.raises(ConnectionCheckError, match=r"not trusted.*ssl_cafile"):
        await asyncio.wait_for(check_connection(replace(cfg, ssl_cafile=None)), FAST)
    with pytest.raises(ConnectionCheckError, match="security_protocol"):
        await asyncio.wait_for(check_connection(WorkerConfig(bootstrap_servers=ssl_listener)), FAST)


# ------------------------------------------------------------------ logs

def test_json_logs_and_config_repr_hide_secrets():
    cfg = sasl_config()
    assert SCRAM_PASSWORD not in repr(cfg) and SCRAM_PASSWORD not in str(cfg)
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    log = logging.getLogger("test.secrets")
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    try:
        # a config object (orjson would serialize every dataclass field), client options nested in a dict
        log.info("connecting", extra={"sasl_password": SCRAM_PASSWORD, "config": cfg, "api_token": "t0k3n-42",
                                      "client_secret": "s3cr3t-42", "client": {"opts": cfg.kafka_security()}})
    finally:
        log.removeHandler(handler)
    (line,) = json_lines(stream.getvalue())
    assert line["sasl_password"] == line["api_token"] == line["client_secret"] == "***"
    assert line["client"]["opts"]["sasl_plain_password"] == "***"
    assert line["config"].startswith("WorkerConfig(") and SCRAM_USER in line["config"]
    text = stream.getvalue()
    for secret in (SCRAM_PASSWORD, "t0k3n-42", "s3cr3t-42"):
        assert secret not in text
