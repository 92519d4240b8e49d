import CKVM

/// Builds the versioned byte format of saved KVM state.
///
/// Layout (all integers little endian):
/// ```
/// magic: 4 bytes   version: u16   section count: u16
/// per section: tag u16, length u32, crc32c u32 (of the payload), payload
/// ```
/// Sections are self-describing, so a later reader can skip tags it does not
/// know, and each is checksummed, so a damaged part is named when reading.
public struct StateWriter: Sendable {
    public private(set) var bytes: [UInt8] = []
    private var sectionCount: UInt16 = 0
    private let countOffset: Int

    public init(magic: [UInt8], version: UInt16) {
        precondition(magic.count == 4, "state magic is 4 bytes")
        bytes.reserveCapacity(8192)
        bytes += magic
        Self.append(version, to: &bytes)
        countOffset = bytes.count
        Self.append(UInt16(0), to: &bytes)
    }

    /// Appends a section whose payload `body` writes into a fresh buffer.
    public mutating func section(_ tag: UInt16, _ body: (inout [UInt8]) -> Void) {
        var payload: [UInt8] = []
        body(&payload)
        section(tag, payload: payload)
    }

    /// Appends a section holding `payload`.
    public mutating func section(_ tag: UInt16, payload: [UInt8]) {
        Self.append(tag, to: &bytes)
        Self.append(UInt32(payload.count), to: &bytes)
        Self.append(payload.withUnsafeBytes { ckvm_crc32c(0, $0.baseAddress, $0.count) }, to: &bytes)
        bytes += payload
        sectionCount += 1
        bytes[countOffset] = UInt8(truncatingIfNeeded: sectionCount)
        bytes[countOffset + 1] = UInt8(truncatingIfNeeded: sectionCount >> 8)
    }

    /// Appends a section holding the raw bytes of a fixed-size kernel struct.
    public mutating func section<T>(_ tag: UInt16, raw value: T) {
        section(tag, payload: withUnsafeBytes(of: value) { Array($0) })
    }

    /// Appends `value` little endian to `buffer`.
    public static func append<I: FixedWidthInteger>(_ value: I, to buffer: inout [UInt8]) {
        withUnsafeBytes(of: value.littleEndian) { buffer += $0 }
    }
}
