"""Django 5.2 on three nodes (issue 13): migrations before and after opening the replica, ORM and admin
writes, rolling AddField / AlterField / RemoveField migrations while node 1 writes, concurrent creates,
cascade deletes, gunicorn -w 2 with the replica opened in AppConfig.ready() and a manage.py command beside
it."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Dict

from django_cluster import DjangoCluster, timed
from support import NatsServer, Processes, assert_converged, report, scaled, wait_until

ROWS = scaled(10, 200)


def migrated_cluster(tmp_path: Path, nats: NatsServer, procs: Processes, *deployed: tuple) -> DjangoCluster:
    """Three nodes that ran `migrate` before the replica was ever opened, then serve with gunicorn.
    ``deployed``: (migration, model_from, model_to) of rollout/ deployed on every node before that."""
    cluster = DjangoCluster(tmp_path, nats, procs)
    for node in cluster.nodes:
        for migration in deployed:
            node.deploy_migration(*migration)
    cluster.migrate_all()
    for node in cluster.nodes:
        node.replicate(True)
    cluster.start_gunicorn_all()
    return cluster


def test_migrate_before_opening_then_orm_admin_and_cascade(tmp_path: Path, nats: NatsServer, procs: Processes) -> None:
    timings: Dict[str, float] = {}
    with timed("setup", timings):
        cluster = migrated_cluster(tmp_path, nats, procs)
        n1, n2, n3 = cluster.nodes
    with timed("seed converged", timings):
        # Each node's migrate wrote the same content types and permissions: one row each, everywhere.
        assert_converged(cluster.dbs)
    with timed("orm", timings):
        n1.manage("createsuperuser", "--noinput", "--username", "admin", "--email", "admin@example.com")
        n1.write("create", "--prefix", "n1", "--count", str(ROWS), "--category", "tools")
        n2.write("create", "--prefix", "n2", "--count", str(ROWS), "--category", "garden")
        assert_converged(cluster.dbs, cluster.ledger())
    with timed("admin", timings):
        # node 1's superuser logs in on node 3; node 2 edits node 1's products.
        out = n3.write("admin", "--prefix", "a3", "--count", "3", "--category", "tools")
        assert "replica role: active" in out or "replica role: attached" in out, out
        n2.write("update", "--prefix", "n1", "--count", str(ROWS // 2))
        assert_converged(cluster.dbs, cluster.ledger())
    with timed("cascade", timings):
        # node 1 deletes the category node 2 created: its products and their reviews go too, everywhere.
        n1.write("cascade", "--category", "garden")
        took = assert_converged(cluster.dbs, cluster.ledger())
    report("django migrate-before-opening", rows=cluster.ledger().size(), cascade_converged_s=round(took, 2),
           **timings)


def test_migrate_after_opening_node_by_node_while_node1_writes_then_concurrent_creates(
        tmp_path: Path, nats: NatsServer, procs: Processes) -> None:
    timings: Dict[str, float] = {}
    cluster = DjangoCluster(tmp_path, nats, procs)
    n1, n2, n3 = cluster.nodes
    with timed("serve empty", timings):
        for node in cluster.nodes:  # the replica opens on an empty database, in every node's workers
            node.replicate(True)
        cluster.start_gunicorn_all()
    with timed("migrate node 1", timings):
        n1.manage("migrate", "--noinput")  # attached to node 1's gunicorn, which replicates what it writes
        n1.manage("createsuperuser", "--noinput", "--username", "admin", "--email", "admin@example.com")
    stop = n1.start_writer("w1", "tools")
    wait_until("node 1's writer to commit", lambda: n1.journals[-1].exists() and n1.journals[-1].stat().st_size > 0)
    with timed("migrate nodes 2 and 3", timings):
        # node 1's rows (its content types, permissions, user, products) reach nodes 2 and 3 before their
        # tables exist: they wait, and apply as each node's migrate creates them.
        n2.manage("migrate", "--noinput")
        n3.manage("migrate", "--noinput")
    with timed("concurrent creates", timings):
        a = procs.start("node2-create", [*n2_cmd(n2, "c2", "garden")], cwd=n2.dir, env=n2.env())
        b = procs.start("node3-create", [*n2_cmd(n3, "c3", "kitchen")], cwd=n3.dir, env=n3.env())
        for process, node in ((a, n2), (b, n3)):
            assert process.wait(timeout=180) == 0, procs.log_tail(f"{node.name}-create")
    stop.touch()
    wait_until("node 1's writer to stop", lambda: "wrote" in procs.log_tail("node1-writer-w1"))
    with timed("converged", timings):
        assert_converged(cluster.dbs, cluster.ledger())
    written = sum(1 for e in cluster.ledger().present.get("shop_product", {}) if e.startswith("w1-"))
    report("django migrate-after-opening", rows=cluster.ledger().size(), writer_rows=written, **timings)


def n2_cmd(node, prefix: str, category: str) -> list:  # type: ignore[no-untyped-def]
    import sys

    return [sys.executable, "manage.py", "shopwrite", "create", "--journal", str(node.journal()), "--prefix", prefix,
            "--count", str(ROWS * 2), "--category", category]


PRODUCT_NAME_100 = "    name = models.CharField(max_length=100)\n    price"
PRODUCT_NAME_200 = "    name = models.CharField(max_length=200)\n    price"
PRICE = "    price = models.IntegerField(default=0)\n"
PRICE_AND_NOTE = PRICE + "    note = models.CharField(max_length=200, null=True, blank=True)\n"


def published_rows(node) -> int:  # type: ignore[no-untyped-def]
    return int(node.get("/replica")["published_rows"])


def test_rolling_addfield_and_alterfield_while_node1_writes(tmp_path: Path, nats: NatsServer, procs: Processes) -> None:
    timings: Dict[str, float] = {}
    cluster = migrated_cluster(tmp_path, nats, procs)
    n1, n2, n3 = cluster.nodes
    n1.write("create", "--prefix", "base", "--count", str(ROWS * 3), "--category", "tools")
    assert_converged(cluster.dbs, cluster.ledger())
    stop = n1.start_writer("w1", "tools")  # node 1 keeps writing with the code it started with
    wait_until("node 1's writer to commit", lambda: n1.journals[-1].exists() and n1.journals[-1].stat().st_size > 0)
    with timed("AddField node by node", timings):
        for node in cluster.nodes:
            node.deploy_migration("0002_product_note", PRICE, PRICE_AND_NOTE)
            node.manage("migrate", "--noinput")
            # The new code on this node writes the new column; the nodes not migrated yet keep it waiting.
            node.write("note", "--prefix", "base", "--count", str(ROWS))
    with timed("AlterField (table rebuild) node by node", timings):
        for node in cluster.nodes:
            node.deploy_migration("0003_alter_product_name", PRODUCT_NAME_100, PRODUCT_NAME_200)
            before = published_rows(node)
            node.manage("migrate", "--noinput")
            if node is not n1:
                # Nothing written on this node meanwhile: the rebuild itself must send nothing.
                assert published_rows(node) == before, f"{node.name} re-sent its rebuilt table"
            node.write("create", "--prefix", f"after-{node.name}", "--count", "3", "--category", "tools")
    stop.touch()
    wait_until("node 1's writer to stop", lambda: "wrote" in procs.log_tail("node1-writer-w1"))
    with timed("converged", timings):
        assert_converged(cluster.dbs, cluster.ledger())
    ledger = cluster.ledger()
    written = sum(1 for e in ledger.present.get("shop_product", {}) if e.startswith("w1-"))
    report("django rolling migrations", rows=ledger.size(), writer_rows=written, **timings)


def all_sent(node) -> bool:  # type: ignore[no-untyped-def]
    status = node.get("/replica")
    return status["pending_changes"] == 0 and status["unsent_rows"] == 0


def test_rolling_removefield_while_node1_writes(tmp_path: Path, nats: NatsServer, procs: Processes) -> None:
    """RemoveField (Django drops the column with ALTER TABLE ... DROP COLUMN) rolled out node by node while
    node 1 writes. Nodes 2 and 3 go first, so node 1, not migrated yet, keeps sending rows whose image holds
    the column they dropped, and node 3 sets it once more after node 2 dropped it; node 1 goes last (its
    writer restarts with the new code, as a deploy restarts the app). Once every node has migrated, nothing
    may wait: the column those values were for is gone everywhere."""
    timings: Dict[str, float] = {}
    cluster = migrated_cluster(tmp_path, nats, procs, ("0002_product_note", PRICE, PRICE_AND_NOTE))
    n1, n2, n3 = cluster.nodes
    n1.write("create", "--prefix", "base", "--count", str(ROWS * 2), "--category", "tools")
    n1.write("note", "--prefix", "base", "--count", str(ROWS))
    assert_converged(cluster.dbs, cluster.ledger())
    stop = n1.start_writer("w1", "tools")  # the code with the field: every row it creates holds a note
    writer_journal = n1.journals[-1]
    wait_until("node 1's writer to commit", lambda: writer_journal.exists() and writer_journal.stat().st_size > 0)
    with timed("RemoveField on nodes 2 and 3", timings):
        for node in (n2, n3):
            node.write("note", "--prefix", "base", "--count", "3")  # the old code sets the field once more
            node.deploy_migration("0003_remove_product_note", PRICE_AND_NOTE, PRICE)
            wait_until(f"{node.name} to send what it wrote", lambda: all_sent(node))
            before = published_rows(node)
            node.manage("migrate", "--noinput")
            assert published_rows(node) == before, f"{node.name} sent rows for dropping a column"
            node.write("create", "--prefix", f"after-{node.name}", "--count", "3", "--category", "tools")
    with timed("RemoveField on node 1", timings):
        seen = writer_journal.read_text().count("\n")
        wait_until("node 1's writer to go on writing", lambda: writer_journal.read_text().count("\n") >= seen + 5)
        stop.touch()
        wait_until("node 1's writer to stop", lambda: "wrote" in procs.log_tail("node1-writer-w1"))
        n1.deploy_migration("0003_remove_product_note", PRICE_AND_NOTE, PRICE)
        n1.manage("migrate", "--noinput")
        stop = n1.start_writer("w1b", "tools")  # the new code
        wait_until("node 1's new writer to commit",
                   lambda: n1.journals[-1].exists() and n1.journals[-1].stat().st_size > 0)
        n1.write("create", "--prefix", "after-node1", "--count", "3", "--category", "tools")
        stop.touch()
        wait_until("node 1's new writer to stop", lambda: "wrote" in procs.log_tail("node1-writer-w1b"))
    with timed("converged", timings):
        ledger = cluster.ledger().column_removed("shop_product", "note")
        assert_converged(cluster.dbs, ledger)
    for node in cluster.nodes:
        status = node.get("/replica")
        assert status["paused_tables"] == [] and status["unsent_rows"] == 0, f"{node.name}: {status}"
    written = sum(1 for e in ledger.present.get("shop_product", {}) if e.startswith("w1"))
    report("django rolling RemoveField", rows=ledger.size(), writer_rows=written, **timings)


def test_the_guides_settings_are_the_projects() -> None:
    from django_cluster import PROJECT, guide_block

    block = guide_block("# mysite/settings.py")
    databases = block[block.index("DATABASES = {"):block.index("\n}\n") + 3]
    assert databases in (PROJECT / "mysite" / "settings.py").read_text(), databases


def test_gunicorn_two_workers_open_in_ready_and_a_manage_command_beside_them(
        tmp_path: Path, nats: NatsServer, procs: Processes) -> None:
    timings: Dict[str, float] = {}
    cluster = DjangoCluster(tmp_path, nats, procs)
    n1, n2, n3 = cluster.nodes
    cluster.migrate_all()
    for node in cluster.nodes:
        node.replicate(True)
    with timed("gunicorn up", timings):
        n1.start_gunicorn(workers=2, wait=False)  # each worker's ready() opens the replica: one runs it
        n2.start_gunicorn(wait=False)
        n3.start_gunicorn(wait=False)
        for node in cluster.nodes:
            node.wait_serving()
    status = n1.get("/replica")
    assert status["role"] in ("active", "attached") and status["replicator_pid"], status
    # Requests served by both workers write through one replicator.
    journal = n1.journal()
    pids = set()
    with timed("http writes", timings):
        with open(journal, "a") as out:
            for i in range(ROWS * 2):
                ref = f"http-{i}"
                reply = n1.request("POST", "/products", {"ref": ref, "name": f"product {ref}", "category": "web"})
                pids.add(reply["pid"])
                out.write(json.dumps({"at": time.time(), "op": "created", "table": "shop_product",
                                      "label_column": "ref", "label": ref, "values": {"name": f"product {ref}"}})
                          + "\n")
    replicators = {n1.get("/replica")["replicator_pid"] for _ in range(4)}
    assert len(replicators) == 1, f"two replicators for one file: {replicators}"
    # A manage.py command while gunicorn runs attaches to the workers' replicator.
    out = n1.write("create", "--prefix", "cmd", "--count", str(ROWS), "--category", "web")
    assert "replica role: attached" in out, out
    n2.write("create", "--prefix", "n2", "--count", str(ROWS), "--category", "garden")
    with timed("converged", timings):
        assert_converged(cluster.dbs, cluster.ledger())
    report("django gunicorn -w 2", rows=cluster.ledger().size(), serving_pids=len(pids), **timings)
    for node in cluster.nodes:
        node.stop_gunicorn()
    assert_converged(cluster.dbs, cluster.ledger())
