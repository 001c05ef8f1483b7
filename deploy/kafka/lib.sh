# Shared by kafka-up.sh (the single node) and kafka-cluster.sh / kafka-node.sh (the loopback cluster):
# the prerequisites and the jar install from Maven Central (pom.xml). Source it with LOG_NAME set
# (the prefix of messages, e.g. kafka-up) and POM pointing at deploy/kafka/pom.xml.

# Java 17+ and mvn, or exit 2 saying what to install.
require_java_and_mvn() {
  if ! command -v java >/dev/null 2>&1; then
    echo "${LOG_NAME}: ERROR: 'java' not found. Install a Java 17+ runtime, e.g.: apt-get install openjdk-17-jre-headless maven" >&2
    exit 2
  fi
  local spec major
  spec="$(java -XshowSettings:properties -version 2>&1 | sed -n 's/^ *java\.specification\.version = //p' | head -n1)"
  major="${spec#1.}"; major="${major%%.*}"
  if ! [[ "$major" =~ ^[0-9]+$ ]] || (( major < 17 )); then
    echo "${LOG_NAME}: ERROR: Java >= 17 required, found '${spec:-unknown}'. Install e.g.: apt-get install openjdk-17-jre-headless" >&2
    exit 2
  fi
  if ! command -v mvn >/dev/null 2>&1; then
    echo "${LOG_NAME}: ERROR: 'mvn' not found (needed once to fetch Kafka jars from Maven Central). Install e.g.: apt-get install maven" >&2
    exit 2
  fi
}

# The Kafka version pom.xml pins.
pom_kafka_version() {
  local v
  v="$(sed -n 's:.*<kafka.version>\(.*\)</kafka.version>.*:\1:p' "$POM" | head -n1)"
  [[ -n "$v" ]] || { echo "${LOG_NAME}: ERROR: cannot read <kafka.version> from $POM" >&2; exit 1; }
  echo "$v"
}

# install_jars LIBS LOG_DIR: `mvn dependency:copy-dependencies` into LIBS once; the marker LIBS/.installed
# holds the version and the pom checksum, so a changed pom reinstalls.
install_jars() {
  local libs="$1" log_dir="$2" version pom_sum
  version="$(pom_kafka_version)"
  pom_sum="$(sha256sum "$POM" | cut -c1-16)"
  if [[ -f "${libs}/.installed" && "$(cat "${libs}/.installed")" == "${version} ${pom_sum}" ]]; then
    return 0
  fi
  echo "${LOG_NAME}: installing Apache Kafka ${version} jars into ${libs} (Maven Central via mvn)"
  mkdir -p "$log_dir"
  rm -rf "${libs}.tmp"
  if ! mvn -B -Dstyle.color=never -f "$POM" dependency:copy-dependencies \
        -DincludeScope=runtime -DoutputDirectory="${libs}.tmp" >"${log_dir}/mvn-install.log" 2>&1; then
    grep -E 'ERROR|FAIL' "${log_dir}/mvn-install.log" | tail -n 20 >&2 || true
    rm -rf "${libs}.tmp"
    echo "${LOG_NAME}: ERROR: mvn failed to resolve Kafka ${version} jars (is Maven Central reachable?); full log: ${log_dir}/mvn-install.log" >&2
    exit 1
  fi
  echo "${version} ${pom_sum}" >"${libs}.tmp/.installed"
  rm -rf "$libs"
  mv "${libs}.tmp" "$libs"
}

# A broker's log4j2 configuration on stdout: log4j_properties NAME LOG_DIR WRITER. One rolling server.log, the
# request and state-change loggers at WARN; shutdownHook disabled to keep logging through Kafka's own shutdown
# hook (else the last shutdown lines are lost).
log4j_properties() {
  cat <<EOF
# Written by $3
status = warn
shutdownHook = disable
name = $1
appender.server.type = RollingFile
appender.server.name = server
appender.server.fileName = $2/server.log
appender.server.filePattern = $2/server.log.%i
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
}

alive() {  # running and not a zombie
  kill -0 "$1" 2>/dev/null || return 1
  local st
  st="$(sed -n 's/^State:[[:space:]]*\([A-Z]\).*/\1/p' "/proc/$1/status" 2>/dev/null || true)"
  [[ "$st" != "Z" && "$st" != "X" ]]
}

# Signal a process and wait until it is gone: stop_process PID SIGNAL TIMEOUT LABEL. A process still alive
# TIMEOUT seconds after the signal gets SIGKILL (LABEL prefixes the message saying so).
stop_process() {
  local pid="$1" sig="$2" timeout="$3" label="$4" deadline
  kill "-${sig}" "$pid" 2>/dev/null || true
  deadline=$((SECONDS + timeout))
  while alive "$pid" && (( SECONDS < deadline )); do sleep 0.1; done
  if alive "$pid"; then
    echo "${LOG_NAME}: ${label}still alive after ${timeout}s, sending SIGKILL"
    kill -KILL "$pid" 2>/dev/null || true
    while alive "$pid"; do sleep 0.1; done
  fi
}
