"""``Config``: the same keys as HarmonyLite's TOML file, validated by the core."""

from __future__ import annotations

import json
import os
from typing import Any, Dict, Mapping, Union

from . import _native
from ._native import Config as _NativeConfig

__all__ = ["Config", "ConfigLike"]


def _json_default(value: Any) -> Any:
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if isinstance(value, (set, frozenset, tuple)):
        return list(value)
    raise TypeError(f"{type(value).__name__} is not a configuration value")


def _merge(base: Dict[str, Any], changes: Mapping[str, Any]) -> Dict[str, Any]:
    merged = dict(base)
    for key, value in changes.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


class Config:
    """A validated configuration, with the keys of HarmonyLite's TOML file.

    Sections are nested dicts::

        Config(node_id=1, nats={"urls": ["nats://10.0.0.5:4222"]}, replication_log={"shards": 2})

    Every key has a default (``Config()`` is valid: an embedded NATS server and a generated node id).
    A bad or unknown key raises :class:`harmonylite.ConfigError` whose ``key`` names it (``"nats.urls"``).
    Read values as attributes (``cfg.node_id``, ``cfg.nats["urls"]``) or with :meth:`to_dict`.
    """

    __slots__ = ("_native",)
    _native: _NativeConfig

    def __init__(self, **settings: Any) -> None:
        object.__setattr__(self, "_native", _native.Config.from_json(json.dumps(settings, default=_json_default)))

    @classmethod
    def _wrap(cls, native: _NativeConfig) -> Config:
        config = cls.__new__(cls)
        object.__setattr__(config, "_native", native)
        return config

    @classmethod
    def from_dict(cls, settings: Mapping[str, Any]) -> Config:
        """A configuration from a dict with the TOML file's keys (sections as nested dicts)."""
        return cls(**dict(settings))

    @classmethod
    def from_file(cls, path: Union[str, os.PathLike[str]]) -> Config:
        """Reads a HarmonyLite TOML file. A missing file raises :class:`harmonylite.IoError`."""
        return cls._wrap(_native.Config.from_file(os.fspath(path)))

    @classmethod
    def from_toml(cls, text: str) -> Config:
        """Parses TOML text."""
        return cls._wrap(_native.Config.from_toml(text))

    def to_dict(self) -> Dict[str, Any]:
        """Every key with its value (defaults included), as nested dicts."""
        result: Dict[str, Any] = json.loads(self._native.to_json())
        return result

    def replace(self, **changes: Any) -> Config:
        """A copy with ``changes`` applied; sections merge (``replace(nats={"urls": [...]})`` keeps the other
        ``nats`` keys)."""
        return Config.from_dict(_merge(self.to_dict(), changes))

    def __getattr__(self, name: str) -> Any:
        values = self.to_dict()
        if name in values:
            return values[name]
        raise AttributeError(f"Config has no key {name!r}")

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError("Config is immutable; use replace(...) to change a key")

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Config) and self.to_dict() == other.to_dict()

    def __hash__(self) -> int:
        return hash(self._native.to_json())

    def __repr__(self) -> str:
        return f"Config({self.to_dict()!r})"

    def __reduce__(self) -> Any:
        return (Config.from_dict, (self.to_dict(),))


ConfigLike = Union[Config, Mapping[str, Any], str, os.PathLike, None]  # type: ignore[type-arg]
"""What ``open_replicated`` accepts as ``cfg``: a :class:`Config`, a dict, a TOML file path, or ``None``."""
