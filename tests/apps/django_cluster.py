"""Three Django nodes, each deployed from its own copy of tests/apps/django_project (so code and migrations
can be rolled out node by node), its `shop/apps.py` taken verbatim from docs/guides/django.md."""

from __future__ import annotations

import http.client
import json
import re
import shutil
import socket
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Dict, List, Optional

from support import APPS, ROOT, Ledger, NatsServer, Processes, python_env, wait_until

PROJECT = APPS / "django_project"
GUIDE = ROOT / "docs" / "guides" / "django.md"
PASSWORD = "secret"


def guide_block(first_line: str) -> str:
    """The ```python block of the Django guide that starts with ``first_line``."""
    for block in re.findall(r"```python\n(.*?)```", GUIDE.read_text(), re.S):
        if block.startswith(first_line):
            return block
    raise AssertionError(f"docs/guides/django.md has no python block starting with {first_line!r}")


class UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path: Path) -> None:
        super().__init__("localhost", timeout=60)
        self.path = str(path)

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(60)
        self.sock.connect(self.path)


class DjangoNode:
    def __init__(self, number: int, root: Path, nats: NatsServer, procs: Processes) -> None:
        self.number = number
        self.dir = root / f"node{number}"
        self.procs = procs
        self.nats = nats
        shutil.copytree(PROJECT, self.dir, ignore=shutil.ignore_patterns("__pycache__", "rollout", "*.sqlite3*"))
        (self.dir / "shop" / "apps.py").write_text(guide_block("# shop/apps.py"))
        self.db = self.dir / "db.sqlite3"
        self.journals: List[Path] = []
        self.gunicorn: Any = None
        self.writes = 0
        self.workers = 1
        self.replicate(False)

    @property
    def name(self) -> str:
        return f"node{self.number}"

    def replicate(self, on: bool) -> None:
        """Writes the node's settings: replicated (node id, the suite's nats-server) or not."""
        cfg = {"node_id": self.number, "nats": {"urls": [self.nats.url]}} if on else None
        (self.dir / "node.json").write_text(json.dumps({"harmonylite": cfg}))

    def env(self) -> Dict[str, str]:
        return python_env(NODE_NAME=self.name, DJANGO_SUPERUSER_PASSWORD=PASSWORD)

    def manage(self, *args: str, timeout: float = 180) -> str:
        return self.procs.run(f"{self.name}-manage", [sys.executable, "manage.py", *args], cwd=self.dir,
                              env=self.env(), timeout=timeout)

    def journal(self) -> Path:
        self.writes += 1
        path = self.dir / f"journal-{self.writes}.jsonl"
        self.journals.append(path)
        return path

    def write(self, action: str, *args: str) -> str:
        """``manage.py shopwrite ACTION`` (the ORM or the admin), journaled."""
        return self.manage("shopwrite", action, "--journal", str(self.journal()), *args)

    def start_writer(self, prefix: str, category: str) -> Path:
        """A long-running ``shopwrite writer``; returns its stop file."""
        stop = self.dir / f"stop-{prefix}"
        self.procs.start(f"{self.name}-writer-{prefix}",
                         [sys.executable, "manage.py", "shopwrite", "writer", "--journal", str(self.journal()),
                          "--prefix", prefix, "--category", category, "--stop-file", str(stop)],
                         cwd=self.dir, env=self.env())
        return stop

    # gunicorn ------------------------------------------------------------------------------------------

    @property
    def socket(self) -> Path:
        return self.dir / "gunicorn.sock"

    def start_gunicorn(self, workers: int = 1, wait: bool = True) -> None:
        """Starts gunicorn (without its control socket, whose default path in $HOME every gunicorn on the
        machine shares); with ``wait``, returns once it serves (else call ``wait_serving``)."""
        gunicorn = Path(sys.executable).parent / "gunicorn"
        self.gunicorn = self.procs.start(
            f"{self.name}-gunicorn",
            [str(gunicorn), "-w", str(workers), "--bind", f"unix:{self.socket}", "--graceful-timeout", "20",
             "--no-control-socket", "mysite.wsgi"],
            cwd=self.dir, env=self.env())
        self.workers = workers
        if wait:
            self.wait_serving()

    def wait_serving(self) -> None:
        workers = self.workers

        def serving() -> Optional[Dict[str, Any]]:
            if self.gunicorn.poll() is not None:
                raise AssertionError(f"gunicorn exited:\n{self.procs.log_tail(f'{self.name}-gunicorn')}")
            try:
                status = self.get("/replica")
            except OSError:
                return None
            return status if status.get("replicator_pid") else None

        wait_until(f"{self.name}'s gunicorn to serve with a replica", serving)
        if workers > 1:
            wait_until(f"{self.name}'s {workers} workers to share one replicator",
                       lambda: self.get("/replica")["attached_handles"] >= workers - 1)

    def stop_gunicorn(self) -> None:
        if self.gunicorn is not None:
            self.procs.stop(self.gunicorn)
            self.gunicorn = None

    def request(self, method: str, path: str, body: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
        conn = UnixHTTPConnection(self.socket)
        try:
            payload = json.dumps(body).encode() if body is not None else None
            conn.request(method, path, body=payload, headers={"Content-Type": "application/json"})
            response = conn.getresponse()
            data = response.read()
            if response.status != 200:
                raise AssertionError(f"{method} {path} on {self.name}: {response.status} {data[:2000]!r}")
            return json.loads(data)
        finally:
            conn.close()

    def get(self, path: str) -> Dict[str, Any]:
        return self.request("GET", path)

    # code roll-out -------------------------------------------------------------------------------------

    def deploy_migration(self, name: str, model_from: str, model_to: str) -> None:
        """Deploys a new version of the app on this node: the migration file and the model change."""
        shutil.copy(PROJECT / "rollout" / f"{name}.py", self.dir / "shop" / "migrations" / f"{name}.py")
        models = self.dir / "shop" / "models.py"
        text = models.read_text()
        assert model_from in text, f"{model_from!r} not in models.py"
        models.write_text(text.replace(model_from, model_to, 1))


class DjangoCluster:
    def __init__(self, root: Path, nats: NatsServer, procs: Processes) -> None:
        self.nodes = [DjangoNode(n, root, nats, procs) for n in (1, 2, 3)]

    def migrate_all(self) -> None:
        """`manage.py migrate` on the three nodes at once (each its own file: nothing to wait for)."""
        with ThreadPoolExecutor(len(self.nodes)) as pool:
            for done in [pool.submit(node.manage, "migrate", "--noinput") for node in self.nodes]:
                done.result()

    def start_gunicorn_all(self) -> None:
        """Starts every node's gunicorn, then waits until each serves."""
        for node in self.nodes:
            node.start_gunicorn(wait=False)
        for node in self.nodes:
            node.wait_serving()

    @property
    def dbs(self) -> List[Path]:
        return [node.db for node in self.nodes]

    def ledger(self) -> Ledger:
        return Ledger.from_journals(j for node in self.nodes for j in node.journals)

    def journal_entries(self) -> int:
        return sum(len(j.read_text().splitlines()) for n in self.nodes for j in n.journals if j.exists())


def timed(label: str, timings: Dict[str, float]):  # type: ignore[no-untyped-def]
    class Timer:
        def __enter__(self) -> None:
            self.started = time.monotonic()

        def __exit__(self, *exc: object) -> None:
            timings[label] = round(time.monotonic() - self.started, 2)

    return Timer()
