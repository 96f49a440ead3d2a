#!/usr/bin/env bash
# Runs the e-commerce sample end to end, starting the broker and Postgres first if
# they are not running (scripts/services.sh).
set -euo pipefail
cd "$(dirname "$0")/.."

eval "$(scripts/services.sh up)"
cargo run --quiet -p example-shop -- "$@"
