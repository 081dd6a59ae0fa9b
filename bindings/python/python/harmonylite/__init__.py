"""HarmonyLite: leaderless SQLite replication over NATS JetStream, in-process.

Keep your ``sqlite3`` code and add two lines::

    import harmonylite
    replica = harmonylite.open_replicated(conn, {"node_id": 1})   # or a path, a Config, a TOML file
    ...
    replica.close()

See :func:`open_replicated`, :class:`Replica`, :class:`Config`, :mod:`harmonylite.aio` and
:mod:`harmonylite.errors`. Core log records go to the ``harmonylite`` logger (``harmonylite.engine``, ...).
"""

from __future__ import annotations

from typing import Tuple

from . import _native
from ._config import Config, ConfigLike
from ._replica import (
    DEFAULT_TIMEOUT,
    BrokerDataLoss,
    ChangeEvent,
    ChangeStream,
    Conflict,
    ConflictSide,
    Divergence,
    PausedTable,
    Replica,
    ShardStatus,
    SnapshotProgress,
    SqlValue,
    Status,
    Subscription,
    Token,
    open_replicated,
)
from .errors import (
    ClosedError,
    ConfigError,
    DatabaseBusyError,
    HarmonyLiteError,
    InternalError,
    IoError,
    NatsServerNotFoundError,
    NoPrimaryKeyError,
    SchemaMismatchError,
    SnapshotError,
    SqliteError,
    TimeoutError,
    TransportError,
    error_class,
)

__version__: str = _native.__version__

ERROR_CODES: Tuple[str, ...] = tuple(_native.ERROR_CODES)
"""Every error code the core can report (each maps to a class through :func:`error_class`)."""

METRICS_CONTENT_TYPE: str = _native.METRICS_CONTENT_TYPE
"""The content type of :meth:`Replica.metrics`' text (OpenMetrics), for the app's metrics endpoint."""

__all__ = [
    "DEFAULT_TIMEOUT",
    "ERROR_CODES",
    "METRICS_CONTENT_TYPE",
    "ChangeEvent",
    "ChangeStream",
    "ClosedError",
    "Config",
    "ConfigError",
    "ConfigLike",
    "Conflict",
    "ConflictSide",
    "BrokerDataLoss",
    "DatabaseBusyError",
    "Divergence",
    "HarmonyLiteError",
    "InternalError",
    "IoError",
    "NatsServerNotFoundError",
    "NoPrimaryKeyError",
    "PausedTable",
    "Replica",
    "SchemaMismatchError",
    "ShardStatus",
    "SnapshotError",
    "SnapshotProgress",
    "SqlValue",
    "SqliteError",
    "Status",
    "Subscription",
    "TimeoutError",
    "Token",
    "TransportError",
    "__version__",
    "error_class",
    "open_replicated",
]
