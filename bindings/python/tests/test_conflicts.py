"""Conflicts through the Python API, provoked for real (two replicas on a real nats-server): an edit made while
a replica was closed loses to a later edit of the same column on the other node. Both nodes log it,
``on_conflict`` delivers it, ``aio`` reads it. And the drift test: every field of the core's ``Status`` and
``Conflict`` is in the binding's dicts and in its TypedDicts."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import time
from pathlib import Path
from typing import Any, Dict, List, Mapping, Set, Tuple

import harmonylite
import harmonylite.aio as aio
from helpers import NatsServer, config_for, create_db, wait_until

DOC = "CREATE TABLE IF NOT EXISTS doc (id INTEGER PRIMARY KEY, title TEXT, rating INTEGER);"
# Only node A has this table: B parks A's rows for it, so B's status lists a paused table.
ONLY_A = "CREATE TABLE IF NOT EXISTS only_a (id INTEGER PRIMARY KEY, note TEXT);"


def _wait_past(millis: float) -> None:
    """Until the wall clock is past ``millis``, so the next write is stamped later than one made at it."""
    wait_until("the clock to move on", lambda: time.time() * 1000 > millis + 2)


def _doc(conn: sqlite3.Connection) -> List[Any]:
    return conn.execute("SELECT id, title, rating FROM doc ORDER BY id").fetchall()


def _offline_edit(
    nats: NatsServer, replicas: List[Any], tmp_path: Path
) -> Tuple[Any, Any, List[harmonylite.Conflict], harmonylite.Subscription]:
    """A edits ``rating`` while its replica is closed, B edits it later, A comes back: B's value wins, A's
    edit is the loser on both nodes. Returns the reopened A, B, what B's ``on_conflict`` received and that
    subscription (keep it referenced: it ends when collected)."""
    conn_a = create_db(tmp_path / "a.db", DOC + ONLY_A)
    conn_b = create_db(tmp_path / "b.db", DOC)
    a = harmonylite.open_replicated(conn_a, config_for(nats, 1))
    b = harmonylite.open_replicated(conn_b, config_for(nats, 2))
    replicas.extend([a, b])
    conn_a.execute("INSERT INTO doc VALUES (1, 'title', 0)")
    conn_a.execute("INSERT INTO only_a VALUES (1, 'B has no such table')")
    conn_a.commit()
    b.wait_for(a.sync())

    received: List[harmonylite.Conflict] = []
    subscription = b.on_conflict(received.append)

    a.close()
    conn_a.execute("UPDATE doc SET rating = 1 WHERE id = 1")  # offline: captured, sent at the next open
    conn_a.commit()
    _wait_past(time.time() * 1000)
    conn_b.execute("UPDATE doc SET rating = 2 WHERE id = 1")
    conn_b.commit()
    b.sync()

    a = harmonylite.open_replicated(conn_a, config_for(nats, 1))
    replicas.append(a)
    b.wait_for(a.sync())
    a.wait_for(b.sync())
    wait_until("both nodes to hold B's later value", lambda: _doc(conn_a) == _doc(conn_b) == [(1, "title", 2)])
    return a, b, received, subscription


def _is_the_lost_edit(conflict: Mapping[str, Any]) -> bool:
    loser = conflict["loser"]
    return (
        conflict["table"] == "doc"
        and conflict["pk"] == (1,)
        and conflict["columns"] == ["rating"]
        and loser is not None
        and loser["node"] == 1
        and loser["values"] == {"rating": 1}
    )


def test_an_offline_edit_that_loses_is_logged_and_delivered(
    nats: NatsServer, replicas: List[Any], tmp_path: Path
) -> None:
    a, b, received, subscription = _offline_edit(nats, replicas, tmp_path)

    # A, whose edit lost: B's newer value replaced the one A wrote offline.
    wait_until("A's conflict log", lambda: any(_is_the_lost_edit(c) for c in a.conflicts()))
    lost = next(c for c in a.conflicts() if _is_the_lost_edit(c))
    assert lost["kind"] in ("values_overwritten", "change_lost"), lost
    assert lost["winner"] is not None and lost["winner"]["node"] == 2
    assert lost["winner"]["values"] == {"rating": 2}
    assert lost["moved_to"] is None
    assert lost["id"] > 0 and lost["at_ms"] > 0 and lost["detail"]
    assert isinstance(lost["loser"], dict) and lost["loser"]["hlc"] < lost["winner"]["hlc"]
    assert a.conflicts(after=lost["id"]) == [c for c in a.conflicts() if c["id"] > lost["id"]]
    assert len(a.conflicts(limit=1)) == 1

    # B received A's edit after its own newer one: logged, and delivered to on_conflict.
    wait_until("B's on_conflict callback", lambda: any(_is_the_lost_edit(c) for c in received))
    delivered = next(c for c in received if _is_the_lost_edit(c))
    assert delivered["kind"] == "change_lost", delivered
    assert delivered in b.conflicts(), "the delivered entry is the logged one (same id)"
    assert subscription.active

    for replica in (a, b):
        status = replica.status()
        assert status["conflicts"] >= 1 and status["conflicts_recorded"] >= 1, status
        assert status["moved_keys"] == 0
    assert any(p["table"] == "only_a" and p["kind"] == "schema" for p in b.status()["paused_tables"])

    # The log is in the database: the asyncio API reads it after a restart.
    a.close()

    async def reopened() -> List[harmonylite.Conflict]:
        async with await aio.open_replicated(tmp_path / "a.db", config_for(nats, 1)) as again:
            return await again.conflicts()

    assert lost in asyncio.run(asyncio.wait_for(reopened(), 60))


def _keys(record: Mapping[str, Any]) -> Set[str]:
    return set(record.keys())


def _typed_keys(typed_dict: Any) -> Set[str]:
    return set(typed_dict.__required_keys__) | set(typed_dict.__optional_keys__)


def test_status_and_conflicts_have_every_field_of_the_core(
    nats: NatsServer, replicas: List[Any], tmp_path: Path
) -> None:
    """The drift test. The core's own serialization (serde) is the field list, read at run time from a real
    replica, not from a copy in this test: ``status()`` is the core's ``Status`` serialized by serde, so its
    keys are the core's fields and must equal the TypedDicts'; conflict dicts are expanded from the core's
    record list in ``src/records.rs``, and are compared with the core's serde output (``conflicts_json``) and
    with the TypedDicts. A field added to the core fails here until the TypedDicts have it."""
    a, b, _, _subscription = _offline_edit(nats, replicas, tmp_path)
    wait_until("B's paused table", lambda: bool(b.status()["paused_tables"]))
    wait_until("A's conflict with both sides", lambda: any(c["winner"] and c["loser"] for c in a.conflicts()))

    status: Dict[str, Any] = dict(b.status())
    assert _keys(status) == _typed_keys(harmonylite.Status)
    assert status["shards"] and _keys(status["shards"][0]) == _typed_keys(harmonylite.ShardStatus)
    assert _keys(status["paused_tables"][0]) == _typed_keys(harmonylite.PausedTable)
    assert _keys(status["snapshot"]) == _typed_keys(harmonylite.SnapshotProgress)

    core = json.loads(a._native.conflicts_json(0, 1000))
    ours = a.conflicts()
    assert core and len(core) == len(ours)
    for core_entry, entry in zip(core, ours):
        assert _keys(entry) == _keys(core_entry) == _typed_keys(harmonylite.Conflict)
        assert entry["id"] == core_entry["id"] and entry["kind"] == core_entry["kind"]
        for side in ("winner", "loser"):
            if core_entry[side] is not None:
                assert entry[side] is not None
                assert _keys(entry[side]) == _keys(core_entry[side]) == _typed_keys(harmonylite.ConflictSide)
