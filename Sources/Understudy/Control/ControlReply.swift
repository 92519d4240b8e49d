import Foundation

/// The answer to a control request: one line of JSON.
public struct ControlReply: Codable, Sendable, Equatable {
    /// Whether the request was carried out.
    public var ok: Bool
    /// What happened, for a person (the error when `ok` is false).
    public var message: String?
    /// The process's state (every reply carries it when the process could tell).
    public var status: HostStatus?

    public init(ok: Bool, message: String? = nil, status: HostStatus? = nil) {
        self.ok = ok
        self.message = message
        self.status = status
    }

    /// The reply's line (JSON, no newline).
    public var encoded: [UInt8] {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys]
        return (try? [UInt8](encoder.encode(self))) ?? Array(#"{"ok":false,"message":"cannot encode the reply"}"#.utf8)
    }

    /// Reads a reply line; a clear error for anything else.
    public init(line: [UInt8]) throws(ControlError) {
        guard line.count <= Self.maximumLineBytes else { throw .malformed("a reply of \(line.count) bytes") }
        do {
            self = try JSONDecoder().decode(ControlReply.self, from: Data(line))
        } catch {
            throw .malformed("a reply that is not the expected JSON: \(error)")
        }
    }

    /// The longest reply line a client reads.
    public static let maximumLineBytes = 64 << 10
}
