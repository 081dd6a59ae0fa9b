"""Apps writing through their own SQLite (``apsw``, which carries its own copy, and the stdlib ``sqlite3``) while
the replica in the same process applies remote changes, builds snapshots and checkpoints: the files stay
intact and every row of the ledger reaches both nodes (ADR 0012). Before the engine's lock shim, the apsw
loop ended in "database disk image is malformed" within seconds.

A few seconds in CI; ``HARMONYLITE_COEXIST_ROUNDS=100`` for a long run.
"""

from __future__ import annotations

import os
import sqlite3
import threading
from pathlib import Path
from typing import Any, Callable, List, Optional

import apsw
import pytest

import harmonylite
from helpers import NatsServer, config_for, wait_until

SCHEMA = "CREATE TABLE IF NOT EXISTS ledger (id INTEGER PRIMARY KEY, origin INTEGER NOT NULL, body BLOB);"
ROWS_PER_TX = 20
ROWS_PER_ROUND = 1000
ROUNDS = int(os.environ.get("HARMONYLITE_COEXIST_ROUNDS", "3"))


class Writer:
    """An app thread: a connection per transaction (as web apps do), ``ROWS_PER_TX`` ledger rows in each and a
    TRUNCATE checkpoint now and then, until it committed ``target`` rows; then it waits for more."""

    def __init__(self, name: str, origin: int, transaction: Callable[[List[int], bool], None]) -> None:
        self.name = name
        self.committed: List[int] = []
        self.error: Optional[BaseException] = None
        self._origin = origin
        self._transaction = transaction
        self._target = 0
        self._stop = False
        self._more = threading.Condition()
        self._thread = threading.Thread(target=self._run, name=f"app-{name}", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        next_id = self._origin * 1_000_000_000
        tx = 0
        try:
            while True:
                with self._more:
                    self._more.wait_for(lambda: self._stop or len(self.committed) < self._target)
                    if self._stop:
                        return
                ids = list(range(next_id, next_id + ROWS_PER_TX))
                self._transaction(ids, tx % 25 == 24)
                self.committed.extend(ids)
                next_id += ROWS_PER_TX
                tx += 1
        except BaseException as err:  # reported by finish()
            self.error = err

    def raise_target(self) -> None:
        with self._more:
            self._target += ROWS_PER_ROUND
            self._more.notify_all()

    def reached_target(self) -> bool:
        if self.error is not None:
            raise AssertionError(f"the {self.name} app failed: {self.error!r}") from self.error
        return len(self.committed) >= self._target

    def stop(self) -> None:
        with self._more:
            self._stop = True
            self._more.notify_all()
        self._thread.join(60)

    def finish(self) -> List[int]:
        self.stop()
        if self.error is not None:
            raise AssertionError(f"the {self.name} app failed: {self.error!r}") from self.error
        return self.committed


def apsw_transaction(db: Path) -> Callable[[List[int], bool], None]:
    def run(ids: List[int], checkpoint: bool) -> None:
        conn = apsw.Connection(str(db))
        try:
            conn.set_busy_timeout(30_000)
            with conn:  # a transaction
                conn.executemany(
                    "INSERT INTO ledger VALUES (?, ?, randomblob(600))", [(i, 1) for i in ids]
                )
            if checkpoint:
                try:
                    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
                except apsw.BusyError:
                    pass
        finally:
            conn.close()

    return run


def stdlib_transaction(db: Path) -> Callable[[List[int], bool], None]:
    def run(ids: List[int], checkpoint: bool) -> None:
        conn = sqlite3.connect(db, timeout=30)
        try:
            with conn:
                conn.executemany(
                    "INSERT INTO ledger VALUES (?, ?, randomblob(600))", [(i, 2) for i in ids]
                )
            if checkpoint:
                conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
        finally:
            conn.close()

    return run


def ids_in(db: Path) -> List[int]:
    conn = sqlite3.connect(db)
    try:
        return [row[0] for row in conn.execute("SELECT id FROM ledger ORDER BY id")]
    finally:
        conn.close()


def test_apsw_and_stdlib_apps_write_while_the_engine_applies_snapshots_and_checkpoints(
    nats: NatsServer, replicas: List[Any], tmp_path: Path
) -> None:
    assert apsw.using_amalgamation, "this apsw carries its own copy of SQLite"
    store = str(tmp_path / "snapshots")
    dbs = {name: tmp_path / f"{name}.db" for name in ("a", "b")}
    for db in dbs.values():
        conn = sqlite3.connect(db)
        conn.executescript(SCHEMA + "PRAGMA journal_mode = WAL;")
        conn.close()
    cfg = {"snapshot": {"store": "dir", "dir": {"path": store}}}
    a = harmonylite.open_replicated(dbs["a"], config_for(nats, 1, **cfg))
    replicas.append(a)
    b = harmonylite.open_replicated(dbs["b"], config_for(nats, 2, **cfg))
    replicas.append(b)

    # Node a's app writes through apsw (its own SQLite copy), node b's through the stdlib sqlite3.
    writer_a = Writer("apsw", 1, apsw_transaction(dbs["a"]))
    writer_b = Writer("sqlite3", 2, stdlib_transaction(dbs["b"]))
    snapshots = 0
    try:
        for _ in range(ROUNDS):
            writer_a.raise_target()
            writer_b.raise_target()
            # While both apps write: a snapshot on each node (VACUUM INTO from a read-only connection).
            for replica in (a, b):
                if replica.save_snapshot() is not None:
                    snapshots += 1
            wait_until("both apps committed this round", lambda: writer_a.reached_target() and writer_b.reached_target())
        ids_a = writer_a.finish()
        ids_b = writer_b.finish()
    finally:
        writer_a.stop()
        writer_b.stop()

    token_a, token_b = a.sync(), b.sync()
    a.wait_for(token_b, timeout=60)
    b.wait_for(token_a, timeout=60)
    for db in dbs.values():
        check = apsw.Connection(str(db))
        assert check.execute("PRAGMA integrity_check").fetchall() == [("ok",)], f"{db.name} through apsw"
        check.close()
        conn = sqlite3.connect(db)
        assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)], f"{db.name} through sqlite3"
        conn.close()
    expected = sorted(ids_a + ids_b)
    assert len(expected) == ROUNDS * ROWS_PER_ROUND * 2
    for db in dbs.values():
        assert ids_in(db) == expected, f"every ledger row on {db.name}"
    assert snapshots >= 1


@pytest.mark.parametrize("library", ["apsw", "sqlite3"])
def test_an_app_keeps_writing_while_its_replica_closes_and_reopens(
    library: str, nats: NatsServer, replicas: List[Any], tmp_path: Path
) -> None:
    """Closing a replica closes the engine's descriptors of the file; the app's locks must survive it."""
    db = tmp_path / "app.db"
    conn = sqlite3.connect(db)
    conn.executescript(SCHEMA + "PRAGMA journal_mode = WAL;")
    conn.close()
    transaction = apsw_transaction(db) if library == "apsw" else stdlib_transaction(db)
    writer = Writer(library, 1, transaction)
    try:
        for _ in range(4):
            writer.raise_target()
            replica = harmonylite.open_replicated(db, config_for(nats, 1))
            replica.sync()
            replica.close()
            wait_until("the app committed this round", writer.reached_target)
        ids = writer.finish()
    finally:
        writer.stop()
    check = apsw.Connection(str(db))
    assert check.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
    check.close()
    assert ids_in(db) == sorted(ids)
