# Shared by test.sh and regen.sh (sourced): where the Rust library of the Swift binding is built.
#
# The library links the system SQLite (the one Swift code uses through the C API; see src/sqlite_link.rs),
# which is a different build of libsqlite3-sys than the core's bundled one, so it builds in its own folder
# under the shared target directory instead of rebuilding the shared artifacts on every switch.
SWIFT_PKG="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)"
REPO="$(cd "$SWIFT_PKG/../.." && pwd -P)"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$REPO/target}"
export CARGO_BUILD_TARGET="${CARGO_BUILD_TARGET:-x86_64-unknown-linux-gnu}"
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"
SWIFT_CARGO_TARGET_DIR="$CARGO_TARGET_DIR/system-sqlite"
LIB_DIR="$SWIFT_CARGO_TARGET_DIR/$CARGO_BUILD_TARGET/debug"
LIB_NAME=harmonylite_swift

# Builds the library (cdylib + staticlib) and the pinned uniffi-bindgen-swift.
build_native() {
  (cd "$REPO" && LIBSQLITE3_SYS_USE_PKG_CONFIG=1 CARGO_TARGET_DIR="$SWIFT_CARGO_TARGET_DIR" \
    cargo build -p harmonylite-swift) || return 1
  (cd "$REPO" && CARGO_TARGET_DIR="$SWIFT_CARGO_TARGET_DIR" cargo build -p uniffi-bindgen-swift) || return 1
}
