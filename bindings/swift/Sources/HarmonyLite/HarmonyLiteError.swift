import Foundation

/// Every error HarmonyLite throws. One case per stable error code of the core (`code` gives the string, the
/// same in every language); `message` is the core's full explanation. Switch on the case, never on the text.
public enum HarmonyLiteError: Error, Equatable, Hashable, Sendable, CustomStringConvertible, LocalizedError {
    /// A configuration key has a bad value; `key` names it as written in TOML (`nats.urls`).
    case config(key: String, message: String)
    /// The database stayed locked by another connection longer than the retry budget.
    case sqliteBusy(message: String)
    case sqlite(message: String)
    /// NATS could not be reached or refused an operation.
    case transport(message: String)
    case timeout(message: String)
    /// The tables differ between nodes; replication of them is paused until they agree.
    case schemaMismatch(message: String)
    case snapshot(message: String)
    /// The replica was closed (or is used in a process forked after it was opened).
    case closed(message: String)
    case io(message: String)
    /// A table has no declared primary key; rowids cannot replicate. Add one or exclude the table.
    case noPrimaryKey(message: String)
    /// The default configuration starts an embedded nats-server, and no binary was found.
    case natsServerNotFound(message: String)
    case `internal`(message: String)

    /// The stable code: `CONFIG`, `SQLITE_BUSY`, `SQLITE`, `TRANSPORT`, `TIMEOUT`, `SCHEMA_MISMATCH`,
    /// `SNAPSHOT`, `CLOSED`, `IO`, `NO_PRIMARY_KEY`, `NATS_SERVER_NOT_FOUND` or `INTERNAL`.
    public var code: String {
        switch self {
        case .config: "CONFIG"
        case .sqliteBusy: "SQLITE_BUSY"
        case .sqlite: "SQLITE"
        case .transport: "TRANSPORT"
        case .timeout: "TIMEOUT"
        case .schemaMismatch: "SCHEMA_MISMATCH"
        case .snapshot: "SNAPSHOT"
        case .closed: "CLOSED"
        case .io: "IO"
        case .noPrimaryKey: "NO_PRIMARY_KEY"
        case .natsServerNotFound: "NATS_SERVER_NOT_FOUND"
        case .internal: "INTERNAL"
        }
    }

    public var message: String {
        switch self {
        case .config(_, let message), .sqliteBusy(let message), .sqlite(let message),
            .transport(let message), .timeout(let message), .schemaMismatch(let message),
            .snapshot(let message), .closed(let message), .io(let message),
            .noPrimaryKey(let message), .natsServerNotFound(let message), .internal(let message):
            message
        }
    }

    /// The configuration key a `.config` error names.
    public var key: String? {
        if case .config(let key, _) = self { key } else { nil }
    }

    public var description: String { "\(code): \(message)" }

    public var errorDescription: String? { description }

    /// The one mapping from the native error (one case per core error code) to this enum.
    init(_ native: NativeError) {
        switch native {
        case .Config(let key, let message): self = .config(key: key, message: message)
        case .SqliteBusy(let message): self = .sqliteBusy(message: message)
        case .Sqlite(let message): self = .sqlite(message: message)
        case .Transport(let message): self = .transport(message: message)
        case .Timeout(let message): self = .timeout(message: message)
        case .SchemaMismatch(let message): self = .schemaMismatch(message: message)
        case .Snapshot(let message): self = .snapshot(message: message)
        case .Closed(let message): self = .closed(message: message)
        case .Io(let message): self = .io(message: message)
        case .NoPrimaryKey(let message): self = .noPrimaryKey(message: message)
        case .NatsServerNotFound(let message): self = .natsServerNotFound(message: message)
        case .Internal(let message): self = .internal(message: message)
        }
    }

    /// Any error from the generated layer: native errors by case; anything else (a broken FFI call) is
    /// internal.
    static func from(_ error: any Error) -> HarmonyLiteError {
        switch error {
        case let error as HarmonyLiteError: error
        case let native as NativeError: HarmonyLiteError(native)
        default: .internal(message: String(describing: error))
        }
    }
}

/// Runs a native call, rethrowing its error as a `HarmonyLiteError`.
func translatingErrors<T>(_ body: () throws -> T) throws -> T {
    do {
        return try body()
    } catch {
        throw HarmonyLiteError.from(error)
    }
}

/// Runs an async native call, rethrowing its error as a `HarmonyLiteError`.
func translatingErrors<T: Sendable>(_ body: () async throws -> T) async throws -> T {
    do {
        return try await body()
    } catch {
        throw HarmonyLiteError.from(error)
    }
}
