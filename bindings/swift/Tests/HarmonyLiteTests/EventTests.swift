import Foundation
import HarmonyLite
import XCTest

final class EventTests: XCTestCase {
    private var server: NatsServer!
    private var a: Node!
    private var b: Node!

    override func setUp() async throws {
        server = try await NatsServer()
        a = try await Node(schema: itemsSchema, cfg: config(node: 1, server: server))
        b = try await Node(schema: itemsSchema, cfg: config(node: 2, server: server))
    }

    override func tearDown() async throws {
        try await a?.close()
        try await b?.close()
        a = nil
        b = nil
        server?.stop()
        server = nil
    }

    /// Writes `id` on node A and returns once node B applied it.
    private func writeOnAAndWait(_ id: Int64) async throws {
        try a.db.run("INSERT INTO items (id, name) VALUES (?, ?)", .integer(id), .text("row \(id)"))
        try await b.r.waitFor(try await a.r.sync(timeout: patience), timeout: patience)
    }

    func testChangesDeliverRemoteChanges() async throws {
        let changes = try b.r.changes
        try a.db.run("INSERT INTO items (id, name) VALUES (?, ?)", .integer(7), .text("seven"))
        _ = try await a.r.sync(timeout: patience)
        let event = try await firstEvent(in: changes) { !$0.local }
        XCTAssertEqual(event.table, "items")
        XCTAssertEqual(event.op, .insert)
        XCTAssertEqual(event.pk, [.integer(7)])
        XCTAssertEqual(event.originNode, 1)
        XCTAssertGreaterThan(event.hlc, 0)
        XCTAssertEqual(event.op.description, "insert")
    }

    func testLocalChangesAreReportedToo() async throws {
        let changes = try a.r.changes
        try a.db.run("UPDATE items SET name = 'x' WHERE id = 0")  // no row: no event
        try a.db.run("INSERT INTO items (id) VALUES (?)", .integer(3))
        // Stamped before the delete: a row created and deleted before it is stamped never existed for the
        // other nodes, and no change is sent (or reported) for it.
        _ = try await a.r.sync(timeout: patience)
        try a.db.run("DELETE FROM items WHERE id = ?", .integer(3))
        _ = try await a.r.sync(timeout: patience)
        let event = try await firstEvent(in: changes) { $0.op == .delete }
        XCTAssertTrue(event.local)
        XCTAssertEqual(event.originNode, 1)
    }

    /// Cancelling the task that iterates `changes` ends delivery to it, while another subscriber still
    /// receives later events.
    func testCancellingTheIteratingTaskStopsDelivery() async throws {
        let received = Collected<ChangeEvent>()
        let stream = try b.r.changes
        let consumer = Task {
            for await event in stream { received.append(event) }
        }
        try await writeOnAAndWait(1)
        try await eventually("the first event") { received.count >= 1 }

        consumer.cancel()
        _ = await consumer.value  // the loop ended
        let before = received.count

        let control = try b.r.changes
        try await writeOnAAndWait(2)
        _ = try await firstEvent(in: control) { $0.pk == [.integer(2)] }
        XCTAssertEqual(received.count, before, "no event after the task was cancelled")
    }

    func testOnChangeDeliversAndCancelStopsIt() async throws {
        let received = Collected<ChangeEvent>()
        let subscription = try b.r.onChange { event in received.append(event) }
        try await writeOnAAndWait(1)
        try await eventually("onChange to see the remote insert") {
            received.all.contains { $0.pk == [.integer(1)] && !$0.local }
        }

        subscription.cancel()
        XCTAssertTrue(subscription.isCancelled)
        let before = received.count
        let control = try b.r.changes
        try await writeOnAAndWait(2)
        _ = try await firstEvent(in: control) { $0.pk == [.integer(2)] }
        XCTAssertEqual(received.count, before, "no event after cancel()")
    }

    func testReleasingTheSubscriptionStopsDelivery() async throws {
        let received = Collected<ChangeEvent>()
        var subscription: ChangeSubscription? = try b.r.onChange { event in received.append(event) }
        try await writeOnAAndWait(1)
        try await eventually("the first event") { received.count >= 1 }
        XCTAssertNotNil(subscription)
        subscription = nil

        let before = received.count
        let control = try b.r.changes
        try await writeOnAAndWait(2)
        _ = try await firstEvent(in: control) { $0.pk == [.integer(2)] }
        XCTAssertEqual(received.count, before, "no event after the subscription was released")
    }

    /// A handler that throws is reported and does not stop later events.
    func testThrowingHandlerDoesNotKillTheDispatcher() async throws {
        struct HandlerFailure: Error {}
        let received = Collected<Int64>()
        let errors = Collected<String>()
        let subscription = try b.r.onChange(onError: { errors.append(String(describing: $0)) }) { event in
            guard case .integer(let id)? = event.pk.first else { return }
            received.append(id)
            if id == 1 { throw HandlerFailure() }
        }
        try await writeOnAAndWait(1)
        try await writeOnAAndWait(2)
        try await eventually("the event after the throwing one") { received.all.contains(2) }
        XCTAssertEqual(errors.count, 1)
        XCTAssertTrue(errors.all.first?.contains("HandlerFailure") ?? false)
        subscription.cancel()
    }

    /// Streams end when the replica closes.
    func testStreamsEndOnClose() async throws {
        let stream = try a.r.changes
        let ended = Task { for await _ in stream {} }
        try await a.close()
        try await within(patience, "the stream to end after close()") { await ended.value }
    }
}
