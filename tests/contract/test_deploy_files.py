"""The deployment files agree with the code: config keys are WorkerConfig fields, probes hit real routes,
dashboard and alert queries use metrics that stream.service.metrics.Metrics registers, and promtool accepts the
Prometheus files. No Docker or Kubernetes needed; promtool comes from deploy/install-test-tools.sh."""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
import tomllib
from dataclasses import fields
from pathlib import Path

import pytest
import yaml

from stream.config import Topics, WorkerConfig, load_config
from stream.engine.policy import load_policy
from stream.kafka.topics import topic_specs
from stream.service.metrics import Metrics

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
YAML_FILES = sorted(p for p in DEPLOY.rglob("*") if p.suffix in (".yml", ".yaml"))
JSON_FILES = sorted(DEPLOY.rglob("*.json"))
CONFIG_FIELDS = {f.name for f in fields(WorkerConfig)} - {"topics"}
TARGET_LABELS = {"job", "instance"}  # added by Prometheus to every scraped series
PROMETHEUS_BUILTIN = {"up": ()}  # series Prometheus makes itself
NAMESPACED = {"ConfigMap", "StatefulSet", "Service", "PodDisruptionBudget", "ScaledObject", "TriggerAuthentication",
              "Job", "Secret"}
STATE_MOUNT = "/var/lib/giftstream"  # where the state volume goes, in the image, compose and the StatefulSet
KAFKA_DELETE_RETENTION_MS = 86_400_000  # the broker's default delete.retention.ms (stream/kafka/topics.py sets none)


def load_yaml(path: Path) -> list:
    return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]


def k8s_docs() -> list[dict]:
    return [d for p in sorted(K8S.glob("*.yaml")) if p.name != "kustomization.yaml" for d in load_yaml(p)]


def k8s_one(kind: str) -> dict:
    docs = [d for d in k8s_docs() if d["kind"] == kind]
    assert len(docs) == 1, f"expected one {kind} in deploy/k8s, found {len(docs)}"
    return docs[0]


def k8s_service(headless: bool) -> dict:
    """The client Service (ClusterIP) or the headless one the StatefulSet names (clusterIP: None)."""
    docs = [d for d in k8s_docs() if d["kind"] == "Service" and (d["spec"].get("clusterIP") == "None") == headless]
    assert len(docs) == 1, f"expected one {'headless' if headless else 'ClusterIP'} Service, found {len(docs)}"
    return docs[0]


def compose() -> dict:
    return yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())


def env_config(env: dict[str, str], where: str) -> WorkerConfig:
    """Every GIFTSTREAM_* variable names a WorkerConfig field, and load_config accepts the values."""
    for key in env:
        if key.startswith("GIFTSTREAM_"):
            assert key[len("GIFTSTREAM_"):].lower() in CONFIG_FIELDS, f"{where}: {key} is not a WorkerConfig field"
    return load_config(env={k: str(v) for k, v in env.items()})


# ------------------------------------------------------------------ metrics catalogue

def metric_catalogue() -> dict[str, set[str]]:
    """Every series name a worker exposes, with its label names, read from the collectors of a fresh
    Metrics registry: a counter `x` is scraped as x_total (and x_created), a histogram as x_bucket, x_sum,
    x_count (and x_created), a gauge as x."""
    exposed = {"counter": ("_total", "_created"), "histogram": ("_bucket", "_sum", "_count", "_created"),
               "summary": ("_sum", "_count", "_created"), "gauge": ("",), "info": ("_info",)}
    registry = Metrics().registry
    names: dict[str, set[str]] = {}
    for collector in registry._collector_to_names:
        labels = set(getattr(collector, "_labelnames", ()))
        for family in collector.describe():
            for suffix in exposed[family.type]:
                names[family.name + suffix] = labels | ({"le"} if suffix == "_bucket" else set())
    assert "giftstream_events_in_total" in names and "giftstream_events_in" not in names, names
    assert "giftstream_batch_size_bucket" in names and names["giftstream_rejected_total"] == {"reason"}, names
    return names


METRICS = metric_catalogue()
_NAME = re.compile(r"\b(giftstream_[a-zA-Z0-9_]+|up)\b(?!\s*\()")
_SELECTOR = re.compile(r"\b(giftstream_[a-zA-Z0-9_]+|up)\s*\{([^}]*)\}")
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring)\s*\(([^)]*)\)")
_MATCHER = re.compile(r"([a-zA-Z_][a-zA-Z0-9_]*)\s*(?:=~|!~|!=|=)")


def check_promql(expr: str, where: str) -> set[str]:
    """Metric names in a PromQL expression exist and the labels it filters or groups by are theirs."""
    used = set(_NAME.findall(expr))
    assert used, f"{where}: no giftstream metric in {expr!r}"
    known = METRICS | {k: set(v) for k, v in PROMETHEUS_BUILTIN.items()}
    unknown = used - set(known)
    assert not unknown, f"{where}: {sorted(unknown)} not registered by stream.service.metrics.Metrics (expr {expr!r})"
    labels = set().union(*(known[n] for n in used)) | TARGET_LABELS
    for name, body in _SELECTOR.findall(expr):
        for label in _MATCHER.findall(body):
            assert label in known[name] | TARGET_LABELS, f"{where}: {name} has no label {label!r}"
    for group in _GROUPING.findall(expr):
        for label in filter(None, (s.strip() for s in group.split(","))):
            assert label in labels, f"{where}: grouping by {label!r}, which none of {sorted(used)} has"
    return used


# ------------------------------------------------------------------ every file parses

@pytest.mark.parametrize("path", YAML_FILES, ids=lambda p: str(p.relative_to(DEPLOY)))
def test_yaml_parses(path):
    docs = load_yaml(path)
    assert docs and all(isinstance(d, dict) for d in docs), f"{path}: empty or not a mapping"


@pytest.mark.parametrize("path", JSON_FILES, ids=lambda p: str(p.relative_to(DEPLOY)))
def test_json_parses(path):
    assert isinstance(json.loads(path.read_text()), dict)


def test_deploy_files_exist():
    for rel in ("Dockerfile", "docker-compose.yml", "prometheus/prometheus.yml", "prometheus/alerts.yml",
                "grafana/dashboards/giftstream.json", "install-test-tools.sh"):
        assert (DEPLOY / rel).is_file(), rel
    assert YAML_FILES and JSON_FILES


def test_no_literal_secrets_in_deploy():
    """Secrets are referenced, never written down (the local test broker's public test user aside)."""
    for path in YAML_FILES:
        for doc in load_yaml(path):
            assert doc.get("kind") != "Secret", f"{path}: a Secret manifest with values; reference one instead"
            for env in _walk_env(doc):
                if re.search(r"PASSWORD|SECRET|TOKEN", env.get("name", ""), re.I):
                    assert "value" not in env, f"{path}: {env['name']} has a literal value"
        assert "giftstream-test-secret" not in path.read_text(), path


def _walk_env(node):
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "env" and isinstance(value, list):
                yield from (e for e in value if isinstance(e, dict))
            else:
                yield from _walk_env(value)
    elif isinstance(node, list):
        for item in node:
            yield from _walk_env(item)


# ------------------------------------------------------------------ Dockerfile

def dockerfile() -> list[tuple[str, str]]:
    text = (DEPLOY / "Dockerfile").read_text().replace("\\\n", " ")
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1].strip() if " " in line.strip() else "")
            for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]


def test_dockerfile():
    inst = dockerfile()
    get = lambda k: [v for i, v in inst if i == k]  # noqa: E731
    # A build stage with Rust for the compiled engine, and a slim runtime stage that installs its wheel.
    assert get("FROM") == ["python:3.11-slim AS build", "python:3.11-slim"]
    assert any("rustup" in v for v in get("RUN")) and any("pip wheel" in v for v in get("RUN"))
    assert any("pip install /wheels/" in v and "import stream._native" in v for v in get("RUN"))
    copied = {v.split()[0] for v in get("COPY") if not v.startswith("--from")}
    assert {"native", "stream", "pyproject.toml"} <= copied, "the build stage needs every source dir"
    assert "load" not in copied, "the load-test kit is not part of the runtime image"
    users = get("USER")
    assert users and users[-1].split(":")[0] not in ("root", "0"), "the image must run as a non-root user"
    assert json.loads(get("ENTRYPOINT")[-1]) == ["giftstream"]
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert "giftstream" in scripts
    assert json.loads(get("CMD")[-1]) == ["worker"]
    assert "8080" in get("EXPOSE")[-1].split()
    # the directory a state volume is mounted on exists and belongs to the image's user (an empty named
    # volume takes it over), as the root filesystem may be read-only
    uid = users[-1].split(":")[0]
    made = [v for v in get("RUN") if re.search(rf"install -d\b[^&]*-o {uid}\b[^&]*{STATE_MOUNT}\b", v)
            or re.search(rf"mkdir\b[^&]*{STATE_MOUNT}\b.*chown\b[^&]*\b{uid}\b[^&]*{STATE_MOUNT}\b", v)]
    assert made, f"the image must create {STATE_MOUNT} owned by uid {uid}"
    healthcheck = get("HEALTHCHECK")[-1]
    assert "/healthz" in healthcheck and "8080" in healthcheck
    assert re.search(r"GIFTSTREAM_HTTP_PORT=8080\b", " ".join(get("ENV")))
    for value in get("COPY"):
        if value.startswith("--from="):
            continue  # from the build stage, not the repository
        for src in shlex.split(value)[:-1]:
            assert (ROOT / src).exists(), f"COPY {src}: not in the repository (build context is the repo root)"


# ------------------------------------------------------------------ docker compose

def test_compose_services():
    c = compose()
    services = c["services"]
    assert {"kafka", "topics", "worker", "prometheus", "grafana"} <= set(services)
    kafka = services["kafka"]
    assert kafka["image"].startswith("apache/kafka:4.1")
    kenv = kafka["environment"]
    assert set(kenv["KAFKA_PROCESS_ROLES"].split(",")) == {"broker", "controller"}, "single-node KRaft"
    assert "zookeeper" not in services and not any("ZOOKEEPER" in k for k in kenv)
    assert "kafka:9092" in kenv["KAFKA_ADVERTISED_LISTENERS"]
    assert kafka["healthcheck"]["test"]

    topics = services["topics"]
    assert topics["command"][:2] == ["topics", "create"]
    assert topics["depends_on"]["kafka"]["condition"] == "service_healthy"
    cfg = env_config(topics["environment"], "compose topics")
    assert cfg.bootstrap_servers == "kafka:9092"

    worker = services["worker"]
    assert worker["command"] == ["worker"]
    assert worker["depends_on"]["topics"]["condition"] == "service_completed_successfully"
    cfg = env_config(worker["environment"], "compose worker")
    assert cfg.http_port == 8080 and cfg.bootstrap_servers == "kafka:9092" and cfg.exactly_once
    assert any((p if isinstance(p, dict) else {"target": int(str(p).rsplit(":", 1)[-1])})["target"] == 8080
               for p in worker["ports"])
    build = worker["build"]
    assert (DEPLOY / build["context"] / build["dockerfile"]).resolve() == (DEPLOY / "Dockerfile").resolve()
    # the worker's checkpoints are on a named volume, not in the container (lost with it)
    assert cfg.state_dir and Path(cfg.state_dir).is_relative_to(STATE_MOUNT), cfg.state_dir
    volumes = [v.split(":") for v in worker.get("volumes") or []]
    source = next((src for src, target, *_ in volumes if Path(cfg.state_dir).is_relative_to(target)), None)
    assert source is not None, f"compose worker: no volume holds state_dir {cfg.state_dir}"
    assert source in (c.get("volumes") or {}), f"compose worker: {source} is not a named volume"
    assert dict((t, src) for src, t, *_ in volumes).get(STATE_MOUNT) == source

    for name in ("topics", "worker", "replay"):
        if name in services:
            assert services[name]["image"] == worker["image"]


def test_compose_mounts_exist_and_monitoring_is_wired():
    services = compose()["services"]
    mounts = {}
    for name in ("prometheus", "grafana"):
        for volume in services[name]["volumes"]:
            src, target = volume.split(":")[:2]
            if src.startswith("."):
                assert (DEPLOY / src).exists(), f"{name}: mount source {src} missing"
                mounts[(name, src.rstrip("/"))] = target
    assert mounts[("prometheus", "./prometheus")] == "/etc/prometheus"
    assert "--config.file=/etc/prometheus/prometheus.yml" in services["prometheus"]["command"]
    assert mounts[("grafana", "./grafana/provisioning")] == "/etc/grafana/provisioning"

    provider = yaml.safe_load((DEPLOY / "grafana/provisioning/dashboards/giftstream.yml").read_text())
    assert provider["providers"][0]["options"]["path"] == mounts[("grafana", "./grafana/dashboards")]
    datasource = yaml.safe_load((DEPLOY / "grafana/provisioning/datasources/prometheus.yml").read_text())
    ds = datasource["datasources"][0]
    assert ds["type"] == "prometheus" and ds["url"] == "http://prometheus:9090"
    dashboard = json.loads((DEPLOY / "grafana/dashboards/giftstream.json").read_text())
    ds_var = next(v for v in dashboard["templating"]["list"] if v["type"] == "datasource")
    assert ds_var["current"]["value"] == ds["uid"]

    prom = yaml.safe_load((DEPLOY / "prometheus/prometheus.yml").read_text())
    assert prom["rule_files"] == ["alerts.yml"]
    job = next(j for j in prom["scrape_configs"] if j["job_name"] == "giftstream")
    sd = job["dns_sd_configs"][0]
    assert sd["names"] == ["worker"] and sd["port"] == 8080  # the compose worker service and its http_port


# ------------------------------------------------------------------ Kubernetes

def workers() -> dict:
    return k8s_one("StatefulSet")


def pod_spec() -> dict:
    return workers()["spec"]["template"]["spec"]


def configmap_files() -> dict[str, str]:
    return k8s_one("ConfigMap")["data"]


def configmap_config(tmp_path: Path) -> WorkerConfig:
    (tmp_path / "worker.toml").write_text(configmap_files()["worker.toml"])
    return load_config(tmp_path / "worker.toml", env={})


def test_k8s_required_fields():
    docs = k8s_docs()
    kinds = {d["kind"] for d in docs}
    assert {"Namespace", "ConfigMap", "StatefulSet", "Service", "PodDisruptionBudget", "ScaledObject",
            "TriggerAuthentication", "Job"} <= kinds
    assert "Deployment" not in kinds, "the workers are a StatefulSet (a volume per pod for their checkpoints)"
    namespace = k8s_one("Namespace")["metadata"]["name"]
    for d in docs:
        assert d.get("apiVersion") and d.get("kind") and d.get("metadata", {}).get("name"), d
        if d["kind"] in NAMESPACED:
            assert d["metadata"].get("namespace") == namespace, f"{d['kind']} {d['metadata']['name']}"
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    assert set(kustomization["resources"]) == {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}


def test_k8s_docs_name_files_that_exist():
    """Every manifest the READMEs and the manifests' comments name is in deploy/k8s (none of deployment.yaml)."""
    texts = [(K8S / "README.md").read_text(), (DEPLOY / "README.md").read_text(),
             *(p.read_text() for p in sorted(K8S.glob("*.yaml")))]
    named = {name for text in texts for name in re.findall(r"\b([a-z][a-z0-9-]*\.yaml)\b", text)}
    assert "statefulset.yaml" in named
    missing = {n for n in named if not (K8S / n).is_file()}
    assert not missing, f"named but not in deploy/k8s: {sorted(missing)}"


def test_k8s_configmap_is_a_valid_worker_config_and_policy(tmp_path):
    files = configmap_files()
    (tmp_path / "worker.toml").write_text(files["worker.toml"])
    (tmp_path / "policy.toml").write_text(files["policy.toml"])
    cfg = load_config(tmp_path / "worker.toml", env={})
    assert cfg.http_port == 8080
    assert cfg.sasl_password is None, "the password comes from the Secret, not the ConfigMap"
    assert cfg.security_protocol.startswith("SASL") and cfg.sasl_mechanism in ("SCRAM-SHA-256", "SCRAM-SHA-512")
    policy = load_policy(tmp_path / "policy.toml")
    assert policy.regions
    assert cfg.policy and cfg.policy.startswith("/etc/giftstream/")


def test_k8s_worker_probes_hit_real_routes():
    from stream.runtime.worker import Worker
    from stream.service.http import build_app

    app = build_app(Worker(WorkerConfig(), load_policy()))
    routes = {r.canonical for r in app.router.resources()}
    assert {"/healthz", "/readyz", "/metrics"} <= routes

    spec = pod_spec()
    (container,) = spec["containers"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
        if probe in container:
            get = container[probe]["httpGet"]
            assert get["path"] in routes, f"{probe} {get['path']} is not a route of stream/service/http.py"
            assert ports.get(get["port"], get["port"]) == 8080
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert spec["terminationGracePeriodSeconds"] >= 30, "SIGTERM needs time to commit the batch in hand"

    # the worker reads the mounted ConfigMap and its env only names WorkerConfig fields
    args = container["args"]
    assert args[0] == "worker"
    config_path = Path(args[args.index("--config") + 1])
    mount = next(m for m in container["volumeMounts"] if config_path.is_relative_to(m["mountPath"]))
    volume = next(v for v in spec["volumes"] if v["name"] == mount["name"])
    assert volume["configMap"]["name"] == k8s_one("ConfigMap")["metadata"]["name"]
    assert config_path.name in configmap_files()
    for env in container["env"]:
        if env["name"].startswith("GIFTSTREAM_"):
            assert env["name"][len("GIFTSTREAM_"):].lower() in CONFIG_FIELDS, env["name"]
    password = next(e for e in container["env"] if e["name"] == "GIFTSTREAM_SASL_PASSWORD")
    assert "secretKeyRef" in password["valueFrom"] and "value" not in password
    security = container["securityContext"]
    assert security["allowPrivilegeEscalation"] is False and spec["securityContext"]["runAsNonRoot"] is True


def test_k8s_service_pdb_select_the_worker_pods():
    sts = workers()
    labels = sts["spec"]["template"]["metadata"]["labels"]
    assert sts["spec"]["selector"]["matchLabels"].items() <= labels.items()
    (container,) = pod_spec()["containers"]
    port_names = {p["name"] for p in container["ports"]}
    for service in (k8s_service(headless=False), k8s_service(headless=True)):
        assert service["spec"]["selector"].items() <= labels.items()
        assert all(p["targetPort"] in port_names | {8080} for p in service["spec"]["ports"])
        assert any(p["port"] == 8080 for p in service["spec"]["ports"])
    pdb = k8s_one("PodDisruptionBudget")
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert "maxUnavailable" in pdb["spec"] or "minAvailable" in pdb["spec"]


def _partitions(args: list[str]) -> int:
    return int(args[args.index("--partitions") + 1])


def test_k8s_statefulset_gives_each_worker_a_state_volume(tmp_path):
    """A StatefulSet as Kafka Streams deployments are: a headless Service, parallel pod management, rolling
    updates, and a ReadWriteOnce volume per pod, writable by the worker, holding the configmap's state_dir."""
    sts = workers()
    spec = sts["spec"]
    assert spec["serviceName"] == k8s_service(headless=True)["metadata"]["name"]
    assert spec["podManagementPolicy"] == "Parallel"
    assert spec["updateStrategy"]["type"] == "RollingUpdate"
    assert "strategy" not in spec, "a Deployment's field; a StatefulSet has updateStrategy"

    (claim,) = spec["volumeClaimTemplates"]
    assert claim["metadata"]["name"] == "state"
    assert claim["spec"]["accessModes"] == ["ReadWriteOnce"]
    size = claim["spec"]["resources"]["requests"]["storage"]
    match = re.fullmatch(r"(\d+)(Mi|Gi|Ti)", size)
    assert match, f"storage {size!r}"
    assert int(match[1]) * {"Mi": 1 / 1024, "Gi": 1, "Ti": 1024}[match[2]] >= 0.5, \
        "a checkpoint is about the live changelog of the pod's partitions: ~0.5 GB at ~1M creators"
    pod = pod_spec()
    assert not any(v["name"] == claim["metadata"]["name"] for v in pod["volumes"]), "the claim template is the volume"

    (container,) = pod["containers"]
    mount = next(m for m in container["volumeMounts"] if m["name"] == claim["metadata"]["name"])
    assert mount["mountPath"] == STATE_MOUNT and not mount.get("readOnly")
    cfg = configmap_config(tmp_path)
    assert cfg.state_dir, "state_dir must be set, or the volume holds nothing"
    state_dir = Path(cfg.state_dir)
    assert state_dir.is_absolute() and state_dir.is_relative_to(mount["mountPath"]), \
        f"state_dir {state_dir} is not on the state volume ({mount['mountPath']})"
    for other in container["volumeMounts"]:
        if other is not mount:
            assert not state_dir.is_relative_to(other["mountPath"]), f"state_dir under {other['mountPath']}"
    # readOnlyRootFilesystem: only the volume is writable, and fsGroup makes it the worker's
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    security = pod["securityContext"]
    assert security["fsGroup"] == security["runAsGroup"] == 10001 and security["runAsUser"] == 10001

    # checkpoints are taken often enough to matter and used only while the changelog still has the tombstones
    assert 0 < cfg.checkpoint_interval_ms < cfg.checkpoint_max_age_ms < KAFKA_DELETE_RETENTION_MS
    changelog = next(t for t in topic_specs(cfg, 6) if t.name == cfg.topics.changelog)
    assert "delete.retention.ms" not in (changelog.topic_configs or {}), "update KAFKA_DELETE_RETENTION_MS"

    # a stable pod name is the worker's id
    args = container["args"]
    assert args[args.index("--worker-id") + 1] == "$(POD_NAME)"
    pod_name = next(e for e in container["env"] if e["name"] == "POD_NAME")
    assert pod_name["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"


def test_k8s_keda_scales_on_the_workers_group_and_topic(tmp_path):
    scaled = k8s_one("ScaledObject")
    target = scaled["spec"]["scaleTargetRef"]
    sts = workers()
    assert (target.get("apiVersion"), target.get("kind"), target["name"]) == \
        (sts["apiVersion"], sts["kind"], sts["metadata"]["name"]) == ("apps/v1", "StatefulSet", "giftstream-worker")
    (trigger,) = scaled["spec"]["triggers"]
    assert trigger["type"] == "kafka"
    meta = trigger["metadata"]
    cfg = configmap_config(tmp_path)
    assert meta["topic"] == cfg.topics.gifts == Topics().gifts
    assert meta["consumerGroup"] == cfg.group_id == "giftstream"
    assert meta["bootstrapServers"] == cfg.bootstrap_servers
    assert int(meta["lagThreshold"]) > 0
    partitions = _partitions(k8s_one("Job")["spec"]["template"]["spec"]["containers"][0]["args"])
    assert 1 <= scaled["spec"]["minReplicaCount"] <= scaled["spec"]["maxReplicaCount"] <= partitions
    auth = k8s_one("TriggerAuthentication")
    assert trigger["authenticationRef"]["name"] == auth["metadata"]["name"]
    params = {r["parameter"] for r in auth["spec"]["secretTargetRef"]}
    assert {"username", "password"} <= params
    keda_sasl = {"SCRAM-SHA-256": "scram_sha256", "SCRAM-SHA-512": "scram_sha512", "PLAIN": "plaintext"}
    assert meta.get("sasl") == keda_sasl[cfg.sasl_mechanism], "KEDA must log in like the workers"
    assert (meta.get("tls") == "enable") == cfg.security_protocol.endswith("SSL")


# ------------------------------------------------------------------ Grafana dashboard

def dashboard_panels(panels: list[dict]):
    for p in panels:
        yield p
        yield from dashboard_panels(p.get("panels", []))


def test_dashboard_queries_use_registered_metrics():
    dashboard = json.loads((DEPLOY / "grafana/dashboards/giftstream.json").read_text())
    panels = [p for p in dashboard_panels(dashboard["panels"]) if p["type"] != "row"]
    assert len({p["id"] for p in dashboard_panels(dashboard["panels"])}) == len(list(
        dashboard_panels(dashboard["panels"]))), "panel ids must be unique"
    used: set[str] = set()
    exprs: list[str] = []
    for panel in panels:
        targets = panel.get("targets", [])
        assert targets, f"panel {panel['title']!r} has no query"
        for t in targets:
            where = f"panel {panel['title']!r} {t.get('refId')}"
            used |= check_promql(t["expr"], where)
            exprs.append(t["expr"])
            for label in re.findall(r"\{\{\s*(\w+)\s*\}\}", t.get("legendFormat", "")):
                names = set(_NAME.findall(t["expr"]))
                assert label in set().union(*(METRICS.get(n, set()) for n in names)) | TARGET_LABELS, \
                    f"{where}: legend uses {label!r}"
    for var in dashboard["templating"]["list"]:
        if var["type"] == "query":
            check_promql(var["definition"], f"variable {var['name']}")
    # the panels the operators asked for
    for metric in ("giftstream_events_in_total", "giftstream_rejected_total", "giftstream_diamonds_credited_total",
                   "giftstream_notices_total", "giftstream_batch_size_bucket",
                   "giftstream_batch_processing_seconds_bucket", "giftstream_end_to_end_latency_seconds_bucket",
                   "giftstream_consumer_lag", "giftstream_restore_seconds_bucket",
                   "giftstream_transactions_aborted_total", "giftstream_state_creators"):
        assert metric in used, f"no panel shows {metric}"
    joined = "\n".join(exprs)
    for q in ("0.5", "0.99"):
        assert f"histogram_quantile({q}, sum by (le) (rate(giftstream_end_to_end_latency_seconds_bucket" in joined
    assert "sum by (reason) (rate(giftstream_rejected_total" in joined
    assert "by (topic, partition) (giftstream_consumer_lag" in joined


# ------------------------------------------------------------------ Prometheus alerts

REQUIRED_ALERTS = {"GiftstreamConsumerLagGrowing", "GiftstreamDeadLetterRateHigh", "GiftstreamNoProgress",
                   "GiftstreamTransactionsAborting", "GiftstreamWorkerDown"}


def test_alert_rules_use_registered_metrics():
    groups = yaml.safe_load((DEPLOY / "prometheus/alerts.yml").read_text())["groups"]
    rules = {r["alert"]: r for g in groups for r in g["rules"]}
    assert set(rules) >= REQUIRED_ALERTS
    for name, rule in rules.items():
        check_promql(rule["expr"], f"alert {name}")
        assert rule["labels"]["severity"] in ("warning", "critical")
        assert rule["annotations"]["summary"]
    assert rules["GiftstreamConsumerLagGrowing"]["for"] == "10m"
    assert rules["GiftstreamNoProgress"]["for"] == "5m"
    assert "giftstream_events_in_total" in rules["GiftstreamNoProgress"]["expr"]
    assert "giftstream_consumer_lag" in rules["GiftstreamNoProgress"]["expr"]
    assert 'up{job="giftstream"}' in rules["GiftstreamWorkerDown"]["expr"]
    tested = set(re.findall(r"alertname: (\w+)", (DEPLOY / "prometheus/alerts_test.yml").read_text()))
    assert set(rules) <= tested, f"alerts without a promtool unit test: {sorted(set(rules) - tested)}"


def promtool(*args: str) -> subprocess.CompletedProcess:
    tool = shutil.which("promtool")
    if tool is None:
        pytest.skip("promtool not installed: run deploy/install-test-tools.sh (`make test` does)")
    return subprocess.run([tool, *args], capture_output=True, text=True, timeout=60, cwd=DEPLOY / "prometheus")


@pytest.mark.parametrize("args", [("check", "rules", "alerts.yml"), ("check", "config", "prometheus.yml"),
                                  ("test", "rules", "alerts_test.yml")], ids=" ".join)
def test_promtool(args):
    result = promtool(*args)
    assert result.returncode == 0, f"promtool {' '.join(args)}:\n{result.stdout}\n{result.stderr}"
