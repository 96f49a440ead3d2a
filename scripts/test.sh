#!/usr/bin/env bash
# Runs the whole test suite: unit, property, macro UI (trybuild), doc and integration
# tests. Starts the Kafka-protocol broker and Postgres first if they are not running
# (scripts/services.sh), so it works on a fresh machine.
set -euo pipefail
cd "$(dirname "$0")/.."

eval "$(scripts/services.sh up)"
echo "test: KAFKA_BOOTSTRAP_SERVERS=$KAFKA_BOOTSTRAP_SERVERS DATABASE_URL=$DATABASE_URL" >&2

if cargo nextest --version >/dev/null 2>&1; then
    cargo nextest run --workspace --profile "${NEXTEST_PROFILE:-default}" "$@"
else
    echo "test: cargo-nextest not found, using cargo test (install it: cargo install cargo-nextest --locked)" >&2
    cargo test --workspace --lib --bins --tests "$@"
fi
# nextest does not run doctests.
cargo test --workspace --doc
