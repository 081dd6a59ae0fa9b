"""sqlite-utils 4 (its CLI) on three nodes: insert --pk, upsert, transform (a table rebuild) and add-column,
each on one node, then on the others; and a database that already holds rows joined by two empty nodes."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterator, List

import pytest

from plain_nodes import PlainNode, nodes, sqlite_utils
from support import Ledger, NatsServer, Processes, assert_converged, report, scaled

ROWS = scaled(20, 2000)


@pytest.fixture
def cluster(tmp_path: Path, nats: NatsServer, procs: Processes) -> Iterator[List[PlainNode]]:
    made = nodes(tmp_path, nats, procs)
    try:
        yield made
    finally:
        for node in made:
            if node.handle is not None:
                node.handle.close()


def items(first: int, count: int, **extra: object) -> List[dict]:
    return [{"id": i, "name": f"item {i}", "price": i % 97, **extra} for i in range(first, first + count)]


def insert(node: PlainNode, rows: List[dict], ledger: Ledger, *flags: str, command: str = "insert") -> None:
    sqlite_utils(node, command, "app.db", "items", "-", "--pk", "id", *flags, input=json.dumps(rows))
    for row in rows:
        if command == "upsert" and row["id"] in ledger.present.get("items", {}):
            ledger.updated("items", row["id"], **{k: v for k, v in row.items() if k != "id"})
        else:
            ledger.created("items", "id", row["id"], **{k: v for k, v in row.items() if k != "id"})


def test_insert_upsert_transform_add_column_on_one_node_then_the_others(cluster: List[PlainNode]) -> None:
    n1, n2, n3 = cluster
    for node in cluster:
        node.open()  # on files that do not exist yet: the tool creates its tables later
    ledger = Ledger()
    # insert --pk: node 1 creates the table with its rows; nodes 2 and 3 run the same command with theirs.
    insert(n1, items(1, ROWS), ledger)
    insert(n2, items(1001, ROWS), ledger)
    insert(n3, items(2001, ROWS), ledger)
    assert_converged([n.db for n in cluster], ledger)
    # upsert on node 2: half of node 1's rows change, some rows are new.
    insert(n2, [dict(r, price=r["price"] + 500) for r in items(1, ROWS // 2)] + items(3001, 5), ledger,
           command="upsert")
    assert_converged([n.db for n in cluster], ledger)

    # transform (sqlite-utils rebuilds the table) on node 1, which writes right after; then nodes 2 and 3.
    sent_before = {n.number: n.status()["published_rows"] for n in cluster}
    sqlite_utils(n1, "transform", "app.db", "items", "--not-null", "name", "--default", "price", "0")
    insert(n1, items(4001, 3), ledger)
    for node in (n2, n3):
        sqlite_utils(node, "transform", "app.db", "items", "--not-null", "name", "--default", "price", "0")
    assert_converged([n.db for n in cluster], ledger)
    sent = {n.number: n.status()["published_rows"] - sent_before[n.number] for n in cluster}
    assert sent == {1: 3, 2: 0, 3: 0}, f"rows published around the rebuilds: {sent} (the rebuilt rows went again)"

    # add-column on node 3, which fills it; then nodes 1 and 2 (node 3's values wait for the column there).
    sqlite_utils(n3, "add-column", "app.db", "items", "color", "text")
    colored = [dict(r, color="red") for r in items(2001, ROWS // 2)]
    insert(n3, colored, ledger, command="upsert")
    for node in (n1, n2):
        sqlite_utils(node, "add-column", "app.db", "items", "color", "text")
    took = assert_converged([n.db for n in cluster], ledger)
    for node in cluster:
        status = node.status()
        assert status["paused_tables"] == [] and status["unsent_rows"] == 0, status
    report("sqlite-utils", rows=ledger.size(), add_column_converged_s=round(took, 2), sent_around_rebuild=sent)


def test_a_database_with_rows_joined_by_two_empty_nodes(cluster: List[PlainNode]) -> None:
    n1, n2, n3 = cluster
    ledger = Ledger()
    # Node 1's database was written before it was ever replicated.
    insert(n1, items(1, scaled(100, 5000)), ledger)
    n1.open()
    # Node 2: an empty file; its app creates the same table (its own migration) and then serves.
    sqlite_utils(n2, "create-table", "app.db", "items", "id", "integer", "name", "text", "price", "integer",
                 "--pk", "id")
    n2.open()
    took = assert_converged([n1.db, n2.db], ledger)
    # Node 3: no file at all; node 1 saves a snapshot, node 3's first open restores it.
    n1.attach().save_snapshot()
    n3.open()
    insert(n3, items(9001, 3), ledger)
    insert(n2, items(8001, 3), ledger)
    took_all = assert_converged([n.db for n in cluster], ledger)
    report("pre-existing rows", rows=ledger.size(), node2_seeded_s=round(took, 2), all_s=round(took_all, 2))
