import Foundation
@testable import HarmonyLite
import XCTest

/// Asserts that `body` throws a `HarmonyLiteError` and returns it.
func expectError<T>(
    _ body: () async throws -> T, file: StaticString = #filePath, line: UInt = #line
) async -> HarmonyLiteError? {
    do {
        _ = try await body()
        XCTFail("expected a HarmonyLiteError", file: file, line: line)
    } catch let error as HarmonyLiteError {
        return error
    } catch {
        XCTFail("expected a HarmonyLiteError, got \(type(of: error)): \(error)", file: file, line: line)
    }
    return nil
}

final class ErrorTests: XCTestCase {
    /// Every code of the core maps to its own case, whose `code` is the core's string.
    func testEveryCoreErrorCodeMapsToItsCase() throws {
        let codes = nativeErrorCodes()
        XCTAssertEqual(codes.count, 12)
        var cases = Set<String>()
        for code in codes {
            do {
                try nativeErrorSample(code: code)
                XCTFail("\(code): no error")
            } catch let native as NativeError {
                let error = HarmonyLiteError(native)
                XCTAssertEqual(error.code, code)
                XCTAssertFalse(error.message.isEmpty)
                cases.insert("\(error)".components(separatedBy: ":")[0])
                if code == "CONFIG" { XCTAssertEqual(error.key, "nats.urls") }
            }
        }
        XCTAssertEqual(cases.count, codes.count)
        XCTAssertEqual(
            HarmonyLiteError(NativeError.Timeout(message: "m")), .timeout(message: "m"))
    }

    func testBadConfigNamesTheKey() async throws {
        let dir = try TempDir()
        let db = dir.file("app.db")

        var unknown = Config()
        unknown["nats.urlz"] = ["nats://127.0.0.1:4222"]
        let unknownError = await expectError { try await openReplicated(db: db, cfg: unknown) }
        XCTAssertEqual(unknownError?.key, "nats.urlz")
        XCTAssertEqual(unknownError?.code, "CONFIG")

        var shards = Config()
        shards.replicationLog.shards = 0
        let shardsError = await expectError { try shards.validated() }
        XCTAssertEqual(shardsError?.key, "replication_log.shards")

        var wrongType = Config()
        wrongType["nats.urls"] = "nats://127.0.0.1:4222"  // a string where a list belongs
        let typeError = await expectError { try wrongType.validated() }
        XCTAssertEqual(typeError?.key, "nats.urls")

        let tomlError = await expectError { try Config(toml: "node_id = 1\n[replication_log]\nshardz = 2\n") }
        XCTAssertEqual(tomlError?.key, "replication_log.shardz")

        let binary = await expectError {
            try await openReplicated(db: db, cfg: Config(nats: .init(serverBinary: dir.file("no-such-nats-server"))))
        }
        XCTAssertEqual(binary?.key, "nats.server_binary")
        XCTAssertFalse(FileManager.default.fileExists(atPath: db + ".harmonylite"))
    }

    func testConfigRoundTripsThroughToml() throws {
        let dir = try TempDir()
        let file = dir.file("config.toml")
        try """
        node_id = 7
        [nats]
        urls = ["nats://127.0.0.1:4222"]
        [replication_log]
        shards = 3
        max_age = "2h"
        """.write(toFile: file, atomically: true, encoding: .utf8)
        let cfg = try Config(contentsOf: URL(fileURLWithPath: file))
        XCTAssertEqual(cfg.nodeId, 7)
        XCTAssertEqual(cfg.nats.urls, ["nats://127.0.0.1:4222"])
        XCTAssertEqual(cfg.replicationLog.shards, 3)
        XCTAssertEqual(cfg["replication_log.max_age"], .integer(7200))
        XCTAssertEqual(try cfg.validated(), cfg)

        let defaults = try Config().validated()
        XCTAssertEqual(defaults.nats.urls, [])
        XCTAssertEqual(defaults.snapshot.enabled, true)
        XCTAssertEqual(defaults["apply.max_batch_rows"], .integer(1000))

        let missing = try? Config(contentsOf: URL(fileURLWithPath: dir.file("missing.toml")))
        XCTAssertNil(missing)
    }

    func testRuntimeErrorsMapToTheirCases() async throws {
        let server = try await NatsServer()
        let dir = try TempDir()

        let io = await expectError {
            try await openReplicated(db: dir.file("no/such/folder/app.db"), cfg: config(node: 1, server: server))
        }
        guard case .io? = io else { return XCTFail("expected .io, got \(String(describing: io))") }

        let noKey = dir.file("nokey.db")
        try AppDatabase(noKey).exec("CREATE TABLE log (line TEXT)")
        let pk = await expectError { try await openReplicated(db: noKey, cfg: config(node: 1, server: server)) }
        guard case .noPrimaryKey(let message)? = pk else {
            return XCTFail("expected .noPrimaryKey, got \(String(describing: pk))")
        }
        XCTAssertTrue(message.contains("log"))

        let node = try await Node(schema: itemsSchema, cfg: config(node: 1, server: server))
        let timeout = await expectError {
            try await node.r.waitFor(Token(positions: [0: 1_000_000]), timeout: .milliseconds(300))
        }
        guard case .timeout? = timeout else { return XCTFail("expected .timeout, got \(String(describing: timeout))") }

        let token = await expectError { try Token(parsing: "0:x") }
        XCTAssertEqual(token?.key, "token")

        var noSnapshots = config(node: 2, server: server)
        noSnapshots.snapshot.enabled = false
        let other = try await Node(schema: itemsSchema, cfg: noSnapshots)
        let disabled = await expectError { try await other.r.saveSnapshot() }
        XCTAssertEqual(disabled?.key, "snapshot.enabled")
        try await other.close()
        try await node.close()
    }

    /// With the default configuration and no nats-server anywhere, the error says how to get one.
    func testMissingNatsServerIsReported() async throws {
        let saved = ProcessInfo.processInfo.environment["HARMONYLITE_NATS_SERVER"]
        let savedVenv = ProcessInfo.processInfo.environment["VIRTUAL_ENV"]
        unsetenv("HARMONYLITE_NATS_SERVER")
        unsetenv("VIRTUAL_ENV")
        defer {
            if let saved { setenv("HARMONYLITE_NATS_SERVER", saved, 1) }
            if let savedVenv { setenv("VIRTUAL_ENV", savedVenv, 1) }
        }
        let dir = try TempDir()
        do {
            let replica = try await openReplicated(db: dir.file("app.db"), cfg: Config())
            try await replica.close()
            throw XCTSkip("a nats-server was found on PATH or through Python; cannot test its absence here")
        } catch let error as HarmonyLiteError {
            guard case .natsServerNotFound(let message) = error else {
                return XCTFail("expected .natsServerNotFound, got \(error)")
            }
            XCTAssertTrue(message.contains("HARMONYLITE_NATS_SERVER"))
        }
    }
}
