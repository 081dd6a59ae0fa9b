// docs/guides/swift.md's NotesDatabase.swift, as written there: GuideTests checks that the two are the same.
// NotesDatabase.swift
import CSQLite
import HarmonyLite

struct SQLiteError: Error, CustomStringConvertible {
    let description: String
}

/// The app's database: its own SQLite connection, replicated.
final class NotesDatabase {
    /// The schema, one step per migration, in order.
    static let migrations = [
        "CREATE TABLE notes (id INTEGER PRIMARY KEY, ref TEXT NOT NULL UNIQUE, body TEXT)",
        "ALTER TABLE notes ADD COLUMN tag TEXT",
    ]

    let db: OpaquePointer
    let replica: Replica

    init(path: String, cfg: Config, migrations: [String] = NotesDatabase.migrations) async throws {
        var handle: OpaquePointer?
        guard sqlite3_open(path, &handle) == SQLITE_OK, let handle else {
            sqlite3_close(handle)
            throw SQLiteError(description: "cannot open \(path)")
        }
        sqlite3_busy_timeout(handle, 20_000)  // the replicator writes to the file too: wait for it
        do {
            try Self.migrate(handle, migrations)
            replica = try await openReplicated(db: path, cfg: cfg)  // one line to replicate...
        } catch {
            sqlite3_close(handle)
            throw error
        }
        db = handle
    }

    func close() async throws {
        try await replica.close()  // ...and one to stop: what was committed is published first
        sqlite3_close(db)
    }

    func addNote(ref: String, body: String) throws {
        var statement: OpaquePointer?
        guard sqlite3_prepare_v2(db, "INSERT INTO notes (ref, body) VALUES (?, ?)", -1, &statement, nil) == SQLITE_OK
        else { throw Self.failure(db) }
        defer { sqlite3_finalize(statement) }
        sqlite3_bind_text(statement, 1, ref, -1, Self.transient)
        sqlite3_bind_text(statement, 2, body, -1, Self.transient)
        guard sqlite3_step(statement) == SQLITE_DONE else { throw Self.failure(db) }
    }

    /// Runs the steps this file has not run yet. `PRAGMA user_version` is a field of the file, never
    /// replicated: it counts the steps that ran on this node.
    static func migrate(_ db: OpaquePointer, _ steps: [String]) throws {
        try exec(db, "BEGIN IMMEDIATE")
        do {
            var statement: OpaquePointer?
            guard sqlite3_prepare_v2(db, "PRAGMA user_version", -1, &statement, nil) == SQLITE_OK else {
                throw failure(db)
            }
            let done = sqlite3_step(statement) == SQLITE_ROW ? Int(sqlite3_column_int(statement, 0)) : 0
            sqlite3_finalize(statement)
            if done < steps.count {
                for step in steps[done...] { try exec(db, step) }
                try exec(db, "PRAGMA user_version = \(steps.count)")
            }
            try exec(db, "COMMIT")
        } catch {
            sqlite3_exec(db, "ROLLBACK", nil, nil, nil)
            throw error
        }
    }

    static func exec(_ db: OpaquePointer, _ sql: String) throws {
        guard sqlite3_exec(db, sql, nil, nil, nil) == SQLITE_OK else { throw failure(db) }
    }

    private static func failure(_ db: OpaquePointer) -> SQLiteError {
        SQLiteError(description: String(cString: sqlite3_errmsg(db)))
    }

    /// SQLITE_TRANSIENT, which Swift does not import: SQLite copies the bound text.
    private static let transient = unsafeBitCast(-1, to: sqlite3_destructor_type.self)
}
