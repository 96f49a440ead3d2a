#!/usr/bin/env bash
# Runs the e-commerce sample end to end, starting the broker and Postgres first if
# they are not running (scripts/services.sh). Without arguments it runs the demo
# (seeds a catalogue, places orders, waits for the read models, prints a summary);
# any arguments go to the shop instead (e.g. no `--demo`: serve the HTTP API).
set -euo pipefail
cd "$(dirname "$0")/.."

eval "$(scripts/services.sh up)"
if [ $# -eq 0 ]; then
  set -- --demo
fi
cargo run --quiet -p example-shop -- "$@"
