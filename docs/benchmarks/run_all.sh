#!/usr/bin/env bash
# docs/benchmarks/run_all.sh — the performance issue's run: every program of
# docs/benchmarks.md's first section, one after the other, each on a freshly reset
# single Kafka node (scripts/services.sh reset, then up), outputs into one directory.
#
# Usage (from the repository root, after building the programs once):
#   cargo build --release -p tributary-integration-tests \
#       --example bench_budget --example bench_peer --example bench_scale \
#       --example bench_projection --example bench_memory --bin counter_node
#   cargo build --release -p example-shop
#   bash docs/benchmarks/run_all.sh [OUT_DIR]     (default: a new directory in /tmp)
#
# Needs nothing else running on the machine: the numbers are a floor on shared cores.
#
# bench_peer warms the freshly started broker for 90 s before it measures (its
# --warm-up-secs), and runs 20,000 commands on the hot aggregate: 2,000 took
# Tributary half a second, which one stall of the shared machine could halve.
#
# The processors of bench_scale (counter_node) run with at most
# TRIBUTARY_MAX_TRANSACTIONS_AT_ONCE transactions at once, 2 unless set, as
# docs/commands.md recommends for a broker this small (bench_peer has its own
# --max-transactions-at-once, also 2); set it to "" for the processor's default.
set -Euo pipefail
export TRIBUTARY_MAX_TRANSACTIONS_AT_ONCE="${TRIBUTARY_MAX_TRANSACTIONS_AT_ONCE-2}"
cd "$(dirname "$0")/../.."
out="${1:-$(mktemp -d /tmp/tributary-bench.XXXX)}"
mkdir -p "$out"
bin=target/release
for program in examples/bench_peer examples/bench_budget examples/bench_scale \
  examples/bench_projection examples/bench_memory counter_node example-shop; do
  [[ -x "$bin/$program" ]] || {
    echo "run_all: $bin/$program is missing: build it first (see the top of this file)" >&2
    exit 1
  }
done

# One program on a fresh broker: its output in $out/<name>.out, its exit status kept.
run() {
  local name="$1"
  shift
  bash scripts/services.sh reset >/dev/null 2>&1
  eval "$(bash scripts/services.sh up 2>/dev/null)" || {
    echo "run_all: the services did not start" >&2
    exit 1
  }
  echo "$(date -u +%T) $name: $*" | tee -a "$out/times.txt"
  "$@" >"$out/$name.out" 2>&1
  echo "$(date -u +%T) $name: exit $?" | tee -a "$out/times.txt"
}

run peer "$bin/examples/bench_peer" --commands 2000 --hot-commands 20000 --step-secs 5 --plot docs/benchmarks/peer-sweep.svg
run budget "$bin/examples/bench_budget" --commands 500
run scale "$bin/examples/bench_scale"
run projection "$bin/examples/bench_projection" --events 1000000
run shop "$bin/example-shop" --demo --orders 1000 --clients 50 --skus 20
run memory "$bin/examples/bench_memory"
bash scripts/services.sh reset >/dev/null 2>&1
echo "outputs in $out"
