#!/usr/bin/env bash
# Install the command-line tools the test suite needs besides Python and Kafka:
#   promtool    (tests/contract/test_deploy_files.py: `promtool check config`, `check rules`, `test rules`)
#   prometheus  (tests/integration/test_prometheus_scrape.py: a real server scraping a real worker)
# Both come from Debian's `prometheus` package. Idempotent and quiet: does nothing when both are on PATH.
#
# Usage: deploy/install-test-tools.sh
# Exit codes: 0 tools present (or installed), 1 installation failed, 2 cannot install here (no apt-get / not root).
set -euo pipefail

have_all() { command -v promtool >/dev/null 2>&1 && command -v prometheus >/dev/null 2>&1; }

if have_all; then
  exit 0
fi

if ! command -v apt-get >/dev/null 2>&1; then
  echo "install-test-tools: ERROR: promtool/prometheus not found and apt-get is unavailable;" \
       "install Prometheus (promtool + prometheus binaries) on PATH by hand" >&2
  exit 2
fi

SUDO=()
if [[ "$(id -u)" != "0" ]]; then
  if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
    SUDO=(sudo -n)
  else
    echo "install-test-tools: ERROR: promtool/prometheus not found; run as root or with passwordless sudo:" \
         "apt-get update && apt-get install -y prometheus" >&2
    exit 2
  fi
fi

echo "install-test-tools: installing Debian package 'prometheus' (promtool + prometheus)"
LOG="$(mktemp)"
trap 'rm -f "$LOG"' EXIT
export DEBIAN_FRONTEND=noninteractive
# The package's postinst may try to start a system Prometheus on :9090; the tests never want one, so a
# temporary policy-rc.d forbids service starts while we install as root (a no-op where there is no init).
POLICY_RC=/usr/sbin/policy-rc.d
ADDED_POLICY=0
if [[ ${#SUDO[@]} -eq 0 && ! -e "$POLICY_RC" ]]; then
  printf '#!/bin/sh\nexit 101\n' >"$POLICY_RC" && chmod +x "$POLICY_RC" && ADDED_POLICY=1
fi
status=0
{ "${SUDO[@]}" apt-get update -qq && \
  "${SUDO[@]}" apt-get install -y -qq --no-install-recommends prometheus; } >"$LOG" 2>&1 || status=$?
if [[ "$ADDED_POLICY" == "1" ]]; then rm -f "$POLICY_RC"; fi
if [[ $status -ne 0 ]]; then
  tail -n 20 "$LOG" >&2
  echo "install-test-tools: ERROR: 'apt-get install prometheus' failed (exit $status)" >&2
  exit 1
fi
if ! have_all; then
  echo "install-test-tools: ERROR: package 'prometheus' installed but promtool/prometheus still not on PATH" >&2
  exit 1
fi
echo "install-test-tools: $(promtool --version 2>&1 | head -n1)"
