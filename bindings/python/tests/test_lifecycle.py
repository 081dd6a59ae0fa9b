"""close(), cleanup(), status(), garbage collection, threads, fork, logging."""

from __future__ import annotations

import gc
import logging
import os
import sqlite3
import threading
import time
import weakref
from pathlib import Path
from typing import Any, List

import pytest

import harmonylite
from helpers import NatsServer, config_for, create_db, thread_names, wait_until

LIBRARY_THREADS = ("harmonylite-db", "harmonylite-cb")


def test_close_twice_and_use_after_close(nats: NatsServer, tmp_path: Path) -> None:
    create_db(tmp_path / "a.db").close()
    replica = harmonylite.open_replicated(tmp_path / "a.db", config_for(nats, 1))
    assert not replica.closed
    replica.close()
    replica.close()
    assert replica.closed
    calls = [
        lambda: replica.status(),
        lambda: replica.sync(),
        lambda: replica.wait_for("0:1"),
        lambda: replica.on_change(print),
        lambda: replica.changes(),
        lambda: replica.applied(),
    ]
    for call in calls:
        with pytest.raises(harmonylite.ClosedError):
            call()
    with harmonylite.open_replicated(tmp_path / "a.db", config_for(nats, 1)) as again:
        assert again.status()["node_id"] == 1
    assert again.closed


def test_status_fields(nats: NatsServer, replicas: List[Any], tmp_path: Path) -> None:
    create_db(tmp_path / "a.db").close()
    replica = harmonylite.open_replicated(tmp_path / "a.db", config_for(nats, 5, replication_log={"shards": 2}))
    replicas.append(replica)
    replica.wait_ready()
    status = replica.status()
    assert status["node_id"] == 5
    assert status["connection"] == "connected"
    assert status["streams_ready"] is True
    assert status["nats_urls"] == [nats.url]
    assert status["embedded_server"] is False
    assert sorted(status["replicated_tables"]) == ["items", "pairs"]
    assert [s["shard"] for s in status["shards"]] == [0, 1]
    assert status["paused_tables"] == []
    assert "node_id=5" in repr(replica)


def test_cleanup_removes_capture_and_keeps_data(nats: NatsServer, tmp_path: Path) -> None:
    db = tmp_path / "a.db"
    conn = create_db(db)
    replica = harmonylite.open_replicated(conn, config_for(nats, 1))
    conn.execute("INSERT INTO items (id, name) VALUES (1, 'kept')")
    conn.commit()
    replica.sync()

    def library_objects() -> List[str]:
        rows = conn.execute(
            "SELECT name FROM sqlite_master WHERE name LIKE '%harmonylite%' OR sql LIKE '%harmonylite%'"
        ).fetchall()
        return [row[0] for row in rows]

    assert library_objects()
    removed = replica.cleanup()
    assert removed > 0
    assert replica.closed
    assert library_objects() == []
    assert conn.execute("SELECT name FROM items").fetchall() == [("kept",)]
    conn.execute("INSERT INTO items (id, name) VALUES (2, 'no triggers left')")
    conn.commit()


def test_dropped_replica_is_collected_and_leaves_no_threads(nats: NatsServer, tmp_path: Path) -> None:
    create_db(tmp_path / "a.db").close()
    gc.collect()
    wait_until("earlier tests' threads to end", lambda: not any(n in LIBRARY_THREADS for n in thread_names()))

    replica = harmonylite.open_replicated(tmp_path / "a.db", config_for(nats, 1))
    replica.wait_ready()
    subscription = replica.on_change(lambda event: None)
    stream = replica.changes()
    # A thread names itself once running, so poll.
    wait_until("the db and callback threads", lambda: {"harmonylite-db", "harmonylite-cb"} <= set(thread_names()))
    assert nats.connections() == 1
    ref = weakref.ref(replica)
    with pytest.warns(ResourceWarning, match="not closed"):
        del replica
        gc.collect()
    assert ref() is None, "the replica was not collected"
    wait_until(
        "the replica's threads to stop", lambda: not any(n in LIBRARY_THREADS for n in thread_names())
    )
    wait_until("its NATS connection to close", lambda: nats.connections() == 0)
    assert not subscription.active
    del subscription, stream


def test_many_threads_share_one_replica(nats: NatsServer, replicas: List[Any], tmp_path: Path) -> None:
    dbs = [tmp_path / "a.db", tmp_path / "b.db"]
    for db in dbs:
        create_db(db).close()
    a = harmonylite.open_replicated(dbs[0], config_for(nats, 1))
    b = harmonylite.open_replicated(dbs[1], config_for(nats, 2))
    replicas.extend([a, b])
    seen: List[Any] = []
    seen_lock = threading.Lock()

    def record(event: Any) -> None:
        a.status()  # calling back into the replica from a callback must not deadlock
        with seen_lock:
            seen.append(event)

    subscription = b.on_change(record)
    failures: List[BaseException] = []

    def worker(n: int) -> None:
        try:
            conn = sqlite3.connect(dbs[0], timeout=30)
            for i in range(10):
                conn.execute("INSERT INTO items (id, name) VALUES (?, ?)", (n * 100 + i, f"t{n}"))
                conn.commit()
                token = a.sync()
                b.wait_for(token)
                a.status()
            conn.close()
        except BaseException as err:  # noqa: BLE001 - reported below
            failures.append(err)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not any(thread.is_alive() for thread in threads)
    assert failures == []
    wait_until("80 remote events", lambda: len([e for e in seen if not e.local]) >= 80)
    subscription.cancel()


def test_blocking_calls_release_the_gil(nats: NatsServer, replicas: List[Any], tmp_path: Path) -> None:
    create_db(tmp_path / "a.db").close()
    replica = harmonylite.open_replicated(tmp_path / "a.db", config_for(nats, 1))
    replicas.append(replica)
    counter = [0]
    stop = threading.Event()

    def spin() -> None:
        while not stop.is_set():
            counter[0] += 1

    spinner = threading.Thread(target=spin)
    spinner.start()
    try:
        before = counter[0]
        with pytest.raises(harmonylite.TimeoutError):
            replica.wait_for("0:999999", timeout=1.0)
        assert counter[0] - before > 1000, "another Python thread could not run during wait_for"
    finally:
        stop.set()
        spinner.join()


def test_core_logs_reach_python_logging(nats: NatsServer, replicas: List[Any], tmp_path: Path) -> None:
    records: List[logging.LogRecord] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    logger = logging.getLogger("harmonylite")
    handler = Collect(level=logging.DEBUG)
    logger.addHandler(handler)
    old_level = logger.level
    logger.setLevel(logging.INFO)
    try:
        create_db(tmp_path / "a.db").close()
        replicas.append(harmonylite.open_replicated(tmp_path / "a.db", config_for(nats, 1)))
        wait_until(
            "the core's 'replica open' record",
            lambda: any(r.name.startswith("harmonylite.") and "replica open" in r.getMessage() for r in records),
        )
        record = next(r for r in records if "replica open" in r.getMessage())
        assert record.levelno == logging.INFO
        assert record.name == "harmonylite.engine"
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old_level)
        harmonylite._native.set_log_level(logger.getEffectiveLevel())


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork()")
def test_fork_child_gets_a_clear_error(nats: NatsServer, replicas: List[Any], tmp_path: Path) -> None:
    create_db(tmp_path / "a.db").close()
    replica = harmonylite.open_replicated(tmp_path / "a.db", config_for(nats, 1))
    replicas.append(replica)
    replica.wait_ready()
    result = tmp_path / "child.txt"
    pid = os.fork()
    if pid == 0:  # the child: report and leave without running any cleanup
        outcome = "no error"
        try:
            replica.status()
        except harmonylite.ClosedError as err:
            outcome = f"{err.code}: {err}"
        except BaseException as err:  # noqa: BLE001
            outcome = f"wrong error {type(err).__name__}: {err}"
        result.write_text(outcome)
        os._exit(0)
    deadline = time.monotonic() + 60
    while True:
        done, _ = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        if time.monotonic() > deadline:
            os.kill(pid, 9)
            os.waitpid(pid, 0)
            pytest.fail("the forked child hung")
        time.sleep(0.02)
    outcome = result.read_text()
    assert outcome.startswith("CLOSED: ") and "fork" in outcome, outcome
    # The parent's replica is unaffected.
    assert replica.status()["connection"] == "connected"


INTERRUPT_SCRIPT = r"""
import faulthandler, signal, sys, harmonylite
# Python installs its Ctrl-C handler only when SIGINT is not ignored at start, and a process started in the
# background by a non-interactive shell (as CI runs suites) inherits SIGINT ignored: install it, as a
# Python started from a terminal has it.
signal.signal(signal.SIGINT, signal.default_int_handler)
# If the test times out waiting for this child, SIGUSR1 makes it print every thread's Python stack.
faulthandler.register(signal.SIGUSR1, all_threads=True)
replica = harmonylite.open_replicated(sys.argv[1], {"node_id": 1, "nats": {"urls": [sys.argv[2]]}})
try:
    print("waiting", flush=True)
    replica.wait_for("0:999999", timeout=120)
except KeyboardInterrupt:
    print("interrupted", flush=True)
replica.close()
"""


def stacks_of_hung_child(child: Any) -> str:
    """Python stacks (faulthandler, on SIGUSR1) and native stacks (gdb, when installed) of a child that hangs,
    so a failure says where it hangs; the child is killed afterwards."""
    import select
    import shutil
    import signal
    import subprocess

    native = ""
    gdb = shutil.which("gdb")
    if gdb:
        native = subprocess.run(
            [gdb, "-p", str(child.pid), "-batch", "-ex", "thread apply all bt"],
            capture_output=True,
            text=True,
            timeout=60,
        ).stdout
    child.send_signal(signal.SIGUSR1)
    select.select([child.stderr], [], [], 10)  # until faulthandler has written (or 10 s)
    child.kill()
    out, err = child.communicate(timeout=30)
    return f"stdout:\n{out}\nstderr (Python stacks):\n{err}\nnative stacks:\n{native}"


def test_ctrl_c_interrupts_a_blocking_wait(nats: NatsServer, tmp_path: Path) -> None:
    import signal
    import subprocess
    import sys

    create_db(tmp_path / "a.db").close()
    child = subprocess.Popen(
        [sys.executable, "-c", INTERRUPT_SCRIPT, str(tmp_path / "a.db"), nats.url],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdout is not None
        assert child.stdout.readline().strip() == "waiting"
        started = time.monotonic()
        child.send_signal(signal.SIGINT)
        try:
            out, err = child.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            pytest.fail("the child did not stop after Ctrl-C:\n" + stacks_of_hung_child(child))
        assert "interrupted" in out, err
        assert time.monotonic() - started < 30
        assert child.returncode == 0, err
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
