"""Plain better-sqlite3 in a `cluster` of two workers on each of three nodes, with docs/guides/better-sqlite3.md's
app.js and both versions of its migrations.js taken verbatim: inserts served by both workers, `kill -9` of
the replicating worker, and the second migration deployed node by node (restart with the new code) while node 1
serves writes."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path
from typing import AbstractSet, Any, Dict, Optional, Set

from support import (APPS, ROOT, HttpWriter, Ledger, NatsServer, Processes, assert_converged, assert_nothing_waits,
                     guide_block, http_json, journal_created, report, scaled, wait_until)

GUIDE = ROOT / "docs" / "guides" / "better-sqlite3.md"
ROWS = scaled(10, 300)


def node_env(**extra: str) -> Dict[str, str]:
    env = dict(os.environ)
    env["NODE_PATH"] = str(APPS / "node" / "node_modules")
    env.update(extra)
    return env


def migrations_next() -> str:
    """migrations.js with the guide's next list of steps in place of the first."""
    current = guide_block(GUIDE, "js", "// migrations.js")
    start = current.index("const steps = [")
    end = current.index("\n]\n", start) + 3
    steps = guide_block(GUIDE, "js", "// migrations.js, the next version").split("\n", 1)[1]
    assert steps.startswith("const steps = ["), steps
    return current[:start] + steps + current[end:]


def workers_of(pid: int) -> Set[int]:
    try:
        return {int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()}
    except OSError:
        return set()


class ClusterNode:
    def __init__(self, number: int, root: Path, nats: NatsServer, procs: Processes) -> None:
        self.number = number
        self.dir = root / f"node{number}"
        self.dir.mkdir(parents=True)
        (self.dir / "app.js").write_text(guide_block(GUIDE, "js", "// app.js"))
        (self.dir / "migrations.js").write_text(guide_block(GUIDE, "js", "// migrations.js"))
        self.db = self.dir / "app.db"
        self.sock = self.dir / "app.sock"
        self.url = nats.url
        self.procs = procs
        self.primary: Any = None
        self.journal = self.dir / "journal.jsonl"

    @property
    def name(self) -> str:
        return f"node{self.number}"

    @property
    def py_cfg(self) -> Dict[str, Any]:
        return {"node_id": self.number, "nats": {"urls": [self.url]}}

    def start(self, wait: bool = True) -> None:
        self.sock.unlink(missing_ok=True)  # left by the previous run of the app, as a deploy script clears it
        cfg = {"nodeId": self.number, "nats": {"urls": [self.url]}}
        self.primary = self.procs.start(f"{self.name}-app", ["node", "app.js"], cwd=self.dir,
                                        env=node_env(HARMONYLITE=json.dumps(cfg), PORT=str(self.sock)))
        if wait:
            self.wait_serving()

    def stop(self) -> None:
        assert self.procs.stop(self.primary) == 0, self.procs.log_tail(f"{self.name}-app")

    def wait_serving(self, gone: AbstractSet[int] = frozenset()) -> Dict[str, Any]:
        """Waits until two workers (none of ``gone``) serve, one replicating and the other attached to it."""
        def serving() -> Optional[Dict[str, Any]]:
            if self.primary.poll() is not None:
                raise AssertionError(f"{self.name}'s app exited:\n{self.procs.log_tail(f'{self.name}-app')}")
            workers = workers_of(self.primary.pid)
            if len(workers) != 2 or workers & gone:
                return None
            try:
                status = http_json(self.sock, "GET", "/replica", timeout=10)
            except (OSError, AssertionError):
                return None
            if status["replicatorPid"] in workers and status["attachedHandles"] >= 1:
                return status
            return None

        return wait_until(f"{self.name}'s two workers to serve, one replicating", serving)

    def post(self, prefix: str, count: int) -> Set[int]:
        pids = set()
        for i in range(count):
            ref = f"{prefix}-{i}"
            pids.add(http_json(self.sock, "POST", "/notes", {"ref": ref, "body": f"note {ref}"})["pid"])
            journal_created(self.journal, "notes", ref, body=f"note {ref}")
        return pids


def test_better_sqlite3_guide_cluster_on_three_nodes_kill_9_and_a_rolling_migration(
        tmp_path: Path, nats: NatsServer, procs: Processes) -> None:
    nodes = [ClusterNode(n, tmp_path, nats, procs) for n in (1, 2, 3)]
    n1, n2, n3 = nodes
    dbs = [n.db for n in nodes]
    for node in nodes:
        node.start(wait=False)
    for node in nodes:
        node.wait_serving()
    served_by = {node.number: node.post(f"a{node.number}", ROWS) for node in nodes}
    assert all(len(pids) == 2 for pids in served_by.values()), f"inserts not served by both workers: {served_by}"
    assert_converged(dbs, Ledger.from_journals(n.journal for n in nodes))

    # kill -9 of node 2's replicating worker: the other worker takes over, the one forked in its place attaches.
    replicator = http_json(n2.sock, "GET", "/replica")["replicatorPid"]
    os.kill(replicator, signal.SIGKILL)
    after = n2.wait_serving({replicator})
    n2.post("after-kill", ROWS)
    assert_converged(dbs, Ledger.from_journals(n.journal for n in nodes))

    # The next version of migrations.js, node by node, while node 1 serves writes.
    writer_journal = n1.dir / "writer.jsonl"
    writer = HttpWriter(n1.sock, writer_journal, "notes", "w1")
    try:
        for node in nodes:
            writer.wait_for_more()
            (node.dir / "migrations.js").write_text(migrations_next())
            node.stop()
            node.start()
            node.post(f"after-{node.name}", 3)
        writer.wait_for_more()
    finally:
        written = writer.stop()
    ledger = Ledger.from_journals([n.journal for n in nodes] + [writer_journal])
    took = assert_converged(dbs, ledger)
    assert_nothing_waits([(n.db, n.py_cfg) for n in nodes])
    exits = procs.stop_together([node.primary for node in nodes])
    assert exits == [0, 0, 0], {n.name: procs.log_tail(f"{n.name}-app") for n in nodes}
    assert_converged(dbs, ledger)
    report("better-sqlite3 cluster", rows=ledger.size(), writer_rows=written, writer_failed=writer.failed,
           new_replicator_after_kill=after["replicatorPid"] != replicator, rollout_converged_s=round(took, 2))
