#!/usr/bin/env bash
# The whole test suite, as CI runs it: the Rust workspace (formatting, lints, unit, property and multi-node
# integration tests against real nats-server processes), each binding's own suite (Python, Node, Swift),
# the real-app acceptance suite (tests/apps: Django, gunicorn, sqlite-utils, knex + better-sqlite3 from the
# registries, three nodes each), the benchmark smoke run and the short fault campaign (scripts/faults.sh).
# Suites run in three lanes side by side (see `lanes` below); each suite's output is printed whole when it
# ends, a progress line appears every minute, and each suite prints "<suite>: N passed, N failed"; the last
# line sums them all.
#
#   scripts/test.sh                      everything
#   scripts/test.sh rust                 only the Rust workspace (also: python, node, swift, apps, install,
#                                        bench, faults; install is the clean-room suite, tests/install: the
#                                        built packages installed with pip and npm on a Debian root that has
#                                        only Python and Node)
#   HARMONYLITE_TEST_LANES=1 scripts/test.sh     one suite after another, output streamed
#   HARMONYLITE_RUST_TEST_JOBS=N         Rust test binaries run at once (default 2)
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
# install runs in the Node lane, after apps: it runs `npm ci` in bindings/node too, and two at once in one
# folder break each other's build (seen: better-sqlite3's node-gyp lost its build folder).
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

# Every suite appends "<suite> <passed> <failed>" here; the summary adds them up.
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
results=$work/results
: >"$results"
record() { # suite passed failed
  echo "$1 $2 $3" >>"$results"
}

run_rust() {
  local status=0
  echo "== rust: cargo fmt --check"
  cargo fmt --all -- --check || status=1
  echo "== rust: cargo clippy"
  cargo clippy --workspace "${existing_excludes[@]}" --all-targets -- -D warnings || status=1
  echo "== rust: cargo test --no-run (build)"
  local artifacts=$work/rust-artifacts.json
  cargo test --workspace "${existing_excludes[@]}" --no-run --message-format=json-render-diagnostics >"$artifacts" \
    || status=1
  # The test binaries run a few at a time instead of one after another as `cargo test` runs them: most of
  # their time is spent waiting on nats-server processes and timers, not computing. Each runs in its
  # package's folder, as cargo would run it; its output is printed whole when it ends.
  local jobs=${HARMONYLITE_RUST_TEST_JOBS:-2}
  local binaries=$work/rust-binaries
  python3 - "$artifacts" >"$binaries" <<'PYBIN' || status=1
import json, os, sys
# The slowest binaries (about 20-30 s each) start first, so the run does not end waiting on one of them.
SLOW_FIRST = ["merge_property", "snapshot_memory", "stream_gaps", "s3_store", "sidecar", "snapshots"]
found = []
for line in open(sys.argv[1]):
    try:
        message = json.loads(line)
    except ValueError:
        continue
    if message.get("reason") == "compiler-artifact" and message.get("profile", {}).get("test") \
            and message.get("executable"):
        found.append((os.path.dirname(message["manifest_path"]), message["target"]["name"], message["executable"]))
found.sort(key=lambda f: SLOW_FIRST.index(f[1]) if f[1] in SLOW_FIRST else len(SLOW_FIRST))
for package_dir, name, executable in found:
    print(f"{executable}\t{package_dir}\t{name}")
PYBIN
  echo "== rust: $(wc -l <"$binaries") test binaries, $jobs at a time"
  mkdir -p "$work/rust-logs"
  local index=0 executable package_dir name
  while IFS=$'\t' read -r executable package_dir name; do
    index=$((index + 1))
    printf '%s\t%s\t%s\t%s\n' "$executable" "$package_dir" "$name" "$work/rust-logs/$(printf %03d "$index")-$name.log"
  done <"$binaries" >"$binaries.jobs"
  # shellcheck disable=SC2016 # expanded by the inner shell
  tr '\n' '\0' <"$binaries.jobs" | xargs -0 -r -P "$jobs" -n 1 bash -c '
    IFS=$'"'"'\t'"'"' read -r executable package_dir name log <<<"$1"
    started=$SECONDS
    (cd "$package_dir" && CARGO_MANIFEST_DIR="$package_dir" "$executable") >"$log" 2>&1
    rc=$?
    { echo "     Running $name ($(basename "$executable"), $((SECONDS - started)) s, exit $rc)"; cat "$log"; } |
      flock "$0" cat
    [ "$rc" -eq 0 ]
  ' "$work/rust-output.lock" || status=1
  echo "== rust: doc tests"
  cargo test --workspace "${existing_excludes[@]}" --doc 2>&1 | tee "$work/rust-logs/doc.log"
  [ "${PIPESTATUS[0]}" -eq 0 ] || status=1
  local passed failed
  passed=$(cat "$work"/rust-logs/*.log | grep -E '^test result:' | awk '{s += $4} END {print s + 0}')
  failed=$(cat "$work"/rust-logs/*.log | grep -E '^test result:' | awk '{s += $6} END {print s + 0}')
  if [ "$status" -ne 0 ] && [ "$failed" -eq 0 ]; then failed=1; fi # a build, format, lint or crash failure
  echo "rust: $passed passed, $failed failed"
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
  log=$(mktemp -p "$work")
  echo "== $suite: $script"
  "$script" "$@" 2>&1 | tee "$log"
  local status=${PIPESTATUS[0]}
  line=$(grep -E "^$suite: [0-9]+ passed, [0-9]+ failed" "$log" | tail -n 1)
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

run_suite() { # suite
  case "$1" in
    rust) run_rust ;;
    python) run_script python bindings/python/test.sh ;;
    node) run_script node bindings/node/test.sh ;;
    swift) run_script swift bindings/swift/test.sh ;;
    apps) run_script apps tests/apps/run.sh ;;
    install) run_script install tests/install/run.sh ;;
    bench) run_script bench bench/smoke.sh ;;
    faults) run_script faults scripts/faults.sh --short ;;
    *) echo "unknown suite $1 (rust, python, node, swift, apps, install, bench, faults)"; record "$1" 0 1 ;;
  esac
}

# Suites that share something run in one lane, one after another: the Python binding and the apps install
# into one .venv, the Node suite, the apps and the install suite rebuild one addon in bindings/node, and
# the benchmark and the fault campaign reuse the Rust suite's build. The lanes run side by side (most test
# time is spent waiting on servers and timers); HARMONYLITE_TEST_LANES=1 runs every suite in turn with its output streamed.
lanes=("rust bench faults" "python node apps install" "swift")
in_lane() { # lane suite
  local s
  for s in $1; do [ "$s" = "$2" ] && return 0; done
  return 1
}
planned=()
for lane in "${lanes[@]}"; do
  picked=""
  for suite in "${suites[@]}"; do in_lane "$lane" "$suite" && picked+="$suite "; done
  [ -n "$picked" ] && planned+=("$picked")
done
for suite in "${suites[@]}"; do
  known=0
  for lane in "${lanes[@]}"; do in_lane "$lane" "$suite" && known=1; done
  [ "$known" -eq 1 ] || planned+=("$suite")
done

started_all=$SECONDS
if [ "${HARMONYLITE_TEST_LANES:-${#planned[@]}}" -le 1 ] || [ "${#planned[@]}" -le 1 ]; then
  for suite in "${suites[@]}"; do run_suite "$suite"; done
else
  echo "== ${#planned[@]} lanes side by side (each suite's output is printed when it ends):"
  printf '   %s\n' "${planned[@]}"
  run_lane() { # suites...
    local suite began
    for suite in "$@"; do
      began=$SECONDS
      echo "== $suite: started"
      run_suite "$suite" >"$work/$suite.log" 2>&1
      { cat "$work/$suite.log"; echo "== $suite: ended after $((SECONDS - began)) s"; } | flock "$work/output.lock" cat
    done
  }
  lane_pids=()
  # Job control gives each lane a process group of its own, started with the signal dispositions a terminal
  # gives: without it bash starts background jobs with SIGINT and SIGQUIT ignored, every process in the
  # lane inherits that, and a Python child then never installs its Ctrl-C handler (the Python suite's
  # Ctrl-C test hung that way). Ctrl-C or a TERM here stops every lane's whole group.
  stop_lanes() {
    local pid
    for pid in "${lane_pids[@]}"; do kill -TERM -- "-$pid" 2>/dev/null; done
    exit 130
  }
  trap stop_lanes INT TERM
  set -m
  for lane in "${planned[@]}"; do
    # shellcheck disable=SC2086 # a lane is a list of suite names
    run_lane $lane &
    lane_pids+=($!)
  done
  set +m
  # A line a minute while lanes run, so a long run shows it is alive.
  lanes_alive() {
    local pid
    for pid in "${lane_pids[@]}"; do kill -0 "$pid" 2>/dev/null && return 0; done
    return 1
  }
  ticks=0
  while lanes_alive; do
    sleep 1
    ticks=$((ticks + 1))
    if [ $((ticks % 60)) -eq 0 ] && lanes_alive; then
      echo "== still running after $((ticks / 60)) min" | flock "$work/output.lock" cat
    fi
  done
  for pid in "${lane_pids[@]}"; do wait "$pid"; done
fi

echo
echo "== summary ($((SECONDS - started_all)) s)"
total_passed=0
total_failed=0
while read -r suite passed failed; do
  echo "   $suite: $passed passed, $failed failed"
  total_passed=$((total_passed + passed))
  total_failed=$((total_failed + failed))
done <"$results"
for suite in "${suites[@]}"; do
  grep -q "^$suite " "$results" || { echo "   $suite: no result (it did not finish)"; total_failed=$((total_failed + 1)); }
done
if [ "$total_passed" -eq 0 ] && [ "$total_failed" -eq 0 ]; then
  total_failed=1 # no test ran at all
fi
echo "${total_passed} passed, ${total_failed} failed"
[ "$total_failed" -eq 0 ]
