#!/usr/bin/env bash
# The real-app acceptance suite (issue 13): Django (+ gunicorn), Flask + Flask-SQLAlchemy + Flask-Migrate,
# knex + better-sqlite3, plain better-sqlite3 in a cluster and sqlite-utils, installed from the package
# registries, each scenario on three nodes over a real nats-server, each one asserting identical databases
# and no lost row against a ledger of what the app committed. The code of the guides in docs/guides/ is run
# as written (the Swift guide's by bindings/swift/test.sh).
#
#   tests/apps/run.sh                    the CI run (small row counts, about 3-4 minutes)
#   HARMONYLITE_APPS_FULL=1 tests/apps/run.sh   larger row counts
#   tests/apps/run.sh -k django          pytest arguments pass through
#
# Installs what it needs: the Python binding and the apps into the repository's .venv (made by
# scripts/setup.sh; the binding is the one bindings/python/test.sh installed when it was built from these
# sources, else built from this checkout), the Node binding and the Node apps into
# tests/apps/node/node_modules (`npm ci` from the committed lock; npm's cache in /var/cache/harmonylite/npm
# when that is writable). Each install is redone only when what it is built from changed. Ends with
# "apps: N passed, N failed".
set -uo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
cd "$ROOT"
APPS=$ROOT/tests/apps
VENV=$ROOT/.venv
PY=$VENV/bin/python
export PATH="$VENV/bin:$PATH" # the maturin build backend runs `maturin` from PATH
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target}"
export CARGO_BUILD_TARGET="${CARGO_BUILD_TARGET:-x86_64-unknown-linux-gnu}"
export CARGO_TERM_COLOR=never
export npm_config_audit=false npm_config_fund=false npm_config_update_notifier=false
if mkdir -p /var/cache/harmonylite/npm 2>/dev/null && [ -w /var/cache/harmonylite/npm ]; then
  export npm_config_cache="${npm_config_cache:-/var/cache/harmonylite/npm}"
fi

summary() { echo "apps: $1 passed, $2 failed"; }
fail() { echo "$1" >&2; summary 0 1; exit 1; }
step() { echo "== apps: $*"; }

# The apps under test, pinned (Django 5.2 is the LTS that runs on CPython 3.10-3.13).
PY_APPS=("Django==5.2.19" "gunicorn==27.0.1" "sqlite-utils==4.2.1"
  "Flask==3.1.3" "Flask-SQLAlchemy==3.1.1" "SQLAlchemy==2.1.9" "Flask-Migrate==4.1.0" "alembic==1.20.1"
  "pytest>=8,<10" "pytest-timeout>=2" "maturin==1.16.0")

step "scripts/setup.sh (.venv, nats-server)"
./scripts/setup.sh >/dev/null || fail "scripts/setup.sh failed"
export HARMONYLITE_NATS_SERVER="${HARMONYLITE_NATS_SERVER:-$VENV/bin/nats-server}"

step "Python apps: ${PY_APPS[*]}"
if ! "$PY" - "${PY_APPS[@]}" <<'PYCHECK' 2>/dev/null; then
import sys
from importlib.metadata import version, PackageNotFoundError
from packaging.requirements import Requirement
for spec in sys.argv[1:]:
    req = Requirement(spec)
    if not req.specifier.contains(version(req.name), prereleases=True):
        sys.exit(1)
PYCHECK
  "$PY" -m pip install --quiet --disable-pip-version-check packaging "${PY_APPS[@]}" || fail "pip install of the apps failed"
fi

# The Python binding as users get it (the bundled SQLite, ADR 0012). When bindings/python/test.sh installed
# it into this .venv from the sources as they are now (its stamp says so), that install is used as it is;
# otherwise it is built the way that script builds it (the shared target folder, the dev profile), so the
# two share cargo's cache.
sources_hash() { # paths...
  ./scripts/sources-hash.sh "$@"
}
step "Python binding"
py_stamp=$VENV/.harmonylite-python-build
py_hash=$(sources_hash core bindings/python)
if [ "$(cat "$py_stamp" 2>/dev/null)" = "$py_hash" ] && "$PY" -c "import harmonylite" 2>/dev/null; then
  echo "   the installed build of these sources"
else
  started=$SECONDS
  rm -f "$py_stamp"
  PYO3_PYTHON="$PY" MATURIN_PEP517_ARGS="--profile dev" \
    "$PY" -m pip install --quiet --disable-pip-version-check --no-build-isolation --no-deps --force-reinstall \
    ./bindings/python || fail "pip install ./bindings/python failed"
  echo "$py_hash" >"$py_stamp"
  echo "   pip install ./bindings/python: built in $((SECONDS - started)) s"
fi

step "Node apps and binding (npm install in tests/apps/node)"
node_stamp=$APPS/node/node_modules/.harmonylite-apps
node_hash=$( { sources_hash core bindings/node; sha256sum "$APPS/node/package-lock.json"; } | sha256sum | cut -d' ' -f1)
if [ "$(cat "$node_stamp" 2>/dev/null)" != "$node_hash" ]; then
  started=$SECONDS
  rm -f "$ROOT"/bindings/node/harmonylite.*.node # built again from these sources by its install script
  # better-sqlite3 builds from source when no prebuilt binary can be downloaded (about two minutes), so the
  # node_modules `npm ci` makes is cached between checkouts (scripts/npm-ci-cached.sh).
  npm_log=$(mktemp)
  if ! "$ROOT/scripts/npm-ci-cached.sh" "$APPS/node" --foreground-scripts >"$npm_log" 2>&1; then
    tail -n 60 "$npm_log" >&2
    rm -f "$npm_log"
    fail "npm ci in tests/apps/node failed"
  fi
  rm -f "$npm_log"
  # A node_modules restored from the cache ran no install script: the binding's addon is built here from
  # these sources (a no-op when npm ci just built it).
  (cd "$ROOT/bindings/node" && node scripts/install.js) || fail "building the Node binding's addon failed"
  (cd "$APPS/node" && node -e "require('knex'); require('better-sqlite3'); require('harmonylite')") \
    || fail "the Node apps do not load"
  echo "$node_hash" >"$node_stamp"
  echo "   installed in $((SECONDS - started)) s"
fi

step "pytest tests/apps"
report=$(mktemp)
trap 'rm -f "$report"' EXIT
(cd "$APPS" && "$PY" -m pytest -p no:cacheprovider -q -ra --junitxml="$report" "$@")
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
print(tests - bad - skipped, bad + skipped)
PYCOUNT
)
[ "$pytest_status" -eq 0 ] || [ "$failed" -gt 0 ] || failed=1
[ "$passed" -gt 0 ] || { echo "no test ran" >&2; failed=$((failed + 1)); }
summary "$passed" "$failed"
[ "$failed" -eq 0 ]
