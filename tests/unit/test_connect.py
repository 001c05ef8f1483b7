"""stream.kafka.connect without a broker: settings judged up front, unreachable addresses explained quickly."""

from __future__ import annotations

import asyncio
import socket
import time

import pytest

from stream.config import WorkerConfig
from stream.kafka.connect import ConnectionCheckError, _check_advertised, check_connection, validate_security


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # nothing listens once the socket is closed


SASL = dict(security_protocol="SASL_SSL", sasl_mechanism="SCRAM-SHA-512", sasl_username="u", sasl_password="pw")


@pytest.mark.parametrize(("settings", "setting"), [
    (dict(security_protocol="TLS"), "security_protocol"),
    ({**SASL, "sasl_mechanism": None}, "sasl_mechanism"),
    ({**SASL, "sasl_mechanism": "GSSAPI"}, "sasl_mechanism"),
    ({**SASL, "sasl_username": None}, "sasl_username"),
    ({**SASL, "sasl_password": ""}, "sasl_password"),
    (dict(ssl_cafile="/ca.pem"), "ssl_cafile"),
])
def test_bad_security_settings_name_the_setting(settings, setting):
    with pytest.raises(ValueError, match=setting):
        validate_security(WorkerConfig(**settings))


def test_good_security_settings():
    validate_security(WorkerConfig())
    validate_security(WorkerConfig(**SASL))
    validate_security(WorkerConfig(security_protocol="SSL", ssl_cafile="/ca.pem"))


async def test_nothing_listening_is_reported_at_once():
    port = closed_port()
    started = time.monotonic()
    with pytest.raises(ConnectionCheckError, match=rf"nothing listens on 127\.0\.0\.1:{port}.*bootstrap_servers"):
        await check_connection(WorkerConfig(bootstrap_servers=f"127.0.0.1:{port}"), timeout_s=5)
    assert time.monotonic() - started < 5


async def test_silent_listener_times_out_with_a_hint():
    """A port that accepts but never answers (e.g. a TLS listener spoken to in plaintext by some proxies)."""
    server = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        started = time.monotonic()
        with pytest.raises(ConnectionCheckError, match=r"no answer .* within 1 s"):
            await check_connection(WorkerConfig(bootstrap_servers=f"127.0.0.1:{port}"), timeout_s=1)
        assert time.monotonic() - started < 5
    finally:
        server.close()
        await server.wait_closed()


async def test_unreachable_advertised_broker_is_named():
    """aiokafka would retry metadata forever against an advertised address it cannot reach."""
    port = closed_port()
    with pytest.raises(ConnectionCheckError, match=rf"advertised as 127\.0\.0\.1:{port}.*advertised\.listeners"):
        await _check_advertised(WorkerConfig(), "kafka:9092", ((1, "127.0.0.1", port),), 2)


async def test_every_bootstrap_server_is_tried():
    a, b = closed_port(), closed_port()
    with pytest.raises(ConnectionCheckError) as err:
        await check_connection(WorkerConfig(bootstrap_servers=f"127.0.0.1:{a},127.0.0.1:{b}"), timeout_s=2)
    assert f":{a}" in str(err.value) and f":{b}" in str(err.value)
