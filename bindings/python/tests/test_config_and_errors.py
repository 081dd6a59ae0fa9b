"""Config in its three forms, errors mapped from every core code, bad config naming the key."""

from __future__ import annotations

import builtins
import sqlite3
import sys
from pathlib import Path
from typing import Any, List

import pytest

import harmonylite
from harmonylite import errors
from helpers import NatsServer, config_for, create_db


def test_config_forms_and_values(tmp_path: Path) -> None:
    cfg = harmonylite.Config(node_id=3, nats={"urls": ["nats://127.0.0.1:4222"]}, replication_log={"shards": 2})
    assert cfg.node_id == 3
    assert cfg.nats["urls"] == ["nats://127.0.0.1:4222"]
    assert cfg.replication_log["shards"] == 2
    assert cfg.nats["subject_prefix"] == "harmonylite-change-log"  # defaults are filled in
    assert harmonylite.Config.from_dict(cfg.to_dict()) == cfg

    changed = cfg.replace(nats={"stream_prefix": "other"}, node_id=4)
    assert changed.node_id == 4
    assert changed.nats["stream_prefix"] == "other"
    assert changed.nats["urls"] == ["nats://127.0.0.1:4222"]  # sections merge
    assert cfg.node_id == 3  # immutable
    with pytest.raises(AttributeError):
        cfg.node_id = 5  # type: ignore[misc]

    toml = tmp_path / "harmonylite.toml"
    toml.write_text('node_id = 9\n[replication_log]\nmax_age = "2h"\n[nats]\nurls = ["nats://127.0.0.1:1"]\n')
    from_file = harmonylite.Config.from_file(toml)
    assert from_file.node_id == 9
    assert from_file.replication_log["max_age"] == 7200
    assert harmonylite.Config.from_toml(toml.read_text()) == from_file
    assert "node_id" in repr(from_file)


@pytest.mark.parametrize(
    "settings, key",
    [
        ({"nats": {"urlz": []}}, "nats.urlz"),
        ({"bogus": 1}, "bogus"),
        ({"replication_log": {"shards": "two"}}, "replication_log.shards"),
        ({"replication_log": {"shards": 0}}, "replication_log.shards"),
        ({"nats": {"urls": ["not a url"]}}, "nats.urls"),
        ({"snapshot": {"store": "floppy"}}, "snapshot.store"),
    ],
)
def test_bad_config_names_the_key(settings: Any, key: str) -> None:
    with pytest.raises(harmonylite.ConfigError) as caught:
        harmonylite.Config(**settings)
    assert caught.value.code == "CONFIG"
    assert caught.value.key == key
    assert key in str(caught.value)
    assert isinstance(caught.value, ValueError)


def test_bad_toml_file_names_the_key(tmp_path: Path) -> None:
    toml = tmp_path / "bad.toml"
    toml.write_text("[apply]\nmax_batch_rows = 0\n")
    with pytest.raises(harmonylite.ConfigError) as caught:
        harmonylite.open_replicated(tmp_path / "x.db", toml)
    assert caught.value.key == "apply.max_batch_rows"
    with pytest.raises(harmonylite.IoError) as missing:
        harmonylite.Config.from_file(tmp_path / "missing.toml")
    assert missing.value.code == "IO" and isinstance(missing.value, OSError)


EXPECTED_BUILTINS = {
    "CONFIG": ValueError,
    "TRANSPORT": ConnectionError,
    "NATS_SERVER_NOT_FOUND": ConnectionError,
    "TIMEOUT": builtins.TimeoutError,
    "IO": OSError,
    "NO_PRIMARY_KEY": ValueError,
}


@pytest.mark.parametrize("code", harmonylite.ERROR_CODES)
def test_every_core_code_reaches_python_with_its_class(code: str) -> None:
    with pytest.raises(harmonylite.HarmonyLiteError) as caught:
        harmonylite._native.raise_error_for_test(code)
    error = caught.value
    assert error.code == code
    assert type(error) is harmonylite.error_class(code)
    assert type(error) is not harmonylite.HarmonyLiteError, f"{code} has no class of its own"
    if code in EXPECTED_BUILTINS:
        assert isinstance(error, EXPECTED_BUILTINS[code])


def test_error_classes_named_in_the_issue() -> None:
    assert issubclass(harmonylite.ConfigError, ValueError)
    assert issubclass(harmonylite.TransportError, ConnectionError)
    assert issubclass(harmonylite.TimeoutError, builtins.TimeoutError)
    for cls in (
        harmonylite.ConfigError,
        harmonylite.TransportError,
        harmonylite.TimeoutError,
        harmonylite.ClosedError,
        harmonylite.SchemaMismatchError,
        harmonylite.SnapshotError,
        harmonylite.SqliteError,
    ):
        assert issubclass(cls, harmonylite.HarmonyLiteError)
        assert errors.error_class(cls.code) is cls


def test_errors_reached_through_the_api(nats: NatsServer, replicas: List[Any], tmp_path: Path) -> None:
    # IO: the database's folder does not exist.
    with pytest.raises(harmonylite.IoError):
        harmonylite.open_replicated(tmp_path / "missing" / "x.db", config_for(nats, 1))

    # SQLITE: not a database.
    garbage = tmp_path / "garbage.db"
    garbage.write_bytes(b"this is not a database" * 100)
    with pytest.raises(harmonylite.SqliteError) as not_db:
        harmonylite.open_replicated(garbage, config_for(nats, 1, snapshot={"enabled": False}))
    assert not_db.value.code in ("SQLITE", "SQLITE_BUSY")
    # With snapshots on (the default), a corrupt file would be rebuilt from one; with none stored, SNAPSHOT.
    with pytest.raises(harmonylite.SnapshotError) as no_snapshot:
        harmonylite.open_replicated(garbage, config_for(nats, 1))
    assert "no snapshot exists" in str(no_snapshot.value)

    # NO_PRIMARY_KEY names the table.
    db = tmp_path / "nopk.db"
    create_db(db, "CREATE TABLE logs (line TEXT);").close()
    with pytest.raises(harmonylite.NoPrimaryKeyError) as no_pk:
        harmonylite.open_replicated(db, config_for(nats, 1))
    assert no_pk.value.code == "NO_PRIMARY_KEY" and no_pk.value.table == "logs"
    assert isinstance(no_pk.value, harmonylite.SchemaMismatchError)

    # TIMEOUT, SNAPSHOT and CLOSED on an open replica.
    good = tmp_path / "good.db"
    create_db(good).close()
    replica = harmonylite.open_replicated(good, config_for(nats, 1))
    replicas.append(replica)
    with pytest.raises(harmonylite.TimeoutError) as timeout:
        replica.wait_for("0:1000000", timeout=0.2)
    assert timeout.value.code == "TIMEOUT"
    manifest = replica.save_snapshot()
    assert manifest is not None and manifest["object"].startswith("snapshot-")
    # A store that cannot be opened: SNAPSHOT, naming the bucket.
    bad_store = tmp_path / "bad-store.db"
    create_db(bad_store).close()
    broken = harmonylite.open_replicated(
        bad_store, config_for(nats, 2, snapshot={"nats": {"bucket": "not a bucket name!"}})
    )
    replicas.append(broken)
    with pytest.raises(harmonylite.SnapshotError) as snapshot:
        broken.save_snapshot()
    assert snapshot.value.code == "SNAPSHOT" and "not a bucket name!" in str(snapshot.value)
    with pytest.raises(harmonylite.ConfigError) as bad_timeout:
        replica.sync(timeout=-1)
    assert bad_timeout.value.key == "timeout"
    replica.close()
    with pytest.raises(harmonylite.ClosedError) as closed:
        replica.status()
    assert closed.value.code == "CLOSED"


def test_token_text_form() -> None:
    token = harmonylite.Token("0:15,1:20")
    assert token.positions == {0: 15, 1: 20}
    assert str(token) == "0:15,1:20"
    assert harmonylite.Token(str(token)) == token
    assert hash(harmonylite.Token("0:15,1:20")) == hash(token)
    merged = token.merge(harmonylite.Token("1:25,2:1"))
    assert merged.positions == {0: 15, 1: 25, 2: 1}
    assert harmonylite.Token().positions == {}
    with pytest.raises(harmonylite.ConfigError) as bad:
        harmonylite.Token("zero:fifteen")
    assert bad.value.key == "token"


def test_db_argument_forms(nats: NatsServer, replicas: List[Any], tmp_path: Path) -> None:
    db = tmp_path / "conn.db"
    conn = create_db(db)
    replica = harmonylite.open_replicated(conn, harmonylite.Config(node_id=1, nats={"urls": [nats.url]}))
    replicas.append(replica)
    assert Path(replica.db_path).resolve() == db.resolve()
    assert replica.node_id == 1
    conn.execute("INSERT INTO items (id, name) VALUES (1, 'the app keeps its connection')")
    conn.commit()
    replica.sync()
    assert replica.status()["published_rows"] >= 1
    replica.close()

    with pytest.raises(harmonylite.ConfigError) as memory:
        harmonylite.open_replicated(sqlite3.connect(":memory:"), config_for(nats, 2))
    assert memory.value.key == "db"
    with pytest.raises(TypeError):
        harmonylite.open_replicated(42, config_for(nats, 2))  # type: ignore[arg-type]


def test_cfg_as_toml_path(nats: NatsServer, replicas: List[Any], tmp_path: Path) -> None:
    toml = tmp_path / "node.toml"
    toml.write_text(f'node_id = 7\n[nats]\nurls = ["{nats.url}"]\n')
    create_db(tmp_path / "t.db").close()
    replica = harmonylite.open_replicated(str(tmp_path / "t.db"), str(toml))
    replicas.append(replica)
    assert replica.node_id == 7
    assert replica.nats_urls == [nats.url]


def test_the_engine_carries_its_own_sqlite_and_locks_beside_any_other() -> None:
    """The native module bundles SQLite (any Python, any sqlite3 build) and, on Linux, its copy takes
    open-file-description locks so that it coexists with the app's SQLite (ADR 0012)."""
    version, locking = harmonylite._native.sqlite_library()
    assert tuple(int(part) for part in version.split(".")) >= (3, 54)
    if sys.platform.startswith("linux"):
        assert locking == "open-file-description"