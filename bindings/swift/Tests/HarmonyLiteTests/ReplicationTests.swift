import CSQLite
import Foundation
import HarmonyLite
import XCTest

final class ReplicationTests: XCTestCase {
    /// The default configuration (an embedded nats-server) on one node, the other connected to it; writes
    /// through the SQLite C API on both sides converge, every SQLite type intact.
    func testTwoReplicasConvergeAtDefaultSettings() async throws {
        let a = try await Node(schema: itemsSchema, cfg: Config())
        let aURLs = try a.r.natsUrls
        XCTAssertEqual(aURLs.count, 1)
        let b = try await Node(schema: itemsSchema, cfg: Config(nats: .init(urls: aURLs)))
        XCTAssertNotEqual(try a.r.nodeId, try b.r.nodeId)
        try await a.r.waitReady(timeout: patience)
        try await b.r.waitReady(timeout: patience)

        try a.db.run(
            "INSERT INTO items VALUES (?, ?, ?, ?, ?)", .integer(1), .text("widget ✓"), .integer(Int64.max),
            .real(0.1 + 0.2), .blob(Data([0, 1, 2, 255])))
        try a.db.run("INSERT INTO items VALUES (?, ?, ?, ?, ?)", .integer(2), .null, .integer(Int64.min), .real(-0.0), .null)
        try b.db.run("INSERT INTO items VALUES (?, ?, ?, ?, ?)", .integer(3), .text("from b"), .integer(7), .null, .blob(Data()))
        try a.db.exec("UPDATE items SET qty = 41 WHERE id = 2; DELETE FROM items WHERE id = 1;")
        try b.db.exec("INSERT INTO items (id, name) VALUES (4, 'gone soon'); DELETE FROM items WHERE id = 4;")

        let tokenA = try await a.r.sync(timeout: patience)
        let tokenB = try await b.r.sync(timeout: patience)
        try await b.r.waitFor(tokenA, timeout: patience)
        try await a.r.waitFor(tokenB, timeout: patience)

        let query = "SELECT id, name, qty, price, data FROM items ORDER BY id"
        let rowsA = try a.db.rows(query)
        XCTAssertEqual(rowsA, try b.db.rows(query))
        XCTAssertEqual(rowsA.map { $0[0] }, [.integer(2), .integer(3)])
        XCTAssertEqual(rowsA[0][2], .integer(41))
        XCTAssertEqual(rowsA[1][4], .blob(Data()))
        try await b.close()
        try await a.close()
    }

    /// Both nodes change the same rows concurrently (two shards, an external server): afterwards they hold
    /// the same data, whatever the order the changes crossed in.
    func testConflictingWritesConverge() async throws {
        let server = try await NatsServer()
        let a = try await Node(schema: itemsSchema, cfg: config(node: 1, server: server, shards: 2))
        let b = try await Node(schema: itemsSchema, cfg: config(node: 2, server: server, shards: 2))
        for id in 1...20 {
            try a.db.run("INSERT INTO items (id, name, qty) VALUES (?, ?, ?)", .integer(Int64(id)), .text("a"), .integer(1))
        }
        try await b.r.waitFor(try await a.r.sync(timeout: patience), timeout: patience)

        for id in 1...20 {
            try a.db.run("UPDATE items SET name = ?, qty = qty + 1 WHERE id = ?", .text("a\(id)"), .integer(Int64(id)))
            try b.db.run("UPDATE items SET name = ?, qty = qty + 10 WHERE id = ?", .text("b\(id)"), .integer(Int64(id)))
            if id % 5 == 0 { try b.db.run("DELETE FROM items WHERE id = ?", .integer(Int64(id))) }
        }
        let tokens = (try await a.r.sync(timeout: patience)).merging(try await b.r.sync(timeout: patience))
        XCTAssertEqual(tokens.positions.count, 2)
        try await a.r.waitFor(tokens, timeout: patience)
        try await b.r.waitFor(tokens, timeout: patience)

        let query = "SELECT id, name, qty FROM items ORDER BY id"
        XCTAssertEqual(try a.db.rows(query), try b.db.rows(query))
        XCTAssertFalse(try a.db.rows(query).isEmpty)

        let status = try await b.r.status()
        XCTAssertEqual(status.nodeId, 2)
        XCTAssertEqual(status.connection, .connected)
        XCTAssertTrue(status.streamsReady)
        XCTAssertEqual(status.replicatedTables, ["items"])
        XCTAssertEqual(status.shards.count, 2)
        XCTAssertFalse(status.embeddedServer)
        XCTAssertGreaterThan(status.publishedRows, 0)
        XCTAssertGreaterThan(status.appliedRows, 0)
        try await a.close()
        try await b.close()
    }

    /// What Prometheus scrapes from node 2 once node 1's writes reached it: its applied count, labelled with
    /// its node id, in OpenMetrics text.
    func testMetricsCountTheChangesApplied() async throws {
        let server = try await NatsServer()
        let a = try await Node(schema: itemsSchema, cfg: config(node: 1, server: server))
        let b = try await Node(schema: itemsSchema, cfg: config(node: 2, server: server))
        for id in 1...3 {
            try a.db.run("INSERT INTO items (id, name) VALUES (?, ?)", .integer(Int64(id)), .text("metered"))
        }
        try await b.r.waitFor(try await a.r.sync(timeout: patience), timeout: patience)

        let applied = try await b.r.status().appliedRows
        XCTAssertGreaterThanOrEqual(applied, 3)
        let text = try await b.r.metrics()
        let nodeId = try b.r.nodeId
        let line = "harmonylite_changes_applied_total{node_id=\"\(nodeId)\"} \(applied)"
        XCTAssertTrue(text.split(separator: "\n").contains { $0 == line }, "no line \(line) in:\n\(text)")
        XCTAssertTrue(text.hasSuffix("# EOF\n"), text)
        XCTAssertEqual(metricsContentType, "application/openmetrics-text; version=1.0.0; charset=utf-8")
        try await b.close()
        try await a.close()
    }

    /// Tokens travel as text: parse what another node printed, merge, wait.
    func testTokenTextForm() throws {
        let token = try Token(parsing: "0:15,1:20")
        XCTAssertEqual(token.positions, [0: 15, 1: 20])
        XCTAssertEqual(token.description, "0:15,1:20")
        XCTAssertEqual(Token("1:25")?.merging(token).positions, [0: 15, 1: 25])
        XCTAssertEqual(Token().description, "")
        XCTAssertNil(Token("zero:one"))
    }

    /// A snapshot saved from Swift: a manifest that covers the node's positions.
    func testSaveSnapshot() async throws {
        let server = try await NatsServer()
        let a = try await Node(schema: itemsSchema, cfg: config(node: 1, server: server))
        try await a.r.waitReady(timeout: patience)
        try a.db.run("INSERT INTO items (id, name) VALUES (?, ?)", .integer(1), .text("kept"))
        let token = try await a.r.sync(timeout: patience)
        let manifest = try await a.r.saveSnapshot()
        let saved = try XCTUnwrap(manifest, "this node is the only one, so it holds the upload lease")
        XCTAssertEqual(saved.nodeId, 1)
        XCTAssertGreaterThan(saved.bytes, 0)
        XCTAssertEqual(saved.sha256.count, 64)
        for (shard, seq) in token.positions {
            XCTAssertGreaterThanOrEqual(saved.positions[shard] ?? 0, seq)
        }
        let status = try await a.r.status()
        XCTAssertEqual(status.snapshot.saved, saved.object)
        try await a.close()
    }
}
