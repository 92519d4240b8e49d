/// A guest program ready to be placed in guest memory: loadable segments and an entry point.
///
/// Built from an ELF64 executable (`GuestImage(elf:)`, PT_LOAD segments at their
/// physical addresses) or from raw bytes with a load and entry address. Every
/// byte of an image is untrusted: parsing checks each offset and size.
public struct GuestImage: Sendable, Equatable {
    /// One piece to copy into guest memory; bytes beyond `data` up to `memorySize` are zero.
    public struct Segment: Sendable, Equatable {
        public var address: UInt64
        public var data: [UInt8]
        public var memorySize: UInt64
    }

    public var segments: [Segment]
    public var entry: UInt64

    /// A raw image loaded at `loadAddress`, entered at `entry` (default: its first byte).
    public init(raw bytes: [UInt8], loadAddress: UInt64, entry: UInt64? = nil) {
        segments = [Segment(address: loadAddress, data: bytes, memorySize: UInt64(bytes.count))]
        self.entry = entry ?? loadAddress
    }

    /// Parses a little-endian x86-64 ELF64 executable.
    public init(elf bytes: [UInt8]) throws(GuestImageError) {
        func u16(_ o: Int) throws(GuestImageError) -> UInt64 { try Self.read(bytes, o, 2) }
        func u32(_ o: Int) throws(GuestImageError) -> UInt64 { try Self.read(bytes, o, 4) }
        func u64(_ o: Int) throws(GuestImageError) -> UInt64 { try Self.read(bytes, o, 8) }

        guard bytes.count >= 64, bytes[0] == 0x7F, bytes[1] == 0x45, bytes[2] == 0x4C, bytes[3] == 0x46 else {
            throw .notELF
        }
        guard bytes[4] == 2, bytes[5] == 1 else { throw .unsupported("only little-endian ELF64 is supported") }
        guard try u16(18) == 62 else { throw .unsupported("machine \(try u16(18)) is not x86-64") }
        let type = try u16(16)
        guard type == 2 else { throw .unsupported("ELF type \(type) is not an executable (2)") }
        entry = try u64(24)
        let programHeaders = try u64(32)
        let entrySize = try u16(54)
        let count = try u16(56)
        guard entrySize >= 56 else { throw .malformed("program header size \(entrySize)") }
        guard count > 0, count <= 256 else { throw .malformed("\(count) program headers") }
        guard programHeaders <= UInt64(bytes.count),
              count * entrySize <= UInt64(bytes.count) - programHeaders else {
            throw .malformed("program headers run past the end of the file")
        }
        var segments: [Segment] = []
        for i in 0..<Int(count) {
            let header = Int(programHeaders) + i * Int(entrySize)
            guard try u32(header) == 1 else { continue }            // PT_LOAD only
            let offset = try u64(header + 8)
            let physical = try u64(header + 24)
            let fileSize = try u64(header + 32)
            let memorySize = try u64(header + 40)
            guard fileSize <= memorySize else { throw .malformed("segment \(i): file size exceeds memory size") }
            guard offset <= UInt64(bytes.count), fileSize <= UInt64(bytes.count) - offset else {
                throw .malformed("segment \(i): data runs past the end of the file")
            }
            guard memorySize <= 1 << 40, physical <= UInt64.max - memorySize else {
                throw .malformed("segment \(i): address range overflows")
            }
            segments.append(Segment(address: physical, data: Array(bytes[Int(offset)..<Int(offset + fileSize)]),
                                    memorySize: memorySize))
        }
        guard !segments.isEmpty else { throw .malformed("no loadable segment") }
        self.segments = segments
    }

    private static func read(_ bytes: [UInt8], _ offset: Int, _ size: Int) throws(GuestImageError) -> UInt64 {
        guard offset >= 0, offset + size <= bytes.count else { throw .malformed("truncated header at byte \(offset)") }
        var value: UInt64 = 0
        for i in 0..<size { value |= UInt64(bytes[offset + i]) << (8 * UInt64(i)) }
        return value
    }

    /// The built-in workload guest.
    public static var workload: GuestImage {
        // The embedded image is generated and checked by the tests; parsing it cannot fail.
        (try? GuestImage(elf: WorkloadImage.elf)) ?? GuestImage(raw: [], loadAddress: 0)
    }
}

/// Why an image could not be used.
public enum GuestImageError: Error, Equatable, Sendable, CustomStringConvertible {
    case notELF
    /// Not a Linux bzImage (`LinuxKernel`).
    case notBzImage(String)
    case unsupported(String)
    case malformed(String)
    /// A segment or the entry point falls outside guest RAM or into reserved memory.
    case outOfBounds(String)

    public var description: String {
        switch self {
        case .notELF: "not an ELF file"
        case .notBzImage(let why): "not a Linux bzImage: \(why)"
        case .unsupported(let why): "unsupported image: \(why)"
        case .malformed(let why): "malformed image: \(why)"
        case .outOfBounds(let why): "image does not fit: \(why)"
        }
    }
}
