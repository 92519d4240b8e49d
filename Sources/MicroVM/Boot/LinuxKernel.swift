/// A Linux kernel in bzImage format, read for the x86 64-bit boot protocol
/// (the kernel's Documentation/arch/x86/boot.rst): MicroVM loads the protected-
/// mode part at 1 MiB, builds the zero page (`boot_params`) with the e820 map,
/// command line and initrd, and enters the kernel's 64-bit entry in long mode
/// with no BIOS.
///
/// Every field read from the image is checked: a file that is not a bzImage,
/// or one too old for the 64-bit entry, is refused with the reason.
public struct LinuxKernel: Sendable, Equatable {
    /// The setup header as the file has it (offset 0x1F1 to its end), copied into the zero page.
    public let setupHeader: [UInt8]
    /// The protected-mode kernel (loaded at `loadAddress`).
    public let protectedMode: [UInt8]
    /// Boot protocol version, e.g. 0x020F.
    public let protocolVersion: UInt16
    /// Memory the kernel needs from its load address while it decompresses itself.
    public let initSize: UInt32
    /// Highest address the initrd may end at (inclusive).
    public let initrdAddressMax: UInt32
    /// Longest command line the kernel takes, without the NUL.
    public let commandLineMax: UInt32

    /// Where the protected-mode kernel goes; its 64-bit entry is 0x200 past it.
    public static let loadAddress: UInt64 = 0x100000
    public static let entryOffset: UInt64 = 0x200

    static let headerOffset = 0x1F1

    public init(bzImage bytes: [UInt8]) throws(GuestImageError) {
        func u8(_ offset: Int) -> UInt8 { bytes[offset] }
        func u16(_ offset: Int) -> UInt16 { UInt16(bytes[offset]) | UInt16(bytes[offset + 1]) << 8 }
        func u32(_ offset: Int) -> UInt32 { UInt32(u16(offset)) | UInt32(u16(offset + 2)) << 16 }
        guard bytes.count >= 0x270 else { throw .notBzImage("\(bytes.count) bytes is too short for a bzImage") }
        guard u16(0x1FE) == 0xAA55, u32(0x202) == 0x5372_6448 else {
            throw .notBzImage("no boot sector signature or \"HdrS\" setup header")
        }
        protocolVersion = u16(0x206)
        guard protocolVersion >= 0x020C else {
            throw .unsupported("boot protocol 0x\(String(protocolVersion, radix: 16)); the 64-bit entry needs 2.12 or later")
        }
        guard u16(0x236) & 1 != 0 else { throw .unsupported("the kernel has no 64-bit entry point (XLF_KERNEL_64 is clear)") }
        guard u8(0x211) & 1 != 0 else { throw .unsupported("the kernel does not load high (LOADED_HIGH is clear)") }
        let setupSectors = u8(0x1F1) == 0 ? 4 : Int(u8(0x1F1))
        let setupBytes = (setupSectors + 1) * 512
        guard setupBytes < bytes.count else { throw .malformed("\(setupSectors) setup sectors, but the file ends first") }
        let headerEnd = 0x202 + Int(u8(0x201))
        guard headerEnd <= setupBytes, headerEnd > 0x268 else { throw .malformed("setup header ends at 0x\(String(headerEnd, radix: 16))") }
        setupHeader = Array(bytes[Self.headerOffset..<headerEnd])
        protectedMode = Array(bytes[setupBytes...])
        initSize = u32(0x260)
        initrdAddressMax = u32(0x22C)
        commandLineMax = u32(0x238)
    }
}
