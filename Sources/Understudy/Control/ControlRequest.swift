/// What `understudy-ctl` asks a running primary or standby: one line of
/// ASCII, a command word and a newline (Docs/Operations.md, "Control and status").
public enum ControlRequest: String, Sendable, CaseIterable {
    /// Role, protection, generation, last commit, lag, rates, held output.
    case status
    /// Hand the guest to the standby (a planned switchover); the primary
    /// becomes the standby.
    case switchover
    /// Stop as SIGTERM does: a primary says goodbye to its standby (no
    /// takeover) and stops its guest; a standby stops without taking over.
    case stop

    /// The longest line a server reads.
    public static let maximumLineBytes = 64

    /// Reads a request line (without its newline). Anything but a known
    /// command word, in lower case, is refused with what was wrong.
    public init(line: some Collection<UInt8>) throws(ControlError) {
        guard line.count <= Self.maximumLineBytes else { throw .malformed("a request of \(line.count) bytes (at most \(Self.maximumLineBytes))") }
        guard line.allSatisfy({ $0 >= 0x20 && $0 < 0x7F }) else { throw .malformed("a request with bytes that are not printable ASCII") }
        let word = String(decoding: line, as: UTF8.self)
        guard let request = ControlRequest(rawValue: word) else {
            throw .malformed("unknown command '\(word)' (known: \(Self.allCases.map(\.rawValue).joined(separator: ", ")))")
        }
        self = request
    }
}
