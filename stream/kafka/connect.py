"""Check that Kafka can be reached with the configured security, and say clearly why not.

aiokafka turns every connection problem (wrong password, untrusted certificate, wrong security protocol
for the listener, unreachable advertised address) into "Unable to bootstrap from [...]" and logs the cause
separately, or keeps retrying metadata forever when the advertised brokers can't be reached. The worker and
the other Kafka commands call `check_connection` first, so a misconfiguration ends in seconds with a
message that names the setting to fix. Messages never contain the password.
"""

from __future__ import annotations

import asyncio
import ssl
from dataclasses import dataclass

from aiokafka.cluster import ClusterMetadata
from aiokafka.conn import collect_hosts, create_conn
from aiokafka.errors import (
    AuthenticationFailedError,
    IllegalSaslStateError,
    KafkaConnectionError,
    KafkaError,
    SaslAuthenticationFailed,
    UnsupportedSaslMechanismError,
)
from aiokafka.protocol.metadata import MetadataRequest

from stream.config import WorkerConfig

SECURITY_PROTOCOLS = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
SASL_MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")


class ConnectionCheckError(RuntimeError):
    """Kafka cannot be used with this configuration; the message says why and what to change."""


@dataclass(frozen=True)
class ClusterInfo:
    bootstrap: str  # host:port that answered
    brokers: tuple[tuple[int, str, int], ...]  # (node id, advertised host, port)
    controller_id: int | None


def validate_security(cfg: WorkerConfig) -> None:
    """Settings that can be judged without a broker (raises ValueError naming the setting)."""
    if cfg.security_protocol not in SECURITY_PROTOCOLS:
        raise ValueError(f"security_protocol: expected one of {', '.join(SECURITY_PROTOCOLS)}, "
                         f"got {cfg.security_protocol!r}")
    if cfg.security_protocol.startswith("SASL"):
        if cfg.sasl_mechanism not in SASL_MECHANISMS:
            raise ValueError(f"sasl_mechanism: {cfg.security_protocol} needs one of {', '.join(SASL_MECHANISMS)}, "
                             f"got {cfg.sasl_mechanism!r}")
        if not cfg.sasl_username:
            raise ValueError(f"sasl_username: {cfg.security_protocol} needs a user name")
        if not cfg.sasl_password:
            raise ValueError(f"sasl_password: {cfg.security_protocol} needs a password "
                             "(set GIFTSTREAM_SASL_PASSWORD, e.g. from a secret)")
    if cfg.ssl_cafile and cfg.security_protocol not in ("SSL", "SASL_SSL"):
        raise ValueError(f"ssl_cafile is set but security_protocol is {cfg.security_protocol} (no TLS)")


def _explain(cfg: WorkerConfig, where: str, err: BaseException, timeout_s: float) -> str:
    proto = cfg.security_protocol
    who = f"user {cfg.sasl_username!r} with {cfg.sasl_mechanism}" if proto.startswith("SASL") else ""
    if isinstance(err, SaslAuthenticationFailed | AuthenticationFailedError):
        return (f"Kafka at {where} rejected the credentials of {who} (authentication failed): "
                "check sasl_username / sasl_password (GIFTSTREAM_SASL_USERNAME / GIFTSTREAM_SASL_PASSWORD)")
    if isinstance(err, UnsupportedSaslMechanismError):
        return (f"Kafka at {where} does not accept SASL mechanism {cfg.sasl_mechanism}: "
                f"check sasl_mechanism ({err})")
    if isinstance(err, IllegalSaslStateError):
        return (f"SASL handshake with {where} failed ({err}): the listener is probably not SASL; check "
                "security_protocol and sasl_mechanism")
    if isinstance(err, ssl.SSLCertVerificationError):
        return (f"TLS certificate of {where} is not trusted ({err.verify_message}): set ssl_cafile to the CA "
                "that signed the broker certificate")
    if isinstance(err, ssl.SSLError):
        return (f"TLS handshake with {where} failed ({err.reason or err}): is this listener TLS? "
                f"security_protocol is {proto}")
    if isinstance(err, ConnectionRefusedError):
        return f"nothing listens on {where} (connection refused): check bootstrap_servers"
    if isinstance(err, TimeoutError):
        return (f"no answer from {where} within {timeout_s:g} s: the listener may expect another "
                f"security_protocol than {proto}, or the address is not reachable from here")
    if isinstance(err, KafkaConnectionError | ConnectionError):
        return (f"{where} closed the connection during the handshake ({err or type(err).__name__}): the "
                f"listener probably expects "
                f"another security_protocol than {proto}")
    if isinstance(err, OSError):
        return f"cannot connect to {where}: {err.strerror or err}: check bootstrap_servers"
    return f"cannot use Kafka at {where}: {type(err).__name__}: {err}"


async def _connect(cfg: WorkerConfig, host: str, port: int, timeout_s: float):
    opts = cfg.kafka_security()
    return await asyncio.wait_for(create_conn(
        host, port, client_id="giftstream-check", request_timeout_ms=int(timeout_s * 1000),
        ssl_context=opts.get("ssl_context"), security_protocol=cfg.security_protocol,
        sasl_mechanism=opts.get("sasl_mechanism"), sasl_plain_username=opts.get("sasl_plain_username"),
        sasl_plain_password=opts.get("sasl_plain_password")), timeout_s)


async def check_connection(cfg: WorkerConfig, timeout_s: float = 10.0) -> ClusterInfo:
    """Connect to a bootstrap server with the configured security, fetch metadata, then connect to every
    advertised broker. Raises ConnectionCheckError (clear cause) or ValueError (bad setting) within
    about timeout_s per step; returns what the cluster advertises."""
    validate_security(cfg)
    try:
        hosts = collect_hosts(cfg.bootstrap_servers, randomize=False)
    except Exception as e:
        raise ValueError(f"bootstrap_servers: cannot parse {cfg.bootstrap_servers!r} ({e})") from None
    if not hosts:
        raise ValueError("bootstrap_servers: empty")
    errors: list[str] = []
    for host, port, _ in hosts:
        where = f"{host}:{port}"
        try:
            conn = await _connect(cfg, host, port, timeout_s)
        except (TimeoutError, OSError, KafkaError) as e:
            errors.append(_explain(cfg, where, e, timeout_s))
            continue
        try:
            metadata = await asyncio.wait_for(conn.send(MetadataRequest([])), timeout_s)
        except (TimeoutError, KafkaError, OSError) as e:
            errors.append(_explain(cfg, where, e, timeout_s))
            continue
        finally:
            conn.close()
        cluster = ClusterMetadata()
        cluster.update_metadata(metadata)
        brokers = tuple(sorted((b.nodeId, b.host, b.port) for b in cluster.brokers()))
        await _check_advertised(cfg, where, brokers, timeout_s)
        return ClusterInfo(where, brokers, cluster.controller.nodeId if cluster.controller else None)
    raise ConnectionCheckError("; ".join(errors))


async def _check_advertised(cfg: WorkerConfig, where: str, brokers: tuple[tuple[int, str, int], ...],
                            timeout_s: float) -> None:
    """Clients talk to the advertised addresses after bootstrap; an unreachable one makes aiokafka retry
    forever, so fail now instead."""
    for node, host, port in brokers:
        if f"{host}:{port}" == where:
            continue
        try:
            conn = await _connect(cfg, host, port, timeout_s)
        except (TimeoutError, OSError, KafkaError) as e:
            raise ConnectionCheckError(
                f"bootstrap {where} answered, but broker {node} is advertised as {host}:{port} and "
                f"{_explain(cfg, f'{host}:{port}', e, timeout_s)} (check the broker's advertised.listeners)"
            ) from None
        conn.close()
