"""Three nodes whose app is a command-line tool or a plain script: each node's replica is held by
hold_replica.py, the apps write the file beside it, and the test attaches to each node's replicator (from
this process) for status and snapshots."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional

import harmonylite

from support import APPS, NatsServer, Processes, python_env, wait_until


class PlainNode:
    def __init__(self, number: int, root: Path, nats: NatsServer, procs: Processes) -> None:
        self.number = number
        self.dir = root / f"node{number}"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.db = self.dir / "app.db"
        self.procs = procs
        self.cfg: Dict[str, Any] = {"node_id": number, "nats": {"urls": [nats.url]}}
        self.holder: Any = None
        self.handle: Optional[harmonylite.Replica] = None

    @property
    def name(self) -> str:
        return f"node{self.number}"

    def open(self) -> None:
        """Starts the node's replica holder and waits until it serves."""
        out = self.dir / "holder.out"
        self.holder = self.procs.start(f"{self.name}-holder",
                                       [sys.executable, str(APPS / "hold_replica.py"), str(self.db),
                                        json.dumps(self.cfg)], cwd=self.dir, env=python_env(), stdout=out)

        def ready() -> bool:
            if self.holder.poll() is not None:
                raise AssertionError(f"{self.name}'s replica holder exited:\n"
                                     f"{self.procs.log_tail(f'{self.name}-holder')}")
            return out.exists() and "ready" in out.read_text()

        wait_until(f"{self.name}'s replica", ready)

    def attach(self) -> harmonylite.Replica:
        """This process's handle on the node's replicator (attached to the holder)."""
        if self.handle is None:
            self.handle = harmonylite.open_replicated(str(self.db), self.cfg)
            assert self.handle.status()["role"] == "attached", self.handle.status()
        return self.handle

    def status(self) -> Dict[str, Any]:
        return dict(self.attach().status())

    def close(self) -> None:
        if self.handle is not None:
            self.handle.close()
            self.handle = None
        if self.holder is not None:
            assert self.procs.stop(self.holder) == 0, self.procs.log_tail(f"{self.name}-holder")
            self.holder = None

    def run(self, *args: str) -> str:
        return self.procs.run(f"{self.name}-app", list(args), cwd=self.dir, env=python_env())


def sqlite_utils(node: PlainNode, *args: str, input: Optional[str] = None) -> str:
    tool = str(Path(sys.executable).parent / "sqlite-utils")
    return node.procs.run(f"{node.name}-sqlite-utils", [tool, *args], cwd=node.dir, env=python_env(),
                          input=input)


def nodes(root: Path, nats: NatsServer, procs: Processes) -> List[PlainNode]:
    return [PlainNode(n, root, nats, procs) for n in (1, 2, 3)]
