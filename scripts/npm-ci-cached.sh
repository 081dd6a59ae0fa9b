#!/usr/bin/env bash
# `npm ci` in a package folder, with the resulting node_modules kept in a cache between checkouts.
#
#   scripts/npm-ci-cached.sh <package dir> [npm ci arguments]
#
# The registry here serves no prebuilt better-sqlite3 binaries (their download host is unreachable), so every
# `npm ci` compiles SQLite from source: about two minutes on two cores, in every fresh clone CI makes. The
# node_modules folder `npm ci` produces depends only on the lock file, the Node version and the platform,
# so it is archived under that key in $HARMONYLITE_CI_CACHE/node_modules (default
# /var/cache/harmonylite/node_modules) and unpacked instead of reinstalled when the key matches. Without a
# writable cache folder this is plain `npm ci`.
set -euo pipefail
dir=${1:?usage: npm-ci-cached.sh <package dir> [npm ci arguments]}
shift
cd "$dir"
[ -f package-lock.json ] || { echo "npm-ci-cached: $dir has no package-lock.json" >&2; exit 1; }

cache_root="${HARMONYLITE_CI_CACHE:-/var/cache/harmonylite}/node_modules"
key=$( { sha256sum package-lock.json | cut -d' ' -f1; node --version; uname -sm; } | sha256sum | cut -c1-24)
archive="$cache_root/$(basename "$PWD")-$key.tar"

if [ -f "$archive" ]; then
  rm -rf node_modules
  if tar -xf "$archive"; then
    echo "npm-ci-cached: node_modules of $(basename "$PWD") restored from $archive"
    exit 0
  fi
  echo "npm-ci-cached: $archive is unreadable; installing instead" >&2
  rm -rf node_modules
fi

npm ci "$@"
if mkdir -p "$cache_root" 2>/dev/null && [ -w "$cache_root" ]; then
  # Written under a temporary name and renamed, so a concurrent run never unpacks half an archive.
  partial=$(mktemp "$cache_root/.partial.XXXXXX")
  if tar -cf "$partial" node_modules; then
    mv -f "$partial" "$archive"
  else
    rm -f "$partial"
  fi
fi
