"""knex 3 + better-sqlite3 12 on three nodes, with docs/guides/knex.md's db.js, app.js and migrations taken
verbatim: migrate.latest() node by node after opening, CRUD, concurrent `increments` inserts on two nodes,
and a second migration (alterTable, a table rebuild) rolled out node by node while node 1 inserts."""

from __future__ import annotations

import json
import os
import queue
import re
import subprocess
import threading
from pathlib import Path
from typing import Any, Dict, List

from support import APPS, ROOT, Ledger, NatsServer, Processes, assert_converged, report, scaled, wait_until

GUIDE = ROOT / "docs" / "guides" / "knex.md"
NODE_MODULES = APPS / "node" / "node_modules"
ROWS = scaled(10, 300)
FIRST = "migrations/20250101000000_notes.js"
SECOND = "migrations/20250201000000_notes_done.js"


def guide_block(first_line: str) -> str:
    for block in re.findall(r"```js\n(.*?)```", GUIDE.read_text(), re.S):
        if block.startswith(f"// {first_line}\n"):
            return block
    raise AssertionError(f"docs/guides/knex.md has no js block starting with // {first_line}")


def node_env(**extra: str) -> Dict[str, str]:
    env = dict(os.environ)
    env["NODE_PATH"] = str(NODE_MODULES)
    env.update(extra)
    return env


class KnexNode:
    def __init__(self, number: int, root: Path, nats: NatsServer, procs: Processes) -> None:
        self.number = number
        self.dir = root / f"node{number}"
        (self.dir / "migrations").mkdir(parents=True)
        for name in ("db.js", "app.js", FIRST):
            (self.dir / name).write_text(guide_block(name))
        self.db = self.dir / "app.db"
        self.cfg = {"nodeId": number, "nats": {"urls": [nats.url]}}
        self.procs = procs
        self.process: Any = None
        self.replies: "queue.Queue[str]" = queue.Queue()

    @property
    def name(self) -> str:
        return f"node{self.number}"

    def start(self) -> None:
        log = open(self.procs.logs / f"{self.name}-knex.log", "ab")
        self.process = subprocess.Popen(
            ["node", str(APPS / "node" / "node_app.js"), json.dumps(self.cfg)], cwd=self.dir, env=node_env(),
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log, text=True, start_new_session=True)
        log.close()
        self.procs.running.append((f"{self.name}-knex", self.process))  # type: ignore[arg-type]
        threading.Thread(target=self._read, daemon=True).start()
        ready = self._reply(f"{self.name} to open knex and the replica")
        assert ready.get("ready"), ready

    def _read(self) -> None:
        for line in self.process.stdout:
            self.replies.put(line)

    def _reply(self, what: str, timeout: float = 120) -> Dict[str, Any]:
        while True:
            try:
                line = self.replies.get(timeout=timeout)
            except queue.Empty:
                raise AssertionError(f"timed out waiting for {what}\n{self.procs.log_tail(f'{self.name}-knex')}")
            if line.startswith("{"):
                return json.loads(line)

    def send(self, cmd: str, **args: Any) -> None:
        self.process.stdin.write(json.dumps({"cmd": cmd, **args}) + "\n")
        self.process.stdin.flush()

    def call(self, cmd: str, **args: Any) -> Dict[str, Any]:
        self.send(cmd, **args)
        reply = self._reply(f"{self.name}: {cmd}")
        assert reply.get("ok"), f"{self.name} {cmd}: {reply}\n{self.procs.log_tail(f'{self.name}-knex')}"
        return reply

    def deploy(self, migration: str) -> None:
        (self.dir / migration).write_text(guide_block(migration))


def writer_rows(node: KnexNode) -> int:
    journal = node.dir / "journal.jsonl"
    return journal.read_text().count('"w1-') if journal.exists() else 0


def moved_rows(db: Path) -> int:
    import sqlite3

    conn = sqlite3.connect(db)
    try:
        return int(conn.execute("SELECT count(*) FROM notes WHERE id > 65537").fetchone()[0])
    finally:
        conn.close()


def ledger_of(nodes: List[KnexNode]) -> Ledger:
    return Ledger.from_journals(n.dir / "journal.jsonl" for n in nodes)


def test_knex_migrations_node_by_node_crud_concurrent_increments_and_rolling_alter_table(
        tmp_path: Path, nats: NatsServer, procs: Processes) -> None:
    nodes = [KnexNode(n, tmp_path, nats, procs) for n in (1, 2, 3)]
    n1, n2, n3 = nodes
    dbs = [n.db for n in nodes]
    for node in nodes:
        node.start()  # replicas open on empty files
    # migrate.latest() node by node after opening; node 1 writes before the others have the table.
    assert n1.call("migrate")["applied"] == ["20250101000000_notes.js"]
    n1.call("insert", prefix="a1", count=ROWS)
    for node in (n2, n3):
        assert node.call("migrate")["applied"] == ["20250101000000_notes.js"], "knex saw another node's bookkeeping"
    assert_converged(dbs, ledger_of(nodes))
    # CRUD across nodes.
    n2.call("insert", prefix="a2", count=ROWS)
    n3.call("update", prefix="a1", count=ROWS // 2)
    n1.call("delete", prefix="a2", count=2)
    assert_converged(dbs, ledger_of(nodes))
    # Concurrent increments inserts on two nodes: the same ids are picked on both; every row survives.
    n2.send("insert", prefix="c2", count=ROWS * 2)
    n3.send("insert", prefix="c3", count=ROWS * 2)
    for node in (n2, n3):
        reply = node._reply(f"{node.name}: concurrent insert")
        assert reply.get("ok"), reply
    took_concurrent = assert_converged(dbs, ledger_of(nodes))
    # Rows created later under a key another node took moved past the highest key (ADR 0011).
    moved = moved_rows(n1.db)
    # The second migration (alterTable: a new column, and a column changed, which knex does by rebuilding
    # the table) rolled out node by node while node 1 inserts.
    n1.call("writer", prefix="w1", paceMs=20)
    for node in nodes:
        seen = writer_rows(n1)
        wait_until("node 1's writer to go on writing", lambda: writer_rows(n1) >= seen + 5)
        node.deploy(SECOND)
        assert node.call("migrate")["applied"] == ["20250201000000_notes_done.js"]
        node.call("insert", prefix=f"after-{node.name}", count=3)
    written = n1.call("stopWriter")["written"]
    took = assert_converged(dbs, ledger_of(nodes))
    for node in nodes:
        status = node.call("status")
        assert status["pausedTables"] == [] and status["unsentRows"] == 0, status
        assert node.call("close")["closed"]
        assert node.process.wait(timeout=60) == 0
    report("knex", rows=ledger_of(nodes).size(), writer_rows=written, concurrent_converged_s=round(took_concurrent, 2),
           moved_rows=moved, rollout_converged_s=round(took, 2))


def test_knex_guide_app_runs_on_three_nodes_and_stops_on_sigterm(tmp_path: Path, nats: NatsServer,
                                                                 procs: Processes) -> None:
    nodes = [KnexNode(n, tmp_path, nats, procs) for n in (1, 2, 3)]
    apps = []
    for node in nodes:
        out = node.dir / "app.out"
        apps.append((node, out, procs.start(f"{node.name}-app", ["node", "app.js"], cwd=node.dir,
                                            env=node_env(NODE_ID=str(node.number), NATS_URL=node.cfg["nats"]["urls"][0]),
                                            stdout=out)))
    for node, out, process in apps:
        def serving() -> bool:
            if process.poll() is not None:
                raise AssertionError(f"{node.name}'s app.js exited:\n{procs.log_tail(f'{node.name}-app')}")
            return out.exists() and "serving" in out.read_text()

        wait_until(f"{node.name}'s app.js to serve", serving)
    ledger = Ledger()
    for node in nodes:
        ledger.created("notes", "ref", f"hello-{node.number}", body=f"hello from node {node.number}")
    assert_converged([n.db for n in nodes], ledger)
    for node, _, process in apps:
        assert procs.stop(process) == 0, procs.log_tail(f"{node.name}-app")
