"""A real Prometheus scrapes a real worker that consumes the demo session from the local broker: the
counters move, the dashboard queries and alert rules evaluate on the real series, and the worker's HTTP
side (/healthz, /readyz, /creators/<id>) answers. Needs `make kafka-up` and deploy/install-test-tools.sh."""

from __future__ import annotations

import json
import shutil
import urllib.parse
from collections import Counter
from pathlib import Path

import pytest
import yaml

from load.drain import free_port
from stream.cli import _default_session
from stream.engine.policy import load_policy
from stream.kafka.routing import partition_for
from stream.kafka.session_files import read_session
from stream.runtime.replay import replay
from tests.support.processes import (
    BOOTSTRAP,
    ROOT,
    Proc,
    http_get,
    run_cli,
    start_worker,
    unique_topics,
    wait_ready,
    wait_until,
    write_config,
)

pytestmark = [pytest.mark.kafka, pytest.mark.timeout(120)]
PARTITIONS = 2
DASHBOARD = ROOT / "deploy" / "grafana" / "dashboards" / "giftstream.json"
ALERTS = ROOT / "deploy" / "prometheus" / "alerts.yml"


def prometheus_binary() -> str:
    binary = shutil.which("prometheus") or ("/usr/bin/prometheus" if Path("/usr/bin/prometheus").exists() else None)
    if binary is None:
        pytest.skip("prometheus not installed: run deploy/install-test-tools.sh (`make test` does)")
    return binary


def query(prom_port: int, promql: str) -> list[dict]:
    status, body = http_get(f"http://127.0.0.1:{prom_port}/api/v1/query?" + urllib.parse.urlencode({"query": promql}))
    doc = json.loads(body)
    assert status == 200 and doc["status"] == "success", f"query {promql!r}: {status} {doc}"
    return doc["data"]["result"]


def scalar(prom_port: int, promql: str) -> float | None:
    result = query(prom_port, promql)
    return float(result[0]["value"][1]) if result else None


def grafana_to_promql(expr: str) -> str:
    """Dashboard queries with Grafana's variables filled in as Grafana would for this test."""
    return (expr.replace("$__rate_interval", "15s").replace("$__range", "1m").replace("$__interval", "1s")
            .replace('instance=~"$instance"', 'instance=~".*"'))


@pytest.fixture
def topics_and_config(tmp_path):
    suffix, topics = unique_topics("prom")
    config = write_config(tmp_path / "worker.toml", topics, group_id=f"giftstream-{suffix}", batch_max_ms=100)
    result = run_cli("topics", "create", "--partitions", str(PARTITIONS), "--bootstrap", BOOTSTRAP,
                     "--config", str(config))
    if result.returncode != 0:  # a missing broker is a failure, not a skip: `make test` starts it
        pytest.fail(f"giftstream topics create failed (is the broker up? make kafka-up):\n{result.stderr}")
    yield topics, config
    run_cli("topics", "delete", "--bootstrap", BOOTSTRAP, "--config", str(config))


def test_prometheus_scrapes_a_live_worker(tmp_path, topics_and_config):
    topics, config = topics_and_config
    worker_port, prom_port = free_port(), free_port()
    prom_dir = tmp_path / "prometheus"
    prom_dir.mkdir()
    shutil.copy(ALERTS, prom_dir / "alerts.yml")
    (prom_dir / "prometheus.yml").write_text(yaml.safe_dump({
        "global": {"scrape_interval": "1s", "scrape_timeout": "900ms", "evaluation_interval": "1s"},
        "rule_files": ["alerts.yml"],  # the deployed rules, evaluated on real series
        "scrape_configs": [{"job_name": "giftstream", "static_configs": [{"targets": [f"127.0.0.1:{worker_port}"]}]}],
    }))
    worker = start_worker(config, worker_port, tmp_path / "worker.log", extra=("--bootstrap", BOOTSTRAP))
    prom = Proc([prometheus_binary(), f"--config.file={prom_dir / 'prometheus.yml'}",
                 f"--storage.tsdb.path={prom_dir / 'data'}", f"--web.listen-address=127.0.0.1:{prom_port}",
                 "--log.level=warn"], tmp_path / "prometheus.log")
    try:
        # /healthz answers as soon as the HTTP side is up; /readyz once both partitions are restored
        wait_until("worker /healthz", lambda: http_get(f"http://127.0.0.1:{worker_port}/healthz")[0] == 200,
                   30, worker)
        readyz = wait_ready(worker_port, worker)
        assert readyz["partitions"] == list(range(PARTITIONS))

        # Prometheus scrapes the worker before any record exists, so the counters' rise is in its data
        wait_until("prometheus ready", lambda: http_get(f"http://127.0.0.1:{prom_port}/-/ready")[0] == 200, 30, prom)
        wait_until("prometheus scraping the worker", lambda: scalar(prom_port, 'up{job="giftstream"}') == 1, 20, prom)
        assert scalar(prom_port, "giftstream_events_in_total") == 0

        produced = run_cli("replay", "--to-kafka", "--quiet", "--bootstrap", BOOTSTRAP, "--config", str(config))
        assert produced.returncode == 0, produced.stderr
        records = read_session(_default_session())

        rate = wait_until("rate(giftstream_events_in_total[15s]) > 0",
                          lambda: (v := scalar(prom_port, "rate(giftstream_events_in_total[15s])")) and v > 0 and v,
                          20, prom)
        assert rate > 0
        not_json = wait_until('giftstream_rejected_total{reason="not_json"} > 0',
                              lambda: scalar(prom_port, 'giftstream_rejected_total{reason="not_json"}'), 20, prom)
        assert not_json > 0
        wait_until("every record consumed",  # >=: an aborted transaction's records are consumed again
                   lambda: scalar(prom_port, "giftstream_events_in_total") >= len(records), 30, prom)
        assert scalar(prom_port, f'sum(giftstream_consumer_lag{{topic="{topics.gifts}"}})') == 0
        assert scalar(prom_port, "giftstream_assigned_partitions") == PARTITIONS
        assert scalar(prom_port, "sum(giftstream_restore_seconds_count)") == PARTITIONS
        assert scalar(prom_port, "giftstream_diamonds_credited_total") > 0

        # every dashboard query is valid PromQL for a real server, and the main ones have data
        dashboard = json.loads(DASHBOARD.read_text())
        exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
        empty = [e for e in exprs if not query(prom_port, grafana_to_promql(e))]
        for must in ("rate(giftstream_events_in_total", "giftstream_end_to_end_latency_seconds_bucket",
                     "giftstream_batch_size_bucket", "giftstream_consumer_lag", "giftstream_state_creators"):
            assert not [e for e in empty if must in e], f"dashboard queries without data: {empty}"

        # the deployed alert rules load and evaluate without errors on the real series; none fires
        def rules_evaluated():
            _, body = http_get(f"http://127.0.0.1:{prom_port}/api/v1/rules")
            groups = json.loads(body)["data"]["groups"]
            rules = [r for g in groups for r in g["rules"]]
            evaluated = all(not r.get("lastEvaluation", "0001").startswith("0001") for r in rules)
            return rules if rules and evaluated else None
        rules = wait_until("alert rules evaluated", rules_evaluated, 15, prom)
        assert {r["name"] for r in rules} >= {"GiftstreamConsumerLagGrowing", "GiftstreamNoProgress",
                                              "GiftstreamWorkerDown"}
        assert all(r["health"] == "ok" for r in rules), [(r["name"], r.get("lastError")) for r in rules]
        assert not [r["name"] for r in rules if r["state"] == "firing"]

        # /creators/<id>: the balance of a creator this worker owns equals the offline replay's
        offline = replay(records, load_policy(), partitions=PARTITIONS)
        creators = {c: s for e in offline.engines.values() for c, s in e.state.creators.items()}
        top = Counter({c: s.balance for c, s in creators.items()}).most_common(1)[0][0]
        status, body = http_get(f"http://127.0.0.1:{worker_port}/creators/{top}")
        assert status == 200, body
        doc = json.loads(body)
        assert doc["creator_id"] == top
        assert doc["partition"] == partition_for(top.encode(), PARTITIONS)
        assert doc["balance_milli_diamonds"] == creators[top].balance > 0
        assert doc["region"] == creators[top].region
        assert isinstance(doc["balance_cents"], int) and isinstance(doc["open_windows"], list)
        status, body = http_get(f"http://127.0.0.1:{worker_port}/creators/no-such-creator")
        assert status == 404 and json.loads(body)["error"] == "unknown creator"

        metrics = http_get(f"http://127.0.0.1:{worker_port}/metrics")[1].decode()
        assert "giftstream_events_in_total" in metrics and "giftstream_consumer_lag{" in metrics
    finally:
        prom_rc = prom.stop()
        worker_rc = worker.stop(timeout=30)
    assert worker_rc == 0, f"worker did not stop cleanly on SIGTERM ({worker_rc}):\n{worker.output()[-3000:]}"
    assert prom_rc == 0, prom.output()[-3000:]
    assert '"msg":"worker stopped"' in worker.output()

