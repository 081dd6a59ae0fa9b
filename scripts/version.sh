#!/usr/bin/env bash
# The release's single version number: `version` in the workspace Cargo.toml ([workspace.package]).
# Every crate takes it (version.workspace = true), maturin gives it to the Python wheel and sdist, and the
# copies that other tools need in their own files must equal it:
#   bindings/node/package.json "version", and index.js, which napi generates from it.
#
#   scripts/version.sh          print the version
#   scripts/version.sh --check  also fail, naming the file, where a copy differs
set -euo pipefail
REPO="$(cd "$(dirname "$0")/.." && pwd -P)"
version=$(awk '/^\[workspace\.package\]/ {in_section = 1; next} /^\[/ {in_section = 0}
  in_section && /^version *=/ {gsub(/.*= *"|".*/, ""); print; exit}' "$REPO/Cargo.toml")
[ -n "$version" ] || { echo "version.sh: no version in [workspace.package] of Cargo.toml" >&2; exit 1; }
if [ "${1:-}" = "--check" ]; then
  status=0
  node_version=$(sed -n 's/^  "version": "\(.*\)",$/\1/p' "$REPO/bindings/node/package.json" | head -n 1)
  if [ "$node_version" != "$version" ]; then
    echo "version.sh: bindings/node/package.json has version $node_version, Cargo.toml $version: set it, then \`npm run build\` in bindings/node to regenerate index.js" >&2
    status=1
  fi
  if grep -q "expected [0-9][^ ]* but got" "$REPO/bindings/node/index.js" &&
    grep -o "expected [0-9][^ ]* but got" "$REPO/bindings/node/index.js" | grep -vq "expected $version but got"; then
    echo "version.sh: bindings/node/index.js was generated for another version than $version: \`npm run build\` in bindings/node" >&2
    status=1
  fi
  [ "$status" -eq 0 ] || exit 1
fi
echo "$version"
