import Foundation

/// Writes the core's logs to stderr, filtered like `RUST_LOG` (`"info"`, `"harmonylite=debug"`). Only the
/// first call in a process takes effect (returns `true`).
@discardableResult
public func enableLogging(_ filter: String = "info") throws -> Bool {
    try translatingErrors { try nativeEnableLogging(filter: filter) }
}

/// The SQLite library the native core uses (its version and the process-wide soft heap limit). It must be
/// the one the app uses; set a soft heap limit through the C API and compare to check.
public func sqliteLibrary() throws -> SqliteLibrary {
    try translatingErrors { try nativeSqliteLibrary() }
}

/// Replicas in this process not fully released yet: open, or closing in the background after their last
/// reference went away. For leak checks.
public func liveReplicaCount() -> UInt64 {
    nativeLiveReplicaCount()
}

/// Milliseconds for the native calls (negative durations count as zero).
func milliseconds(_ duration: Duration) -> UInt64 {
    let (seconds, attoseconds) = duration.components
    guard seconds >= 0 else { return 0 }
    let (ms, overflow) = UInt64(seconds).multipliedReportingOverflow(by: 1000)
    if overflow { return UInt64.max }
    return ms &+ UInt64(max(attoseconds, 0) / 1_000_000_000_000_000)
}
