import Foundation

/// Opens `db` for replication: installs change capture, connects to NATS (or starts the embedded server, the
/// default) and starts publishing and applying. Returns once capture is installed; NATS may still be
/// connecting (`waitReady`). The app keeps using its own SQLite connections, unchanged.
public func openReplicated(db: String, cfg: Config = Config()) async throws -> Replica {
    let json = try cfg.json()
    let native = try await translatingErrors { try await nativeOpenReplicated(db: db, configJson: json) }
    return Replica(native: native)
}

/// Opens the database at a file URL for replication (see `openReplicated(db:cfg:)`).
public func openReplicated(db: URL, cfg: Config = Config()) async throws -> Replica {
    try await openReplicated(db: db.path, cfg: cfg)
}

/// The content type to serve `Replica.metrics()` with: `application/openmetrics-text; version=1.0.0;
/// charset=utf-8` (the core's value).
public let metricsContentType: String = nativeMetricsContentType()

/// A replicated database. Keep it while the app works with the database; `close()` it, or release the last
/// reference (it then closes in the background, as `close()` would).
///
/// Every async call runs on the core's own runtime; a Swift task cancelled while awaiting one does not
/// interrupt it (it ends at its timeout).
public final class Replica: Sendable {
    private let native: NativeReplica

    init(native: NativeReplica) {
        self.native = native
    }

    /// This node's id (configured, stored in the database, or generated on first open).
    public var nodeId: UInt64 { native.nodeId() }

    public var dbPath: String { native.dbPath() }

    /// The NATS servers in use (the embedded server's URL when it is the default).
    public var natsUrls: [String] { native.natsUrls() }

    /// Publishes everything the app committed before this call, waits until JetStream acknowledged it, and
    /// returns the token another node can `waitFor`.
    public func sync(timeout: Duration = .seconds(30)) async throws -> Token {
        try await translatingErrors { try await native.sync(timeoutMs: milliseconds(timeout)) }
    }

    /// Waits until this node has applied everything up to `token` (from another node's `sync`).
    public func waitFor(_ token: Token, timeout: Duration = .seconds(30)) async throws {
        try await translatingErrors { try await native.waitFor(token: token, timeoutMs: milliseconds(timeout)) }
    }

    /// Waits until NATS is connected and the streams exist.
    public func waitReady(timeout: Duration = .seconds(30)) async throws {
        try await translatingErrors { try await native.waitReady(timeoutMs: milliseconds(timeout)) }
    }

    /// The positions this node has applied, as a token.
    public var applied: Token { native.applied() }

    public func status() async throws -> Status {
        try await translatingErrors { try await native.status() }
    }

    /// The node's metrics as Prometheus/OpenMetrics text, every series labelled `node_id`
    /// (`harmonylite_changes_applied_total{node_id="1"} 5`, ..., ending with `# EOF`), for the app's own metrics
    /// endpoint: serve it with the content type `metricsContentType`.
    /// Counters are read as they are; gauges come from a status at most a second old.
    public func metrics() async throws -> String {
        try await translatingErrors { try await native.metrics() }
    }

    /// Saves a snapshot now (after publishing what the app committed). `nil` when another node holds the
    /// upload lease and this one skipped.
    public func saveSnapshot() async throws -> SnapshotManifest? {
        try await translatingErrors { try await native.saveSnapshot() }
    }

    /// Change events (local and remote) from the moment this property is read. Each read is a new stream;
    /// it ends when the replica is closed or released, and stops (unsubscribes) when the iterating task is
    /// cancelled or the stream is dropped. A consumer more than 65,536 events behind loses the oldest.
    public var changes: AsyncStream<ChangeEvent> {
        let (stream, continuation) = AsyncStream.makeStream(
            of: ChangeEvent.self, bufferingPolicy: .bufferingNewest(65_536))
        let listener = native.subscribe(listener: StreamFeeder(continuation))
        continuation.onTermination = { _ in listener.cancel() }
        return stream
    }

    /// Calls `handler` for every change event from now on, one at a time, on a Swift task (never on the
    /// replication threads). An error thrown by the handler goes to `onError` (default: a line on stderr)
    /// and later events are still delivered. Keep the returned subscription: releasing it or calling
    /// `cancel()` stops delivery.
    public func onChange(
        onError: @escaping @Sendable (any Error) -> Void = reportListenerError,
        _ handler: @escaping @Sendable (ChangeEvent) async throws -> Void
    ) -> ChangeSubscription {
        ChangeSubscription(task: deliver(changes, onError: onError, handler))
    }

    private func deliver<Item: Sendable>(
        _ stream: AsyncStream<Item>, onError: @escaping @Sendable (any Error) -> Void,
        _ handler: @escaping @Sendable (Item) async throws -> Void
    ) -> Task<Void, Never> {
        Task {
            for await item in stream {
                if Task.isCancelled { break }
                do {
                    try await handler(item)
                } catch {
                    onError(error)
                }
            }
        }
    }

    /// The conflict log, oldest first: up to `limit` of the newest entries whose `id` is above `after` (pass the
    /// last `id` seen to read only newer ones). The log keeps the newest 10,000 entries.
    public func conflicts(after: Int64 = 0, limit: Int = 1000) async throws -> [Conflict] {
        try await translatingErrors { try await native.conflicts(after: after, limit: UInt64(max(limit, 0))) }
    }

    /// Conflicts this node records from the moment this property is read (a received change that lost, values
    /// a newer change overwrote, a row moved off a colliding key, a constraint clash). Each read is a new
    /// stream; it ends when the replica is closed or released, and stops when the iterating task is cancelled
    /// or the stream is dropped.
    public var conflictStream: AsyncStream<Conflict> {
        let (stream, continuation) = AsyncStream.makeStream(
            of: Conflict.self, bufferingPolicy: .bufferingNewest(65_536))
        let listener = native.subscribeConflicts(listener: ConflictFeeder(continuation))
        continuation.onTermination = { _ in listener.cancel() }
        return stream
    }

    /// Calls `handler` for every conflict recorded from now on, as `onChange` does for change events.
    public func onConflict(
        onError: @escaping @Sendable (any Error) -> Void = reportListenerError,
        _ handler: @escaping @Sendable (Conflict) async throws -> Void
    ) -> ChangeSubscription {
        ChangeSubscription(task: deliver(conflictStream, onError: onError, handler))
    }

    /// The core's status and conflict log as it serializes them (JSON), for the field-drift test.
    func coreStatusJson() async throws -> String {
        try await translatingErrors { try await native.coreStatusJson() }
    }

    func coreConflictsJson() async throws -> String {
        try await translatingErrors { try await native.coreConflictsJson() }
    }

    /// Stops replication: in-flight batches are committed and acknowledged, local changes are published for
    /// up to a few seconds (the rest goes out on the next open). Idempotent. Change streams end.
    public func close() async throws {
        try await translatingErrors { try await native.close() }
    }

    /// Closes the replica and removes capture (triggers and the library's tables) from the database; the
    /// app's tables and data are untouched. Returns the number of objects removed.
    @discardableResult
    public func cleanup() async throws -> UInt64 {
        try await translatingErrors { try await native.cleanup() }
    }
}

/// A running `onChange` or `onConflict` handler. Delivery stops on `cancel()` or when this object is released
/// (a handler call already running finishes).
public final class ChangeSubscription: Sendable {
    private let task: Task<Void, Never>

    init(task: Task<Void, Never>) {
        self.task = task
    }

    public func cancel() {
        task.cancel()
    }

    public var isCancelled: Bool { task.isCancelled }

    deinit {
        task.cancel()
    }
}

/// The default `onError` of `onChange` and `onConflict`: one line on stderr.
public func reportListenerError(_ error: any Error) {
    FileHandle.standardError.write(Data("harmonylite: an onChange or onConflict handler threw: \(error)\n".utf8))
}

/// Feeds native change events into an `AsyncStream` (called on a replication thread; yielding never blocks).
private final class StreamFeeder: NativeChangeListener {
    private let continuation: AsyncStream<ChangeEvent>.Continuation

    init(_ continuation: AsyncStream<ChangeEvent>.Continuation) {
        self.continuation = continuation
    }

    func onChange(event: ChangeEvent) {
        continuation.yield(event)
    }

    func onEnd() {
        continuation.finish()
    }
}

/// Feeds native conflicts into an `AsyncStream` (called on a replication thread; yielding never blocks).
private final class ConflictFeeder: NativeConflictListener {
    private let continuation: AsyncStream<Conflict>.Continuation

    init(_ continuation: AsyncStream<Conflict>.Continuation) {
        self.continuation = continuation
    }

    func onConflict(conflict: Conflict) {
        continuation.yield(conflict)
    }

    func onEnd() {
        continuation.finish()
    }
}
