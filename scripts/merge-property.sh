#!/usr/bin/env bash
# The merge property test at length (core/tests/merge_property.rs): many more cases than CI runs (200), with
# the same generator (UNIQUE names from a small pool, so key collisions, UNIQUE clashes, children and schema
# skew meet).
#
#   scripts/merge-property.sh            2000 cases
#   scripts/merge-property.sh 500        500 cases
#   HARMONYLITE_PROPERTY_FULL=0 scripts/merge-property.sh   without UNIQUE names
#
# A failing case prints its steps (paste them into a regression test) and, with HARMONYLITE_DEBUG_PROPERTY=1,
# every published change and each node's rows, conflicts and parked changes.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_BUILD_TARGET="${CARGO_BUILD_TARGET:-x86_64-unknown-linux-gnu}"
export HARMONYLITE_PROPTEST_CASES="${1:-2000}"
export HARMONYLITE_PROPERTY_FULL="${HARMONYLITE_PROPERTY_FULL:-1}"
echo "merge property: ${HARMONYLITE_PROPTEST_CASES} cases, full generator: ${HARMONYLITE_PROPERTY_FULL}"
cargo test --release -p harmonylite --test merge_property -- --nocapture
