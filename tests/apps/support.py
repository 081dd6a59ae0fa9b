"""What every scenario of the acceptance suite shares: a real nats-server, the processes a test starts (all
stopped at teardown, failed tests included), condition waits (never fixed sleeps), and the two checks every
scenario ends with — identical databases on every node and no row lost against the ledger of what the apps
committed."""

from __future__ import annotations

import http.client
import json
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Tuple

ROOT = Path(__file__).resolve().parents[2]
APPS = Path(__file__).resolve().parent
FULL = os.environ.get("HARMONYLITE_APPS_FULL") == "1"
"""``HARMONYLITE_APPS_FULL=1``: larger row counts (the CI run keeps them small)."""

WAIT = 120.0
"""Seconds any wait may take on a slow, shared machine before it counts as a failure."""

NODE_LOCAL = {"django_migrations", "knex_migrations", "knex_migrations_lock", "alembic_version"}
"""Tables that stay on their node (the migration tools' bookkeeping, docs/configuration.md)."""


def scaled(ci: int, full: int) -> int:
    return full if FULL else ci


def wait_until(what: str, check: Callable[[], Any], timeout: float = WAIT,
               explain: Optional[Callable[[], str]] = None) -> Any:
    """Polls ``check`` with a growing pause until it returns something true, and returns it."""
    deadline = time.monotonic() + timeout
    pause = 0.01
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            detail = f"\n{explain()}" if explain else ""
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}{detail}")
        time.sleep(pause)
        pause = min(pause * 1.5, 0.25)


# ---------------------------------------------------------------------------------------------------------
# Processes
# ---------------------------------------------------------------------------------------------------------


class Processes:
    """Every process a test starts, each in its own process group; ``stop_all`` ends them (TERM, then KILL)."""

    def __init__(self, logs: Path) -> None:
        self.logs = logs
        self.logs.mkdir(parents=True, exist_ok=True)
        self.running: List[Tuple[str, subprocess.Popen[bytes]]] = []

    def start(self, name: str, args: Sequence[str], cwd: Path, env: Optional[Dict[str, str]] = None,
              stdout: Optional[Path] = None) -> subprocess.Popen[bytes]:
        log = open(self.logs / f"{name}.log", "ab")
        out = open(stdout, "ab") if stdout else log
        process = subprocess.Popen(list(args), cwd=cwd, env=env, stdout=out, stderr=log, stdin=subprocess.DEVNULL,
                                   start_new_session=True)
        log.close()
        if stdout:
            out.close()
        self.running.append((name, process))
        return process

    def run(self, name: str, args: Sequence[str], cwd: Path, env: Optional[Dict[str, str]] = None,
            timeout: float = WAIT, input: Optional[str] = None) -> str:
        """Runs a command to its end; fails with its output when it fails. Returns its stdout."""
        started = time.monotonic()
        result = subprocess.run(list(args), cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout,
                                input=input, start_new_session=True)
        with open(self.logs / f"{name}.log", "a") as log:
            log.write(f"$ {' '.join(args)}  ({time.monotonic() - started:.1f} s, exit {result.returncode})\n")
            log.write(result.stdout)
            log.write(result.stderr)
        if result.returncode != 0:
            raise AssertionError(f"{name}: {' '.join(args)} exited {result.returncode}\n"
                                 f"stdout:\n{result.stdout[-4000:]}\nstderr:\n{result.stderr[-6000:]}")
        return result.stdout

    def stop(self, process: subprocess.Popen[bytes], sig: int = signal.SIGTERM, timeout: float = 30) -> int:
        if process.poll() is None:
            try:
                os.killpg(process.pid, sig)
            except ProcessLookupError:
                pass
            try:
                process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
        return process.returncode

    def stop_together(self, processes: Sequence[subprocess.Popen[bytes]], timeout: float = 60) -> List[int]:
        """Sends SIGTERM to each process group at once, then waits for each (SIGKILL after ``timeout``); their
        exit codes. One SIGTERM only: a second one can kill a server that already restored the default
        handlers on its way out (gunicorn's master then exits -15)."""
        for process in processes:
            if process.poll() is None:
                try:
                    os.killpg(process.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
        for process in processes:
            try:
                process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
        return [process.returncode for process in processes]

    def stop_all(self) -> None:
        for _, process in reversed(self.running):
            self.stop(process)
            # A process group may outlive its leader (gunicorn's workers): end what is left of it.
            try:
                os.killpg(process.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        self.running.clear()

    def log_tail(self, name: str, chars: int = 3000) -> str:
        path = self.logs / f"{name}.log"
        return path.read_text(errors="replace")[-chars:] if path.exists() else ""


# ---------------------------------------------------------------------------------------------------------
# NATS
# ---------------------------------------------------------------------------------------------------------


def nats_server_binary() -> str:
    explicit = os.environ.get("HARMONYLITE_NATS_SERVER")
    if explicit:
        return explicit
    found = shutil.which("nats-server", path=str(Path(sys.executable).parent)) or shutil.which("nats-server")
    assert found, "no nats-server: run scripts/setup.sh"
    return found


class NatsServer:
    """A real nats-server with JetStream. Its ports are chosen by the server itself (``-1``) and read back
    from its ports file, so two tests (or two suites) can never race for one."""

    def __init__(self, folder: Path, processes: Processes) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        config = folder / "nats.conf"
        config.write_text(
            "listen: 127.0.0.1:-1\n"
            "http: 127.0.0.1:-1\n"
            f'ports_file_dir: "{folder}"\n'
            "max_payload: 8MB\n"
            f'jetstream {{ store_dir: "{folder / "js"}" }}\n'
        )
        self.process = processes.start("nats-server", [nats_server_binary(), "-c", str(config)], cwd=folder)
        ports_file = folder / f"{Path(nats_server_binary()).name}_{self.process.pid}.ports"

        def ready() -> Optional[Dict[str, List[str]]]:
            if self.process.poll() is not None:
                raise AssertionError(f"nats-server exited:\n{processes.log_tail('nats-server')}")
            try:
                ports = json.loads(ports_file.read_text())
            except (OSError, ValueError):
                return None
            monitor = ports.get("monitoring") or []
            if not monitor or not ports.get("nats"):
                return None
            try:
                with urllib.request.urlopen(f"{monitor[0]}/healthz", timeout=2) as response:
                    return ports if response.status == 200 else None
            except OSError:
                return None

        ports = wait_until("nats-server /healthz", ready)
        self.url: str = ports["nats"][0]
        self.monitor: str = ports["monitoring"][0]


# ---------------------------------------------------------------------------------------------------------
# What the nodes hold
# ---------------------------------------------------------------------------------------------------------


def connect_read(db: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(db, timeout=30)
    conn.execute("PRAGMA query_only = 1")
    return conn


def user_tables(conn: sqlite3.Connection) -> List[str]:
    names = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")]
    return [n for n in names if not n.startswith("sqlite_") and not n.startswith("__harmonylite__")
            and n not in NODE_LOCAL]


def contents(db: Path) -> Dict[str, Tuple[List[str], List[Tuple[Any, ...]]]]:
    """Every replicated table of one node: its columns (in order) and its rows (sorted), in one read
    transaction."""
    conn = connect_read(db)
    try:
        conn.execute("BEGIN")
        out: Dict[str, Tuple[List[str], List[Tuple[Any, ...]]]] = {}
        for table in user_tables(conn):
            quoted = '"' + table.replace('"', '""') + '"'
            columns = [r[1] for r in conn.execute(f"PRAGMA table_info({quoted})")]
            rows = sorted(conn.execute(f"SELECT * FROM {quoted}").fetchall(), key=repr)
            out[table] = (columns, rows)
        conn.execute("COMMIT")
        return out
    finally:
        conn.close()


def queues(db: Path) -> Dict[str, int]:
    """What the node still has to do: captured but not stamped, stamped but not acknowledged, parked."""
    conn = connect_read(db)
    try:
        names = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        out = {}
        for table in ("change_log", "outbox", "deferred"):
            full = f"__harmonylite__{table}"
            out[table] = conn.execute(f"SELECT count(*) FROM {full}").fetchone()[0] if full in names else -1
        return out
    finally:
        conn.close()


def deferred_reasons(db: Path, limit: int = 5) -> List[Tuple[Any, ...]]:
    conn = connect_read(db)
    try:
        columns = [r[1] for r in conn.execute("PRAGMA table_info(__harmonylite__deferred)")]
        wanted = [c for c in ("tbl", "table_name", "kind", "reason") if c in columns]
        if not wanted:
            return []
        return conn.execute(f"SELECT {', '.join(wanted)} FROM __harmonylite__deferred LIMIT {limit}").fetchall()
    except sqlite3.Error:
        return []
    finally:
        conn.close()


def describe_difference(dbs: Sequence[Path]) -> str:
    lines = []
    all_contents = []
    for db in dbs:
        try:
            all_contents.append(contents(db))
        except sqlite3.Error as err:
            all_contents.append({})
            lines.append(f"{db}: {err}")
    tables = sorted(set().union(*[c.keys() for c in all_contents]))
    for table in tables:
        seen = [c.get(table) for c in all_contents]
        if all(s == seen[0] for s in seen):
            continue
        counts = ["-" if s is None else str(len(s[1])) for s in seen]
        lines.append(f"table {table}: rows per node {', '.join(counts)}")
        if all(s is not None for s in seen):
            if any(s[0] != seen[0][0] for s in seen):  # type: ignore[index]
                lines.append(f"   columns differ: {[s[0] for s in seen]}")  # type: ignore[index]
            base = set(seen[0][1])  # type: ignore[index]
            for i, s in enumerate(seen[1:], start=2):
                rows = set(s[1])  # type: ignore[index]
                only_1 = sorted(base - rows, key=repr)[:3]
                only_i = sorted(rows - base, key=repr)[:3]
                if only_1 or only_i:
                    lines.append(f"   node 1 only: {only_1}\n   node {i} only: {only_i}")
    for i, db in enumerate(dbs, start=1):
        try:
            lines.append(f"node {i} queues {queues(db)} parked {deferred_reasons(db)}")
        except sqlite3.Error as err:
            lines.append(f"node {i}: {err}")
    return "\n".join(lines)


def converged(dbs: Sequence[Path]) -> bool:
    """Every node idle (nothing captured, unsent or parked) and holding the same replicated tables."""
    try:
        if any(q != {"change_log": 0, "outbox": 0, "deferred": 0} for q in map(queues, dbs)):
            return False
        first = contents(dbs[0])
        return all(contents(db) == first for db in dbs[1:])
    except sqlite3.Error:
        return False  # a node mid-migration (a table being rebuilt): look again


# ---------------------------------------------------------------------------------------------------------
# The ledger
# ---------------------------------------------------------------------------------------------------------


@dataclass
class Ledger:
    """What the apps committed, by a label column unique to each row the apps created: for each table, the
    label of every row that must exist (with the values it must hold) and of every row that must not."""

    label: Dict[str, str] = field(default_factory=dict)  # table -> label column
    present: Dict[str, Dict[Any, Dict[str, Any]]] = field(default_factory=dict)
    gone: Dict[str, set] = field(default_factory=dict)

    def created(self, table: str, label_column: str, label: Any, **values: Any) -> None:
        self.label[table] = label_column
        self.present.setdefault(table, {})[label] = dict(values)
        self.gone.setdefault(table, set()).discard(label)

    def updated(self, table: str, label: Any, **values: Any) -> None:
        self.present[table][label].update(values)

    def deleted(self, table: str, label: Any) -> None:
        self.present.get(table, {}).pop(label, None)
        self.gone.setdefault(table, set()).add(label)

    @classmethod
    def from_journals(cls, paths: Iterable[Path]) -> "Ledger":
        """The ledger of the apps' journals: one JSON object per committed change, written after its commit
        returned (``{"at": unix seconds, "op": "created"|"updated"|"deleted", "table": ...,
        "label_column": ..., "label": ..., "values": {...}}``), applied in commit order across nodes."""
        ledger = cls()
        for entry in sorted(iter_jsonl(paths), key=lambda e: e["at"]):
            if entry["op"] == "created":
                ledger.created(entry["table"], entry["label_column"], entry["label"], **entry.get("values", {}))
            elif entry["op"] == "updated":
                ledger.updated(entry["table"], entry["label"], **entry.get("values", {}))
            elif entry["op"] == "deleted":
                ledger.deleted(entry["table"], entry["label"])
            else:
                raise AssertionError(f"unknown journal entry {entry}")
        return ledger

    def problems(self, db: Path) -> List[str]:
        conn = connect_read(db)
        conn.row_factory = sqlite3.Row
        found: List[str] = []
        try:
            for table, label_column in self.label.items():
                quoted = '"' + table.replace('"', '""') + '"'
                rows: Dict[Any, List[sqlite3.Row]] = {}
                for row in conn.execute(f"SELECT * FROM {quoted}"):
                    rows.setdefault(row[label_column], []).append(row)
                for label, values in self.present.get(table, {}).items():
                    got = rows.get(label, [])
                    if len(got) != 1:
                        found.append(f"{table} {label_column}={label!r}: {len(got)} rows, expected 1")
                        continue
                    for column, value in values.items():
                        if got[0][column] != value:
                            found.append(f"{table} {label_column}={label!r}: {column}={got[0][column]!r}, "
                                         f"expected {value!r}")
                for label in self.gone.get(table, set()):
                    if label in rows:
                        found.append(f"{table} {label_column}={label!r}: deleted, still there")
        finally:
            conn.close()
        return found

    def size(self) -> int:
        return sum(len(v) for v in self.present.values())

    def column_removed(self, table: str, column: str) -> "Ledger":
        """Forgets the values committed to a column that a migration has since removed."""
        for values in self.present.get(table, {}).values():
            values.pop(column, None)
        return self


def assert_converged(dbs: Sequence[Path], ledger: Optional[Ledger] = None, timeout: float = WAIT) -> float:
    """Waits until every node holds the same replicated tables with nothing left to send or apply, then
    checks the ledger on every node. Returns the seconds the wait took."""
    started = time.monotonic()
    wait_until("the nodes to converge", lambda: converged(dbs), timeout,
               explain=lambda: describe_difference(dbs))
    took = time.monotonic() - started
    if ledger is not None:
        problems = {f"node {i}": ledger.problems(db) for i, db in enumerate(dbs, start=1)}
        problems = {k: v[:10] for k, v in problems.items() if v}
        assert not problems, f"rows lost or wrong against the ledger ({ledger.size()} rows): {problems}"
    return took


def report(what: str, **figures: Any) -> None:
    """One line of figures in the test's output (pytest -rA shows it; run.sh prints it on failure)."""
    print(f"[apps] {what}: " + ", ".join(f"{k}={v}" for k, v in figures.items()), flush=True)


def python_env(**extra: str) -> Dict[str, str]:
    env = dict(os.environ)
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env


def iter_jsonl(paths: Iterable[Path]) -> Iterable[Dict[str, Any]]:
    for path in paths:
        if path.exists():
            for line in path.read_text().splitlines():
                if line.strip():
                    yield json.loads(line)


# ---------------------------------------------------------------------------------------------------------
# Apps that serve HTTP on a Unix socket (no port to pick, none to race for)
# ---------------------------------------------------------------------------------------------------------


class UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path: Path, timeout: float = 60) -> None:
        super().__init__("localhost", timeout=timeout)
        self.path = str(path)

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(self.timeout)
        self.sock.connect(self.path)


def http_json(sock: Path, method: str, path: str, body: Optional[Dict[str, Any]] = None,
              timeout: float = 60) -> Dict[str, Any]:
    """One request to the app listening on ``sock``; its JSON answer. Raises OSError when nothing answers,
    AssertionError on a status other than 200."""
    conn = UnixHTTPConnection(sock, timeout)
    try:
        payload = json.dumps(body).encode() if body is not None else None
        conn.request(method, path, body=payload, headers={"Content-Type": "application/json"})
        response = conn.getresponse()
        data = response.read()
        if response.status != 200:
            raise AssertionError(f"{method} {path} on {sock}: {response.status} {data[:2000]!r}")
        return json.loads(data)
    finally:
        conn.close()


class HttpWriter:
    """Creates notes through an app's ``POST /notes`` until stopped, each with a fresh ``ref``; journals a
    note only once the app answered 200 (a request that failed, say while the app restarts, is not retried:
    a note it may have committed anyway is simply not in the ledger)."""

    def __init__(self, sock: Path, journal: Path, table: str, prefix: str, pace_s: float = 0.02) -> None:
        self.sock, self.journal, self.table, self.prefix, self.pace_s = sock, journal, table, prefix, pace_s
        self.written = 0
        self.failed = 0
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        attempt = 0
        with open(self.journal, "a") as out:
            while not self.stopping.is_set():
                ref = f"{self.prefix}-{attempt}"
                attempt += 1
                try:
                    http_json(self.sock, "POST", "/notes", {"ref": ref, "body": f"note {ref}"}, timeout=30)
                except (OSError, AssertionError):
                    self.failed += 1
                else:
                    out.write(json.dumps({"at": time.time(), "op": "created", "table": self.table,
                                          "label_column": "ref", "label": ref,
                                          "values": {"body": f"note {ref}"}}) + "\n")
                    out.flush()
                    self.written += 1
                self.stopping.wait(self.pace_s)

    def wait_for_more(self, count: int = 5) -> None:
        seen = self.written
        wait_until(f"the writer to {self.sock.parent.name} to go on writing", lambda: self.written >= seen + count)

    def stop(self) -> int:
        self.stopping.set()
        self.thread.join(timeout=WAIT)
        return self.written


def replica_status(db: Path, cfg: Dict[str, Any]) -> Dict[str, Any]:
    """The status of the replicator that serves ``db``, through a handle of this process attached to it."""
    import harmonylite

    handle = harmonylite.open_replicated(str(db), cfg)
    try:
        status = dict(handle.status())
        assert status["role"] == "attached", f"no replicator serves {db}: this process became it ({status})"
        return status
    finally:
        handle.close()


def assert_nothing_waits(dbs_and_cfgs: Sequence[Tuple[Path, Dict[str, Any]]]) -> None:
    """Every node's status says nothing waits and nothing is unsent."""
    for db, cfg in dbs_and_cfgs:
        status = replica_status(db, cfg)
        assert status["paused_tables"] == [] and status["unsent_rows"] == 0, \
            f"{db}: paused {status['paused_tables']}, unsent {status['unsent_rows']}"


def journal_created(journal: Path, table: str, label: Any, label_column: str = "ref", **values: Any) -> None:
    """Appends one created row to a journal (call it once the app acknowledged the commit)."""
    with open(journal, "a") as out:
        out.write(json.dumps({"at": time.time(), "op": "created", "table": table, "label_column": label_column,
                              "label": label, "values": values}) + "\n")


def guide_blocks(guide: Path, language: str) -> List[str]:
    """The fenced code blocks of one language in a guide, in order."""
    import re

    return re.findall(rf"```{language}\n(.*?)```", guide.read_text(), re.S)


def guide_block(guide: Path, language: str, first_line: str) -> str:
    """The ```language block of a guide whose first line is ``first_line``."""
    for block in guide_blocks(guide, language):
        if block.startswith(first_line + "\n"):
            return block
    raise AssertionError(f"{guide.relative_to(ROOT)} has no {language} block starting with {first_line!r}")
