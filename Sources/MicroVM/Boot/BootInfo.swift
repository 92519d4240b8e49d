/// The boot-info page MicroVM writes at `GuestLayout.bootInfo` for the guest to read
/// (layout: `struct boot_info` in Guests/include/understudy_guest.h).
public struct BootInfo: Sendable, Equatable {
    public static let magic: UInt64 = 0x4F46_4E49_5455_4255
    public static let version: UInt32 = 1
    public static let maxCommandLine = 2047

    public var vcpuCount: Int
    public var memorySize: UInt64
    public var tscKHz: UInt64
    public var serialBase: UInt64
    public var doorbellBase: UInt64
    public var freeMemoryBase: UInt64
    public var commandLine: String

    /// The page's bytes (4 KiB).
    public func encoded() -> [UInt8] {
        var page = [UInt8](repeating: 0, count: 4096)
        func put<I: FixedWidthInteger>(_ value: I, at offset: Int) {
            withUnsafeBytes(of: value.littleEndian) { raw in
                for (i, byte) in raw.enumerated() { page[offset + i] = byte }
            }
        }
        put(Self.magic, at: 0)
        put(Self.version, at: 8)
        put(UInt32(vcpuCount), at: 12)
        put(memorySize, at: 16)
        put(tscKHz, at: 24)
        put(serialBase, at: 32)
        put(doorbellBase, at: 40)
        put(freeMemoryBase, at: 48)
        let line = Array(commandLine.utf8.prefix(Self.maxCommandLine))
        put(UInt32(line.count), at: 56)
        put(UInt64(0), at: 64)                              // device_count
        let commandLineOffset = 72 + 16 * 24               // after devices[16]
        for (i, byte) in line.enumerated() { page[commandLineOffset + i] = byte }
        return page
    }
}
