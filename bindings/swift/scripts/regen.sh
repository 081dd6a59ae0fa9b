#!/usr/bin/env bash
# Regenerates the uniffi sources from the built library:
#   Sources/HarmonyLite/Generated/HarmonyLite.swift (the generated Swift API; never edit by hand)
#   Sources/HarmonyLiteFFI/HarmonyLiteFFI.h           (the C declarations it calls)
# With --check, generates into a scratch folder and fails when the committed files differ (CI runs this).
# Builds the library and the generator first (a no-op when they are fresh).
set -euo pipefail
source "$(dirname "$0")/env.sh"
check=0
[ "${1:-}" = "--check" ] && check=1

build_native
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
"$LIB_DIR/uniffi-bindgen-swift" "$LIB_DIR/lib$LIB_NAME.so" "$out" \
  --swift-sources --headers --metadata-no-deps >/dev/null

status=0
for pair in "HarmonyLite.swift:Sources/HarmonyLite/Generated/HarmonyLite.swift" \
  "HarmonyLiteFFI.h:Sources/HarmonyLiteFFI/HarmonyLiteFFI.h"; do
  generated="$out/${pair%%:*}"
  committed="$SWIFT_PKG/${pair#*:}"
  [ -f "$generated" ] || { echo "regen: uniffi did not generate ${pair%%:*}" >&2; exit 1; }
  if [ "$check" -eq 1 ]; then
    if ! diff -u "$committed" "$generated" >"$out/diff" 2>&1; then
      echo "regen: ${pair#*:} differs from what uniffi generates (run bindings/swift/scripts/regen.sh):" >&2
      head -n 40 "$out/diff" >&2
      status=1
    fi
  else
    cp "$generated" "$committed"
  fi
done
[ "$check" -eq 1 ] && [ "$status" -eq 0 ] && echo "regen: generated sources are up to date"
exit "$status"
