#!/usr/bin/env bash
# The whole test suite: formatting, lints, then every Rust test (unit, property and multi-node integration
# tests against real nats-server processes). Ends with one summary line: "N passed, N failed".
set -uo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
export HARMONYLITE_NATS_SERVER="${HARMONYLITE_NATS_SERVER:-$PWD/.venv/bin/nats-server}"
if [ ! -x "$HARMONYLITE_NATS_SERVER" ]; then
  echo "nats-server not found at $HARMONYLITE_NATS_SERVER: run scripts/setup.sh first" >&2
  exit 2
fi

log=$(mktemp)
trap 'rm -f "$log"' EXIT
status=0

echo "== cargo fmt --check"
cargo fmt --all -- --check || status=1
echo "== cargo clippy"
cargo clippy --workspace --all-targets -- -D warnings || status=1
echo "== cargo test"
cargo test --workspace 2>&1 | tee "$log"
test_status=${PIPESTATUS[0]}
[ "$test_status" -eq 0 ] || status=1

passed=$(grep -E '^test result:' "$log" | awk '{s += $4} END {print s + 0}')
failed=$(grep -E '^test result:' "$log" | awk '{s += $6} END {print s + 0}')
if [ "$status" -ne 0 ] && [ "$failed" -eq 0 ]; then
  failed=1 # a build, format or lint failure counts as a failure
fi
if [ "$passed" -eq 0 ] && [ "$status" -eq 0 ]; then
  echo "no test ran" >&2
  status=1
fi
echo "${passed} passed, ${failed} failed"
exit "$status"
