import Foundation

/// `Token` (generated): a read-your-writes token, per shard the stream position a node must have applied.
/// Its text form (`"0:15,1:20"`) travels between processes and languages.
extension Token: CustomStringConvertible, LosslessStringConvertible {
    /// An empty token (waiting for it returns at once).
    public init() {
        self.init(positions: [:])
    }

    /// Parses the text form; `nil` when it is not a token.
    public init?(_ description: String) {
        guard let token = try? Token(parsing: description) else { return nil }
        self = token
    }

    /// Parses the text form; throws `.config(key: "token", ...)` when it is not a token.
    public init(parsing text: String) throws {
        self = try translatingErrors { try nativeTokenFromString(text: text) }
    }

    public var description: String {
        nativeTokenToString(token: self)
    }

    /// A token that waits for both.
    public func merging(_ other: Token) -> Token {
        nativeTokenMerge(a: self, b: other)
    }
}

extension ChangeOp: CustomStringConvertible {
    /// `insert`, `update` or `delete`.
    public var description: String {
        switch self {
        case .insert: "insert"
        case .update: "update"
        case .delete: "delete"
        }
    }
}

extension ConflictKind: CustomStringConvertible {
    /// The stable name shared with the other languages: `change_lost`, `values_overwritten`,
    /// `deleted_with_edits`, `key_moved`, `constraint` or `table_dropped`.
    public var description: String {
        nativeConflictKindName(kind: self)
    }
}

extension Value: CustomStringConvertible {
    /// The value as an SQL literal: `NULL`, `42`, `1.5`, `'text'`, `x'00ff'`.
    public var description: String {
        switch self {
        case .null: "NULL"
        case .integer(let value): String(value)
        case .real(let value): String(value)
        case .text(let value): "'" + value.replacingOccurrences(of: "'", with: "''") + "'"
        case .blob(let value): "x'" + value.map { String(format: "%02x", $0) }.joined() + "'"
        }
    }
}
