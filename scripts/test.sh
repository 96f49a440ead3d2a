#!/usr/bin/env bash
# Runs the whole test suite: unit, property, macro UI (trybuild), doc and integration
# tests, then the broker-loss tests on a three-node cluster. Starts what is missing
# first (scripts/services.sh: Apache Kafka and Postgres; cargo-nextest), so it works
# on a fresh machine.
#
#   bash scripts/test.sh [nextest filters...]
#
# 1. Apache Kafka, one node: every test binary except the cluster, partition and
#    container ones.
# 2. Doc tests (nextest does not run them).
# 3. Containers (`scripts/containers.sh up`: a Docker-API engine, Podman installed if
#    none answers, and the locally built images): wire_format, commands and the
#    projection_* binaries with TRIBUTARY_TEST_SERVICES=containers (Kafka and
#    Postgres started through testcontainers, per test binary), then the
#    containers_* binaries (network partitions on a three-container cluster), one
#    test at a time. Afterwards the test containers are removed. Without an engine
#    (no root to install Podman), the container set runs on the local broker, the
#    partition tests are not run, and the script says so; in CI that fails.
# 4. Apache Kafka, three nodes (`services.sh up --brokers 3`): the binaries named
#    cluster_*, one test at a time (they kill and stop brokers). Afterwards the
#    single node is started again. With your own cluster in KAFKA_BOOTSTRAP_SERVERS
#    this step is skipped (it needs to kill brokers), and says so; in CI that fails.
#
# Environment: NEXTEST_PROFILE (default `default`; CI uses `ci`), plus what
# scripts/services.sh and scripts/containers.sh read.
set -euo pipefail
cd "$(dirname "$0")/.."

readonly NEXTEST_VERSION=0.9.151
readonly CLUSTER_TESTS='binary(/^cluster_/)'
readonly PARTITION_TESTS='binary(/^containers_/)'
readonly CONTAINER_TESTS='binary(=wire_format) | binary(=commands) | binary(/^projection_/)'
profile="${NEXTEST_PROFILE:-default}"

if ! cargo nextest --version >/dev/null 2>&1; then
  echo "test: installing cargo-nextest ${NEXTEST_VERSION} (once; a few minutes)" >&2
  # Without its self-update feature, which would compile a TLS stack (aws-lc) too.
  cargo install cargo-nextest --version "$NEXTEST_VERSION" --locked \
    --no-default-features --features default-no-update >&2
fi

failed=()
run() {
  local name=$1
  shift
  local started=$SECONDS
  echo "test: == ${name}" >&2
  if ! "$@"; then
    failed+=("$name")
  fi
  echo "test: -- ${name}: $((SECONDS - started)) s" >&2
}

own_cluster=0
if [[ -n "${KAFKA_BOOTSTRAP_SERVERS:-}" && "$KAFKA_BOOTSTRAP_SERVERS" != 127.0.0.1:9092 && "$KAFKA_BOOTSTRAP_SERVERS" != localhost:9092 ]]; then
  own_cluster=1
fi

eval "$(scripts/services.sh up)"
echo "test: KAFKA_BOOTSTRAP_SERVERS=$KAFKA_BOOTSTRAP_SERVERS DATABASE_URL=$DATABASE_URL" >&2
containers=0
if container_env="$(scripts/containers.sh up)"; then
  containers=1
else
  echo "test: no container engine (scripts/containers.sh up failed above): the container set runs on the local broker, the partition tests (${PARTITION_TESTS}) are not run" >&2
  [[ "${CI:-}" != true ]] || failed+=("container tests (no engine)")
fi

# shop_processes runs the shop's binary as separate processes; nextest builds test
# binaries only, so build it (same profile and target directory) first.
run "build the shop binary" cargo build -p example-shop --bin example-shop
local_filter="not (${CLUSTER_TESTS} | ${PARTITION_TESTS})"
((containers == 0)) || local_filter+=" and not (${CONTAINER_TESTS})"
run "tests on one Kafka node" \
  cargo nextest run --workspace --profile "$profile" -E "$local_filter" "$@"
run "doc tests" cargo test --workspace --doc

if ((containers)); then
  eval "$container_env"
  echo "test: DOCKER_HOST=$DOCKER_HOST" >&2
  # Kafka and Postgres from testcontainers, not from the services above.
  in_containers() {
    env -u KAFKA_BOOTSTRAP_SERVERS -u DATABASE_URL TRIBUTARY_TEST_SERVICES=containers "$@"
  }
  run "tests in containers (testcontainers)" in_containers \
    cargo nextest run --workspace --profile "$profile" -E "$CONTAINER_TESTS" "$@"
  run "partition tests on three Kafka containers" in_containers \
    cargo nextest run --workspace --profile "$profile" --test-threads 1 -E "$PARTITION_TESTS" "$@"
  scripts/containers.sh clean || true
fi

if ((own_cluster)); then
  echo "test: the cluster tests (${CLUSTER_TESTS}) kill brokers and need the local three-node cluster; not run against KAFKA_BOOTSTRAP_SERVERS=${KAFKA_BOOTSTRAP_SERVERS}" >&2
  [[ "${CI:-}" != true ]] || failed+=("cluster tests (not run)")
else
  # Checked, not just evaluated: a failed start must not leave the one-node
  # address in place for tests that need three nodes.
  if cluster_env="$(scripts/services.sh up --brokers 3)"; then
    eval "$cluster_env"
    echo "test: KAFKA_BOOTSTRAP_SERVERS=$KAFKA_BOOTSTRAP_SERVERS" >&2
    run "tests on three Kafka nodes" \
      cargo nextest run --workspace --profile "$profile" --test-threads 1 -E "$CLUSTER_TESTS" "$@"
  else
    failed+=("starting three Kafka nodes (scripts/services.sh up --brokers 3)")
  fi
  # Leave the default topology running for the sample and the next run.
  scripts/services.sh up >/dev/null
fi

if ((${#failed[@]})); then
  echo "test: FAILED: ${failed[*]}" >&2
  exit 1
fi
echo "test: all passed" >&2
