#!/usr/bin/env bash
# The whole test suite, as CI runs it: the Rust workspace (formatting, lints, unit, property and multi-node
# integration tests against real nats-server processes), then each binding's own suite (Python, Node, Swift),
# the real-app acceptance suite (tests/apps: Django, gunicorn, sqlite-utils, knex + better-sqlite3 from the
# registries, three nodes each), the clean-room install suite (tests/install: the built packages installed
# with pip and npm on a Debian root that has only Python and Node), the benchmark smoke run and the short
# fault campaign (scripts/faults.sh).
# Each suite prints "<suite>: N passed, N failed"; the last line sums them all.
#
#   scripts/test.sh            everything
#   scripts/test.sh rust       only the Rust workspace (also: python, node, swift, apps, install, bench, faults)
set -uo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD
./scripts/setup.sh || { echo "setup failed"; echo "0 passed, 1 failed"; exit 1; }
export HARMONYLITE_NATS_SERVER="${HARMONYLITE_NATS_SERVER:-$REPO/.venv/bin/nats-server}"
# One build for everything: napi always passes --target, so every build uses the same explicit target.
export CARGO_BUILD_TARGET="${CARGO_BUILD_TARGET:-x86_64-unknown-linux-gnu}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$REPO/target}"
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"

suites=("$@")
[ ${#suites[@]} -gt 0 ] || suites=(rust python node swift apps install bench faults)
# Binding crates are linted and tested by their own scripts (Swift builds against the system SQLite).
binding_crates=(--exclude harmonylite-python --exclude harmonylite-node --exclude harmonylite-swift --exclude uniffi-bindgen-swift)
existing_excludes=()
for ((i = 1; i < ${#binding_crates[@]}; i += 2)); do
  crate=${binding_crates[$i]}
  if cargo metadata --no-deps --format-version 1 2>/dev/null | grep -q "\"name\":\"$crate\""; then
    existing_excludes+=(--exclude "$crate")
  fi
done

total_passed=0
total_failed=0
summaries=()
record() { # suite passed failed
  total_passed=$((total_passed + $2))
  total_failed=$((total_failed + $3))
  summaries+=("$1: $2 passed, $3 failed")
}

run_rust() {
  local log status=0
  log=$(mktemp)
  echo "== rust: cargo fmt --check"
  cargo fmt --all -- --check || status=1
  echo "== rust: cargo clippy"
  cargo clippy --workspace "${existing_excludes[@]}" --all-targets -- -D warnings || status=1
  echo "== rust: cargo test"
  cargo test --workspace --no-fail-fast "${existing_excludes[@]}" 2>&1 | tee "$log"
  [ "${PIPESTATUS[0]}" -eq 0 ] || status=1
  local passed failed
  passed=$(grep -E '^test result:' "$log" | awk '{s += $4} END {print s + 0}')
  failed=$(grep -E '^test result:' "$log" | awk '{s += $6} END {print s + 0}')
  rm -f "$log"
  if [ "$status" -ne 0 ] && [ "$failed" -eq 0 ]; then failed=1; fi # a build, format or lint failure
  record rust "$passed" "$failed"
}

run_script() { # suite script [args]
  local suite=$1 script=$2 log line
  shift 2
  if [ ! -x "$script" ]; then
    echo "== $suite: $script is missing"
    record "$suite" 0 1
    return
  fi
  log=$(mktemp)
  echo "== $suite: $script"
  "$script" "$@" 2>&1 | tee "$log"
  local status=${PIPESTATUS[0]}
  line=$(grep -E "^$suite: [0-9]+ passed, [0-9]+ failed" "$log" | tail -n 1)
  rm -f "$log"
  if [ -z "$line" ]; then
    record "$suite" 0 1
    return
  fi
  local passed failed
  passed=$(sed -E 's/^[a-z]+: ([0-9]+) passed.*/\1/' <<<"$line")
  failed=$(sed -E 's/.* ([0-9]+) failed.*/\1/' <<<"$line")
  if [ "$status" -ne 0 ] && [ "$failed" -eq 0 ]; then failed=1; fi
  record "$suite" "$passed" "$failed"
}

for suite in "${suites[@]}"; do
  case "$suite" in
    rust) run_rust ;;
    python) run_script python bindings/python/test.sh ;;
    node) run_script node bindings/node/test.sh ;;
    swift) run_script swift bindings/swift/test.sh ;;
    apps) run_script apps tests/apps/run.sh ;;
    install) run_script install tests/install/run.sh ;;
    bench) run_script bench bench/smoke.sh ;;
    faults) run_script faults scripts/faults.sh --short ;;
    *) echo "unknown suite $suite (rust, python, node, swift, apps, install, bench, faults)"; record "$suite" 0 1 ;;
  esac
done

echo
echo "== summary"
for line in "${summaries[@]}"; do echo "   $line"; done
if [ "$total_passed" -eq 0 ] && [ "$total_failed" -eq 0 ]; then
  total_failed=1 # no test ran at all
fi
echo "${total_passed} passed, ${total_failed} failed"
[ "$total_failed" -eq 0 ]
