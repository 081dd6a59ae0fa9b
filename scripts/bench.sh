#!/usr/bin/env bash
# The benchmark suite (issue "Benchmark harness and the first honest figures"): builds harmonylite-bench
# in release mode and runs every scenario — about 10 minutes on a 2-core machine — writing
# bench/results/latest.json, bench/results/latest.md and the table in BENCHMARKS.md.
#   scripts/bench.sh              the full suite
#   scripts/bench.sh --quick      scaled down (about 1 minute; bench/results/quick.*): a smoke run, not figures
#   scripts/bench.sh --only w1,w2 some scenarios (w1, w1_callgrind, w2, w3, w4, w5, memory); --keep DIR keeps files
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh >/dev/null
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/target}"
export CARGO_BUILD_TARGET="${CARGO_BUILD_TARGET:-x86_64-unknown-linux-gnu}"
export HARMONYLITE_NATS_SERVER="${HARMONYLITE_NATS_SERVER:-$PWD/.venv/bin/nats-server}"
cargo build --quiet --release -p harmonylite-bench
bin="$CARGO_TARGET_DIR/$CARGO_BUILD_TARGET/release/harmonylite-bench"
args=("$@")
# Only a full run of every scenario replaces the table in BENCHMARKS.md.
if [[ " $* " != *" --quick "* && " $* " != *" --only "* && " $* " != *" --out "* ]]; then
  args+=(--update-md BENCHMARKS.md)
fi
exec "$bin" "${args[@]}"
