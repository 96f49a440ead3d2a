#!/usr/bin/env bash
# scripts/containers.sh — a container engine and the locally built images that the
# container tests start through testcontainers (integration-tests/src/containers.rs).
#
# Usage:
#   scripts/containers.sh up       engine + images (idempotent), then print the export
#                                  line for the engine:  eval "$(scripts/containers.sh up)"
#   scripts/containers.sh engine   make a Docker-API engine answer (see below), print
#                                  the export line
#   scripts/containers.sh images   build the three images where missing or stale
#   scripts/containers.sh env      print the export line only
#   scripts/containers.sh clean    remove every container and network the tests made
#                                  (label tributary.test=true)
#   scripts/containers.sh status   engine, images and test containers
#
# The engine: when DOCKER_HOST, /var/run/docker.sock or Podman's socket
# /run/podman/podman.sock answers the Docker API (`/_ping`), it is used as it is.
# Otherwise (as root) Podman and runc are installed from Debian's packages, the
# system-wide /etc/containers/containers.conf is written (runc with cgroupfs, since
# crun cannot use this kernel's hybrid cgroups; default ulimits within this
# machine's hard limits), and `podman system service` serves the Docker API on
# /run/podman/podman.sock (linked from /var/run/docker.sock when that is free).
#
# The images, all built here from Debian's packages (no registry holds them; the
# names cannot be mistaken for upstream images):
#   localhost/tributary-test-debian:bookworm   debootstrap --variant=minbase
#   localhost/tributary-test-kafka:<version>   the Kafka jars of scripts/kafka/pom.xml
#                                              (the same as scripts/services.sh) on a
#                                              Debian JRE; KRaft, configured by env
#                                              (scripts/containers/kafka/entrypoint.sh)
#   localhost/tributary-test-postgres:15       Debian's PostgreSQL 15, trust auth,
#                                              database `test`
# Each image carries the hash of its inputs (label tributary.inputs) and is rebuilt
# only when they change. Debian's package sources are the host's own
# (/etc/apt/sources.list*), copied into the build.
#
# Environment: DOCKER_HOST (an engine to use), TRIBUTARY_CACHE (cache root, as in
# scripts/services.sh).
set -euo pipefail
cd "$(dirname "$0")/.."

readonly PODMAN_SOCKET=/run/podman/podman.sock
readonly CONF=/etc/containers/containers.conf
readonly BASE_IMAGE=localhost/tributary-test-debian:bookworm
readonly POSTGRES_IMAGE=localhost/tributary-test-postgres:15
KAFKA_VERSION="$(sed -n 's:.*<kafka.version>\(.*\)</kafka.version>.*:\1:p' scripts/kafka/pom.xml | head -n 1)"
readonly KAFKA_VERSION
readonly KAFKA_IMAGE="localhost/tributary-test-kafka:${KAFKA_VERSION}"
CACHE_ROOT="${TRIBUTARY_CACHE:-${HOME:-/tmp}/.cache/tributary}"
readonly CACHE_ROOT

log() { echo "containers: $*" >&2; }
die() {
  log "error: $*"
  exit 1
}
have() { command -v "$1" >/dev/null 2>&1; }

# Answers when the Docker API at unix socket $1 says OK to /_ping.
ping_socket() {
  [[ -S "$1" ]] || return 1
  [[ "$(curl -s --max-time 5 --unix-socket "$1" http://engine/_ping 2>/dev/null)" == OK ]]
}

# The DOCKER_HOST of an engine that answers, or nothing.
engine_host() {
  if [[ -n "${DOCKER_HOST:-}" ]]; then
    if [[ "$DOCKER_HOST" == unix://* ]] && ping_socket "${DOCKER_HOST#unix://}"; then
      echo "$DOCKER_HOST"
      return 0
    fi
    if [[ "$DOCKER_HOST" == tcp://* ]] &&
      [[ "$(curl -s --max-time 5 "http://${DOCKER_HOST#tcp://}/_ping" 2>/dev/null)" == OK ]]; then
      echo "$DOCKER_HOST"
      return 0
    fi
    return 1
  fi
  local socket
  for socket in /var/run/docker.sock "$PODMAN_SOCKET"; do
    if ping_socket "$socket"; then
      echo "unix://${socket}"
      return 0
    fi
  done
  return 1
}

# The CLI that talks to the engine: podman when the engine is Podman's, else docker.
cli() {
  local host
  host="$(engine_host)" || die "no container engine answers; run scripts/containers.sh engine"
  # /var/run/docker.sock may be our link to Podman's socket.
  if [[ "$host" == unix://* && "$(readlink -f "${host#unix://}")" == "$PODMAN_SOCKET" ]] && have podman; then
    podman "$@"
  else
    DOCKER_HOST="$host" docker "$@"
  fi
}

apt_install() {
  [[ "$(id -u)" == 0 ]] || die "installing $* needs root (apt-get); install them yourself"
  if [[ ! -d /var/lib/apt/lists/partial || -z "$(find /var/lib/apt/lists -maxdepth 1 -name '*Packages*' -print -quit)" ]]; then
    apt-get update -qq >&2
  fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >&2 ||
    { apt-get update -qq >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >&2; }
}

# The lower of a wanted limit and this machine's hard limit.
within() {
  local want=$1 hard=$2
  if [[ "$hard" == unlimited ]] || ((want <= hard)); then echo "$want"; else echo "$hard"; fi
}

write_conf() {
  local nofile nproc
  nofile="$(within 20000 "$(ulimit -Hn)")"
  nproc="$(within 32768 "$(ulimit -Hu)")"
  mkdir -p "$(dirname "$CONF")"
  cat >"${CONF}.new" <<CONF
# Written by Tributary's scripts/containers.sh (rewritten on each run).
[containers]
# The engine's default nofile (1048576) is above this machine's hard limit, and
# setrlimit fails; stay within \`ulimit -Hn\` / \`ulimit -Hu\`.
default_ulimits = ["nofile=${nofile}:${nofile}", "nproc=${nproc}:${nproc}"]

[engine]
# crun fails here with "cgroups in hybrid mode not supported".
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
CONF
  if [[ -f "$CONF" ]] && cmp -s "${CONF}.new" "$CONF"; then
    rm -f "${CONF}.new"
  else
    [[ ! -f "$CONF" ]] || grep -q "scripts/containers.sh" "$CONF" ||
      cp -f "$CONF" "${CONF}.before-tributary"
    mv -f "${CONF}.new" "$CONF"
    log "wrote ${CONF} (runc, cgroupfs, ulimits nofile=${nofile} nproc=${nproc})"
  fi
}

cmd_engine() {
  local host
  if host="$(engine_host)"; then
    echo "export DOCKER_HOST=${host}"
    return 0
  fi
  [[ -z "${DOCKER_HOST:-}" ]] || die "DOCKER_HOST=${DOCKER_HOST} does not answer /_ping"
  local missing=()
  have podman || missing+=(podman)
  have runc || missing+=(runc)
  have curl || missing+=(curl)
  # netavark sets up container networks and port mappings with iptables.
  have iptables || [[ -x /usr/sbin/iptables ]] || missing+=(iptables)
  [[ -x /usr/lib/podman/netavark || -x /usr/libexec/podman/netavark ]] || missing+=(netavark)
  [[ -x /usr/lib/podman/aardvark-dns || -x /usr/libexec/podman/aardvark-dns ]] || missing+=(aardvark-dns)
  if ((${#missing[@]})); then
    log "installing ${missing[*]} from Debian's packages"
    apt_install "${missing[@]}"
  fi
  write_conf
  mkdir -p "$(dirname "$PODMAN_SOCKET")"
  rm -f "$PODMAN_SOCKET"
  log "starting podman system service on ${PODMAN_SOCKET}"
  (
    # Own session, no inherited descriptors, and / as its working directory (conmon
    # fails to start containers once the directory it was started in is deleted):
    # it outlives this script, its caller and their checkout.
    cd /
    for fd in /proc/$$/fd/*; do
      fd="${fd##*/}"
      ((fd > 2)) && eval "exec ${fd}>&-" 2>/dev/null
    done
    exec setsid nohup podman system service --time=0 "unix://${PODMAN_SOCKET}" \
      </dev/null >>/var/log/tributary-podman-service.log 2>&1
  ) &
  local deadline=$((SECONDS + 30))
  until ping_socket "$PODMAN_SOCKET"; do
    ((SECONDS < deadline)) || die "podman system service did not answer on ${PODMAN_SOCKET} (log: /var/log/tributary-podman-service.log)"
    sleep 0.2
  done
  # Docker's default socket, as Debian's podman-docker package links it, so tools
  # that do not read DOCKER_HOST (testcontainers included) find the engine too.
  if [[ ! -e /var/run/docker.sock ]]; then
    ln -s "$PODMAN_SOCKET" /var/run/docker.sock
    log "linked /var/run/docker.sock to ${PODMAN_SOCKET}"
  fi
  echo "export DOCKER_HOST=unix://${PODMAN_SOCKET}"
}

image_inputs() {
  cli image inspect --format '{{ index .Config.Labels "tributary.inputs" }}' "$1" 2>/dev/null || true
}

# The host's Debian package sources, for debootstrap and for apt inside the builds.
debian_mirror() {
  local uri
  uri="$(sed -n 's/^URIs:[[:space:]]*\([^[:space:]]*\).*/\1/p' /etc/apt/sources.list.d/*.sources 2>/dev/null | head -n 1)"
  [[ -n "$uri" ]] || uri="$(sed -n 's/^deb[[:space:]]\+\(\[[^]]*\][[:space:]]\+\)\?\([^[:space:]]*\)[[:space:]]\+bookworm[[:space:]].*/\2/p' /etc/apt/sources.list 2>/dev/null | head -n 1)"
  [[ -n "$uri" ]] || die "no Debian bookworm source in /etc/apt/sources.list*"
  echo "$uri"
}

copy_apt_config() {
  local into=$1
  mkdir -p "${into}/apt/sources.list.d" "${into}/apt/apt.conf.d"
  cp -f /etc/apt/sources.list.d/*.sources "${into}/apt/sources.list.d/" 2>/dev/null || true
  # Replaces debootstrap's own list, so no source is configured twice.
  if [[ -f /etc/apt/sources.list ]]; then cp -f /etc/apt/sources.list "${into}/apt/"; else : >"${into}/apt/sources.list"; fi
  # Only settings that change how packages are fetched (proxies, validity checks).
  grep -l -E 'Acquire::' /etc/apt/apt.conf.d/* 2>/dev/null | while read -r f; do
    cp -f "$f" "${into}/apt/apt.conf.d/"
  done
}

build_base() {
  local inputs
  inputs="debootstrap minbase bookworm v1"
  if [[ "$(image_inputs "$BASE_IMAGE")" == "$inputs" ]]; then
    log "image ${BASE_IMAGE}: up to date"
    return 0
  fi
  have debootstrap || apt_install debootstrap
  local root started=$SECONDS
  root="$(mktemp -d /var/tmp/tributary-debootstrap.XXXXXX)"
  log "image ${BASE_IMAGE}: debootstrap --variant=minbase bookworm (about 30 s)"
  debootstrap --variant=minbase bookworm "$root" "$(debian_mirror)" >"${root}.log" 2>&1 ||
    die "debootstrap failed (log: ${root}.log)"
  rm -rf "${root}/var/cache/apt/archives/"*.deb "${root}/var/lib/apt/lists/"*
  tar -C "$root" -c . | cli import --change "LABEL tributary.inputs=\"${inputs}\"" \
    --change 'CMD ["/bin/bash"]' - "$BASE_IMAGE" >/dev/null
  rm -rf "$root" "${root}.log"
  log "image ${BASE_IMAGE}: built in $((SECONDS - started)) s"
}

# build NAME DIR EXTRA_INPUT: builds DIR's Containerfile as NAME on the base image,
# with the host's apt sources, unless its inputs are unchanged.
build_on_base() {
  local name=$1 dir=$2 extra=$3 inputs ctx started=$SECONDS base_id
  base_id="$(cli image inspect --format '{{.Id}}' "$BASE_IMAGE")"
  inputs="$( (cat "${dir}/Containerfile" "${dir}/entrypoint.sh"; echo "$base_id"; echo "$extra") | sha256sum | cut -c1-16)"
  if [[ "$(image_inputs "$name")" == "$inputs" ]]; then
    log "image ${name}: up to date"
    return 0
  fi
  ctx="$(mktemp -d /var/tmp/tributary-build.XXXXXX)"
  cp "${dir}/Containerfile" "${dir}/entrypoint.sh" "$ctx/"
  copy_apt_config "$ctx"
  if [[ -n "${KAFKA_LIBS:-}" && "$name" == "$KAFKA_IMAGE" ]]; then
    cp -r "$KAFKA_LIBS" "${ctx}/libs"
  fi
  log "image ${name}: building"
  cli build -q -f "${ctx}/Containerfile" --build-arg "BASE=${BASE_IMAGE}" \
    --label "tributary.inputs=${inputs}" -t "$name" "$ctx" >/dev/null ||
    die "building ${name} failed"
  rm -rf "$ctx"
  log "image ${name}: built in $((SECONDS - started)) s"
}

cmd_images() {
  engine_host >/dev/null || die "no container engine answers; run scripts/containers.sh engine"
  build_base
  KAFKA_LIBS="$(scripts/services.sh kafka-jars)"
  [[ -f "${KAFKA_LIBS}/kafka_2.13-${KAFKA_VERSION}.jar" ]] || die "no Kafka ${KAFKA_VERSION} jars in ${KAFKA_LIBS}"
  build_on_base "$KAFKA_IMAGE" scripts/containers/kafka \
    "$(cd "$KAFKA_LIBS" && ls -l --time-style=+ -- *.jar | awk '{print $5, $NF}')"
  build_on_base "$POSTGRES_IMAGE" scripts/containers/postgres ""
}

cmd_clean() {
  engine_host >/dev/null || return 0
  local ids
  ids="$(cli ps -aq --filter label=tributary.test=true)"
  # shellcheck disable=SC2086
  [[ -z "$ids" ]] || cli rm -f -v $ids >/dev/null
  ids="$(cli network ls -q --filter label=tributary.test=true)"
  # shellcheck disable=SC2086
  [[ -z "$ids" ]] || cli network rm $ids >/dev/null
  log "removed the test containers and networks"
}

cmd_status() {
  local host
  if host="$(engine_host)"; then echo "engine: ${host}"; else echo "engine: none answers"; return 1; fi
  local image
  for image in "$BASE_IMAGE" "$KAFKA_IMAGE" "$POSTGRES_IMAGE"; do
    if [[ -n "$(image_inputs "$image")" ]]; then echo "image: ${image}"; else echo "image: ${image} (missing)"; fi
  done
  cli ps -a --filter label=tributary.test=true --format '{{.Names}} {{.Status}}'
}

case "${1:-}" in
  up)
    cmd_engine >/dev/null
    cmd_images
    cmd_engine
    ;;
  engine) cmd_engine ;;
  images) cmd_images ;;
  env)
    host="$(engine_host)" || die "no container engine answers; run scripts/containers.sh up"
    echo "export DOCKER_HOST=${host}"
    ;;
  clean) cmd_clean ;;
  status) cmd_status ;;
  *)
    sed -n '2,14p' "$0" | sed 's/^# \{0,1\}//' >&2
    exit 2
    ;;
esac
