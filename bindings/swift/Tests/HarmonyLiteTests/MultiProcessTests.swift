import Foundation
import HarmonyLite
import XCTest

/// docs/guides/swift.md, "Several processes on one file": the guide's `NotesDatabase`, opened by two processes
/// on node 1's file (an app and its extension, or two workers of a server). One runs the replicator, the other
/// attaches to it; when the active one closes, the other takes over, and the notes both wrote reach node 2.
///
/// The second process is this test binary run again with this one test selected and `HL_NOTES_CHILD_DB` set:
/// it then plays the child (`runChild`), driven by lines on its stdin and answering on its stdout.
final class MultiProcessTests: XCTestCase {
    func testSeveralProcessesOnOneFile() async throws {
        if let db = ProcessInfo.processInfo.environment["HL_NOTES_CHILD_DB"] {
            return try await runChild(db: db)
        }
        let server = try await NatsServer()
        let dirs = try (1...2).map { _ in try TempDir() }
        let paths = dirs.map { $0.file("notes.db") }
        let added = Collected<String>()
        let node2 = try await NotesDatabase(path: paths[1], cfg: config(node: 2, server: server))
        var app = try await NotesDatabase(path: paths[0], cfg: config(node: 1, server: server))
        let first = try await app.replica.status()
        XCTAssertEqual(first.role, .active)
        for n in 0..<5 {
            try app.addNote(ref: "app-\(n)", body: "from the app")
            added.append("app-\(n)")
        }

        // The second process on node 1's file attaches to the app's replicator, and its notes replicate.
        let child = try ChildProcess(db: paths[0], node: 1, server: server)
        defer { child.kill() }
        let opened = try await child.reply(to: nil, prefix: "READY")
        XCTAssertEqual(opened, ["attached", "\(getpid())"], "the child attaches to this process's replicator")
        _ = try await child.reply(to: "add child-a 5", prefix: "ADDED")
        (0..<5).forEach { added.append("child-a-\($0)") }
        try await convergeNotes([app, node2], [paths[0], paths[1]], added)
        let serving = try await app.replica.status()
        XCTAssertEqual(serving.attachedHandles, 1, "the child's handle")

        // The app exits: the child takes over and goes on replicating.
        try await app.close()
        try await eventually("the child to take over") {
            try await child.reply(to: "role", prefix: "ROLE") == ["active", "\(child.pid)"]
        }
        _ = try await child.reply(to: "add child-b 5", prefix: "ADDED")
        (0..<5).forEach { added.append("child-b-\($0)") }

        // The app starts again: now it attaches to the child's replicator, until the child exits in turn.
        app = try await NotesDatabase(path: paths[0], cfg: config(node: 1, server: server))
        let status = try await app.replica.status()
        XCTAssertEqual(status.role, .attached)
        XCTAssertEqual(status.replicatorPid, UInt32(child.pid))
        for n in 0..<5 {
            try app.addNote(ref: "app-again-\(n)", body: "from the app, attached")
            added.append("app-again-\(n)")
        }
        _ = try await child.reply(to: "close", prefix: "CLOSED")
        try child.waitForExit()
        try await eventually("the app to take over") { try await app.replica.status().role == .active }
        try await convergeNotes([app, node2], [paths[0], paths[1]], added)
        try await app.close()
        try await node2.close()
    }

    /// The child: opens the guide's `NotesDatabase` on the file it was given, then answers commands until told
    /// to close.
    private func runChild(db: String) async throws {
        let environment = ProcessInfo.processInfo.environment
        guard let node = environment["HL_NOTES_CHILD_NODE"].flatMap(UInt64.init),
            let url = environment["HL_NOTES_CHILD_NATS"]
        else { throw TestFailure("HL_NOTES_CHILD_NODE and HL_NOTES_CHILD_NATS must be set for the child") }
        let notes = try await NotesDatabase(path: db, cfg: Config(nodeId: node, nats: .init(urls: [url])))
        func say(_ words: String...) {
            // Unbuffered: the parent waits for each line.
            FileHandle.standardOutput.write(Data(((["HL"] + words).joined(separator: " ") + "\n").utf8))
        }
        let opened = try await notes.replica.status()
        say("READY", "\(opened.role)", "\(opened.replicatorPid)")
        while let line = readLine() {
            let words = line.split(separator: " ").map(String.init)
            switch words.first {
            case "add":
                guard words.count == 3, let count = Int(words[2]) else { throw TestFailure("bad command \(line)") }
                for n in 0..<count {
                    try notes.addNote(ref: "\(words[1])-\(n)", body: "from the child")
                }
                say("ADDED")
            case "role":
                let status = try await notes.replica.status()
                say("ROLE", "\(status.role)", "\(status.replicatorPid)")
            case "close":
                try await notes.close()
                say("CLOSED")
                return
            default:
                throw TestFailure("unknown command \(line)")
            }
        }
        try await notes.close()
    }
}

/// This test binary run again as the child of `testSeveralProcessesOnOneFile`, talked to over pipes.
private final class ChildProcess: @unchecked Sendable {
    private let process = Process()
    private let input = Pipe()
    private let output = Pipe()
    private let lines = Collected<String>()
    private var consumed = 0
    var pid: Int32 { process.processIdentifier }

    init(db: String, node: UInt64, server: NatsServer) throws {
        let exe = try FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe")
        process.executableURL = URL(fileURLWithPath: exe)
        process.arguments = ["HarmonyLiteTests.MultiProcessTests/testSeveralProcessesOnOneFile"]
        var environment = ProcessInfo.processInfo.environment
        environment["HL_NOTES_CHILD_DB"] = db
        environment["HL_NOTES_CHILD_NODE"] = "\(node)"
        environment["HL_NOTES_CHILD_NATS"] = server.url
        process.environment = environment
        process.standardInput = input
        process.standardOutput = output
        let lines = self.lines
        let reader = LineReader()
        output.fileHandleForReading.readabilityHandler = { handle in
            let data = handle.availableData
            guard !data.isEmpty else {
                handle.readabilityHandler = nil
                return
            }
            for line in reader.lines(adding: data) {
                if let at = line.range(of: "HL ") { lines.append(String(line[at.upperBound...])) }
            }
        }
        try process.run()
    }

    /// Sends `command` (if any) and returns the words after `prefix` of the next reply line.
    func reply(to command: String?, prefix: String) async throws -> [String] {
        if let command {
            input.fileHandleForWriting.write(Data((command + "\n").utf8))
        }
        var answer: [String]?
        try await eventually("the child's \(prefix) reply to \(command ?? "its start")") {
            guard lines.count > consumed else {
                if !process.isRunning { throw TestFailure("the child exited (status \(process.terminationStatus))") }
                return false
            }
            let words = lines.all[consumed].split(separator: " ").map(String.init)
            consumed += 1
            guard words.first == prefix else { throw TestFailure("the child answered \(words), not \(prefix)") }
            answer = Array(words.dropFirst())
            return true
        }
        return answer ?? []
    }

    func waitForExit() throws {
        process.waitUntilExit()
        guard process.terminationStatus == 0 else {
            throw TestFailure("the child exited with status \(process.terminationStatus)")
        }
    }

    func kill() {
        if process.isRunning {
            process.terminate()
            process.waitUntilExit()
        }
    }
}

/// Splits a pipe's output into lines; a line may arrive in pieces. Only the pipe's handler calls it, one call at
/// a time.
private final class LineReader: @unchecked Sendable {
    private var partial = Data()

    func lines(adding data: Data) -> [String] {
        partial.append(data)
        var lines: [String] = []
        while let newline = partial.firstIndex(of: UInt8(ascii: "\n")) {
            lines.append(String(decoding: partial[partial.startIndex..<newline], as: UTF8.self))
            partial = Data(partial[partial.index(after: newline)...])
        }
        return lines
    }
}
