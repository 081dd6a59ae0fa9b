"""on_change and changes() deliver remote changes with the right fields; a raising callback does not break
delivery; subscriptions end on cancel, on context exit, on garbage collection and on close."""

from __future__ import annotations

import asyncio
import gc
import logging
import threading
from pathlib import Path
from typing import Any, List, Tuple

import pytest

import harmonylite
from helpers import NatsServer, config_for, create_db, thread_names, wait_until


def _pair(nats: NatsServer, replicas: List[Any], tmp_path: Path) -> Tuple[Any, Any, Any]:
    conn_a = create_db(tmp_path / "a.db")
    create_db(tmp_path / "b.db").close()
    a = harmonylite.open_replicated(conn_a, config_for(nats, 1))
    b = harmonylite.open_replicated(tmp_path / "b.db", config_for(nats, 2))
    replicas.extend([a, b])
    return a, b, conn_a


def _write_changes(db: Path, replica: Any) -> None:
    """Four changes, each published before the next: changes of one row not yet published are coalesced."""
    conn = create_db(db, schema="")
    for sql in (
        "INSERT INTO items (id, name, data) VALUES (7, 'seven', x'00ff')",
        "UPDATE items SET name = 'SEVEN' WHERE id = 7",
        "INSERT INTO pairs (a, b, note) VALUES ('k', 2, 'composite')",
        "DELETE FROM items WHERE id = 7",
    ):
        conn.execute(sql)
        conn.commit()
        replica.sync()
    conn.close()


EXPECTED = [("items", "insert", (7,)), ("items", "update", (7,)), ("pairs", "insert", ("k", 2)), ("items", "delete", (7,))]


def test_on_change_delivers_remote_changes(nats: NatsServer, replicas: List[Any], tmp_path: Path) -> None:
    a, b, conn_a = _pair(nats, replicas, tmp_path)
    remote: List[Any] = []
    local: List[Any] = []
    callback_threads = set()

    def on_b(event: harmonylite.ChangeEvent) -> None:
        callback_threads.add(threading.current_thread().name)
        remote.append(event)

    with b.on_change(on_b) as subscription, a.on_change(local.append):
        assert subscription.active
        _write_changes(tmp_path / "a.db", a)
        b.wait_for(a.sync())
        wait_until("4 remote events", lambda: len(remote) >= 4)
        wait_until("4 local events", lambda: len(local) >= 4)
    assert not subscription.active
    got = [(e.table, e.op, e.pk) for e in remote]
    # Changes of one row arrive in order; rows of different tables may interleave.
    assert sorted(got, key=str) == sorted(EXPECTED, key=str)
    assert [x for x in got if x[0] == "items"] == [x for x in EXPECTED if x[0] == "items"]
    for event in remote:
        assert event.origin_node == 1
        assert event.local is False
        assert isinstance(event.hlc, int) and event.hlc > 0
        assert event.to_dict()["table"] == event.table
        assert "ChangeEvent(table=" in repr(event)
    assert all(e.local and e.origin_node == 1 for e in local)
    assert threading.current_thread().name not in callback_threads


def test_raising_callback_does_not_break_delivery(
    nats: NatsServer, replicas: List[Any], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    a, b, conn_a = _pair(nats, replicas, tmp_path)
    received: List[Any] = []

    def flaky(event: harmonylite.ChangeEvent) -> None:
        received.append(event)
        if len(received) == 1:
            raise RuntimeError("boom from the app's callback")

    caplog.set_level(logging.ERROR, logger="harmonylite")
    subscription = b.on_change(flaky)
    for i in range(3):
        conn_a.execute("INSERT INTO items (id, name) VALUES (?, 'x')", (i,))
        conn_a.commit()
        b.wait_for(a.sync())
    wait_until("3 events despite the exception", lambda: len(received) >= 3)
    assert subscription.active
    wait_until("the exception to be logged", lambda: any("boom" in r.getMessage() or (r.exc_info and "boom" in str(r.exc_info[1])) for r in caplog.records))
    logged = next(r for r in caplog.records if r.exc_info)
    assert logged.name == "harmonylite" and "later events are still delivered" in logged.getMessage()
    subscription.cancel()
    subscription.cancel()
    assert not subscription.active


def test_subscription_ends_on_garbage_collection_and_close(
    nats: NatsServer, replicas: List[Any], tmp_path: Path
) -> None:
    a, b, conn_a = _pair(nats, replicas, tmp_path)
    calls: List[Any] = []
    before = thread_names().count("harmonylite-cb")
    b.on_change(calls.append)  # dropped at once
    gc.collect()
    wait_until("the dispatcher of a dropped subscription to stop", lambda: thread_names().count("harmonylite-cb") == before)
    kept = b.on_change(calls.append)
    assert kept.active
    b.close()
    wait_until("close() to end the subscription", lambda: not kept.active)


def test_changes_async_iterator_delivers_remote_changes(nats: NatsServer, replicas: List[Any], tmp_path: Path) -> None:
    a, b, conn_a = _pair(nats, replicas, tmp_path)

    async def main() -> List[Any]:
        stream = b.changes()
        writer = asyncio.get_running_loop().run_in_executor(None, _write_changes, tmp_path / "a.db", a)
        got: List[Any] = []
        async for event in stream:
            got.append(event)
            if len(got) == 4:
                break
        await writer
        await stream.aclose()
        return got

    got = asyncio.run(asyncio.wait_for(main(), 60))
    assert sorted(((e.table, e.op, e.pk) for e in got), key=str) == sorted(EXPECTED, key=str)
    assert all(not e.local and e.origin_node == 1 for e in got)


def test_changes_end_when_the_replica_closes(nats: NatsServer, replicas: List[Any], tmp_path: Path) -> None:
    a, b, conn_a = _pair(nats, replicas, tmp_path)

    async def main() -> int:
        count = 0
        stream = b.changes()
        loop = asyncio.get_running_loop()
        loop.call_later(0.2, lambda: threading.Thread(target=b.close).start())
        async for _ in stream:
            count += 1
        return count

    assert asyncio.run(asyncio.wait_for(main(), 60)) == 0
    wait_until("b to be closed", lambda: b.closed)


def test_callback_may_close_its_replica(nats: NatsServer, replicas: List[Any], tmp_path: Path) -> None:
    a, b, conn_a = _pair(nats, replicas, tmp_path)
    seen: List[Any] = []

    def close_on_first(event: harmonylite.ChangeEvent) -> None:
        seen.append(event)
        b.close()  # from the dispatcher thread: must neither deadlock nor raise

    subscription = b.on_change(close_on_first)
    conn_a.execute("INSERT INTO items (id, name) VALUES (1, 'x')")
    conn_a.commit()
    a.sync()
    wait_until("the callback to close b", lambda: b.closed and not subscription.active)
    assert len(seen) == 1


def test_coroutine_callbacks_are_refused(nats: NatsServer, replicas: List[Any], tmp_path: Path) -> None:
    a, b, _ = _pair(nats, replicas, tmp_path)

    async def handler(event: harmonylite.ChangeEvent) -> None:
        pass

    with pytest.raises(TypeError, match="changes"):
        b.on_change(handler)
    with pytest.raises(TypeError):
        b.on_change("not callable")  # type: ignore[arg-type]
