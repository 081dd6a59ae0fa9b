#!/usr/bin/env bash
# The Swift binding's CI entry point (run from anywhere; needs root for the chroot toolchain):
#   1. the pinned nats-server (scripts/setup.sh) and the Swift toolchain root (scripts/swift-toolchain.sh),
#      both cached in the repository's ignored folders;
#   2. rustfmt and clippy for the binding's crates, then the native library (cdylib + staticlib) and the
#      pinned uniffi-bindgen-swift, with the shared CARGO_TARGET_DIR / CARGO_BUILD_TARGET;
#   3. the generated Swift and C sources regenerated and compared with the committed ones;
#   4. `swift build` and `swift test --disable-swift-testing` (XCTest, real nats-server processes) in the
#      toolchain's chroot.
# Ends with "swift: N passed, N failed" (from XCTest's "Executed N tests, with M failures" line).
set -uo pipefail
source "$(dirname "$0")/scripts/env.sh"
cd "$REPO"

summary() { echo "swift: $1 passed, $2 failed"; }
fail() {
  echo "$1" >&2
  summary 0 1
  exit 1
}
step() { echo "== $*"; }
status=0

step "tools: nats-server, Swift toolchain"
./scripts/setup.sh >/dev/null || fail "scripts/setup.sh failed"
nats_server="${HARMONYLITE_NATS_SERVER:-$REPO/.venv/bin/nats-server}"
[ -x "$nats_server" ] || fail "nats-server not found at $nats_server"
case "$(cd "$(dirname "$nats_server")" && pwd -P)/" in
  "$REPO"/*) ;;
  *) # only the repository is visible inside the chroot
    mkdir -p .tools/bin && cp -f "$nats_server" .tools/bin/nats-server && nats_server="$REPO/.tools/bin/nats-server" ;;
esac
command -v pkg-config >/dev/null && pkg-config --exists sqlite3 \
  || fail "the native library links the system SQLite: install pkg-config and libsqlite3-dev"
started=$SECONDS
./scripts/swift-toolchain.sh ensure || fail "the Swift toolchain could not be prepared"
echo "   toolchain ready in $((SECONDS - started)) s"

step "cargo fmt --check, clippy (harmonylite-swift, uniffi-bindgen-swift)"
cargo fmt -p harmonylite-swift -p uniffi-bindgen-swift -- --check || status=1
LIBSQLITE3_SYS_USE_PKG_CONFIG=1 CARGO_TARGET_DIR="$SWIFT_CARGO_TARGET_DIR" \
  cargo clippy -p harmonylite-swift -p uniffi-bindgen-swift --all-targets -- -D warnings || status=1

step "native library and generated sources"
started=$SECONDS
"$SWIFT_PKG/scripts/regen.sh" --check || status=1
[ -f "$LIB_DIR/lib$LIB_NAME.so" ] || fail "the native library was not built"
echo "   $((SECONDS - started)) s"

log=$(mktemp)
trap 'rm -f "$log"' EXIT
swift_env=(
  "HARMONYLITE_NATS_SERVER=$nats_server"
  "LD_LIBRARY_PATH=$LIB_DIR"
  "HARMONYLITE_SWIFT_LIB_DIR=$LIB_DIR"
)

step "swift build"
started=$SECONDS
(cd "$SWIFT_PKG" && "$REPO/scripts/swift-toolchain.sh" run "${swift_env[@]}" -- \
  "swift build -Xlinker -L$LIB_DIR") || fail "swift build failed"
echo "   $((SECONDS - started)) s"

step "swift test"
started=$SECONDS
(cd "$SWIFT_PKG" && "$REPO/scripts/swift-toolchain.sh" run "${swift_env[@]}" -- \
  "swift test --disable-swift-testing -Xlinker -L$LIB_DIR $*") 2>&1 | tee "$log"
test_status=${PIPESTATUS[0]}
echo "   $((SECONDS - started)) s"

# XCTest's last summary is for all suites: "Executed 12 tests, with 1 test skipped and 0 failures (0 unexpected)".
line=$(grep -E "Executed [0-9]+ tests?, with" "$log" | tail -n 1)
if [ -z "$line" ]; then
  fail "no XCTest summary line (the test build or run failed)"
fi
executed=$(sed -E 's/.*Executed ([0-9]+) tests?.*/\1/' <<<"$line")
skipped=$(sed -nE 's/.* ([0-9]+) tests? skipped.*/\1/p' <<<"$line")
failures=$(sed -E 's/.* ([0-9]+) failures?.*/\1/' <<<"$line")
skipped=${skipped:-0}
passed=$((executed - skipped - failures))
[ "$skipped" -eq 0 ] || echo "   $skipped skipped"
failed=$((failures + status))
[ "$test_status" -eq 0 ] || [ "$failed" -gt 0 ] || failed=1
[ "$passed" -gt 0 ] || { echo "no test passed" >&2; failed=$((failed + 1)); }
summary "$passed" "$failed"
[ "$failed" -eq 0 ]
