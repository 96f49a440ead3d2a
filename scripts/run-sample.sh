#!/usr/bin/env bash
# Runs the e-commerce sample end to end, starting the broker and Postgres first if
# they are not running (scripts/services.sh). Without arguments it runs the demo
# (seeds a catalogue, places orders, waits for the read models, prints a summary);
# any arguments go to the shop instead (e.g. no `--demo`: serve the HTTP API; without
# SHOP_API_KEYS it then makes development tokens and prints them).
set -euo pipefail
cd "$(dirname "$0")/.."

eval "$(scripts/services.sh up)"
if [ $# -eq 0 ]; then
  set -- --demo
elif [ -z "${SHOP_API_KEYS:-}" ]; then
  # Serving the API: it refuses to start without a key table. Make a development
  # one with an admin and a customer, and say so (never do this in production).
  admin_token="$(od -An -N32 -tx1 /dev/urandom | tr -d ' \n')"
  customer_token="$(od -An -N32 -tx1 /dev/urandom | tr -d ' \n')"
  export SHOP_API_KEYS="${admin_token}=admin:dev,${customer_token}=customer:customer-00"
  echo "run-sample: SHOP_API_KEYS is unset; development tokens for this run:" >&2
  echo "  admin (restock, pay, ship): ${admin_token}" >&2
  echo "  customer-00 (orders):       ${customer_token}" >&2
fi
cargo run --quiet -p example-shop -- "$@"
