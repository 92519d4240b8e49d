/// One item of external output, as it travels inside a checkpoint: kind (u8),
/// length (u32 LE), bytes. A checkpoint's `output` is a run of these.
public struct OutputRecord: Sendable, Equatable {
    public enum Kind: UInt8, Sendable {
        /// Bytes the guest wrote to its console (serial port).
        case console = 0
        /// One Ethernet frame the guest transmitted.
        case network = 1
    }

    public var kind: Kind
    public var bytes: [UInt8]

    public init(kind: Kind, bytes: [UInt8]) {
        self.kind = kind
        self.bytes = bytes
    }

    /// Bytes before each record's payload: kind (u8), length (u32).
    public static let headerSize = 5

    /// The largest record accepted when decoding (a jumbo frame and then some).
    public static let maximumLength = 1 << 20

    func append(to out: inout [UInt8]) {
        out.append(kind.rawValue)
        let length = UInt32(bytes.count)
        for i in 0..<4 { out.append(UInt8(truncatingIfNeeded: length >> (8 * UInt32(i)))) }
        out += bytes
    }

    /// Encodes `records` as a checkpoint's output bytes.
    public static func encode(_ records: [OutputRecord]) -> [UInt8] {
        var out: [UInt8] = []
        for record in records { record.append(to: &out) }
        return out
    }

    /// Why output bytes could not be read.
    public struct DecodeError: Error, Equatable, Sendable, CustomStringConvertible {
        public var offset: Int
        public var reason: String
        public var description: String { "output record at byte \(offset): \(reason)" }
    }

    /// Decodes a checkpoint's output bytes; untrusted input, every length checked.
    public static func decode(_ bytes: [UInt8]) throws(DecodeError) -> [OutputRecord] {
        var records: [OutputRecord] = []
        var offset = 0
        while offset < bytes.count {
            guard bytes.count - offset >= 5 else { throw DecodeError(offset: offset, reason: "truncated header") }
            guard let kind = Kind(rawValue: bytes[offset]) else {
                throw DecodeError(offset: offset, reason: "unknown kind \(bytes[offset])")
            }
            var length = 0
            for i in 0..<4 { length |= Int(bytes[offset + 1 + i]) << (8 * i) }
            guard length <= maximumLength else { throw DecodeError(offset: offset, reason: "length \(length) over \(maximumLength)") }
            guard length <= bytes.count - offset - 5 else { throw DecodeError(offset: offset, reason: "length \(length) runs past the end") }
            records.append(OutputRecord(kind: kind, bytes: Array(bytes[(offset + 5)..<(offset + 5 + length)])))
            offset += 5 + length
        }
        return records
    }
}
