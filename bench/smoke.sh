#!/usr/bin/env bash
# CI smoke test of the benchmark harness: builds it (debug by default, reusing the test build; set
# BENCH_PROFILE=release for a release build), runs `--quick` once into a temp folder, and checks that it
# exits 0 and writes valid JSON with every scenario and a markdown table. No figure, and no duration, is
# asserted: the suite runs beside other suites on a loaded machine, and speed is what the benchmark itself
# measures. A generous timeout (BENCH_SMOKE_TIMEOUT, seconds) only stops a run that hangs.
# Ends with one line: "bench: N passed, N failed".
set -uo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/target}"
export CARGO_BUILD_TARGET="${CARGO_BUILD_TARGET:-x86_64-unknown-linux-gnu}"
export HARMONYLITE_NATS_SERVER="${HARMONYLITE_NATS_SERVER:-$PWD/.venv/bin/nats-server}"
profile="${BENCH_PROFILE:-debug}"
hang_limit="${BENCH_SMOKE_TIMEOUT:-900}"

passed=0
failed=0
pass() { echo "ok - $1"; passed=$((passed + 1)); }
fail() { echo "FAILED - $1"; failed=$((failed + 1)); }
finish() {
  echo "bench: ${passed} passed, ${failed} failed"
  [ "$failed" -eq 0 ]
  exit $?
}

if ./scripts/setup.sh >/dev/null; then pass "setup (nats-server installed)"; else fail "setup"; finish; fi

build_flags=()
[ "$profile" = release ] && build_flags=(--release)
if cargo build --quiet -p harmonylite-bench "${build_flags[@]}"; then
  pass "build ($profile)"
else
  fail "build ($profile)"
  finish
fi
bin="$CARGO_TARGET_DIR/$CARGO_BUILD_TARGET/$profile/harmonylite-bench"

out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
started=$(date +%s)
timeout --kill-after=10 "$hang_limit" "$bin" --quick --out "$out" >"$out/stdout" 2>"$out/stderr"
rc=$?
elapsed=$(( $(date +%s) - started ))
if [ "$rc" -eq 0 ]; then
  pass "--quick run exits 0 (${elapsed} s)"
else
  fail "--quick run exits 0 (exit ${rc}); its stderr:"
  tail -n 30 "$out/stderr" | sed 's/^/    /'
fi

python="$PWD/.venv/bin/python"
[ -x "$python" ] || python=python3
"$python" - "$out/quick.json" <<'PY' >"$out/checks" 2>&1
import json, math, sys

def check(name, ok, detail=""):
    print(("PASS " if ok else "FAIL ") + name + (f": {detail}" if detail and not ok else ""))

try:
    with open(sys.argv[1]) as f:
        results = json.load(f)
    check("quick.json parses", True)
except Exception as err:  # noqa: BLE001 - any failure to read is the finding
    check("quick.json parses", False, str(err))
    sys.exit(0)

expected = {
    "w1": {"ok"}, "w1_callgrind": {"ok", "skipped", "unavailable"}, "w2": {"ok"}, "w3": {"ok"},
    "w4": {"ok"}, "w5": {"ok"}, "memory": {"ok"},
}
for key, statuses in expected.items():
    section = results.get(key)
    status = section.get("status") if isinstance(section, dict) else None
    check(f"scenario {key} present with status in {sorted(statuses)}", status in statuses,
          f"status {status!r} {section.get('error', '') if isinstance(section, dict) else ''}")

def number(value):
    return isinstance(value, (int, float)) and math.isfinite(value) and value > 0

def figures():
    yield all(number(p["ratio_capture"]["median"]) for p in results["w1"]["phases"].values())
    for kind in ("single", "cluster"):
        rates = results["w2"][kind]["rates"]
        yield len(rates) == 3 and all(number(r["harmonylite"]["p99_ms"]["median"]) and
                                      number(r["raw_jetstream"]["p99_ms"]["median"]) for r in rates)
    sizes = results["w3"]["by_tx_size"]
    yield len(sizes) == 3 and all(number(s["end_to_end_rows_per_s"]["median"]) for s in sizes)
    yield number(results["w3"]["raw_jetstream"]["publish_msgs_per_s"]["median"])
    yield number(results["w4"]["catch_up_changes_per_s"]["median"])
    yield number(results["w5"]["live_s_per_gb"]["median"]) and results["w5"]["runs"][0]["d_status"]["restored"]
    yield number(results["memory"]["w3_max_node_peak_rss_mb"])

try:
    ok = all(figures())
    check("every scenario reports numbers", ok, "a figure is missing or not a positive number")
except Exception as err:  # noqa: BLE001
    check("every scenario reports numbers", False, repr(err))
PY
while IFS= read -r line; do
  case "$line" in
    PASS\ *) pass "${line#PASS }" ;;
    FAIL\ *) fail "${line#FAIL }" ;;
    *) echo "    $line" ;;
  esac
done <"$out/checks"
# The README's commands stay real: every script its "Run it" block names exists and is executable.
readme_ok=1
while read -r script; do
  [ -x "$script" ] || { echo "    bench/README.md names $script, which is not an executable script"; readme_ok=0; }
done < <(sed -n '/^## Run it/,/^## /p' bench/README.md | grep -oE '^(scripts|bench)/[a-z_.]+\.sh' | sort -u)
if [ "$readme_ok" -eq 1 ]; then pass "bench/README.md commands exist"; else fail "bench/README.md commands exist"; fi
if grep -q '^| Scenario | Figure |' "$out/quick.md" 2>/dev/null; then
  pass "quick.md holds the markdown table"
else
  fail "quick.md holds the markdown table"
fi
finish
