import CKVM

/// Reads the byte format `StateWriter` produces, treating every byte as untrusted:
/// lengths, counts and checksums are checked, and errors name the bad part.
public struct StateReader: Sendable {
    /// The sections by tag, payloads already checksum-verified.
    public let sections: [UInt16: [UInt8]]
    public let version: UInt16
    let names: [UInt16: String]
    let what: String

    /// Parses `bytes`. `what` names the whole ("vCPU state"); `names` names sections for errors.
    public init(_ bytes: [UInt8], magic: [UInt8], supportedVersions: ClosedRange<UInt16>,
                what: String, names: [UInt16: String]) throws(KVMError) {
        self.what = what
        self.names = names
        guard bytes.count >= 8 else { throw .invalidState(part: "\(what) header", reason: "only \(bytes.count) bytes") }
        guard Array(bytes[0..<4]) == magic else { throw .invalidState(part: "\(what) header", reason: "bad magic") }
        let version = UInt16(bytes[4]) | UInt16(bytes[5]) << 8
        guard supportedVersions.contains(version) else {
            throw .invalidState(part: "\(what) header", reason: "version \(version) not in \(supportedVersions)")
        }
        self.version = version
        let count = Int(UInt16(bytes[6]) | UInt16(bytes[7]) << 8)
        var offset = 8
        var sections: [UInt16: [UInt8]] = [:]
        for index in 0..<count {
            guard bytes.count - offset >= 10 else {
                throw .invalidState(part: "\(what) section \(index)", reason: "truncated section header")
            }
            let tag = UInt16(bytes[offset]) | UInt16(bytes[offset + 1]) << 8
            let length = Self.u32(bytes, offset + 2)
            let checksum = Self.u32(bytes, offset + 6)
            offset += 10
            let name = names[tag] ?? "section \(tag)"
            guard length <= bytes.count - offset else {
                throw .invalidState(part: name, reason: "length \(length) runs past the end (\(bytes.count - offset) bytes left)")
            }
            let payload = Array(bytes[offset..<(offset + length)])
            offset += length
            let actual = payload.withUnsafeBytes { ckvm_crc32c(0, $0.baseAddress, $0.count) }
            guard actual == checksum else { throw .invalidState(part: name, reason: "checksum mismatch") }
            guard sections[tag] == nil else { throw .invalidState(part: name, reason: "appears twice") }
            sections[tag] = payload
        }
        guard offset == bytes.count else {
            throw .invalidState(part: "\(what) trailer", reason: "\(bytes.count - offset) unexpected bytes after the last section")
        }
        self.sections = sections
    }

    func name(_ tag: UInt16) -> String { names[tag] ?? "section \(tag)" }

    /// The payload of a required section.
    public func payload(_ tag: UInt16) throws(KVMError) -> [UInt8] {
        guard let payload = sections[tag] else { throw .invalidState(part: name(tag), reason: "missing") }
        return payload
    }

    /// A required section holding exactly one fixed-size kernel struct.
    public func raw<T>(_ tag: UInt16, as type: T.Type) throws(KVMError) -> T {
        try Self.decodeRaw(try payload(tag), as: type, part: name(tag))
    }

    /// An optional section holding one fixed-size kernel struct.
    public func optionalRaw<T>(_ tag: UInt16, as type: T.Type) throws(KVMError) -> T? {
        guard let payload = sections[tag] else { return nil }
        return try Self.decodeRaw(payload, as: type, part: name(tag))
    }

    static func decodeRaw<T>(_ payload: [UInt8], as type: T.Type, part: String) throws(KVMError) -> T {
        guard payload.count == MemoryLayout<T>.size else {
            throw .invalidState(part: part, reason: "\(payload.count) bytes, expected \(MemoryLayout<T>.size)")
        }
        return payload.withUnsafeBytes { $0.loadUnaligned(as: T.self) }
    }

    static func u32(_ bytes: [UInt8], _ offset: Int) -> Int {
        Int(UInt32(bytes[offset]) | UInt32(bytes[offset + 1]) << 8 | UInt32(bytes[offset + 2]) << 16 | UInt32(bytes[offset + 3]) << 24)
    }

    /// Reads a little-endian integer at `offset` of `payload`, checking bounds.
    public static func integer<I: FixedWidthInteger>(_ payload: [UInt8], at offset: Int, as: I.Type, part: String) throws(KVMError) -> I {
        let size = MemoryLayout<I>.size
        guard offset >= 0, offset <= payload.count - size else {
            throw .invalidState(part: part, reason: "truncated at byte \(offset)")
        }
        var value: I = 0
        for i in 0..<size { value |= I(payload[offset + i]) << (8 * i) }
        return value
    }
}
