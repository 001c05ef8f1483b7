#!/usr/bin/env bash
# Start a local single-node Apache Kafka broker (KRaft, combined broker+controller)
# on 127.0.0.1, from jars resolved from Maven Central (see deploy/kafka/pom.xml).
#
# Usage: deploy/kafka/kafka-up.sh [--fresh]
#   --fresh   stop a running broker (if any) and wipe its data before starting
#
# Environment:
#   GIFTSTREAM_KAFKA_HOME             install/data dir (default: <repo>/.local/kafka)
#   GIFTSTREAM_KAFKA_PORT             PLAINTEXT listener port (default 19092)
#   GIFTSTREAM_KAFKA_CONTROLLER_PORT  KRaft controller port (default 19093)
#   GIFTSTREAM_KAFKA_HEAP_OPTS        JVM heap options (default "-Xms1g -Xmx1g")
#   GIFTSTREAM_KAFKA_START_TIMEOUT    seconds to wait for the broker (default 60)
#   GIFTSTREAM_KAFKA_FRESH=1          same as --fresh
set -euo pipefail

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_ROOT="$(cd "${SCRIPT_DIR}/../.." && pwd)"
POM="${SCRIPT_DIR}/pom.xml"

KAFKA_HOME="${GIFTSTREAM_KAFKA_HOME:-${REPO_ROOT}/.local/kafka}"
PORT="${GIFTSTREAM_KAFKA_PORT:-19092}"
CONTROLLER_PORT="${GIFTSTREAM_KAFKA_CONTROLLER_PORT:-19093}"
HEAP_OPTS="${GIFTSTREAM_KAFKA_HEAP_OPTS:--Xms1g -Xmx1g}"
START_TIMEOUT="${GIFTSTREAM_KAFKA_START_TIMEOUT:-60}"
FRESH="${GIFTSTREAM_KAFKA_FRESH:-0}"
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
if ! command -v java >/dev/null 2>&1; then
  echo "kafka-up: ERROR: 'java' not found. Install a Java 17+ runtime, e.g.: apt-get install openjdk-17-jre-headless maven" >&2
  exit 2
fi
JAVA_SPEC="$(java -XshowSettings:properties -version 2>&1 | sed -n 's/^ *java\.specification\.version = //p' | head -n1)"
JAVA_MAJOR="${JAVA_SPEC#1.}"; JAVA_MAJOR="${JAVA_MAJOR%%.*}"
if ! [[ "$JAVA_MAJOR" =~ ^[0-9]+$ ]] || (( JAVA_MAJOR < 17 )); then
  echo "kafka-up: ERROR: Java >= 17 required, found '${JAVA_SPEC:-unknown}'. Install e.g.: apt-get install openjdk-17-jre-headless" >&2
  exit 2
fi
if ! command -v mvn >/dev/null 2>&1; then
  echo "kafka-up: ERROR: 'mvn' not found (needed once to fetch Kafka jars from Maven Central). Install e.g.: apt-get install maven" >&2
  exit 2
fi

KAFKA_VERSION="$(sed -n 's:.*<kafka.version>\(.*\)</kafka.version>.*:\1:p' "$POM" | head -n1)"
[[ -n "$KAFKA_VERSION" ]] || die "cannot read <kafka.version> from $POM"

LIBS="${KAFKA_HOME}/libs"
CONFIG_DIR="${KAFKA_HOME}/config"
DATA_DIR="${KAFKA_HOME}/data"
LOG_DIR="${KAFKA_HOME}/logs"
PID_FILE="${KAFKA_HOME}/kafka.pid"
SERVER_PROPS="${CONFIG_DIR}/server.properties"
LOG4J_CONF="${CONFIG_DIR}/log4j2.properties"

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

# Minimal Kafka protocol client in pure bash (no JVM / Python needed):
# kafka_request HEX N -> sends a size-prefixed request (HEX = header+body, hex)
# to the PLAINTEXT listener and prints the first N response bytes as hex.
CORR_HEX="47495354"                      # correlation id
CLIENT_HEX="00086b61666b612d7570"        # client_id "kafka-up" (int16 length + bytes)
str_hex() { printf '%04x' "${#1}"; printf '%s' "$1" | od -An -tx1 | tr -d ' \n'; }
kafka_request() {
  local req="$1" n="$2" frame
  frame="$(printf '%08x%s' "$(( ${#req} / 2 ))" "$req" | sed 's/../\\x&/g')"
  (
    exec 3<>"/dev/tcp/127.0.0.1/${PORT}" || exit 1
    printf '%b' "$frame" >&3
    timeout 3 head -c "$n" <&3 | od -An -tx1 | tr -d ' \n'
  ) 2>/dev/null
}

# ApiVersions v0 -> response: size(4) correlation_id(4) error_code(2)
probe() {
  local hex
  hex="$(kafka_request "00120000${CORR_HEX}${CLIENT_HEX}" 10)" || return 1
  [[ "${hex:8:8}" == "$CORR_HEX" && "${hex:16:4}" == "0000" ]]
}

# FindCoordinator v1 (key_type 0=group, 1=transaction). The broker creates
# __consumer_offsets / __transaction_state on first lookup; doing it here means
# clients don't see COORDINATOR_NOT_AVAILABLE retries on a fresh broker.
# Response: size(4) correlation_id(4) throttle_time_ms(4) error_code(2)
coordinator_ready() {
  local hex
  hex="$(kafka_request "000a0001${CORR_HEX}${CLIENT_HEX}$(str_hex giftstream-warmup)0$1" 14)" || return 1
  [[ "${hex:8:8}" == "$CORR_HEX" && "${hex:24:4}" == "0000" ]]
}

port_in_use() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# ---------------------------------------------------------------- already running?
if pid="$(broker_pid)"; then
  if [[ "$FRESH" == "1" ]]; then
    log "--fresh: stopping running broker (pid $pid)"
    GIFTSTREAM_KAFKA_HOME="$KAFKA_HOME" "${SCRIPT_DIR}/kafka-down.sh"
  elif probe; then
    echo "kafka already running on 127.0.0.1:${PORT} (pid ${pid}, home ${KAFKA_HOME})"
    exit 0
  else
    log "broker process ${pid} exists but does not answer yet; waiting"
  fi
fi

# ---------------------------------------------------------------- install jars
mkdir -p "$KAFKA_HOME" "$CONFIG_DIR" "$DATA_DIR" "$LOG_DIR"
POM_SUM="$(sha256sum "$POM" | cut -c1-16)"
MARKER="${LIBS}/.installed"
if [[ -f "$MARKER" && "$(cat "$MARKER")" == "${KAFKA_VERSION} ${POM_SUM}" ]]; then
  :
else
  log "installing Apache Kafka ${KAFKA_VERSION} jars into ${LIBS} (Maven Central via mvn)"
  rm -rf "${LIBS}.tmp"
  if ! mvn -B -Dstyle.color=never -f "$POM" dependency:copy-dependencies \
        -DincludeScope=runtime -DoutputDirectory="${LIBS}.tmp" >"${LOG_DIR}/mvn-install.log" 2>&1; then
    grep -E 'ERROR|FAIL' "${LOG_DIR}/mvn-install.log" | tail -n 20 >&2 || true
    rm -rf "${LIBS}.tmp"
    die "mvn failed to resolve Kafka ${KAFKA_VERSION} jars (is Maven Central reachable?); full log: ${LOG_DIR}/mvn-install.log"
  fi
  echo "${KAFKA_VERSION} ${POM_SUM}" >"${LIBS}.tmp/.installed"
  rm -rf "$LIBS"
  mv "${LIBS}.tmp" "$LIBS"
fi

# ---------------------------------------------------------------- --fresh wipe
if [[ "$FRESH" == "1" ]]; then
  if pid="$(broker_pid)"; then die "broker (pid $pid) still running; cannot wipe data"; fi
  log "--fresh: wiping ${DATA_DIR}"
  rm -rf "$DATA_DIR"
  mkdir -p "$DATA_DIR"
fi

# ---------------------------------------------------------------- config
if ! broker_pid >/dev/null; then
  for p in "$PORT" "$CONTROLLER_PORT"; do
    if port_in_use "$p"; then
      die "127.0.0.1:${p} is already in use by another process (not the broker of ${KAFKA_HOME}); set GIFTSTREAM_KAFKA_PORT / GIFTSTREAM_KAFKA_CONTROLLER_PORT or stop it"
    fi
  done

  cat >"$SERVER_PROPS" <<EOF
# Written by deploy/kafka/kafka-up.sh -- regenerated on every start, do not edit.
process.roles=broker,controller
node.id=1
# static single-voter quorum (no dynamic --standalone bootstrap needed)
controller.quorum.voters=1@127.0.0.1:${CONTROLLER_PORT}
listeners=PLAINTEXT://127.0.0.1:${PORT},CONTROLLER://127.0.0.1:${CONTROLLER_PORT}
advertised.listeners=PLAINTEXT://127.0.0.1:${PORT}
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT

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

# keep it light (2-core machine)
num.network.threads=2
num.io.threads=4
background.threads=4
num.recovery.threads.per.data.dir=1
log.cleaner.threads=1
EOF

  cat >"$LOG4J_CONF" <<EOF
# Written by deploy/kafka/kafka-up.sh
status = warn
# keep logging through Kafka's own shutdown hook (else the last shutdown lines are lost)
shutdownHook = disable
name = giftstream-kafka
appender.server.type = RollingFile
appender.server.name = server
appender.server.fileName = ${LOG_DIR}/server.log
appender.server.filePattern = ${LOG_DIR}/server.log.%i
appender.server.layout.type = PatternLayout
appender.server.layout.pattern = [%d] %p %m (%c)%n
appender.server.policies.type = Policies
appender.server.policies.size.type = SizeBasedTriggeringPolicy
appender.server.policies.size.size = 50MB
appender.server.strategy.type = DefaultRolloverStrategy
appender.server.strategy.max = 3
rootLogger.level = INFO
rootLogger.appenderRef.server.ref = server
logger.request.name = kafka.request.logger
logger.request.level = WARN
logger.statechange.name = state.change.logger
logger.statechange.level = WARN
EOF

  CP="${LIBS}/*"
  # ------------------------------------------------------------ format storage once
  if [[ ! -f "${DATA_DIR}/meta.properties" ]]; then
    log "formatting KRaft storage in ${DATA_DIR} (cluster id ${CLUSTER_ID})"
    if ! java -Xmx256m -cp "$CP" -Dlog4j2.configurationFile="$LOG4J_CONF" \
          kafka.tools.StorageTool format -t "$CLUSTER_ID" -c "$SERVER_PROPS" --ignore-formatted \
          >"${LOG_DIR}/format.log" 2>&1; then
      cat "${LOG_DIR}/format.log" >&2
      die "kafka storage format failed"
    fi
  fi

  # ------------------------------------------------------------ start
  log "starting Kafka ${KAFKA_VERSION} on 127.0.0.1:${PORT} (controller ${CONTROLLER_PORT}); log ${LOG_DIR}/server.log"
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
  if probe; then break; fi
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
log "kafka ${KAFKA_VERSION} up on 127.0.0.1:${PORT} (pid ${pid}, home ${KAFKA_HOME})"
