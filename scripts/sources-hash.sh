#!/usr/bin/env bash
# Prints one hash of the sources under the given paths as they are in the working tree (committed, changed
# and untracked files), plus the workspace's Cargo.toml and Cargo.lock. Scripts that install a build into
# the repository's .venv record it beside the install, so that another script can tell whether that install
# was built from the sources it would build from (bindings/python/test.sh writes it, tests/apps/run.sh reads
# it and skips its own build).
#
#   scripts/sources-hash.sh core bindings/python
set -euo pipefail
cd "$(dirname "$0")/.."
{
  git ls-files -s -- "$@" Cargo.toml Cargo.lock
  git diff HEAD -- "$@" Cargo.toml Cargo.lock
  git ls-files -z --others --exclude-standard -- "$@" | xargs -0 -r sha256sum
} | sha256sum | cut -d' ' -f1
