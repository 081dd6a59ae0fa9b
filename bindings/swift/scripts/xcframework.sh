#!/usr/bin/env bash
# UNTESTED: no Apple toolchain exists on the machines this project is built and tested on. This is the
# build an Apple release should need, written down so that it can be run (and fixed) on a Mac with Xcode:
# the Rust core for macOS (arm64 + x86_64) and iOS (device arm64; simulator arm64 + x86_64) as static
# libraries, joined into HarmonyLiteFFI.xcframework, zipped, with the checksum SwiftPM's
# `.binaryTarget(name:url:checksum:)` wants.
#
#   bindings/swift/scripts/xcframework.sh --out DIR
#
# An app then uses, instead of this folder's systemLibrary target:
#   .binaryTarget(name: "HarmonyLiteFFI", url: "<release url>/HarmonyLiteFFI.xcframework.zip", checksum: "<printed>")
# On Apple platforms the library links the SDK's SQLite (libsqlite3.tbd), as the app's `import SQLite3` does.
set -euo pipefail
source "$(dirname "$0")/env.sh"
out=""
while [ "$#" -gt 0 ]; do
  case "$1" in
    --out) out=$2; shift 2 ;;
    *) echo "usage: $0 --out DIR" >&2; exit 2 ;;
  esac
done
[ -n "$out" ] || { echo "xcframework: --out DIR is required" >&2; exit 2; }
[ "$(uname -s)" = "Darwin" ] && command -v xcodebuild >/dev/null \
  || { echo "xcframework: needs macOS with Xcode (xcodebuild, lipo)" >&2; exit 2; }
mkdir -p "$out"
out=$(cd "$out" && pwd -P)
unset CARGO_BUILD_TARGET # several targets here
targets=(aarch64-apple-darwin x86_64-apple-darwin aarch64-apple-ios aarch64-apple-ios-sim x86_64-apple-ios)
rustup target add "${targets[@]}"
target_dir="$CARGO_TARGET_DIR/apple"
for target in "${targets[@]}"; do
  # The SDK's SQLite rather than the bundled copy (ADR 0006: one SQLite per process on Apple platforms,
  # where the OFD-lock shim of ADR 0012 does not exist).
  (cd "$REPO" && LIBSQLITE3_SYS_USE_PKG_CONFIG=1 SQLITE3_LIB_DIR="$(xcrun --sdk "$(
    case "$target" in *ios-sim | x86_64-apple-ios) echo iphonesimulator ;; *ios) echo iphoneos ;; *) echo macosx ;; esac
  )" --show-sdk-path)/usr/lib" CARGO_TARGET_DIR="$target_dir" cargo build --release -p harmonylite-swift --target "$target")
done
lib="lib$LIB_NAME.a"
stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
mkdir -p "$stage/macos" "$stage/ios-sim" "$stage/headers"
lipo -create "$target_dir/aarch64-apple-darwin/release/$lib" "$target_dir/x86_64-apple-darwin/release/$lib" \
  -output "$stage/macos/$lib"
lipo -create "$target_dir/aarch64-apple-ios-sim/release/$lib" "$target_dir/x86_64-apple-ios/release/$lib" \
  -output "$stage/ios-sim/$lib"
cp "$SWIFT_PKG/Sources/HarmonyLiteFFI/HarmonyLiteFFI.h" "$stage/headers/"
cat >"$stage/headers/module.modulemap" <<'MAP'
module HarmonyLiteFFI {
    header "HarmonyLiteFFI.h"
    link "sqlite3"
    export *
}
MAP
xcodebuild -create-xcframework \
  -library "$stage/macos/$lib" -headers "$stage/headers" \
  -library "$target_dir/aarch64-apple-ios/release/$lib" -headers "$stage/headers" \
  -library "$stage/ios-sim/$lib" -headers "$stage/headers" \
  -output "$stage/HarmonyLiteFFI.xcframework"
(cd "$stage" && zip -qry "$out/HarmonyLiteFFI.xcframework.zip" HarmonyLiteFFI.xcframework)
echo "checksum: $(swift package compute-checksum "$out/HarmonyLiteFFI.xcframework.zip")"
