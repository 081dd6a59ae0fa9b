"""Flask + Flask-SQLAlchemy + Flask-Migrate on three nodes, each served by `gunicorn -w 2`, with
docs/guides/flask-sqlalchemy.md's app.py and its `flask db` commands taken verbatim: `db upgrade` before the
workers start on one node and after they opened the replica on the others, concurrent inserts on two nodes,
and the guide's next version (a new column) rolled out node by node — code, `db upgrade`, `kill -HUP` — while
node 1 serves writes."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import signal
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import AbstractSet, Any, Dict, List, Optional, Set

from support import (ROOT, HttpWriter, Ledger, NatsServer, Processes, assert_converged, assert_nothing_waits,
                     guide_block, guide_blocks, http_json, journal_created, python_env, report, scaled, wait_until)

GUIDE = ROOT / "docs" / "guides" / "flask-sqlalchemy.md"
ROWS = scaled(10, 300)
TABLE = "note"  # Flask-SQLAlchemy's name for the model Note
BIN = Path(sys.executable).parent


def app_py() -> str:
    return guide_block(GUIDE, "python", "# app.py")


def app_py_next() -> str:
    """app.py with the guide's next version of Note in place of the first."""
    current = app_py()
    start = current.index("class Note(db.Model):")
    end = current.index("\n\n\n", start)
    next_note = guide_block(GUIDE, "python", "# app.py, the next version of Note").split("\n", 1)[1]
    return current[:start] + next_note.rstrip("\n") + current[end:]


def guide_commands() -> List[List[str]]:
    """The guide's `flask db` commands (init, migrate, upgrade), as argument lists."""
    block = next(b for b in guide_blocks(GUIDE, "sh") if "flask --app app db init" in b)
    commands = [shlex.split(line) for line in block.splitlines() if line.strip()]
    assert [c[4] for c in commands] == ["init", "migrate", "upgrade"], commands
    return commands


def run_flask(procs: Processes, name: str, command: List[str], cwd: Path, env: Dict[str, str]) -> str:
    assert command[0] == "flask", command
    return procs.run(name, [str(BIN / "flask"), *command[1:]], cwd=cwd, env=env)


def workers_of(pid: int) -> Set[int]:
    try:
        return {int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()}
    except OSError:
        return set()


class FlaskNode:
    def __init__(self, number: int, root: Path, nats: NatsServer, procs: Processes, migrations: Path) -> None:
        self.number = number
        self.dir = root / f"node{number}"
        self.dir.mkdir(parents=True)
        (self.dir / "app.py").write_text(app_py())
        shutil.copytree(migrations, self.dir / "migrations", ignore=shutil.ignore_patterns("__pycache__"))
        self.db = self.dir / "instance" / "app.db"
        self.sock = self.dir / "gunicorn.sock"
        self.cfg = {"node_id": number, "nats": {"urls": [nats.url]}}
        self.procs = procs
        self.gunicorn: Any = None
        self.journal = self.dir / "journal.jsonl"

    @property
    def name(self) -> str:
        return f"node{self.number}"

    def env(self) -> Dict[str, str]:
        return python_env(FLASK_HARMONYLITE=json.dumps(self.cfg))

    def upgrade(self) -> None:
        run_flask(self.procs, f"{self.name}-flask", guide_commands()[2], self.dir, self.env())

    def start_gunicorn(self) -> None:
        """The guide's command, bound to a Unix socket of this node's own (no port to race for) and without
        gunicorn's control socket (its default path, in $HOME, is shared by every gunicorn on the machine);
        call ``wait_serving`` next."""
        self.gunicorn = self.procs.start(
            f"{self.name}-gunicorn",
            [str(BIN / "gunicorn"), "-w", "2", "--bind", f"unix:{self.sock}", "--graceful-timeout", "20",
             "--no-control-socket", "app:create_app()"], cwd=self.dir, env=self.env())

    def wait_serving(self, old_workers: AbstractSet[int] = frozenset()) -> Dict[str, Any]:
        """Waits until two new workers (none of ``old_workers``) serve, one replicating, the other attached."""
        def serving() -> Optional[Dict[str, Any]]:
            if self.gunicorn.poll() is not None:
                raise AssertionError(f"gunicorn exited:\n{self.procs.log_tail(f'{self.name}-gunicorn')}")
            workers = workers_of(self.gunicorn.pid)
            if len(workers) != 2 or workers & old_workers:
                return None
            try:
                status = http_json(self.sock, "GET", "/replica", timeout=10)
            except (OSError, AssertionError):
                return None
            if status["replicator_pid"] in workers and status["attached_handles"] >= 1:
                return status
            return None

        return wait_until(f"{self.name}'s two workers to serve, one replicating", serving)

    def reload(self) -> Dict[str, Any]:
        """`kill -HUP`: gunicorn starts new workers with the new code and stops the old ones."""
        old = workers_of(self.gunicorn.pid)
        os.kill(self.gunicorn.pid, signal.SIGHUP)
        return self.wait_serving(old)

    def post(self, prefix: str, count: int) -> Set[int]:
        pids = set()
        for i in range(count):
            ref = f"{prefix}-{i}"
            reply = http_json(self.sock, "POST", "/notes", {"ref": ref, "body": f"note {ref}"})
            pids.add(reply["pid"])
            journal_created(self.journal, TABLE, ref, body=f"note {ref}")
        return pids

    def deploy(self, app: str, migration: Path) -> None:
        (self.dir / "app.py").write_text(app)
        shutil.copy(migration, self.dir / "migrations" / "versions" / migration.name)


def test_flask_guide_on_three_nodes_gunicorn_upgrades_node_by_node_and_a_rolling_new_column(
        tmp_path: Path, nats: NatsServer, procs: Processes) -> None:
    # Where the code is written: the guide's commands make migrations/ (no replica there).
    dev = tmp_path / "dev"
    dev.mkdir()
    (dev / "app.py").write_text(app_py())
    for command in guide_commands():
        run_flask(procs, "dev-flask", command, dev, python_env())
    nodes = [FlaskNode(n, tmp_path, nats, procs, dev / "migrations") for n in (1, 2, 3)]
    n1, n2, n3 = nodes
    dbs = [n.db for n in nodes]

    def ledger() -> Ledger:
        return Ledger.from_journals(n.journal for n in nodes)

    # Node 1 upgrades before its workers start; nodes 2 and 3 serve an empty database meanwhile.
    for node in (n2, n3):
        node.start_gunicorn()
    n1.upgrade()
    n1.start_gunicorn()
    for node in nodes:
        node.wait_serving()
    pids = n1.post("a1", ROWS)
    with ThreadPoolExecutor(2) as pool:  # each node in its own time: here both at once
        for upgraded in [pool.submit(node.upgrade) for node in (n2, n3)]:
            upgraded.result()  # attached to the node's gunicorn; node 1's rows waited for the table
    assert_converged(dbs, ledger())

    # Concurrent inserts on two nodes: the same ids are picked on both; every note is kept.
    with ThreadPoolExecutor(2) as pool:
        for done in [pool.submit(node.post, f"c{node.number}", ROWS * 2) for node in (n2, n3)]:
            done.result(timeout=300)
    took_concurrent = assert_converged(dbs, ledger())

    # The next version (a new column), node by node, while node 1 serves writes.
    (dev / "app.py").write_text(app_py_next())
    versions = set((dev / "migrations" / "versions").glob("*.py"))
    migrate_tag = guide_commands()[1][:-1] + ["tag"]
    run_flask(procs, "dev-flask", migrate_tag, dev, python_env())
    (migration,) = set((dev / "migrations" / "versions").glob("*.py")) - versions
    writer = HttpWriter(n1.sock, n1.journal.with_name("writer.jsonl"), TABLE, "w1")
    replicators = []
    try:
        for node in nodes:
            writer.wait_for_more()
            node.deploy(app_py_next(), migration)
            node.upgrade()
            replicators.append(node.reload()["replicator_pid"])
            node.post(f"after-{node.name}", 3)
        writer.wait_for_more()
    finally:
        written = writer.stop()
    journals = [n.journal for n in nodes] + [n1.journal.with_name("writer.jsonl")]
    rollout = Ledger.from_journals(journals)
    took = assert_converged(dbs, rollout)
    assert_nothing_waits([(n.db, n.cfg) for n in nodes])
    exits = procs.stop_together([node.gunicorn for node in nodes])
    assert exits == [0, 0, 0], {n.name: procs.log_tail(f"{n.name}-gunicorn") for n in nodes}
    assert_converged(dbs, rollout)
    report("flask", rows=rollout.size(), serving_pids=len(pids), writer_rows=written,
           writer_failed=writer.failed, concurrent_converged_s=round(took_concurrent, 2),
           rollout_converged_s=round(took, 2), replicators_after_reload=len(set(replicators)))
