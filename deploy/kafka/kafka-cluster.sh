#!/usr/bin/env bash
# A local Apache Kafka cluster of KAFKA_NODES (default 3) nodes on 127.0.0.1, for tests and chaos runs:
# every node is broker and controller (combined KRaft mode, one static quorum of all nodes), every topic
# replicated 3 times with min.insync.replicas=2. Jars from Maven Central like kafka-up.sh (pom.xml).
#
# Usage: deploy/kafka/kafka-cluster.sh up [--fresh] | down [--wipe] | status
#   up        install jars (first time), format (first time), start every node, wait until all are
#             registered and the group/transaction coordinators answer; prints the bootstrap list
#   --fresh   stop the cluster (if running) and wipe every node's data before starting
#   down      stop every node (SIGTERM to all at once, SIGKILL after the stop timeout)
#   --wipe    also delete every node's data dir
#   status    one line per node; exit 0 only if every node runs and answers
# One node: deploy/kafka/kafka-node.sh start|stop|kill|status NODE_ID.
#
# Environment:
#   KAFKA_NODES                          nodes (3 to 9, default 3)
#   GIFTSTREAM_KAFKA_CLUSTER_HOME        jars, nodes' config/data/logs (default: <repo>/.local/kafka-cluster)
#   GIFTSTREAM_KAFKA_LIBS                the Kafka jars (default: <cluster home>/libs); another's, to share them
#   GIFTSTREAM_KAFKA_CLUSTER_PORT_BASE   node N listens on BASE+100*N, its controller on BASE+100*N+1
#                                        (default 19400: 19500/19501, 19600/19601, 19700/19701)
#   GIFTSTREAM_KAFKA_CLUSTER_HEAP_OPTS   JVM heap of each node (default "-Xms512m -Xmx512m")
#   GIFTSTREAM_KAFKA_START_TIMEOUT       seconds to wait for the cluster (default 90)
#   GIFTSTREAM_KAFKA_STOP_TIMEOUT        seconds after SIGTERM before SIGKILL (default 30)
#   GIFTSTREAM_PYTHON                    the Python with aiokafka (default: <repo>/.venv/bin/python)
set -euo pipefail

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
LOG_NAME=kafka-cluster
# shellcheck source=deploy/kafka/cluster-lib.sh
source "${SCRIPT_DIR}/cluster-lib.sh"

usage() { awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "${BASH_SOURCE[0]}"; }

ACTION="${1:-}"
[[ $# -gt 0 ]] && shift
FRESH="${GIFTSTREAM_KAFKA_FRESH:-0}"
WIPE="${GIFTSTREAM_KAFKA_WIPE:-0}"
for arg in "$@"; do
  case "$ACTION:$arg" in
    up:--fresh) FRESH=1 ;;
    down:--wipe) WIPE=1 ;;
    *:-h|*:--help) usage; exit 0 ;;
    *) echo "kafka-cluster: unknown argument for '${ACTION}': $arg" >&2; usage >&2; exit 2 ;;
  esac
done

down() {
  local n pids=()
  # all at once: stopped one by one, the last nodes would wait for a quorum that is gone
  for ((n = 1; n <= NODES; n++)); do
    signal_node "$n" TERM &
    pids+=($!)
  done
  for p in "${pids[@]}"; do wait "$p"; done
  if [[ "$WIPE" == "1" ]]; then
    log "wiping the nodes' data in ${CLUSTER_HOME}/node-*/data"
    for ((n = 1; n <= NODES; n++)); do rm -rf "$(node_home "$n")/data"; done
  fi
}

status() {
  local n pid ok=0
  for ((n = 1; n <= NODES; n++)); do
    if ! pid="$(node_pid "$n")"; then
      echo "node ${n}: not running (127.0.0.1:$(node_port "$n"))"; ok=1
    elif probe "$(node_port "$n")"; then
      echo "node ${n}: running, pid ${pid}, answers on 127.0.0.1:$(node_port "$n")"
    else
      echo "node ${n}: running, pid ${pid}, does not answer on 127.0.0.1:$(node_port "$n")"; ok=1
    fi
  done
  return "$ok"
}

up() {
  local n running=1 t0=$SECONDS deadline
  require_java_and_mvn
  if [[ "$FRESH" == "1" ]]; then
    log "--fresh: stopping the cluster (if running) and wiping its data"
    WIPE=1 down
  fi
  for ((n = 1; n <= NODES; n++)); do
    node_pid "$n" >/dev/null && probe "$(node_port "$n")" || running=0
    # a node started with another config (older script, other KAFKA_NODES or ports) is restarted with this one
    if node_pid "$n" >/dev/null && [[ "$(server_properties "$n")" != "$(cat "$(node_props "$n")" 2>/dev/null)" ]]; then
      log "node ${n} runs with an outdated $(node_props "$n"); restarting it (data kept)"
      signal_node "$n" TERM
      running=0
    fi
  done
  if (( running )) && "$PYTHON" "$SMOKE" --brokers "$NODES" "$(node_port 1)" 2>/dev/null; then
    echo "kafka cluster already running: ${NODES} nodes, bootstrap $(bootstrap_list) (home ${CLUSTER_HOME})"
    return 0
  fi
  mkdir -p "$CLUSTER_HOME"
  install_jars "$LIBS" "${CLUSTER_HOME}/logs"
  # format in parallel (one short JVM each), then start every node before waiting for any: a node answers only once a quorum (a majority) of controllers is up
  local jobs=()
  for ((n = 1; n <= NODES; n++)); do
    if ! node_pid "$n" >/dev/null; then prepare_node "$n" & jobs+=($!); fi
  done
  for p in "${jobs[@]}"; do wait "$p" || die "preparing a node failed"; done
  for ((n = 1; n <= NODES; n++)); do launch_node "$n"; done
  deadline=$((SECONDS + START_TIMEOUT))
  for ((n = 1; n <= NODES; n++)); do
    wait_node "$n" "$deadline" || { echo "kafka-cluster: stopping the cluster" >&2; down >&2 || true; exit 1; }
  done
  while ! "$PYTHON" "$SMOKE" --brokers "$NODES" "$(node_port 1)" 2>/dev/null; do
    (( SECONDS < deadline )) || { down >&2 || true; die "not all ${NODES} brokers registered within ${START_TIMEOUT}s"; }
    sleep 0.5
  done
  # FindCoordinator creates __consumer_offsets / __transaction_state (3 replicas each) on the first lookup
  while ! { "$PYTHON" "$SMOKE" --coordinator 0 "$(node_port 1)" 2>/dev/null &&
            "$PYTHON" "$SMOKE" --coordinator 1 "$(node_port 1)" 2>/dev/null; }; do
    if (( SECONDS >= deadline )); then
      echo "kafka-cluster: WARNING: group/transaction coordinator not ready after ${START_TIMEOUT}s (brokers answer, continuing)" >&2
      break
    fi
    sleep 0.5
  done
  log "kafka $(pom_kafka_version) cluster up in $((SECONDS - t0)) s: ${NODES} nodes (broker+controller each), home ${CLUSTER_HOME}"
  echo "bootstrap: $(bootstrap_list)"
}

case "$ACTION" in
  up) up ;;
  down) down ;;
  status) status ;;
  -h|--help) usage ;;
  *) usage >&2; exit 2 ;;
esac
