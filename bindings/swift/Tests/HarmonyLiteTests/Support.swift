// Test harness: real nats-server processes on ports they pick, real SQLite files in per-test temp folders written
// through the SQLite C API, and polling with generous timeouts instead of fixed sleeps.
import CSQLite
import Foundation
import HarmonyLite
import XCTest

#if canImport(Glibc)
    import Glibc
#elseif canImport(Darwin)
    import Darwin
#endif

/// How long any condition may take on a slow, shared machine.
let patience: Duration = .seconds(60)

struct TestFailure: Error, CustomStringConvertible {
    let description: String
    init(_ description: String) { self.description = description }
}

/// Polls `check` (5 ms, doubling up to 200 ms) until it is true; fails after `patience`.
func eventually(
    _ what: String, timeout: Duration = patience, _ check: () async throws -> Bool
) async throws {
    let clock = ContinuousClock()
    let deadline = clock.now + timeout
    var pause: Duration = .milliseconds(5)
    while try await !check() {
        if clock.now >= deadline {
            throw TestFailure("timed out after \(timeout) waiting for \(what)")
        }
        try await Task.sleep(for: pause)
        pause = min(pause * 2, .milliseconds(200))
    }
}

/// Runs `body`, failing if it takes longer than `timeout` (the body is cancelled then).
func within<T: Sendable>(
    _ timeout: Duration = patience, _ what: String, _ body: @escaping @Sendable () async throws -> T
) async throws -> T {
    try await withThrowingTaskGroup(of: T?.self) { group in
        group.addTask { try await body() }
        group.addTask {
            try await Task.sleep(for: timeout)
            return nil
        }
        defer { group.cancelAll() }
        guard let first = try await group.next(), let value = first else {
            throw TestFailure("timed out after \(timeout) waiting for \(what)")
        }
        return value
    }
}

/// A folder removed when the test ends.
final class TempDir {
    let url: URL
    var path: String { url.path }

    init() throws {
        url = FileManager.default.temporaryDirectory.appendingPathComponent(
            "harmonylite-swift-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: url, withIntermediateDirectories: true)
    }

    func file(_ name: String) -> String { url.appendingPathComponent(name).path }

    deinit { try? FileManager.default.removeItem(at: url) }
}

// MARK: - Network helpers

/// `GET path` on 127.0.0.1:port; the status code and body, or nil when nothing answers.
func httpGet(port: Int, path: String) -> (status: Int, body: String)? {
    let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
    guard fd >= 0 else { return nil }
    defer { close(fd) }
    var timeout = timeval(tv_sec: 2, tv_usec: 0)
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
    var addr = sockaddr_in()
    addr.sin_family = sa_family_t(AF_INET)
    addr.sin_port = UInt16(port).bigEndian
    addr.sin_addr.s_addr = inet_addr("127.0.0.1")
    let connected = withUnsafePointer(to: &addr) {
        $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
            connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) == 0
        }
    }
    guard connected else { return nil }
    let request = Array("GET \(path) HTTP/1.0\r\nHost: localhost\r\n\r\n".utf8)
    guard request.withUnsafeBytes({ send(fd, $0.baseAddress, $0.count, 0) }) == request.count else { return nil }
    var response = [UInt8]()
    var buffer = [UInt8](repeating: 0, count: 4096)
    while true {
        let count = buffer.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
        if count <= 0 { break }
        response.append(contentsOf: buffer[0..<count])
    }
    let text = String(decoding: response, as: UTF8.self)
    let parts = text.components(separatedBy: "\r\n\r\n")
    let statusLine = parts.first?.split(separator: "\r\n").first ?? ""
    guard let code = statusLine.split(separator: " ").dropFirst().first.flatMap({ Int($0) }) else { return nil }
    return (code, parts.dropFirst().joined(separator: "\r\n\r\n"))
}

// MARK: - nats-server

/// The pinned nats-server: `$HARMONYLITE_NATS_SERVER` (test.sh passes the repo's .venv/bin/nats-server).
func natsServerBinary() throws -> String {
    guard let path = ProcessInfo.processInfo.environment["HARMONYLITE_NATS_SERVER"], !path.isEmpty else {
        throw TestFailure("set HARMONYLITE_NATS_SERVER to a nats-server binary (bindings/swift/test.sh does)")
    }
    return path
}

/// A real nats-server with JetStream on loopback ports it picks itself (a port chosen here and bound there
/// could be taken in between by a suite running beside this one), read from the ports file it writes; its
/// store in a temp folder. Stopped by `stop()` or when released.
final class NatsServer {
    private(set) var port = 0
    private(set) var monitorPort = 0
    private let dir: TempDir
    private let process = Process()

    var url: String { "nats://127.0.0.1:\(port)" }

    init() async throws {
        dir = try TempDir()
        let config = dir.file("nats.conf")
        let text = """
            listen: 127.0.0.1:-1
            http: 127.0.0.1:-1
            ports_file_dir: "\(dir.path)"
            max_payload: 8MB
            jetstream { store_dir: "\(dir.file("js"))" }

            """
        try text.write(toFile: config, atomically: true, encoding: .utf8)
        _ = FileManager.default.createFile(atPath: dir.file("nats.log"), contents: nil)
        let binary = try natsServerBinary()
        process.executableURL = URL(fileURLWithPath: binary)
        process.arguments = ["-c", config]
        process.standardOutput = FileHandle.nullDevice
        process.standardError = try FileHandle(forWritingTo: URL(fileURLWithPath: dir.file("nats.log")))
        try process.run()
        let portsFile = dir.file("\(URL(fileURLWithPath: binary).lastPathComponent)_\(process.processIdentifier).ports")
        try await eventually("nats-server's ports file") {
            guard process.isRunning else { throw TestFailure("nats-server exited: see \(dir.file("nats.log"))") }
            guard let data = FileManager.default.contents(atPath: portsFile),
                let ports = try? JSONSerialization.jsonObject(with: data) as? [String: [String]],
                let client = ports["nats"]?.first.flatMap({ URL(string: $0)?.port }),
                let monitor = ports["monitoring"]?.first.flatMap({ URL(string: $0)?.port })
            else { return false }  // not written yet, or being written
            port = client
            monitorPort = monitor
            return true
        }
        let monitor = monitorPort
        try await eventually("nats-server /healthz") { httpGet(port: monitor, path: "/healthz")?.status == 200 }
    }

    /// Client connections the server has now (from its monitoring endpoint).
    func connections() throws -> Int {
        guard let (status, body) = httpGet(port: monitorPort, path: "/varz"), status == 200,
            let object = try JSONSerialization.jsonObject(with: Data(body.utf8)) as? [String: Any],
            let count = object["connections"] as? Int
        else { throw TestFailure("cannot read /varz") }
        return count
    }

    func stop() {
        if process.isRunning {
            process.terminate()
            process.waitUntilExit()
        }
    }

    deinit { stop() }
}

// MARK: - The app's database, through the SQLite C API

private let transient = unsafeBitCast(-1, to: sqlite3_destructor_type.self)

/// The app's own connection: the system SQLite through its C API, at SQLite's defaults (plus a busy
/// timeout, as any app writing next to another writer has, and `trusted_schema` explicitly OFF).
final class AppDatabase {
    private var handle: OpaquePointer?

    init(_ path: String) throws {
        guard sqlite3_open_v2(path, &handle, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE, nil) == SQLITE_OK else {
            throw TestFailure("cannot open \(path)")
        }
        sqlite3_busy_timeout(handle, 30_000)
        try exec("PRAGMA trusted_schema = OFF")
    }

    private func failure(_ sql: String) -> TestFailure {
        TestFailure("\(sql): \(String(cString: sqlite3_errmsg(handle)))")
    }

    /// Runs one or more statements without parameters.
    func exec(_ sql: String) throws {
        guard sqlite3_exec(handle, sql, nil, nil, nil) == SQLITE_OK else { throw failure(sql) }
    }

    private func prepare(_ sql: String, _ parameters: [Value]) throws -> OpaquePointer? {
        var statement: OpaquePointer?
        guard sqlite3_prepare_v2(handle, sql, -1, &statement, nil) == SQLITE_OK else { throw failure(sql) }
        for (offset, value) in parameters.enumerated() {
            let index = Int32(offset + 1)
            let rc: Int32 =
                switch value {
                case .null: sqlite3_bind_null(statement, index)
                case .integer(let v): sqlite3_bind_int64(statement, index, v)
                case .real(let v): sqlite3_bind_double(statement, index, v)
                case .text(let v): sqlite3_bind_text(statement, index, v, -1, transient)
                case .blob(let v):
                    v.withUnsafeBytes { sqlite3_bind_blob(statement, index, $0.baseAddress, Int32(v.count), transient) }
                }
            guard rc == SQLITE_OK else {
                sqlite3_finalize(statement)
                throw failure(sql)
            }
        }
        return statement
    }

    /// Runs one statement with bound parameters.
    func run(_ sql: String, _ parameters: Value...) throws {
        let statement = try prepare(sql, parameters)
        defer { sqlite3_finalize(statement) }
        guard sqlite3_step(statement) == SQLITE_DONE else { throw failure(sql) }
    }

    /// Every row of a query, each column as the `Value` SQLite stored.
    func rows(_ sql: String) throws -> [[Value]] {
        let statement = try prepare(sql, [])
        defer { sqlite3_finalize(statement) }
        var rows: [[Value]] = []
        while true {
            let rc = sqlite3_step(statement)
            if rc == SQLITE_DONE { break }
            guard rc == SQLITE_ROW else { throw failure(sql) }
            rows.append(
                (0..<sqlite3_column_count(statement)).map { column in
                    switch sqlite3_column_type(statement, column) {
                    case SQLITE_INTEGER: .integer(sqlite3_column_int64(statement, column))
                    case SQLITE_FLOAT: .real(sqlite3_column_double(statement, column))
                    case SQLITE_TEXT: .text(String(cString: sqlite3_column_text(statement, column)))
                    case SQLITE_BLOB:
                        // An empty blob comes back as a NULL pointer.
                        .blob(
                            sqlite3_column_blob(statement, column).map {
                                Data(bytes: $0, count: Int(sqlite3_column_bytes(statement, column)))
                            } ?? Data())
                    default: .null
                    }
                })
        }
        return rows
    }

    deinit { sqlite3_close_v2(handle) }
}

// MARK: - Nodes

/// A node: its own folder with the app's database (schema made through the C API) and a replica.
final class Node {
    let dir: TempDir
    let dbPath: String
    let db: AppDatabase
    var replica: Replica?

    init(schema: String, cfg: Config) async throws {
        dir = try TempDir()
        dbPath = dir.file("app.db")
        db = try AppDatabase(dbPath)
        try db.exec(schema)
        replica = try await openReplicated(db: dbPath, cfg: cfg)
    }

    var r: Replica {
        get throws {
            guard let replica else { throw TestFailure("the replica is closed") }
            return replica
        }
    }

    func close() async throws {
        if let replica {
            self.replica = nil
            try await replica.close()
        }
    }
}

func config(node: UInt64, server: NatsServer, shards: UInt32? = nil) -> Config {
    Config(nodeId: node, nats: .init(urls: [server.url]), replicationLog: .init(shards: shards))
}

let itemsSchema = """
    CREATE TABLE items (
        id INTEGER PRIMARY KEY,
        name TEXT,
        qty INTEGER,
        price REAL,
        data BLOB
    );
    """

/// The first event in `stream` that matches, within `patience`.
func firstEvent(
    in stream: AsyncStream<ChangeEvent>, where matches: @escaping @Sendable (ChangeEvent) -> Bool
) async throws -> ChangeEvent {
    try await within(patience, "a matching change event") {
        for await event in stream where matches(event) {
            return event
        }
        throw TestFailure("the change stream ended without a matching event")
    }
}

/// A thread-safe list that a change handler appends to.
final class Collected<T: Sendable>: @unchecked Sendable {
    private let lock = NSLock()
    private var items: [T] = []

    func append(_ item: T) { lock.withLock { items.append(item) } }
    var all: [T] { lock.withLock { items } }
    var count: Int { lock.withLock { items.count } }
}

// MARK: - The Swift guide's app (docs/guides/swift.md)

/// Waits until every node applied what every node sent, nothing waits anywhere, and the `notes` tables
/// are identical and hold every note added.
func convergeNotes(_ nodes: [NotesDatabase], _ paths: [String], _ added: Collected<String>) async throws {
    var tokens = try await nodes[0].replica.sync(timeout: patience)
    for node in nodes.dropFirst() {
        tokens = tokens.merging(try await node.replica.sync(timeout: patience))
    }
    for node in nodes {
        try await node.replica.waitFor(tokens, timeout: patience)
    }
    let readers = try paths.map { try AppDatabase($0) }
    let query = "SELECT * FROM notes ORDER BY ref"
    try await eventually("identical notes on every node, nothing waiting") {
        for node in nodes {
            if try await !node.replica.status().pausedTables.isEmpty { return false }
        }
        let first = try readers[0].rows(query)
        return try readers.dropFirst().allSatisfy { try $0.rows(query) == first }
    }
    let refs = Set(try readers[0].rows("SELECT ref FROM notes").map { $0[0] })
    let missing = added.all.filter { !refs.contains(.text($0)) }
    XCTAssertEqual(missing, [], "notes added but missing on the nodes")
    for node in nodes {
        let status = try await node.replica.status()
        XCTAssertEqual(status.unsentRows, 0)
        XCTAssertEqual(status.pausedTables, [])
    }
}
