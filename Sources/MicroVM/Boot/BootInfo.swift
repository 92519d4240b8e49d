/// The boot-info page MicroVM writes at `GuestLayout.bootInfo` for the guest to read
/// (layout: `struct boot_info` in Guests/include/understudy_guest.h).
public struct BootInfo: Sendable, Equatable {
    public init(vcpuCount: Int, memorySize: UInt64, tscKHz: UInt64, serialBase: UInt64, doorbellBase: UInt64,
                freeMemoryBase: UInt64, commandLine: String, devices: [(type: UInt32, base: UInt64, size: UInt64)] = []) {
        (self.vcpuCount, self.memorySize, self.tscKHz, self.serialBase) = (vcpuCount, memorySize, tscKHz, serialBase)
        (self.doorbellBase, self.freeMemoryBase, self.commandLine, self.devices) = (doorbellBase, freeMemoryBase, commandLine, devices)
    }

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
    /// Further devices: (type, base, size). Types: 1 virtio-net, 2 virtio-blk (virtio device IDs).
    public var devices: [(type: UInt32, base: UInt64, size: UInt64)] = []

    public static func == (lhs: BootInfo, rhs: BootInfo) -> Bool { lhs.encoded() == rhs.encoded() }

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
        put(UInt64(min(devices.count, 16)), at: 64)        // device_count
        for (i, device) in devices.prefix(16).enumerated() {
            put(device.type, at: 72 + 24 * i)
            put(UInt32(0), at: 76 + 24 * i)                // irq: none, guests poll
            put(device.base, at: 80 + 24 * i)
            put(device.size, at: 88 + 24 * i)
        }
        let commandLineOffset = 72 + 16 * 24               // after devices[16]
        for (i, byte) in line.enumerated() { page[commandLineOffset + i] = byte }
        return page
    }
}
