import Foundation
@testable import HarmonyLite
import XCTest

/// Conflicts provoked for real (two replicas, a real nats-server): an edit made while a replica was closed
/// loses to a later edit of the same column on the other node. Both nodes log it, `conflictStream` and
/// `onConflict` deliver it. And the drift test: every field of the core's `Status` and `Conflict` is in the
/// Swift records.
final class ConflictTests: XCTestCase {
    private static let docSchema = "CREATE TABLE doc (id INTEGER PRIMARY KEY, title TEXT, rating INTEGER);"
    /// Only node A has this table: B parks A's row for it, so B's status lists a paused table.
    private static let onlyASchema = "CREATE TABLE only_a (id INTEGER PRIMARY KEY, note TEXT);"

    private var server: NatsServer!
    private var a: Node!
    private var b: Node!

    override func setUp() async throws {
        server = try await NatsServer()
        a = try await Node(schema: Self.docSchema + Self.onlyASchema, cfg: config(node: 1, server: server))
        b = try await Node(schema: Self.docSchema, cfg: config(node: 2, server: server))
    }

    override func tearDown() async throws {
        try await a?.close()
        try await b?.close()
        a = nil
        b = nil
        server?.stop()
        server = nil
    }

    private func rating(_ node: Node) throws -> [[Value]] {
        try node.db.rows("SELECT rating FROM doc WHERE id = 1")
    }

    /// A edits `rating` while its replica is closed, B edits it later, A comes back: B's value wins and A's
    /// edit is the loser on both nodes. `beforeA` runs on B before A comes back (to subscribe).
    private func offlineEdit(beforeA: () throws -> Void = {}) async throws {
        try a.db.run("INSERT INTO doc VALUES (1, 'title', 0)")
        try a.db.run("INSERT INTO only_a VALUES (1, 'B has no such table')")
        try await b.r.waitFor(try await a.r.sync(timeout: patience), timeout: patience)
        try beforeA()

        try await a.close()
        try a.db.run("UPDATE doc SET rating = 1 WHERE id = 1")  // offline: captured, sent at the next open
        let at = Date()
        try await eventually("the clock to move on") { Date().timeIntervalSince(at) > 0.002 }
        try b.db.run("UPDATE doc SET rating = 2 WHERE id = 1")
        _ = try await b.r.sync(timeout: patience)

        a.replica = try await openReplicated(db: a.dbPath, cfg: config(node: 1, server: server))
        try await b.r.waitFor(try await a.r.sync(timeout: patience), timeout: patience)
        try await a.r.waitFor(try await b.r.sync(timeout: patience), timeout: patience)
        try await eventually("both nodes to hold B's later value") {
            try rating(a) == [[.integer(2)]] && rating(b) == [[.integer(2)]]
        }
    }

    private static func isTheLostEdit(_ conflict: Conflict) -> Bool {
        conflict.table == "doc" && conflict.pk == [.integer(1)] && conflict.columns == ["rating"]
            && conflict.loser?.node == 1 && conflict.loser?.values == ["rating": .integer(1)]
    }

    func testAnOfflineEditThatLosesIsLoggedAndDelivered() async throws {
        let received = Collected<Conflict>()
        var stream: AsyncStream<Conflict>?
        var subscription: ChangeSubscription?
        try await offlineEdit {
            stream = try b.r.conflictStream
            subscription = try b.r.onConflict { received.append($0) }
        }

        // A, whose edit lost: B's newer value replaced the one A wrote offline.
        var lost: Conflict?
        try await eventually("A's conflict log") {
            lost = try await a.r.conflicts().first(where: Self.isTheLostEdit)
            return lost != nil
        }
        let entry = try XCTUnwrap(lost)
        XCTAssertTrue([.valuesOverwritten, .changeLost].contains(entry.kind), "\(entry.kind)")
        XCTAssertEqual(entry.winner?.node, 2)
        XCTAssertEqual(entry.winner?.values, ["rating": .integer(2)])
        XCTAssertNil(entry.movedTo)
        XCTAssertGreaterThan(entry.id, 0)
        XCTAssertGreaterThan(entry.atMs, 0)
        XCTAssertFalse(entry.detail.isEmpty)
        XCTAssertLessThan(try XCTUnwrap(entry.loser).hlc, try XCTUnwrap(entry.winner).hlc)
        let newer = try await a.r.conflicts(after: entry.id)
        XCTAssertTrue(newer.allSatisfy { $0.id > entry.id })
        let one = try await a.r.conflicts(limit: 1)
        XCTAssertEqual(one.count, 1)

        // B received A's edit after its own newer one: logged, streamed and delivered to onConflict.
        let streamed = try await within(patience, "B's conflict stream") { [stream] in
            for await conflict in try XCTUnwrap(stream) where Self.isTheLostEdit(conflict) { return conflict }
            throw TestFailure("the conflict stream ended without the lost edit")
        }
        XCTAssertEqual(streamed.kind, .changeLost)
        XCTAssertEqual(streamed.kind.description, "change_lost")
        let logged = try await b.r.conflicts()
        XCTAssertTrue(logged.contains(streamed), "the streamed entry is the logged one")
        try await eventually("B's onConflict handler") { received.all.contains(streamed) }
        subscription?.cancel()

        for node in [a!, b!] {
            let status = try await node.r.status()
            XCTAssertGreaterThanOrEqual(status.conflicts, 1)
            XCTAssertGreaterThanOrEqual(status.conflictsRecorded, 1)
            XCTAssertEqual(status.movedKeys, 0)
        }
        let paused = try await b.r.status().pausedTables
        XCTAssertTrue(paused.contains { $0.table == "only_a" && $0.kind == "schema" }, "\(paused)")
    }

    func testTheConflictStreamEndsOnClose() async throws {
        let stream = try a.r.conflictStream
        let ended = Task { for await _ in stream {} }
        try await a.close()
        try await within(patience, "the conflict stream to end after close()") { await ended.value }
    }

    /// The drift test. The core's own serialization (serde, through the internal `core*Json` helpers) is the
    /// field list, read at run time from a real replica rather than copied here; the records are expanded
    /// from the core's record list (`src/records.rs`), and this checks that expansion: a field the binding
    /// drops fails here. Swift's labels are the core's names in lowerCamelCase (uniffi's naming).
    func testStatusAndConflictRecordsHaveEveryFieldOfTheCore() async throws {
        try await offlineEdit()
        try await eventually("B's paused table") { try await !b.r.status().pausedTables.isEmpty }
        try await eventually("A's conflict with both sides") {
            try await a.r.conflicts().contains { $0.winner != nil && $0.loser != nil }
        }

        let core = try jsonObject(try await b.r.coreStatusJson())
        let status = try await b.r.status()
        XCTAssertEqual(labels(status), keys(core))
        let coreShards = try XCTUnwrap(core["shards"] as? [[String: Any]])
        let corePaused = try XCTUnwrap(core["paused_tables"] as? [[String: Any]])
        XCTAssertEqual(labels(try XCTUnwrap(status.shards.first)), keys(try XCTUnwrap(coreShards.first)))
        XCTAssertEqual(labels(try XCTUnwrap(status.pausedTables.first)), keys(try XCTUnwrap(corePaused.first)))
        XCTAssertEqual(labels(status.snapshot), keys(try XCTUnwrap(core["snapshot"] as? [String: Any])))

        let coreConflictsJson = try await a.r.coreConflictsJson()
        let coreConflicts = try XCTUnwrap(
            try JSONSerialization.jsonObject(with: Data(coreConflictsJson.utf8)) as? [[String: Any]])
        let conflicts = try await a.r.conflicts()
        XCTAssertFalse(coreConflicts.isEmpty)
        XCTAssertEqual(conflicts.count, coreConflicts.count)
        for (entry, coreEntry) in zip(conflicts, coreConflicts) {
            XCTAssertEqual(entry.id, (coreEntry["id"] as? NSNumber)?.int64Value)
            XCTAssertEqual(entry.kind.description, coreEntry["kind"] as? String)
            XCTAssertEqual(labels(entry), keys(coreEntry))
            for (side, coreSide) in [(entry.winner, coreEntry["winner"]), (entry.loser, coreEntry["loser"])] {
                guard let coreSide = coreSide as? [String: Any] else { continue }
                XCTAssertEqual(labels(try XCTUnwrap(side)), keys(coreSide))
            }
        }
    }

    private func jsonObject(_ text: String) throws -> [String: Any] {
        try XCTUnwrap(try JSONSerialization.jsonObject(with: Data(text.utf8)) as? [String: Any])
    }

    /// A record's stored properties.
    private func labels(_ record: Any) -> Set<String> {
        Set(Mirror(reflecting: record).children.compactMap(\.label))
    }

    /// The core's field names as uniffi names them in Swift (`paused_tables` → `pausedTables`).
    private func keys(_ object: [String: Any]) -> Set<String> {
        Set(
            object.keys.map { key in
                let parts = key.split(separator: "_")
                return (parts.first.map(String.init) ?? "") + parts.dropFirst().map { $0.prefix(1).uppercased() + $0.dropFirst() }.joined()
            })
    }
}
