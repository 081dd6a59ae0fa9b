// swift-tools-version:6.0
// HarmonyLite for Swift: leaderless SQLite replication over NATS JetStream, in-process.
//
// The native library (`libharmonylite_swift`, built from this folder's Rust crate) must be on the linker's
// search path: `swift build -Xlinker -L<dir of libharmonylite_swift.so>` (see README.md; `test.sh` does it).
import PackageDescription

let package = Package(
    name: "HarmonyLite",
    platforms: [.macOS(.v13), .iOS(.v16)],
    products: [
        .library(name: "HarmonyLite", targets: ["HarmonyLite"]),
        // The system SQLite C API (the same library the native core links: one SQLite per process).
        .library(name: "CSQLite", targets: ["CSQLite"]),
    ],
    targets: [
        // The C declarations uniffi generates, and a module map that links the native library.
        .systemLibrary(name: "HarmonyLiteFFI", path: "Sources/HarmonyLiteFFI"),
        .systemLibrary(name: "CSQLite", path: "Sources/CSQLite"),
        // The generated Swift (Sources/HarmonyLite/Generated, never edited) and the idiomatic layer over it.
        .target(name: "HarmonyLite", dependencies: ["HarmonyLiteFFI"], path: "Sources/HarmonyLite"),
        .testTarget(
            name: "HarmonyLiteTests",
            dependencies: ["HarmonyLite", "CSQLite"],
            path: "Tests/HarmonyLiteTests"
        ),
    ],
    swiftLanguageModes: [.v6]
)
