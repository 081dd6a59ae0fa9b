"""Several processes open one database file, as gunicorn workers would (ADR 0010): one replicates, the others
attach to it and see its status and events, and one of them takes over when it is killed."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any, Dict, List

import harmonylite

from helpers import WAIT, create_db, wait_until

# A worker: opens the replica, then answers one command per stdin line with one JSON line.
WORKER = textwrap.dedent(
    """
    import json, sys
    import harmonylite

    replica = harmonylite.open_replicated(sys.argv[1], {"node_id": 4})
    events = []
    subscription = replica.on_change(lambda event: events.append(event.pk[0]))  # keep it: dropped = cancelled
    replica.status()  # answered after the events request: events flow from here on
    print(json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        command = line.strip()
        if command == "status":
            answer = replica.status()
        elif command == "events":
            answer = sorted(events)
        elif command == "sync":
            answer = str(replica.sync())
        elif command == "snapshot":
            answer = replica.save_snapshot() is not None
        else:
            answer = None
        print(json.dumps(answer), flush=True)
    """
)


class Worker:
    def __init__(self, db: Path) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-c", WORKER, str(db)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.read() == {"ready": True}
        self.pid = self.process.pid

    def read(self) -> Any:
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        assert line, f"worker {self.process.pid} exited"
        return json.loads(line)

    def ask(self, command: str) -> Any:
        assert self.process.stdin is not None
        self.process.stdin.write(command + "\n")
        self.process.stdin.flush()
        return self.read()

    def status(self) -> Dict[str, Any]:
        answer: Dict[str, Any] = self.ask("status")
        return answer

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(WAIT)


def test_workers_share_one_replicator_and_take_over(tmp_path: Path) -> None:
    db = tmp_path / "app.db"
    conn = create_db(db)
    workers: List[Worker] = []
    try:
        workers.append(Worker(db))
        workers.append(Worker(db))
        first, second = workers
        assert first.status()["role"] == "active"
        status = second.status()
        assert status["role"] == "attached"
        assert status["replicator_pid"] == first.pid
        assert status["node_id"] == 4

        # This process opens the file too: it attaches as well.
        here = harmonylite.open_replicated(db)
        try:
            assert here.status()["role"] == "attached"
            assert first.status()["attached_handles"] == 2

            conn.execute("INSERT INTO items (id, name) VALUES (1, 'one')")
            conn.commit()
            wait_until("the attached worker to see the event", lambda: second.ask("events") == [1])
            token = second.ask("sync")
            here.wait_for(token)
            assert second.ask("snapshot") is True

            os.kill(first.pid, signal.SIGKILL)
            first.process.wait(WAIT)
            conn.execute("INSERT INTO items (id, name) VALUES (2, 'written while nobody replicates')")
            conn.commit()

            def taken_over() -> bool:
                roles = [second.status()["role"], here.status()["role"]]
                assert roles.count("active") <= 1, roles
                return "active" in roles

            wait_until("a takeover", taken_over)
            replicator = here.status()["replicator_pid"]
            wait_until("the second worker to follow", lambda: second.status()["replicator_pid"] == replicator)
            # Row 2 went out with the takeover; events emitted before a handle re-attached do not reach it.
            conn.execute("INSERT INTO items (id, name) VALUES (3, 'after the takeover')")
            conn.commit()
            wait_until("the second worker to see row 3", lambda: 3 in second.ask("events"))
            token = second.ask("sync")
            here.wait_for(token)
            assert sorted(r[0] for r in conn.execute("SELECT id FROM items")) == [1, 2, 3]
            assert here.status()["pending_changes"] == 0
        finally:
            here.close()
        wait_until("the second worker to replicate", lambda: second.status()["role"] == "active")
    finally:
        for worker in workers:
            worker.stop()
        conn.close()
