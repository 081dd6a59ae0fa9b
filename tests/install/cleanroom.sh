#!/usr/bin/env bash
# The clean room of the install suite: a minimal Debian root (debootstrap) that holds only python3 +
# python3-venv and nodejs + npm — no compiler, no SQLite headers, no Rust — in which the suite installs the
# built packages the way a user does. The root is built once and cached (HARMONYLITE_CLEANROOM, default
# /var/cache/harmonylite/cleanroom); every run mounts it read-only, so no run can leave anything behind.
#
#   tests/install/cleanroom.sh ensure       build the cached root if it is missing or its package list changed
#   tests/install/cleanroom.sh run WORK -- COMMAND...
#                                           run COMMAND (argv, no shell) inside the root, with WORK (a host
#                                           folder) mounted read-write as its /tmp and HOME=/tmp/home. Runs
#                                           in the caller's network namespace (the suite gives it one with
#                                           loopback only) and in private mount and PID namespaces, so the
#                                           mounts vanish and every process it started ends with it, even
#                                           if it is killed.
#
# Needs root (debootstrap, mount, chroot) and, for the first `ensure`, Debian's package archive.
set -euo pipefail

ROOT="${HARMONYLITE_CLEANROOM:-/var/cache/harmonylite/cleanroom}"
# Debian 13: its nodejs is 20 (the Node binding's minimum; bookworm's is 18) and its python3 is 3.13.
SUITE="${HARMONYLITE_CLEANROOM_SUITE:-trixie}"
MIRROR="${HARMONYLITE_CLEANROOM_MIRROR:-http://deb.debian.org/debian}"
# What the root holds besides the minimal base; changing this list rebuilds the root.
PACKAGES=(python3 python3-venv nodejs npm)
STAMP_TEXT="suite=$SUITE packages=${PACKAGES[*]}"
STAMP="$ROOT/.harmonylite-cleanroom"

log() { echo "cleanroom: $*" >&2; }

ensure_root() {
  if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$STAMP_TEXT" ]; then
    return 0
  fi
  [ "$(id -u)" -eq 0 ] || { log "building the root needs root (debootstrap, chroot)"; exit 2; }
  if ! command -v debootstrap >/dev/null; then
    log "installing debootstrap (apt-get)"
    apt-get install -y -q debootstrap >&2 || { apt-get update -q >&2 && apt-get install -y -q debootstrap >&2; }
  fi
  local partial="$ROOT.partial" started=$SECONDS
  log "building the root in $ROOT with debootstrap ($SUITE: ${PACKAGES[*]}; one time, a few minutes)"
  rm -rf "$partial"
  mkdir -p "$(dirname "$ROOT")"
  # minbase: essential packages and apt only. The packages then come from apt inside the root
  # (debootstrap's own resolver fails on npm's alternatives), without Recommends, which would bring
  # build-essential through npm's node-gyp.
  debootstrap --variant=minbase "$SUITE" "$partial" "$MIRROR" >&2
  cp /etc/resolv.conf "$partial/etc/resolv.conf"
  unshare --mount --propagation private /bin/sh -ec '
    mount -t proc proc "$1/proc"
    mount --rbind /dev "$1/dev"
    shift
    chroot "$0" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin DEBIAN_FRONTEND=noninteractive \
      apt-get install -y -q --no-install-recommends "$@"
    chroot "$0" apt-get clean
  ' "$partial" "$partial" "${PACKAGES[@]}" >&2
  rm -f "$partial/etc/resolv.conf"
  # Nothing that could build native code may be in the room: the packages must install prebuilt.
  local tool
  for tool in cc gcc g++ clang rustc cargo make; do
    if chroot "$partial" /bin/sh -c "command -v $tool" >/dev/null 2>&1; then
      log "the root has $tool, which a clean room must not have"
      exit 1
    fi
  done
  if [ -e "$partial/usr/include/sqlite3.h" ]; then log "the root has SQLite headers"; exit 1; fi
  # The downloaded .debs are not needed again.
  rm -f "$partial"/var/cache/apt/archives/*.deb
  echo "$STAMP_TEXT" >"$partial/.harmonylite-cleanroom"
  rm -rf "$ROOT"
  mv "$partial" "$ROOT"
  log "ready in $((SECONDS - started)) s: $(chroot "$ROOT" python3 --version), node $(chroot "$ROOT" node --version), npm $(chroot "$ROOT" npm --version 2>/dev/null)"
}

# Runs as the first process of the private mount and PID namespaces made by `run`: when it exits, the
# kernel ends every process still running in the room (a nats-server a crashed quickstart left behind too).
inner() {
  local work=$1
  shift
  [ "${1:-}" = "--" ] && shift
  local mnt status=0
  mnt=$(mktemp -d /tmp/harmonylite-cleanroom-root.XXXXXX)
  # A read-only view of the cached root, with the run's own folder as its /tmp.
  mount --bind "$ROOT" "$mnt"
  mount -o remount,bind,ro "$mnt"
  mount -t proc proc "$mnt/proc"
  mount --rbind /dev "$mnt/dev"
  mount --bind "$work" "$mnt/tmp"
  mkdir -p "$work/home"
  timeout --kill-after=10 "${HARMONYLITE_CLEANROOM_TIMEOUT:-900}" \
    chroot "$mnt" /usr/bin/env -i PATH=/usr/local/bin:/usr/bin:/bin HOME=/tmp/home TMPDIR=/tmp LANG=C.UTF-8 \
    "$@" || status=$?
  umount -R "$mnt" 2>/dev/null || umount -R -l "$mnt" 2>/dev/null || true
  rmdir "$mnt" 2>/dev/null || true
  return "$status"
}

lock() {
  mkdir -p "$(dirname "$ROOT")"
  exec 9>"$ROOT.lock"
  flock 9
}

case "${1:-}" in
  ensure)
    lock
    ensure_root
    ;;
  run)
    shift
    work=$(cd "${1:?usage: run WORK -- COMMAND}" && pwd -P)
    shift
    lock
    ensure_root
    exec 9>&- # the root is only read from here on: runs may overlap
    export ROOT
    exec unshare --mount --propagation private --pid --fork --kill-child "$0" __inner "$work" "$@"
    ;;
  __inner)
    shift
    inner "$@"
    ;;
  *)
    echo "usage: $0 ensure | run WORK -- COMMAND..." >&2
    exit 2
    ;;
esac
