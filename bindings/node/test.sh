#!/usr/bin/env bash
# The Node binding's CI entry point (run from anywhere; it works from the repository root):
#   1. installs what it needs: the pinned nats-server (scripts/setup.sh) and the npm dev dependencies
#      (cached in bindings/node/node_modules, reinstalled only when package-lock.json changes);
#   2. builds the addon with napi into a scratch folder and checks that the committed index.js and
#      index.d.ts equal that fresh build;
#   3. installs the package from the checkout as an app would (`npm install <repo>/bindings/node`),
#      which builds the addon through scripts/install.js;
#   4. runs `node --test` (real nats-server processes; the npm pack install is one of the tests).
# Ends with "node: N passed, N failed"; exits non-zero on any failure.
set -uo pipefail
cd "$(dirname "$0")/../.."
repo=$PWD
package=$repo/bindings/node

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$repo/target}"
export CARGO_BUILD_TARGET="${CARGO_BUILD_TARGET:-x86_64-unknown-linux-gnu}"
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"
export npm_config_audit=false npm_config_fund=false npm_config_update_notifier=false

failures=0
passed=0
failed=0
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT

step() { echo "== node: $*"; }
finish() {
  [ "$failures" -gt 0 ] && [ "$failed" -eq 0 ] && failed=$failures
  echo "node: ${passed} passed, ${failed} failed"
  if [ "$failures" -gt 0 ] || [ "$failed" -gt 0 ]; then exit 1; fi
  exit 0
}

step "nats-server"
./scripts/setup.sh >/dev/null || { echo "scripts/setup.sh failed" >&2; failures=$((failures + 1)); finish; }
export HARMONYLITE_NATS_SERVER="${HARMONYLITE_NATS_SERVER:-$repo/.venv/bin/nats-server}"

step "npm dev dependencies"
lock_hash=$(sha256sum "$package/package-lock.json" | cut -d' ' -f1)
stamp=$package/node_modules/.harmonylite-lock-sha256
if [ "$(cat "$stamp" 2>/dev/null)" != "$lock_hash" ]; then
  # `npm ci` builds better-sqlite3 from source when no prebuilt binary can be downloaded (about two minutes),
  # so its result is cached between checkouts (scripts/npm-ci-cached.sh).
  "$repo/scripts/npm-ci-cached.sh" "$package" --foreground-scripts \
    || { echo "npm ci failed" >&2; failures=$((failures + 1)); finish; }
  echo "$lock_hash" >"$stamp"
fi

step "fresh napi build; the committed index.js and index.d.ts must equal it"
fresh=$scratch/fresh
mkdir -p "$fresh"
if (cd "$package" && npx napi build --platform --target "$CARGO_BUILD_TARGET" --output-dir "$fresh"); then
  for generated in index.js index.d.ts; do
    if ! diff -u "$package/$generated" "$fresh/$generated"; then
      echo "bindings/node/$generated differs from a fresh build: run \`npm run build\` in bindings/node and commit it" >&2
      failures=$((failures + 1))
    fi
  done
else
  echo "napi build failed" >&2
  failures=$((failures + 1))
  finish
fi

step "npm install <repo>/bindings/node from the checkout (builds the addon with cargo)"
rm -f "$package"/harmonylite.*.node
app=$scratch/app
mkdir -p "$app"
echo '{ "name": "app", "version": "1.0.0", "private": true }' >"$app/package.json"
if (cd "$app" && npm install --foreground-scripts "$package") &&
  (cd "$app" && node -e "const h = require('harmonylite'); if (typeof h.openReplicated !== 'function') process.exit(1)"); then
  ls "$package"/harmonylite.*.node
else
  echo "installing the package from the checkout failed" >&2
  failures=$((failures + 1))
  finish
fi

step "cargo test -p harmonylite-node --lib (key spelling; the .d.ts Config interface has every core key)"
if ! cargo test --quiet -p harmonylite-node --lib; then
  echo "the Node binding crate's unit tests failed" >&2
  failures=$((failures + 1))
fi

step "node --test"
log=$scratch/node-test.log
# Test files run three at a time: they mostly wait on NATS and timers, and node's default on two cores is one.
(cd "$package" && node --test --test-concurrency=3 --test-reporter=tap test/*.test.js) 2>&1 | tee "$log"
test_status=${PIPESTATUS[0]}
passed=$(grep -E '^# pass [0-9]+' "$log" | tail -1 | awk '{print $3}')
failed=$(grep -E '^# fail [0-9]+' "$log" | tail -1 | awk '{print $3}')
passed=${passed:-0}
failed=${failed:-0}
if [ "$test_status" -ne 0 ]; then
  failures=$((failures + 1))
fi
if [ "$passed" -eq 0 ]; then
  echo "no test ran" >&2
  failures=$((failures + 1))
fi
finish
