#!/usr/bin/env bash
# Start a local single-node Apache Kafka broker (KRaft, combined broker+controller)
# on 127.0.0.1, from jars resolved from Maven Central (see deploy/kafka/pom.xml).
#
# Usage: deploy/kafka/kafka-up.sh [--fresh]
#   --fresh   stop a running broker (if any) and wipe its data before starting
#
# Environment:
#   GIFTSTREAM_KAFKA_HOME             install/data dir (default: <repo>/.local/kafka)
#   GIFTSTREAM_KAFKA_LIBS             the Kafka jars (default: <home>/libs); another broker's, to share them
#   GIFTSTREAM_KAFKA_PORT             PLAINTEXT listener port (default 19092)
#   GIFTSTREAM_KAFKA_CONTROLLER_PORT  KRaft controller port (default 19093)
#   GIFTSTREAM_KAFKA_SASL_PORT        SASL_PLAINTEXT listener, SCRAM-SHA-256/512 (default 19094)
#   GIFTSTREAM_KAFKA_SSL_PORT         SSL listener, self-signed CA in <home>/tls (default 19095)
#   GIFTSTREAM_KAFKA_TLS=0            no SSL listener (and no openssl needed)
#   GIFTSTREAM_KAFKA_SCRAM_USER       SCRAM test user (default giftstream)
#   GIFTSTREAM_KAFKA_SCRAM_PASSWORD   its password (default giftstream-test-secret; local test broker only)
#   GIFTSTREAM_KAFKA_HEAP_OPTS        JVM heap options (default "-Xms1g -Xmx1g")
#   GIFTSTREAM_KAFKA_START_TIMEOUT    seconds to wait for the broker (default 60)
#   GIFTSTREAM_KAFKA_FRESH=1          same as --fresh
#   GIFTSTREAM_PYTHON                 the Python with aiokafka that asks the broker whether it is ready
#                                     (default: <repo>/.venv/bin/python, which `make install` makes)
set -euo pipefail

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_ROOT="$(cd "${SCRIPT_DIR}/../.." && pwd)"
POM="${SCRIPT_DIR}/pom.xml"

KAFKA_HOME="${GIFTSTREAM_KAFKA_HOME:-${REPO_ROOT}/.local/kafka}"
PORT="${GIFTSTREAM_KAFKA_PORT:-19092}"
CONTROLLER_PORT="${GIFTSTREAM_KAFKA_CONTROLLER_PORT:-19093}"
SASL_PORT="${GIFTSTREAM_KAFKA_SASL_PORT:-19094}"
SSL_PORT="${GIFTSTREAM_KAFKA_SSL_PORT:-19095}"
TLS="${GIFTSTREAM_KAFKA_TLS:-1}"
SCRAM_USER="${GIFTSTREAM_KAFKA_SCRAM_USER:-giftstream}"
SCRAM_PASSWORD="${GIFTSTREAM_KAFKA_SCRAM_PASSWORD:-giftstream-test-secret}"
HEAP_OPTS="${GIFTSTREAM_KAFKA_HEAP_OPTS:--Xms1g -Xmx1g}"
START_TIMEOUT="${GIFTSTREAM_KAFKA_START_TIMEOUT:-60}"
FRESH="${GIFTSTREAM_KAFKA_FRESH:-0}"
PYTHON="${GIFTSTREAM_PYTHON:-${REPO_ROOT}/.venv/bin/python}"
# Fixed cluster id: base64url of the 16 bytes "giftstream-kafka".
CLUSTER_ID="Z2lmdHN0cmVhbS1rYWZrYQ"

usage() { awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "${BASH_SOURCE[0]}"; }

for arg in "$@"; do
  case "$arg" in
    --fresh) FRESH=1 ;;
    -h|--help) usage; exit 0 ;;
    *) echo "kafka-up: unknown argument: $arg" >&2; usage >&2; exit 2 ;;
  esac
done

log() { echo "kafka-up: $*"; }
die() { echo "kafka-up: ERROR: $*" >&2; exit 1; }

# ---------------------------------------------------------------- prerequisites
LOG_NAME=kafka-up
# shellcheck source=deploy/kafka/lib.sh
source "${SCRIPT_DIR}/lib.sh"
require_java_and_mvn
KAFKA_VERSION="$(pom_kafka_version)"

LIBS="${GIFTSTREAM_KAFKA_LIBS:-${KAFKA_HOME}/libs}"
CONFIG_DIR="${KAFKA_HOME}/config"
DATA_DIR="${KAFKA_HOME}/data"
LOG_DIR="${KAFKA_HOME}/logs"
PID_FILE="${KAFKA_HOME}/kafka.pid"
SERVER_PROPS="${CONFIG_DIR}/server.properties"
LOG4J_CONF="${CONFIG_DIR}/log4j2.properties"
TLS_DIR="${KAFKA_HOME}/tls"
SCRAM_MARKER="${KAFKA_HOME}/scram-users"   # which data dir (directory.id) has the SCRAM user, and which one
SCRAM_MECHANISMS=(SCRAM-SHA-256 SCRAM-SHA-512)
if [[ "$TLS" == "1" ]] && ! command -v openssl >/dev/null 2>&1; then
  echo "kafka-up: WARNING: 'openssl' not found, starting without the SSL listener (apt-get install openssl)" >&2
  TLS=0
fi

# ---------------------------------------------------------------- helpers
# pid of our broker if alive (pid file + cmdline check against pid reuse; if the
# pid file is missing/stale, look for a java running exactly our server.properties)
is_our_broker() {
  kill -0 "$1" 2>/dev/null &&
    ! grep -qs '^State:[[:space:]]*Z' "/proc/$1/status" &&
    tr '\0' ' ' <"/proc/$1/cmdline" 2>/dev/null | grep -q -- "kafka.Kafka ${SERVER_PROPS}"
}
broker_pid() {
  local pid="" d
  [[ -f "$PID_FILE" ]] && pid="$(cat "$PID_FILE" 2>/dev/null || true)"
  if [[ "$pid" =~ ^[0-9]+$ ]] && is_our_broker "$pid"; then echo "$pid"; return 0; fi
  for d in /proc/[0-9]*; do
    if is_our_broker "${d#/proc/}"; then
      echo "${d#/proc/}" >"$PID_FILE"
      echo "${d#/proc/}"
      return 0
    fi
  done
  return 1
}

# The broker's readiness, asked by deploy/kafka/smoke.py (aiokafka's protocol classes, one request on a raw
# connection): ApiVersions answers on PLAINTEXT and, before authentication, on SASL_PLAINTEXT.
SMOKE="${SCRIPT_DIR}/smoke.py"
probe() { "$PYTHON" "$SMOKE" --probe "${1:-$PORT}" 2>/dev/null; }
# FindCoordinator (0 = group, 1 = transaction): the broker creates __consumer_offsets / __transaction_state on
# the first lookup; doing it here means clients don't see COORDINATOR_NOT_AVAILABLE retries on a fresh broker.
coordinator_ready() { "$PYTHON" "$SMOKE" --coordinator "$1" "$PORT" 2>/dev/null; }

port_in_use() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# Self-signed CA + broker certificate (SAN 127.0.0.1 and localhost) for the SSL listener, made once
# with openssl in <home>/tls and renewed when the broker certificate has less than 30 days left.
# Clients trust <home>/tls/ca.pem (WorkerConfig.ssl_cafile).
ensure_tls_material() {
  [[ "$TLS" == "1" ]] || return 0
  if [[ -f "${TLS_DIR}/broker.p12" && -f "${TLS_DIR}/ca.pem" && -f "${TLS_DIR}/keystore.pass" ]] &&
     openssl x509 -checkend $((30 * 86400)) -noout -in "${TLS_DIR}/broker.pem" >/dev/null 2>&1; then
    return 0
  fi
  log "generating a self-signed CA and broker certificate in ${TLS_DIR}"
  local tmp="${TLS_DIR}.tmp"
  rm -rf "$tmp"
  mkdir -p "$tmp"
  (
    umask 077
    set -e
    cd "$tmp"
    openssl rand -hex 24 >keystore.pass
    openssl req -x509 -newkey rsa:2048 -nodes -sha256 -days 3650 -keyout ca.key -out ca.pem \
      -subj "/CN=giftstream local test CA" \
      -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign"
    openssl req -newkey rsa:2048 -nodes -sha256 -keyout broker.key -out broker.csr -subj "/CN=localhost"
    printf '%s\n' "subjectAltName=DNS:localhost,IP:127.0.0.1" "basicConstraints=CA:FALSE" \
      "keyUsage=critical,digitalSignature,keyEncipherment" "extendedKeyUsage=serverAuth" >broker.ext
    openssl x509 -req -in broker.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 3650 -sha256 \
      -extfile broker.ext -out broker.pem
    openssl pkcs12 -export -name broker -in broker.pem -inkey broker.key -certfile ca.pem \
      -passout "file:keystore.pass" -out broker.p12
    rm -f broker.csr broker.ext ca.srl
    chmod 644 ca.pem broker.pem
  ) >"${LOG_DIR}/tls.log" 2>&1 || { cat "${LOG_DIR}/tls.log" >&2; rm -rf "$tmp"; die "TLS material generation failed"; }
  rm -rf "$TLS_DIR"
  mv "$tmp" "$TLS_DIR"
}

# server.properties as this script wants it (to stdout).
server_properties() {
  local listeners="PLAINTEXT://127.0.0.1:${PORT},CONTROLLER://127.0.0.1:${CONTROLLER_PORT},SASL_PLAINTEXT://127.0.0.1:${SASL_PORT}"
  local advertised="PLAINTEXT://127.0.0.1:${PORT},SASL_PLAINTEXT://127.0.0.1:${SASL_PORT}"
  local protocols="CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT,SASL_PLAINTEXT:SASL_PLAINTEXT"
  if [[ "$TLS" == "1" ]]; then
    listeners+=",SSL://127.0.0.1:${SSL_PORT}"
    advertised+=",SSL://127.0.0.1:${SSL_PORT}"
    protocols+=",SSL:SSL"
  fi
  cat <<EOF
# Written by deploy/kafka/kafka-up.sh -- regenerated on every start, do not edit.
process.roles=broker,controller
node.id=1
# static single-voter quorum (no dynamic --standalone bootstrap needed)
controller.quorum.voters=1@127.0.0.1:${CONTROLLER_PORT}
# PLAINTEXT (${PORT}) is what tests and CI use; SASL_PLAINTEXT (${SASL_PORT}) and SSL (${SSL_PORT})
# exist to test client security settings.
listeners=${listeners}
advertised.listeners=${advertised}
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=${protocols}

# SASL/SCRAM on the SASL_PLAINTEXT listener; users live in the KRaft metadata log
# (created by 'kafka-storage format --add-scram', or with kafka-configs on an older data dir)
sasl.enabled.mechanisms=SCRAM-SHA-256,SCRAM-SHA-512
listener.name.sasl_plaintext.scram-sha-256.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required;
listener.name.sasl_plaintext.scram-sha-512.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required;
EOF
  if [[ "$TLS" == "1" ]]; then
    local pass
    pass="$(cat "${TLS_DIR}/keystore.pass")"
    cat <<EOF

# TLS on the SSL listener: server certificate only (no client certificates)
ssl.keystore.type=PKCS12
ssl.keystore.location=${TLS_DIR}/broker.p12
ssl.keystore.password=${pass}
ssl.key.password=${pass}
ssl.client.auth=none
EOF
  fi
  cat <<EOF

log.dirs=${DATA_DIR}
num.partitions=6
default.replication.factor=1
auto.create.topics.enable=false
delete.topic.enable=true

# single-node internal topics
offsets.topic.replication.factor=1
offsets.topic.num.partitions=10
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
transaction.state.log.num.partitions=10
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
group.initial.rebalance.delay.ms=0
# tests run members with session timeouts down to 1 s (the broker's default floor is 6 s)
group.min.session.timeout.ms=1000

# keep it light (2-core machine)
num.network.threads=2
num.io.threads=4
background.threads=4
num.recovery.threads.per.data.dir=1
log.cleaner.threads=1
EOF
}

# The SCRAM user is tied to one formatted data dir (its directory.id) and one user/password.
scram_marker_value() {
  local dir_id
  dir_id="$(sed -n 's/^directory\.id=//p' "${DATA_DIR}/meta.properties" 2>/dev/null | head -n1)"
  [[ -n "$dir_id" ]] || return 1
  printf '%s %s\n' "$dir_id" "$(printf '%s\0%s\0%s' "$SCRAM_USER" "$SCRAM_PASSWORD" "${SCRAM_MECHANISMS[*]}" | sha256sum | cut -c1-16)"
}
scram_user_current() {
  local want
  want="$(scram_marker_value)" || return 1
  [[ -f "$SCRAM_MARKER" && "$(cat "$SCRAM_MARKER")" == "$want" ]]
}
scram_config_args() {  # SCRAM-SHA-256=[name=u,password=p] per mechanism (format) or [password=p] (kafka-configs)
  local m
  for m in "${SCRAM_MECHANISMS[@]}"; do
    if [[ "$1" == "format" ]]; then printf '%s\n' "--add-scram" "${m}=[name=${SCRAM_USER},password=${SCRAM_PASSWORD}]"
    else printf '%s=[password=%s]\n' "$m" "$SCRAM_PASSWORD"; fi
  done
}

# ---------------------------------------------------------------- already running?
[[ -x "$PYTHON" ]] || die "no ${PYTHON} (it asks the broker whether it is ready): run \`make install\` first, or set GIFTSTREAM_PYTHON"
mkdir -p "$LOG_DIR"
ensure_tls_material
if pid="$(broker_pid)"; then
  if [[ "$FRESH" == "1" ]]; then
    log "--fresh: stopping running broker (pid $pid)"
    GIFTSTREAM_KAFKA_HOME="$KAFKA_HOME" "${SCRIPT_DIR}/kafka-down.sh"
  elif probe; then
    if [[ "$(server_properties)" != "$(cat "$SERVER_PROPS" 2>/dev/null)" ]]; then
      # e.g. a broker started by an older version of this script (no SASL/SSL listeners), or new ports
      log "running broker (pid ${pid}) has an outdated ${SERVER_PROPS}; restarting it (data kept)"
      GIFTSTREAM_KAFKA_HOME="$KAFKA_HOME" "${SCRIPT_DIR}/kafka-down.sh"
    elif ! scram_user_current; then
      log "broker (pid ${pid}) runs but the SCRAM user is not set up yet; continuing"
    else
      echo "kafka already running on 127.0.0.1:${PORT} (pid ${pid}, home ${KAFKA_HOME})"
      exit 0
    fi
  else
    log "broker process ${pid} exists but does not answer yet; waiting"
  fi
fi

# ---------------------------------------------------------------- install jars
mkdir -p "$KAFKA_HOME" "$CONFIG_DIR" "$DATA_DIR" "$LOG_DIR"
install_jars "$LIBS" "$LOG_DIR"

# ---------------------------------------------------------------- --fresh wipe
if [[ "$FRESH" == "1" ]]; then
  if pid="$(broker_pid)"; then die "broker (pid $pid) still running; cannot wipe data"; fi
  log "--fresh: wiping ${DATA_DIR}"
  rm -rf "$DATA_DIR"
  mkdir -p "$DATA_DIR"
fi

# ---------------------------------------------------------------- config
if ! broker_pid >/dev/null; then
  ports=("$PORT" "$CONTROLLER_PORT" "$SASL_PORT")
  [[ "$TLS" == "1" ]] && ports+=("$SSL_PORT")
  for p in "${ports[@]}"; do
    if port_in_use "$p"; then
      die "127.0.0.1:${p} is already in use by another process (not the broker of ${KAFKA_HOME}); set GIFTSTREAM_KAFKA_PORT / GIFTSTREAM_KAFKA_CONTROLLER_PORT / GIFTSTREAM_KAFKA_SASL_PORT / GIFTSTREAM_KAFKA_SSL_PORT or stop it"
    fi
  done

  server_properties >"$SERVER_PROPS"
  chmod 600 "$SERVER_PROPS"   # holds the keystore password

  log4j_properties giftstream-kafka "$LOG_DIR" "deploy/kafka/kafka-up.sh" >"$LOG4J_CONF"

  CP="${LIBS}/*"
  # ------------------------------------------------------------ format storage once
  if [[ ! -f "${DATA_DIR}/meta.properties" ]]; then
    log "formatting KRaft storage in ${DATA_DIR} (cluster id ${CLUSTER_ID}, SCRAM user ${SCRAM_USER})"
    mapfile -t scram_args < <(scram_config_args format)
    if ! java -Xmx256m -cp "$CP" -Dlog4j2.configurationFile="$LOG4J_CONF" \
          kafka.tools.StorageTool format -t "$CLUSTER_ID" -c "$SERVER_PROPS" --ignore-formatted \
          "${scram_args[@]}" >"${LOG_DIR}/format.log" 2>&1; then
      cat "${LOG_DIR}/format.log" >&2
      die "kafka storage format failed"
    fi
    scram_marker_value >"$SCRAM_MARKER" || true
  fi

  # ------------------------------------------------------------ start
  extra_listeners="SASL_PLAINTEXT ${SASL_PORT}"
  [[ "$TLS" == "1" ]] && extra_listeners+=", SSL ${SSL_PORT}"
  log "starting Kafka ${KAFKA_VERSION} on 127.0.0.1:${PORT} (controller ${CONTROLLER_PORT}, ${extra_listeners}); log ${LOG_DIR}/server.log"
  # shellcheck disable=SC2086
  launcher=(nohup)
  command -v setsid >/dev/null 2>&1 && launcher=(setsid nohup)
  # shellcheck disable=SC2086
  "${launcher[@]}" java $HEAP_OPTS -server -XX:+UseG1GC -XX:MaxGCPauseMillis=20 \
      -XX:+ExplicitGCInvokesConcurrent -XX:+ExitOnOutOfMemoryError -Djava.awt.headless=true \
      -Dkafka.logs.dir="$LOG_DIR" -Dlog4j2.configurationFile="$LOG4J_CONF" \
      -cp "$CP" kafka.Kafka "$SERVER_PROPS" \
      >"${LOG_DIR}/kafka.out" 2>&1 </dev/null &
  echo $! >"$PID_FILE"
fi

# ---------------------------------------------------------------- wait until it answers
pid="$(broker_pid || cat "$PID_FILE")"
deadline=$((SECONDS + START_TIMEOUT))
while :; do
  if ! kill -0 "$pid" 2>/dev/null; then
    echo "kafka-up: ERROR: broker process exited during startup. Last log lines:" >&2
    tail -n 40 "${LOG_DIR}/server.log" >&2 2>/dev/null || true
    tail -n 20 "${LOG_DIR}/kafka.out" >&2 2>/dev/null || true
    rm -f "$PID_FILE"
    exit 1
  fi
  if probe && probe "$SASL_PORT"; then break; fi
  if (( SECONDS >= deadline )); then
    echo "kafka-up: ERROR: broker (pid $pid) did not answer on 127.0.0.1:${PORT} within ${START_TIMEOUT}s. Last log lines:" >&2
    tail -n 40 "${LOG_DIR}/server.log" >&2 2>/dev/null || true
    tail -n 20 "${LOG_DIR}/kafka.out" >&2 2>/dev/null || true
    echo "kafka-up: stopping the unresponsive broker" >&2
    GIFTSTREAM_KAFKA_HOME="$KAFKA_HOME" "${SCRIPT_DIR}/kafka-down.sh" >&2 || true
    exit 1
  fi
  sleep 0.5
done
# warm up the group + transaction coordinators (internal topics)
while ! { coordinator_ready 0 && coordinator_ready 1; }; do
  if (( SECONDS >= deadline )); then
    echo "kafka-up: WARNING: group/transaction coordinator not ready after ${START_TIMEOUT}s (broker answers, continuing)" >&2
    break
  fi
  sleep 0.5
done
# SCRAM user for a data dir formatted without it (an older version of this script): add it through the
# admin API over PLAINTEXT (kafka-configs), once per data dir; re-running it would only re-salt the password.
if ! scram_user_current; then
  log "adding SCRAM user ${SCRAM_USER} (${SCRAM_MECHANISMS[*]}) with kafka-configs"
  : >"${LOG_DIR}/scram.log"
  # one mechanism per call: Kafka rejects two credentials of one user in one request
  while read -r credential; do
    if ! java -Xmx256m -cp "${LIBS}/*" kafka.admin.ConfigCommand --bootstrap-server "127.0.0.1:${PORT}" \
          --alter --entity-type users --entity-name "$SCRAM_USER" --add-config "$credential" \
          >>"${LOG_DIR}/scram.log" 2>&1; then
      cat "${LOG_DIR}/scram.log" >&2
      die "could not create SCRAM user ${SCRAM_USER}; log ${LOG_DIR}/scram.log"
    fi
  done < <(scram_config_args configs)
  scram_marker_value >"$SCRAM_MARKER"
fi
extra_listeners="SASL_PLAINTEXT 127.0.0.1:${SASL_PORT} (SCRAM user ${SCRAM_USER})"
[[ "$TLS" == "1" ]] && extra_listeners+=", SSL 127.0.0.1:${SSL_PORT} (CA ${TLS_DIR}/ca.pem)"
log "kafka ${KAFKA_VERSION} up on 127.0.0.1:${PORT} (pid ${pid}, home ${KAFKA_HOME}); also ${extra_listeners}"
