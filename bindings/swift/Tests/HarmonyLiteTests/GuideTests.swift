import Foundation
import HarmonyLite
import XCTest

/// docs/guides/swift.md: its `NotesDatabase.swift` is compiled into this target (NotesDatabase.swift here is
/// the guide's block, checked below) and run on three nodes, with its second migration rolled out node by node
/// while another connection keeps adding notes to node 1's file.
final class GuideTests: XCTestCase {
    private static let guide = URL(fileURLWithPath: #filePath)
        .deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
        .appendingPathComponent("../../docs/guides/swift.md").standardizedFileURL

    func testTheTestedNotesDatabaseIsTheGuides() throws {
        let guide = try String(contentsOf: Self.guide, encoding: .utf8)
        guard let start = guide.range(of: "```swift\n// NotesDatabase.swift\n"),
            let end = guide.range(of: "\n```", range: start.upperBound..<guide.endIndex)
        else { throw TestFailure("\(Self.guide.path) has no ```swift block starting with // NotesDatabase.swift") }
        let block = "// NotesDatabase.swift\n" + String(guide[start.upperBound..<end.lowerBound]) + "\n"
        let copy = try String(
            contentsOf: URL(fileURLWithPath: #filePath).deletingLastPathComponent()
                .appendingPathComponent("NotesDatabase.swift"), encoding: .utf8)
        let header = String(copy.prefix { $0 != "\n" }) + "\n"
        XCTAssertTrue(header.hasPrefix("// docs/guides/swift.md"), "NotesDatabase.swift lost its header line")
        XCTAssertEqual(
            String(copy.dropFirst(header.count)), block,
            "Tests/HarmonyLiteTests/NotesDatabase.swift differs from the guide's block: copy the guide's block there")
    }

    /// The guide's app on three nodes: every node migrates itself; the second migration is deployed node by
    /// node (close, then open with the new code) while notes keep being added to node 1's file.
    func testTheGuidesAppOnThreeNodesWithARollingMigration() async throws {
        let server = try await NatsServer()
        let dirs = try (1...3).map { _ in try TempDir() }
        let paths = dirs.map { $0.file("notes.db") }
        let oldCode = Array(NotesDatabase.migrations.prefix(1))
        var nodes: [NotesDatabase] = []
        for (i, path) in paths.enumerated() {
            nodes.append(
                try await NotesDatabase(
                    path: path, cfg: config(node: UInt64(i + 1), server: server), migrations: oldCode))
        }
        let added = Collected<String>()
        for (i, node) in nodes.enumerated() {
            for n in 0..<5 {
                try node.addNote(ref: "n\(i + 1)-\(n)", body: "from node \(i + 1)")
                added.append("n\(i + 1)-\(n)")
            }
        }
        try await convergeNotes(nodes, paths, added)

        // Another connection keeps adding notes to node 1's file, whether its replica is open or not.
        let stop = Collected<Bool>()
        let node1 = paths[0]
        let writer = Task.detached { () throws -> Int in
            let db = try AppDatabase(node1)
            var count = 0
            while stop.count == 0 {
                try db.run("INSERT INTO notes (ref, body) VALUES (?, ?)", .text("w-\(count)"), .text("writer"))
                added.append("w-\(count)")
                count += 1
                try await Task.sleep(for: .milliseconds(10))
            }
            return count
        }
        for i in nodes.indices {
            let before = added.count
            try await eventually("the writer to go on writing") { added.count >= before + 5 }
            try await nodes[i].close()
            nodes[i] = try await NotesDatabase(path: paths[i], cfg: config(node: UInt64(i + 1), server: server))
            try nodes[i].addNote(ref: "after-\(i + 1)", body: "the new code")
            added.append("after-\(i + 1)")
            try NotesDatabase.exec(nodes[i].db, "UPDATE notes SET tag = 'node \(i + 1)' WHERE ref = 'after-\(i + 1)'")
        }
        stop.append(true)
        let written = try await writer.value
        XCTAssertGreaterThan(written, 0)
        try await convergeNotes(nodes, paths, added)
        for node in nodes {
            try await node.close()
        }
    }
}
