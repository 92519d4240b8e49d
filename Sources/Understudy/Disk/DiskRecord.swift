/// Block writes as they travel inside a checkpoint: per record, kind (u8: 0
/// write, 1 flush), byte offset (u64), length (u32), bytes (writes only).
public enum DiskRecord {
    public enum Item: Equatable, Sendable {
        case write(offset: UInt64, bytes: ArraySlice<UInt8>)
        case flush
    }

    static let headerSize = 13

    static func appendWrite(offset: UInt64, _ bytes: UnsafeRawBufferPointer, to out: inout [UInt8]) {
        out.append(0)
        out.appendLittleEndian(offset)
        out.appendLittleEndian(UInt32(bytes.count))
        out.append(contentsOf: bytes)
    }

    static func appendFlush(to out: inout [UInt8]) {
        out.append(1)
        out.appendLittleEndian(UInt64(0))
        out.appendLittleEndian(UInt32(0))
    }

    /// Decodes a checkpoint's disk bytes for a disk of `diskSize` bytes;
    /// untrusted input: every write must lie inside the disk.
    public static func decode(_ bytes: [UInt8], diskSize: UInt64) throws(DiskError) -> [Item] {
        var items: [Item] = []
        var offset = 0
        while offset < bytes.count {
            guard bytes.count - offset >= headerSize else { throw .badRecord(offset: offset, reason: "truncated header") }
            let kind = bytes[offset]
            var position: UInt64 = 0
            for i in 0..<8 { position |= UInt64(bytes[offset + 1 + i]) << (8 * UInt64(i)) }
            var length = 0
            for i in 0..<4 { length |= Int(bytes[offset + 9 + i]) << (8 * i) }
            let start = offset + headerSize
            switch kind {
            case 0:
                guard length <= bytes.count - start else { throw .badRecord(offset: offset, reason: "write of \(length) bytes runs past the end") }
                guard position <= diskSize, UInt64(length) <= diskSize - position else {
                    throw .badRecord(offset: offset, reason: "write at \(position)+\(length) beyond the \(diskSize)-byte disk")
                }
                items.append(.write(offset: position, bytes: bytes[start..<(start + length)]))
                offset = start + length
            case 1:
                guard position == 0, length == 0 else { throw .badRecord(offset: offset, reason: "flush with a payload") }
                items.append(.flush)
                offset = start
            default:
                throw .badRecord(offset: offset, reason: "unknown kind \(kind)")
            }
        }
        return items
    }
}

/// A disk record or disk I/O problem.
public enum DiskError: Error, Equatable, Sendable, CustomStringConvertible {
    case badRecord(offset: Int, reason: String)
    case system(call: String, errno: Int32)

    public var description: String {
        switch self {
        case .badRecord(let offset, let reason): "disk record at byte \(offset): \(reason)"
        case .system(let call, let code): "\(call) failed (errno \(code))"
        }
    }
}
