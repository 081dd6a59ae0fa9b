#!/usr/bin/env bash
# The merge property test at length (core/tests/merge_property.rs): many more cases than CI runs (200 of
# each generator), both generators drawing new random samples: without UNIQUE names, and with them (key
# collisions, UNIQUE clashes, children and schema skew in one case). The seed is printed;
# HARMONYLITE_PROPERTY_SEED=N replays a sample.
#
#   scripts/merge-property.sh            2000 cases of each
#   scripts/merge-property.sh 500        500 cases of each
#
# A failing case prints its steps (paste them into a regression test) and, with HARMONYLITE_DEBUG_PROPERTY=1,
# every published change and each node's rows, conflicts and parked changes.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_BUILD_TARGET="${CARGO_BUILD_TARGET:-x86_64-unknown-linux-gnu}"
export HARMONYLITE_PROPTEST_CASES="${1:-2000}"
echo "merge property: ${HARMONYLITE_PROPTEST_CASES} random cases of each generator"
cargo test --release -p harmonylite --test merge_property -- --nocapture
