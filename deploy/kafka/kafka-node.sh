#!/usr/bin/env bash
# Stop, kill, start or ask about one node of the loopback cluster (deploy/kafka/kafka-cluster.sh),
# for tests and chaos harnesses.
#
# Usage: deploy/kafka/kafka-node.sh start|stop|kill|status NODE_ID
#   start    start node NODE_ID (its config rewritten, data kept) and wait until it answers on its port
#   stop     SIGTERM: a clean shutdown (leaderships moved away first); SIGKILL after the stop timeout
#   kill     SIGKILL: no clean shutdown; its partitions get new leaders once the controller fences it (6 s)
#   status   exit 0 if it runs and answers, 1 if it does not run, 3 if it runs but does not answer
# Waiting until its replicas are back in sync is the caller's (load/cluster.py: Cluster.wait_healthy).
# The same environment as kafka-cluster.sh (KAFKA_NODES, GIFTSTREAM_KAFKA_CLUSTER_HOME, ..._PORT_BASE, ...).
set -euo pipefail

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
LOG_NAME=kafka-node
# shellcheck source=deploy/kafka/cluster-lib.sh
source "${SCRIPT_DIR}/cluster-lib.sh"

usage() { awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "${BASH_SOURCE[0]}"; }
[[ $# -eq 2 ]] || { usage >&2; exit 2; }
ACTION="$1"
N="$2"
check_node_id "$N"

case "$ACTION" in
  start)
    [[ -f "${LIBS}/.installed" ]] || die "no jars in ${LIBS}: start the cluster first (KAFKA_NODES=${NODES} make kafka-up)"
    t0=$SECONDS
    launch_node "$N"
    wait_node "$N" $((SECONDS + START_TIMEOUT)) || exit 1
    log "node ${N}: answers on 127.0.0.1:$(node_port "$N") after $((SECONDS - t0)) s (pid $(node_pid "$N"))"
    ;;
  stop) signal_node "$N" TERM ;;
  kill) signal_node "$N" KILL ;;
  status)
    if ! pid="$(node_pid "$N")"; then echo "node ${N}: not running"; exit 1; fi
    if probe "$(node_port "$N")"; then echo "node ${N}: running, pid ${pid}, answers on 127.0.0.1:$(node_port "$N")"
    else echo "node ${N}: running, pid ${pid}, does not answer on 127.0.0.1:$(node_port "$N")"; exit 3; fi
    ;;
  *) usage >&2; exit 2 ;;
esac
