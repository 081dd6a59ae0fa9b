#!/usr/bin/env bash
# A Swift toolchain for Linux hosts that have none (Debian bookworm: no swiftlang package, and trixie's needs
# glibc 2.38). Debian trixie's `swiftlang` is unpacked, with its own libc, into a root folder cached under
# <repo>/.tools/swift-root, and run through chroot (see /work/shared/TOOLCHAINS.md, "Swift on Linux").
#
#   scripts/swift-toolchain.sh ensure               build the cached root if it is missing (idempotent)
#   scripts/swift-toolchain.sh run [VAR=value ...] -- COMMAND
#                                                   run COMMAND with `sh -c` inside the root, in the current
#                                                   directory, with only PATH, HOME and the given variables
#
# Needs root (chroot, mount) and network access to deb.debian.org for the first `ensure`. The host's /etc/apt
# is never touched: apt runs with a scratch configuration beside the root (.tools/swift-root.apt). The repository (and
# CARGO_TARGET_DIR when it lives elsewhere) is bind-mounted at the same absolute path inside the root, so paths
# mean the same thing on both sides. Mounts live in a private mount namespace (unshare), so they vanish when
# the command ends, even if it is killed; the trap below unmounts explicitly as well.
set -euo pipefail

REPO="$(cd "$(dirname "$0")/.." && pwd -P)"
TOOLS="$REPO/.tools"
# SWIFT_TOOLCHAIN_ROOT lets several checkouts share one unpacked root (it must not be inside a repository
# that another checkout bind-mounts).
ROOT="${SWIFT_TOOLCHAIN_ROOT:-$TOOLS/swift-root}"
APT_DIR="$ROOT.apt"
SUITE="${SWIFT_TOOLCHAIN_SUITE:-trixie}"
MIRROR="${SWIFT_TOOLCHAIN_MIRROR:-http://deb.debian.org/debian}"
# What the root holds; changing this list rebuilds the root.
PACKAGES=(swiftlang libc6-dev libsqlite3-dev dash coreutils bash)
STAMP_TEXT="suite=$SUITE packages=${PACKAGES[*]}"

log() { echo "swift-toolchain: $*" >&2; }

apt_opts() {
  echo "-o Dir::Etc::SourceList=$APT_DIR/sources.list"
  echo "-o Dir::Etc::SourceParts=$APT_DIR/sources.list.d"
  echo "-o Dir::Etc::Parts=$APT_DIR/apt.conf.d"
  echo "-o Dir::Etc::Preferences=$APT_DIR/preferences"
  echo "-o Dir::Etc::PreferencesParts=$APT_DIR/preferences.d"
  echo "-o Dir::State=$APT_DIR/state"
  echo "-o Dir::State::Lists=$APT_DIR/lists"
  echo "-o Dir::State::Status=$APT_DIR/status"
  echo "-o Dir::Cache=$APT_DIR/cache"
  echo "-o APT::Architecture=amd64"
  echo "-o APT::Architectures::=amd64"
  echo "-o APT::Install-Recommends=false"
  echo "-o Debug::NoLocking=true"
  echo "-o Acquire::Languages=none"
}

ensure_root() {
  if [ -f "$ROOT/.harmonylite-toolchain" ] && [ "$(cat "$ROOT/.harmonylite-toolchain")" = "$STAMP_TEXT" ]; then
    return 0
  fi
  [ "$(id -u)" -eq 0 ] || { log "building the toolchain root needs root (dpkg -x keeps ownership, chroot)"; exit 2; }
  command -v apt-get >/dev/null && command -v dpkg >/dev/null || { log "needs apt-get and dpkg (a Debian host)"; exit 2; }
  log "building the Swift root in $ROOT (one time: about 525 MB download, 2.5 GB unpacked)"
  mkdir -p "$APT_DIR"/{sources.list.d,apt.conf.d,preferences.d,state,lists/partial,cache/archives/partial}
  touch "$APT_DIR/status" "$APT_DIR/preferences"
  echo "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] $MIRROR $SUITE main" >"$APT_DIR/sources.list"
  # shellcheck disable=SC2046
  apt-get $(apt_opts) -q update >&2
  # shellcheck disable=SC2046
  apt-get $(apt_opts) -q -y --download-only install "${PACKAGES[@]}" >&2

  local partial="$ROOT.partial"
  rm -rf "$partial"
  mkdir -p "$partial"
  local count=0
  for deb in "$APT_DIR"/cache/archives/*.deb; do
    dpkg -x "$deb" "$partial"
    count=$((count + 1))
  done
  log "unpacked $count packages"
  # dpkg -x runs no maintainer scripts: add what they (or base-files) would have made.
  for dir in bin sbin lib lib64; do
    if [ ! -e "$partial/$dir" ] && [ -d "$partial/usr/$dir" ]; then ln -s "usr/$dir" "$partial/$dir"; fi
  done
  [ -e "$partial/usr/bin/sh" ] || ln -s dash "$partial/usr/bin/sh"
  mkdir -p "$partial/proc" "$partial/dev" "$partial/sys" "$partial/tmp" "$partial/root" "$partial/etc"
  chmod 1777 "$partial/tmp"
  [ -e "$partial/etc/passwd" ] || echo "root:x:0:0:root:/root:/bin/sh" >"$partial/etc/passwd"
  [ -e "$partial/etc/group" ] || echo "root:x:0:" >"$partial/etc/group"
  [ -x "$partial/usr/libexec/swift/bin/swift" ] || { log "swift driver missing after unpacking"; exit 1; }
  echo "$STAMP_TEXT" >"$partial/.harmonylite-toolchain"
  rm -rf "$ROOT"
  mv "$partial" "$ROOT"
  local version
  version=$(basename "$(ls "$APT_DIR"/cache/archives/swiftlang_*.deb)" .deb)
  # The .debs are not needed any more (the lists stay, so a rebuild only downloads).
  rm -f "$APT_DIR"/cache/archives/*.deb
  log "ready: $version"
}

# Bind mounts `$1` (a host directory) at the same path inside the root.
bind_same_path() {
  mkdir -p "$ROOT$1"
  mount --bind "$1" "$ROOT$1"
  MOUNTED+=("$ROOT$1")
}

# Runs inside the private mount namespace made by `run`.
inner() {
  local cwd="$1"
  shift
  MOUNTED=()
  unmount_all() {
    local i
    for ((i = ${#MOUNTED[@]} - 1; i >= 0; i--)); do umount -l "${MOUNTED[$i]}" 2>/dev/null || true; done
  }
  trap unmount_all EXIT
  mount --bind /proc "$ROOT/proc"
  MOUNTED+=("$ROOT/proc")
  mount --rbind /dev "$ROOT/dev"
  MOUNTED+=("$ROOT/dev")
  bind_same_path "$REPO"
  if [ -n "${CARGO_TARGET_DIR:-}" ] && [ -d "$CARGO_TARGET_DIR" ]; then
    case "$(cd "$CARGO_TARGET_DIR" && pwd -P)/" in
      "$REPO"/*) ;;
      *) bind_same_path "$(cd "$CARGO_TARGET_DIR" && pwd -P)" ;;
    esac
  fi
  local vars=()
  while [ "$#" -gt 0 ] && [ "$1" != "--" ]; do
    vars+=("$1")
    shift
  done
  [ "${1:-}" = "--" ] && shift
  local status=0
  chroot "$ROOT" /usr/bin/env -i \
    PATH=/usr/libexec/swift/bin:/usr/bin:/bin HOME=/root LANG=C.UTF-8 TMPDIR=/tmp "${vars[@]}" \
    /bin/sh -c 'cd "$1" && shift && exec /bin/sh -c "$@"' sh "$cwd" "$*" || status=$?
  return "$status"
}

# One build or run at a time per root: runs share it (and SwiftPM's .build folder in the repository).
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
    lock
    ensure_root
    export REPO ROOT
    exec unshare --mount --propagation private "$0" __inner "$(pwd -P)" "$@"
    ;;
  __inner)
    shift
    inner "$@"
    ;;
  *)
    echo "usage: $0 ensure | run [VAR=value ...] -- COMMAND" >&2
    exit 2
    ;;
esac
