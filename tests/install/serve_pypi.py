"""Serves a folder of wheels as a PyPI-style index (pypiserver) on a port the kernel picks, and writes that
port to PORT_FILE once it listens, so nothing has to guess a free port.

    python serve_pypi.py PACKAGES_DIR PORT_FILE
"""

import os
import pathlib
import signal
import sys
from socketserver import ThreadingMixIn
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import pypiserver


class ThreadingServer(ThreadingMixIn, WSGIServer):
    daemon_threads = True


class QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - the stdlib's name
        sys.stderr.write("pypiserver: " + (format % args) + "\n")


def main() -> None:
    packages, port_file = sys.argv[1], sys.argv[2]
    # No authentication at all: a read-only index of what the suite built.
    app = pypiserver.app(roots=[pathlib.Path(packages)], authenticate=[], password_file=".")
    server = make_server("127.0.0.1", 0, app, server_class=ThreadingServer, handler_class=QuietHandler)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    with open(port_file + ".tmp", "w") as f:
        f.write(f"{server.server_port}\n")
    os.replace(port_file + ".tmp", port_file)
    print(f"pypiserver listening on 127.0.0.1:{server.server_port}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
