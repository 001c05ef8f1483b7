#!/usr/bin/env bash
# Stop the local Kafka broker started by deploy/kafka/kafka-up.sh.
#
# Usage: deploy/kafka/kafka-down.sh [--wipe]
#   --wipe    also delete the broker's data dir (topics, offsets, KRaft metadata)
#
# Environment:
#   GIFTSTREAM_KAFKA_HOME           install/data dir (default: <repo>/.local/kafka)
#   GIFTSTREAM_KAFKA_STOP_TIMEOUT   seconds to wait after SIGTERM before SIGKILL (default 30)
#   GIFTSTREAM_KAFKA_WIPE=1         same as --wipe
# Exits 0 if no broker is running.
set -euo pipefail

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
LOG_NAME=kafka-down
# shellcheck source=deploy/kafka/lib.sh
source "${SCRIPT_DIR}/lib.sh"
REPO_ROOT="$(cd "${SCRIPT_DIR}/../.." && pwd)"
KAFKA_HOME="${GIFTSTREAM_KAFKA_HOME:-${REPO_ROOT}/.local/kafka}"
STOP_TIMEOUT="${GIFTSTREAM_KAFKA_STOP_TIMEOUT:-30}"
WIPE="${GIFTSTREAM_KAFKA_WIPE:-0}"

for arg in "$@"; do
  case "$arg" in
    --wipe) WIPE=1 ;;
    -h|--help) awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "${BASH_SOURCE[0]}"; exit 0 ;;
    *) echo "kafka-down: unknown argument: $arg" >&2; exit 2 ;;
  esac
done

PID_FILE="${KAFKA_HOME}/kafka.pid"
SERVER_PROPS="${KAFKA_HOME}/config/server.properties"
DATA_DIR="${KAFKA_HOME}/data"

is_our_broker() {
  alive "$1" &&
    tr '\0' ' ' <"/proc/$1/cmdline" 2>/dev/null | grep -q -- "kafka.Kafka ${SERVER_PROPS}"
}

pid=""
if [[ -f "$PID_FILE" ]]; then
  pid="$(cat "$PID_FILE" 2>/dev/null || true)"
  if ! [[ "$pid" =~ ^[0-9]+$ ]] || ! is_our_broker "$pid"; then pid=""; fi
fi
if [[ -z "$pid" ]]; then
  # pid file lost/stale: look for a broker running with exactly our config file
  for d in /proc/[0-9]*; do
    p="${d#/proc/}"
    if is_our_broker "$p"; then pid="$p"; break; fi
  done
fi

if [[ -z "$pid" ]]; then
  echo "kafka-down: kafka not running (home ${KAFKA_HOME})"
else
  echo "kafka-down: stopping kafka (pid ${pid})"
  stop_process "$pid" TERM "$STOP_TIMEOUT" ""
  echo "kafka-down: stopped"
fi
rm -f "$PID_FILE"

if [[ "$WIPE" == "1" ]]; then
  echo "kafka-down: wiping ${DATA_DIR}"
  rm -rf "$DATA_DIR"
fi
