#!/usr/bin/env bash
# Checks the Linux binary package (linux-artifact.sh) the way an app uses it: unpacks the tarball, writes an
# app package that depends on it by path and whose main.swift is the README's quickstart, and builds and
# runs it with the Swift toolchain's chroot (scripts/swift-toolchain.sh), which has no Rust. The app's
# nats-server sits beside its executable, where the engine (linked into the app) looks for it.
#
#   bindings/swift/scripts/test-artifact.sh TARBALL
# Ends with "swift-artifact: N passed, N failed".
set -uo pipefail
source "$(dirname "$0")/env.sh"
tarball=$(cd "$(dirname "${1:?usage: test-artifact.sh TARBALL}")" && pwd -P)/$(basename "$1")
summary() { echo "swift-artifact: $1 passed, $2 failed"; }
fail() { echo "$1" >&2; summary 0 1; exit 1; }

"$REPO/scripts/setup.sh" >/dev/null || fail "scripts/setup.sh failed"
"$REPO/scripts/swift-toolchain.sh" ensure || fail "the Swift toolchain could not be prepared"
# Only the repository is visible inside the chroot: the app lives in an ignored folder of it.
mkdir -p "$REPO/.tools"
app_root=$(mktemp -d "$REPO/.tools/swift-artifact.XXXXXX")
trap 'rm -rf "$app_root"' EXIT
tar -xzf "$tarball" -C "$app_root" || fail "cannot unpack $tarball"
mkdir -p "$app_root/App/Sources/App"
cat >"$app_root/App/Package.swift" <<'SWIFT'
// swift-tools-version:6.0
import PackageDescription

let package = Package(
    name: "App",
    dependencies: [.package(path: "../HarmonyLite")],
    targets: [
        .executableTarget(
            name: "App",
            dependencies: [
                .product(name: "HarmonyLite", package: "HarmonyLite"),
                .product(name: "CSQLite", package: "HarmonyLite"),
            ]
        ),
    ]
)
SWIFT
python3 - "$SWIFT_PKG/README.md" "$app_root/App/Sources/App/main.swift" <<'PY' || fail "no swift block under ## Quickstart in the README"
import re, sys
text = open(sys.argv[1]).read()
block = re.search(r"```swift\n(.*?)```", text[text.index("## Quickstart"):], re.S)
open(sys.argv[2], "w").write(block.group(1))
PY

started=$SECONDS
log=$app_root/build.log
if ! (cd "$app_root/App" && "$REPO/scripts/swift-toolchain.sh" run -- "swift build") >"$log" 2>&1; then
  tail -n 40 "$log" >&2
  fail "swift build of an app depending on the binary package failed"
fi
echo "   swift build: $((SECONDS - started)) s"
bin=$(cd "$app_root/App" && "$REPO/scripts/swift-toolchain.sh" run -- "swift build --show-bin-path" 2>/dev/null | tail -n 1)
cp "$REPO/.venv/bin/nats-server" "$bin/nats-server" || fail "no nats-server to put beside the app"
mkdir -p "$app_root/run"
if (cd "$app_root/run" && "$REPO/scripts/swift-toolchain.sh" run -- "$bin/App") >"$log" 2>&1 &&
  grep -q "^published rows: [1-9]" "$log"; then
  cat "$log"
  summary 1 0
else
  tail -n 40 "$log" >&2
  fail "the README quickstart, built against the binary package, did not run"
fi
