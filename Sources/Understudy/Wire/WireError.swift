import Glibc

/// Why the replication link failed or refused what it received. Every frame
/// from the network is untrusted: each case says what was wrong.
public enum WireError: Error, Equatable, Sendable, CustomStringConvertible {
    /// A socket call failed.
    case system(call: String, errno: Int32)
    /// HOST:PORT could not be read or resolved.
    case badAddress(String)
    /// The peer closed the connection.
    case closed
    /// Nothing arrived within the timeout.
    case timedOut(milliseconds: Int)
    /// A frame header or payload that does not follow Docs/Protocol.md.
    case malformed(String)
    /// The frame's CRC-32C does not match its bytes.
    case checksumMismatch(type: UInt8, sequence: UInt64)
    /// The handshake was refused (by us or by the peer), with the reason.
    case refused(String)
    /// A well-formed frame that is not allowed at this point of the session.
    case unexpected(String)

    public var description: String {
        switch self {
        case .system(let call, let code): "\(call) failed: \(String(cString: strerror(code))) (errno \(code))"
        case .badAddress(let why): "bad address: \(why)"
        case .closed: "the peer closed the connection"
        case .timedOut(let ms): "nothing received for \(ms) ms"
        case .malformed(let why): "malformed frame: \(why)"
        case .checksumMismatch(let type, let sequence): "frame type \(type), sequence \(sequence): checksum mismatch"
        case .refused(let why): "refused: \(why)"
        case .unexpected(let why): "unexpected frame: \(why)"
        }
    }
}

extension WireError {
    /// Whether the error means the peer is gone (silence past the timeout, a
    /// closed or reset connection) rather than that what it sent was wrong. Only
    /// the first lets a standby take over (DESIGN.md invariant 6).
    public var meansThePeerIsGone: Bool {
        switch self {
        case .closed, .timedOut, .system: true
        case .badAddress, .malformed, .checksumMismatch, .refused, .unexpected: false
        }
    }
}

/// Little-endian reads from an untrusted payload; running short is a `.malformed` error.
struct PayloadReader {
    private var bytes: ArraySlice<UInt8>
    private let what: String

    init(_ bytes: [UInt8], what: String) {
        self.bytes = bytes[...]
        self.what = what
    }

    mutating func take(_ count: Int) throws(WireError) -> ArraySlice<UInt8> {
        guard count >= 0, bytes.count >= count else { throw .malformed("\(what) payload is truncated") }
        defer { bytes = bytes.dropFirst(count) }
        return bytes.prefix(count)
    }

    mutating func integer<I: FixedWidthInteger>(_ type: I.Type = I.self) throws(WireError) -> I {
        try take(MemoryLayout<I>.size).enumerated().reduce(I(0)) { $0 | I($1.element) << (8 * $1.offset) }
    }

    /// Refuses trailing bytes.
    func finish() throws(WireError) {
        guard bytes.isEmpty else { throw .malformed("\(what) payload has \(bytes.count) extra bytes") }
    }
}

extension Array where Element == UInt8 {
    mutating func appendLittleEndian<I: FixedWidthInteger>(_ value: I) {
        Swift.withUnsafeBytes(of: value.littleEndian) { append(contentsOf: $0) }
    }
}
