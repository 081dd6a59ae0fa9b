"""The asyncio API under asyncio.run."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any, List

import pytest

import harmonylite
import harmonylite.aio as aio
from helpers import NatsServer, checksum, config_for, create_db


def test_aio_api_under_asyncio_run(nats: NatsServer, replicas: List[Any], tmp_path: Path) -> None:
    conn_a = create_db(tmp_path / "a.db")
    conn_b = create_db(tmp_path / "b.db")

    async def main() -> None:
        async with await aio.open_replicated(conn_a, config_for(nats, 1)) as a, await aio.open_replicated(
            tmp_path / "b.db", harmonylite.Config(node_id=2, nats={"urls": [nats.url]})
        ) as b:
            replicas.extend([a, b])
            assert isinstance(a, aio.Replica)
            await asyncio.gather(a.wait_ready(), b.wait_ready())
            stream = b.changes()
            conn_a.execute("INSERT INTO items (id, name) VALUES (1, 'async')")
            conn_a.commit()
            token = await a.sync()
            await b.wait_for(token)
            event = await asyncio.wait_for(stream.__anext__(), 30)
            assert (event.table, event.op, event.pk, event.origin_node) == ("items", "insert", (1,), 1)
            await stream.aclose()
            status = await b.status()
            assert status["applied_rows"] >= 1
            conn_b.execute("UPDATE items SET name = 'back' WHERE id = 1")
            conn_b.commit()
            await a.wait_for(await b.sync())
            with pytest.raises(harmonylite.TimeoutError):
                await b.wait_for("0:999999", timeout=0.1)
            manifest = await b.save_snapshot()
            assert manifest is None or manifest["positions"]
            # Concurrent awaits on one replica.
            statuses = await asyncio.gather(*(a.status() for _ in range(10)))
            assert all(s["node_id"] == 1 for s in statuses)
        assert a.closed and b.closed
        await a.close()  # idempotent
        with pytest.raises(harmonylite.ClosedError):
            await a.status()

    asyncio.run(asyncio.wait_for(main(), 120))
    assert checksum(tmp_path / "a.db") == checksum(tmp_path / "b.db")
    assert conn_a.execute("SELECT name FROM items WHERE id = 1").fetchone() == ("back",)


def test_aio_open_errors_and_cleanup(nats: NatsServer, tmp_path: Path) -> None:
    async def main() -> None:
        with pytest.raises(harmonylite.ConfigError) as bad:
            await aio.open_replicated(tmp_path / "x.db", {"nats": {"urls": ["nope"]}})
        assert bad.value.key == "nats.urls"
        create_db(tmp_path / "c.db").close()
        replica = await aio.open_replicated(tmp_path / "c.db", config_for(nats, 3))
        assert await replica.cleanup() > 0
        assert replica.closed

    asyncio.run(main())


def test_cancelled_await_does_not_break_the_replica(nats: NatsServer, replicas: List[Any], tmp_path: Path) -> None:
    create_db(tmp_path / "a.db").close()

    async def main() -> None:
        replica = await aio.open_replicated(tmp_path / "a.db", config_for(nats, 1))
        replicas.append(replica)
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(replica.wait_for("0:999999", timeout=30), 0.2)
        stream = replica.changes()
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(stream.__anext__(), 0.2)
        assert (await replica.status())["node_id"] == 1
        await replica.close()

    asyncio.run(main())


def test_aio_metrics(nats: NatsServer, replicas: List[Any], tmp_path: Path) -> None:
    """``await replica.metrics()``: node 2's applied count, labelled with its node id, once node 1's write
    reached it."""
    conn_a = create_db(tmp_path / "a.db")
    create_db(tmp_path / "b.db").close()

    async def main() -> None:
        a = await aio.open_replicated(conn_a, config_for(nats, 1))
        replicas.append(a)
        b = await aio.open_replicated(tmp_path / "b.db", config_for(nats, 2))
        replicas.append(b)
        conn_a.execute("INSERT INTO items (id, name) VALUES (1, 'metered')")
        conn_a.commit()
        await b.wait_for(await a.sync())
        applied = (await b.status())["applied_rows"]
        assert applied >= 1
        text = await b.metrics()
        assert f'harmonylite_changes_applied_total{{node_id="{b.node_id}"}} {applied}' in text.splitlines()
        assert text.endswith("# EOF\n")
        await b.close()
        await a.close()

    asyncio.run(asyncio.wait_for(main(), 120))
