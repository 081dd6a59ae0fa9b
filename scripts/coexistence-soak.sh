#!/usr/bin/env bash
# A long run of the SQLite coexistence test (ADR 0012): an app writing through another SQLite copy (the
# system libsqlite3) while the engine applies, snapshots, checkpoints and reopens, for many rounds; then
# integrity_check and the ledger on both nodes. CI runs 4 rounds (core/tests/coexistence.rs).
#
#   scripts/coexistence-soak.sh [ROUNDS]     default 200
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh >/dev/null
export HARMONYLITE_NATS_SERVER="${HARMONYLITE_NATS_SERVER:-$PWD/.venv/bin/nats-server}"
export CARGO_BUILD_TARGET="${CARGO_BUILD_TARGET:-x86_64-unknown-linux-gnu}"
export HARMONYLITE_COEXIST_ROUNDS="${1:-200}"
cargo test -q -p harmonylite --test coexistence --test sqlite_locks -- --nocapture
