"""The asyncio API: the same as :mod:`harmonylite`, with coroutines::

    import harmonylite.aio as aio

    async with await aio.open_replicated("app.db", {"node_id": 1}) as replica:
        token = await replica.sync()
        async for event in replica.changes():
            ...

The awaits run on HarmonyLite's own runtime and never block the event loop.
"""

from __future__ import annotations

import json
from types import TracebackType
from typing import Any, Dict, List, Optional, Type, Union, cast

from . import _native
from ._config import ConfigLike
from ._replica import (
    ChangeEvent,
    ChangeStream,
    Conflict,
    DbLike,
    Status,
    Subscription,
    Token,
    _config,
    _db_path,
    _ReplicaBase,
    _sync_log_level,
    _timeout,
    _token,
)

__all__ = ["ChangeEvent", "ChangeStream", "Conflict", "Replica", "Subscription", "Token", "open_replicated"]


class Replica(_ReplicaBase):
    """A replicated database, with coroutine methods; ``async with`` closes it on exit.

    ``on_change`` and ``on_conflict`` callbacks run on their own thread, not on the event loop: to touch loop
    objects from one, use ``loop.call_soon_threadsafe``, or iterate :meth:`changes` instead.
    """

    __slots__ = ()

    async def status(self) -> Status:
        """Connection state, stream positions, pending and unsent changes, paused tables, counters."""
        result: Status = json.loads(await self._native.status_json_async())
        return result

    async def conflicts(self, after: int = 0, limit: int = 1000) -> List[Conflict]:
        """The conflict log, oldest first: up to ``limit`` of the newest entries whose ``id`` is above
        ``after``."""
        return cast(List[Conflict], await self._native.conflicts_async(after, limit))

    async def metrics(self) -> str:
        """The node's metrics as Prometheus/OpenMetrics text (serve it with the content type
        :data:`harmonylite.METRICS_CONTENT_TYPE`)."""
        return await self._native.metrics_async()

    async def save_snapshot(self) -> Optional[Dict[str, Any]]:
        """Publishes what was committed, then saves a snapshot; the manifest, or ``None`` when another node
        holds the upload lease."""
        text = await self._native.save_snapshot_json_async()
        return None if text is None else cast(Dict[str, Any], json.loads(text))

    async def sync(self, timeout: Optional[float] = None) -> Token:
        """Publishes every change committed before this call and waits until JetStream acknowledged it;
        returns the token for other nodes' :meth:`wait_for`."""
        return await self._native.sync_async(_timeout(timeout))

    async def wait_for(self, token: Union[Token, str], timeout: Optional[float] = None) -> None:
        """Waits until this node has applied everything up to ``token``."""
        await self._native.wait_for_async(_token(token), _timeout(timeout))

    async def wait_ready(self, timeout: Optional[float] = None) -> None:
        """Waits until NATS is connected and the streams exist."""
        await self._native.wait_ready_async(_timeout(timeout))

    async def cleanup(self) -> int:
        """Closes the replica and removes capture from the database; returns how many objects were removed."""
        return await self._native.cleanup_async()

    async def close(self) -> None:
        """Stops replication (idempotent)."""
        await self._native.close_async()

    async def __aenter__(self) -> Replica:
        return self

    async def __aexit__(
        self,
        exc_type: Optional[Type[BaseException]],
        exc: Optional[BaseException],
        traceback: Optional[TracebackType],
    ) -> None:
        await self.close()


async def open_replicated(db: DbLike, cfg: ConfigLike = None) -> Replica:
    """Starts replicating a SQLite database; the coroutine form of :func:`harmonylite.open_replicated`."""
    path = _db_path(db)
    config = _config(cfg)
    _sync_log_level()
    native: _native.Replica = await _native.open_replicated_async(path, config._native)
    return Replica(native)
