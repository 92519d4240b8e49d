/// Splits a byte stream into verified frames. Bytes from the network are
/// untrusted: a bad magic, unknown type, non-zero reserved field, length over
/// the cap or checksum mismatch throws, and the stream is then unusable (the
/// connection must be dropped: there is no resynchronising inside TCP).
public struct FrameDecoder: Sendable {
    private var buffer: [UInt8] = []
    private var start = 0

    public init() {}

    /// Bytes received and not yet returned as frames.
    public var bufferedCount: Int { buffer.count - start }

    /// Adds received bytes.
    public mutating func append(_ bytes: UnsafeRawBufferPointer) {
        if start > 0 && start == buffer.count {
            buffer.removeAll(keepingCapacity: true)
            start = 0
        } else if start > 1 << 20 {
            buffer.removeFirst(start)
            start = 0
        }
        buffer.append(contentsOf: bytes)
    }

    public mutating func append(_ bytes: [UInt8]) { bytes.withUnsafeBytes { append($0) } }

    /// The next complete frame, or nil if more bytes are needed.
    public mutating func next() throws(WireError) -> Frame? {
        guard bufferedCount >= Frame.headerSize else { return nil }
        let header = buffer[start..<(start + Frame.headerSize)]
        func integer<I: FixedWidthInteger>(_ offset: Int, _: I.Type) -> I {
            (0..<MemoryLayout<I>.size).reduce(I(0)) { $0 | I(header[start + offset + $1]) << (8 * $1) }
        }
        let magic = integer(0, UInt32.self)
        guard magic == Frame.magic else { throw .malformed("bad magic 0x\(String(magic, radix: 16)) (not an Understudy peer?)") }
        let rawKind = header[start + 4]
        guard let kind = Frame.Kind(rawValue: rawKind) else { throw .malformed("unknown frame type \(rawKind)") }
        guard header[start + 5] == 0, integer(6, UInt16.self) == 0 else { throw .malformed("reserved header bits set") }
        let length = Int(integer(8, UInt32.self))
        guard length <= Frame.maximumPayload else { throw .malformed("payload of \(length) bytes over the cap of \(Frame.maximumPayload)") }
        let sequence = integer(12, UInt64.self)
        guard bufferedCount >= Frame.headerSize + length else { return nil }
        let payload = Array(buffer[(start + Frame.headerSize)..<(start + Frame.headerSize + length)])
        guard Frame.checksum(header: header, payload: payload) == integer(20, UInt32.self) else {
            throw .checksumMismatch(type: rawKind, sequence: sequence)
        }
        start += Frame.headerSize + length
        return Frame(kind, sequence: sequence, payload: payload)
    }
}
