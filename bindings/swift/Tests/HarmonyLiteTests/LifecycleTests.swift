import CSQLite
import Foundation
import HarmonyLite
import XCTest

final class LifecycleTests: XCTestCase {
    func testCloseIsIdempotentAndLaterCallsSayClosed() async throws {
        let server = try await NatsServer()
        let node = try await Node(schema: itemsSchema, cfg: config(node: 1, server: server))
        let replica = try node.r
        try await replica.close()
        try await replica.close()
        let status = await expectError { try await replica.status() }
        guard case .closed? = status else { return XCTFail("expected .closed, got \(String(describing: status))") }
        let sync = await expectError { try await replica.sync(timeout: .seconds(1)) }
        XCTAssertEqual(sync?.code, "CLOSED")
        try await node.close()
    }

    /// Releasing the last reference without `close()` closes the replica in the background: nothing is left
    /// alive (native side) and its NATS connection goes away.
    func testReplicaIsReleasedWithTheLastReference() async throws {
        let server = try await NatsServer()
        let baseline = liveReplicaCount()
        let dir = try TempDir()
        let db = try AppDatabase(dir.file("app.db"))
        try db.exec(itemsSchema)
        weak var released: Replica?
        do {
            let replica = try await openReplicated(db: dir.file("app.db"), cfg: config(node: 1, server: server))
            released = replica
            try await replica.waitReady(timeout: patience)
            let stream = replica.changes
            _ = stream
            XCTAssertEqual(liveReplicaCount(), baseline + 1)
            XCTAssertGreaterThanOrEqual(try server.connections(), 1)
        }
        XCTAssertNil(released, "the Swift object is released with its last reference")
        try await eventually("the native replica to be released") { liveReplicaCount() == baseline }
        try await eventually("its NATS connection to close") { try server.connections() == 0 }

        // The database is free for a new replica, which publishes what was committed meanwhile.
        try db.run("INSERT INTO items (id) VALUES (?)", .integer(1))
        do {
            let again = try await openReplicated(db: dir.file("app.db"), cfg: config(node: 1, server: server))
            let token = try await again.sync(timeout: patience)
            XCTAssertFalse(token.positions.isEmpty)
            let unsent = try await again.status().unsentRows
            XCTAssertEqual(unsent, 0)
            try await again.close()
        }
        try await eventually("the reopened replica to be released") { liveReplicaCount() == baseline }
    }

    /// The app's SQLite (the C API) and the core's are one library: a process-wide setting made through
    /// one is seen by the other. Two copies would not see each other's locks.
    func testOneSqliteLibraryInTheProcess() throws {
        let previous = sqlite3_soft_heap_limit64(-1)
        defer { sqlite3_soft_heap_limit64(previous) }
        sqlite3_soft_heap_limit64(123_456_789)
        let library = try sqliteLibrary()
        XCTAssertEqual(library.softHeapLimit, 123_456_789)
        XCTAssertEqual(library.version, String(cString: sqlite3_libversion()))
    }
}
