# The loopback cluster's layout and its one-node operations, shared by kafka-cluster.sh (all nodes) and
# kafka-node.sh (one node). Source it after setting SCRIPT_DIR and LOG_NAME. See README.md, "Three-broker cluster".
#
# Every node is broker and controller at once (combined KRaft mode); all nodes are voters of one static quorum.
# Node N (1..KAFKA_NODES) listens on 127.0.0.1 only:
#   PLAINTEXT  <port base> + 100*N        (19500, 19600, 19700 by default)
#   CONTROLLER <port base> + 100*N + 1    (19501, 19601, 19701)
# and lives in <cluster home>/node-N/{config,data,logs,kafka.pid}; the jars are in <cluster home>/libs.

REPO_ROOT="$(cd "${SCRIPT_DIR}/../.." && pwd)"
POM="${SCRIPT_DIR}/pom.xml"
# shellcheck source=deploy/kafka/lib.sh
source "${SCRIPT_DIR}/lib.sh"

NODES="${KAFKA_NODES:-3}"
CLUSTER_HOME="${GIFTSTREAM_KAFKA_CLUSTER_HOME:-${REPO_ROOT}/.local/kafka-cluster}"
LIBS="${GIFTSTREAM_KAFKA_LIBS:-${CLUSTER_HOME}/libs}"
PORT_BASE="${GIFTSTREAM_KAFKA_CLUSTER_PORT_BASE:-19400}"
HEAP_OPTS="${GIFTSTREAM_KAFKA_CLUSTER_HEAP_OPTS:--Xms512m -Xmx512m}"
START_TIMEOUT="${GIFTSTREAM_KAFKA_START_TIMEOUT:-90}"
STOP_TIMEOUT="${GIFTSTREAM_KAFKA_STOP_TIMEOUT:-30}"
PYTHON="${GIFTSTREAM_PYTHON:-${REPO_ROOT}/.venv/bin/python}"
SMOKE="${SCRIPT_DIR}/smoke.py"
# Fixed cluster id, not the single node's: base64url of the 16 bytes "giftstream-3node".
CLUSTER_ID="Z2lmdHN0cmVhbS0zbm9kZQ"

log() { echo "${LOG_NAME}: $*"; }
die() { echo "${LOG_NAME}: ERROR: $*" >&2; exit 1; }

[[ -x "$PYTHON" ]] || die "no ${PYTHON} (it asks the brokers whether they are ready): run \`make install\` first, or set GIFTSTREAM_PYTHON"
if ! [[ "$NODES" =~ ^[0-9]+$ ]] || (( NODES < 3 || NODES > 9 )); then
  die "KAFKA_NODES=${NODES}: the cluster has 3 to 9 nodes (KAFKA_NODES=1, or unset, is the single node of kafka-up.sh)"
fi
if ! [[ "$PORT_BASE" =~ ^[0-9]+$ ]] || (( PORT_BASE + 100 * NODES + 1 > 32767 )); then
  die "GIFTSTREAM_KAFKA_CLUSTER_PORT_BASE=${PORT_BASE}: node ports must stay below 32768"
fi

node_port() { echo $((PORT_BASE + 100 * $1)); }
controller_port() { echo $((PORT_BASE + 100 * $1 + 1)); }
node_home() { echo "${CLUSTER_HOME}/node-$1"; }
node_props() { echo "$(node_home "$1")/config/server.properties"; }
node_pid_file() { echo "$(node_home "$1")/kafka.pid"; }
check_node_id() {
  [[ "$1" =~ ^[0-9]+$ ]] && (( $1 >= 1 && $1 <= NODES )) || die "node id '$1' is not one of 1..${NODES} (KAFKA_NODES=${NODES})"
}
bootstrap_list() {
  local n out=""
  for ((n = 1; n <= NODES; n++)); do out+="${out:+,}127.0.0.1:$(node_port "$n")"; done
  echo "$out"
}
voters() {
  local n out=""
  for ((n = 1; n <= NODES; n++)); do out+="${out:+,}${n}@127.0.0.1:$(controller_port "$n")"; done
  echo "$out"
}

is_node_process() {  # pid $1 is node $2's broker (guards against pid reuse)
  alive "$1" && tr '\0' ' ' <"/proc/$1/cmdline" 2>/dev/null | grep -q -- "kafka.Kafka $(node_props "$2")"
}
# pid of node $1 if it runs (pid file, else a java running exactly its server.properties)
node_pid() {
  local pid="" pid_file d
  pid_file="$(node_pid_file "$1")"
  [[ -f "$pid_file" ]] && pid="$(cat "$pid_file" 2>/dev/null || true)"
  if [[ "$pid" =~ ^[0-9]+$ ]] && is_node_process "$pid" "$1"; then echo "$pid"; return 0; fi
  for d in /proc/[0-9]*; do
    if is_node_process "${d#/proc/}" "$1"; then
      echo "${d#/proc/}" >"$pid_file"
      echo "${d#/proc/}"
      return 0
    fi
  done
  return 1
}
probe() { "$PYTHON" "$SMOKE" --probe "$1" 2>/dev/null; }
port_in_use() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# server.properties of node $1 (to stdout)
server_properties() {
  local n="$1" port cport
  port="$(node_port "$n")"
  cport="$(controller_port "$n")"
  cat <<EOF
# Written by deploy/kafka/kafka-cluster.sh / kafka-node.sh -- regenerated on every start, do not edit.
# Node ${n} of a ${NODES}-node loopback cluster: broker and controller in one JVM (combined KRaft mode).
process.roles=broker,controller
node.id=${n}
# static quorum of every node (no dynamic --standalone / --initial-controllers bootstrap needed)
controller.quorum.voters=$(voters)
listeners=PLAINTEXT://127.0.0.1:${port},CONTROLLER://127.0.0.1:${cport}
advertised.listeners=PLAINTEXT://127.0.0.1:${port}
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT

log.dirs=$(node_home "$n")/data
num.partitions=6
auto.create.topics.enable=false
delete.topic.enable=true

# replicated: every topic three copies, a write needs two (acks=all), so one node may be down
default.replication.factor=3
min.insync.replicas=2
offsets.topic.replication.factor=3
offsets.topic.num.partitions=10
transaction.state.log.replication.factor=3
transaction.state.log.min.isr=2
transaction.state.log.num.partitions=10
share.coordinator.state.topic.replication.factor=3
share.coordinator.state.topic.min.isr=2
unclean.leader.election.enable=false
group.initial.rebalance.delay.ms=0
# tests run members with session timeouts down to 1 s (the broker's default floor is 6 s)
group.min.session.timeout.ms=1000
# a SIGKILLed node is fenced (its partitions get new leaders) after 6 s without a heartbeat (default 9 s)
broker.heartbeat.interval.ms=1000
broker.session.timeout.ms=6000

# keep it light (three JVMs on a 2-core machine)
num.network.threads=2
num.io.threads=2
background.threads=2
num.replica.fetchers=1
num.recovery.threads.per.data.dir=1
log.cleaner.threads=1
EOF
}


# Write node $1's config and format its storage if it has none. Not while it runs.
prepare_node() {
  local n="$1" home
  home="$(node_home "$n")"
  mkdir -p "${home}/config" "${home}/data" "${home}/logs"
  server_properties "$n" >"$(node_props "$n")"
  log4j_properties "giftstream-kafka-node-${n}" "${home}/logs" "deploy/kafka/kafka-cluster.sh / kafka-node.sh" \
    >"${home}/config/log4j2.properties"
  if [[ ! -f "${home}/data/meta.properties" ]]; then
    log "node ${n}: formatting KRaft storage in ${home}/data (cluster id ${CLUSTER_ID})"
    if ! java -Xmx256m -cp "${LIBS}/*" -Dlog4j2.configurationFile="${home}/config/log4j2.properties" \
          kafka.tools.StorageTool format -t "$CLUSTER_ID" -c "$(node_props "$n")" --ignore-formatted \
          >"${home}/logs/format.log" 2>&1; then
      cat "${home}/logs/format.log" >&2
      die "node ${n}: kafka storage format failed"
    fi
  fi
}

# Start node $1 in the background (config written, storage formatted); no waiting. No-op if it runs.
launch_node() {
  local n="$1" home p launcher
  if node_pid "$n" >/dev/null; then return 0; fi
  home="$(node_home "$n")"
  for p in "$(node_port "$n")" "$(controller_port "$n")"; do
    port_in_use "$p" && die "node ${n}: 127.0.0.1:${p} is in use by another process; set GIFTSTREAM_KAFKA_CLUSTER_PORT_BASE or stop it"
  done
  prepare_node "$n"
  log "node ${n}: starting on 127.0.0.1:$(node_port "$n") (controller $(controller_port "$n")); log ${home}/logs/server.log"
  launcher=(nohup)
  command -v setsid >/dev/null 2>&1 && launcher=(setsid nohup)
  # shellcheck disable=SC2086
  "${launcher[@]}" java $HEAP_OPTS -server -XX:+UseG1GC -XX:MaxGCPauseMillis=20 \
      -XX:+ExplicitGCInvokesConcurrent -XX:+ExitOnOutOfMemoryError -Djava.awt.headless=true \
      -Dkafka.logs.dir="${home}/logs" -Dlog4j2.configurationFile="${home}/config/log4j2.properties" \
      -cp "${LIBS}/*" kafka.Kafka "$(node_props "$n")" \
      >"${home}/logs/kafka.out" 2>&1 </dev/null &
  echo $! >"$(node_pid_file "$n")"
}

# Wait until node $1 answers ApiVersions on its PLAINTEXT port (it does once it is unfenced); 1 if it died.
wait_node() {
  local n="$1" deadline="$2" pid
  while :; do
    if ! pid="$(node_pid "$n")"; then
      echo "${LOG_NAME}: ERROR: node ${n} exited during startup. Last log lines:" >&2
      tail -n 30 "$(node_home "$n")/logs/server.log" >&2 2>/dev/null || true
      tail -n 10 "$(node_home "$n")/logs/kafka.out" >&2 2>/dev/null || true
      return 1
    fi
    probe "$(node_port "$n")" && return 0
    if (( SECONDS >= deadline )); then
      echo "${LOG_NAME}: ERROR: node ${n} (pid ${pid}) did not answer on 127.0.0.1:$(node_port "$n") in time. Last log lines:" >&2
      tail -n 30 "$(node_home "$n")/logs/server.log" >&2 2>/dev/null || true
      return 1
    fi
    sleep 0.5
  done
}

# Signal node $1 (TERM: clean shutdown, leaderships moved first; KILL: none) and wait until it is gone
# (after TERM, SIGKILL once STOP_TIMEOUT has passed).
signal_node() {
  local n="$1" sig="$2" pid
  if ! pid="$(node_pid "$n")"; then
    log "node ${n}: not running"
    rm -f "$(node_pid_file "$n")"
    return 0
  fi
  log "node ${n}: SIG${sig} (pid ${pid})"
  stop_process "$pid" "$sig" "$STOP_TIMEOUT" "node ${n}: "
  rm -f "$(node_pid_file "$n")"
  log "node ${n}: stopped"
}
