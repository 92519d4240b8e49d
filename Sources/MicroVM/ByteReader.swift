/// Little-endian reads from untrusted bytes; errors name the part.
struct ByteReader {
    var bytes: ArraySlice<UInt8>
    let part: String

    init(bytes: ArraySlice<UInt8>, part: String) {
        self.bytes = bytes
        self.part = part
    }

    init(_ bytes: [UInt8], part: String) { self.init(bytes: bytes[...], part: part) }

    mutating func take(_ count: Int) throws(MachineError) -> ArraySlice<UInt8> {
        guard bytes.count >= count else { throw .invalidState(part: part, reason: "truncated") }
        defer { bytes = bytes.dropFirst(count) }
        return bytes.prefix(count)
    }

    mutating func integer<I: FixedWidthInteger>(_ type: I.Type) throws(MachineError) -> I {
        let raw = try take(MemoryLayout<I>.size)
        return raw.enumerated().reduce(I(0)) { $0 | I($1.element) << (8 * $1.offset) }
    }

    mutating func u8() throws(MachineError) -> UInt8 { try integer(UInt8.self) }
    mutating func u16() throws(MachineError) -> UInt16 { try integer(UInt16.self) }
    mutating func u32() throws(MachineError) -> UInt32 { try integer(UInt32.self) }
    mutating func u64() throws(MachineError) -> UInt64 { try integer(UInt64.self) }
    var rest: ArraySlice<UInt8> { bytes }
}
