import KVM

/// A Linux guest to boot: a bzImage, an optional initrd and the kernel command
/// line. `load(into:memorySize:)` lays it out in guest RAM the way the x86
/// 64-bit boot protocol asks, with no BIOS:
///
/// ```
/// 0x1000-0x6fff page tables (identity map of 4 GiB) · 0x7000 GDT (__BOOT_CS 0x10, __BOOT_DS 0x18)
/// 0x8000 zero page (boot_params: setup header, e820 map) · 0x20000 command line
/// 0x9FC00 MP table · 0xE0000 ACPI tables (reserved in the e820 map up to 1 MiB)
/// 0x100000 protected-mode kernel · initrd at the top of RAM (below initrd_addr_max)
/// ```
public struct LinuxBoot: Sendable, Equatable {
    public var kernel: LinuxKernel
    public var initrd: [UInt8]
    public var commandLine: String

    /// A command line for MicroVM's machine: the console on ttyS0 with only
    /// warnings and errors from the kernel (every byte of a polled console is
    /// two exits: the full boot log costs Debian's kernel seconds), reset by
    /// the keyboard controller, no PCI, one UART, the i8042 left alone.
    public static let defaultCommandLine = "console=ttyS0 quiet reboot=k panic=-1 pci=off 8250.nr_uarts=1 i8042.noaux i8042.nomux i8042.nopnp i8042.dumbkbd"

    public static let zeroPage: UInt64 = 0x8000
    public static let commandLineAddress: UInt64 = 0x20000
    /// The first RAM above the low megabyte's reserved areas (EBDA, ROMs).
    static let lowRAMEnd: UInt64 = 0x9FC00
    /// The ACPI tables (the RSDP first), in the reserved BIOS area where a
    /// kernel that ignores `acpi_rsdp_addr` also looks for the RSDP.
    static let acpiTables: UInt64 = 0xE0000

    public init(kernel: LinuxKernel, initrd: [UInt8] = [], commandLine: String) {
        self.kernel = kernel
        self.initrd = initrd
        self.commandLine = commandLine
    }

    /// Checks that the kernel, its decompression room and the initrd fit in
    /// `memorySize` bytes of RAM and the command line in what the kernel takes.
    public func validate(memorySize: UInt64) throws(MachineError) {
        _ = try placement(memorySize: memorySize)
    }

    /// Where the initrd goes.
    private func placement(memorySize: UInt64) throws(MachineError) -> UInt64 {
        let line = commandLine.utf8.count
        guard line <= Int(kernel.commandLineMax), line < 0x10000 else {
            throw .invalidConfiguration("kernel command line of \(line) bytes; this kernel takes at most \(kernel.commandLineMax)")
        }
        let kernelEnd = LinuxKernel.loadAddress + UInt64(max(kernel.protectedMode.count, Int(kernel.initSize)))
        guard kernelEnd <= memorySize else {
            throw .image(.outOfBounds("the kernel needs RAM up to 0x\(String(kernelEnd, radix: 16)) to decompress; the guest has 0x\(String(memorySize, radix: 16))"))
        }
        guard !initrd.isEmpty else { return 0 }
        let top = min(memorySize, UInt64(kernel.initrdAddressMax) + 1)
        let start = top >= UInt64(initrd.count) ? (top - UInt64(initrd.count)) & ~0xFFF : 0
        guard start >= (kernelEnd + 0xFFF) & ~0xFFF else {
            throw .image(.outOfBounds("an initrd of \(initrd.count >> 20) MiB does not fit between the kernel and the top of RAM; give the guest more memory"))
        }
        return start
    }

    /// Writes the kernel, initrd, command line, MP table and ACPI tables (for
    /// `vcpus` and the virtio-mmio transports `devices`) and zero page into
    /// `memory` (RAM of `memorySize` bytes, zero-filled); returns the 64-bit
    /// entry point. The page tables and GDT are `GuestLayout`'s.
    func load(into memory: SharedMemory, memorySize: UInt64, vcpus: Int,
              devices: [ACPITables.VirtioDevice] = []) throws(MachineError) -> UInt64 {
        let initrdStart = try placement(memorySize: memorySize)
        let bytes = memory.bytes
        let mp = MPTable.bytes(at: Self.lowRAMEnd, vcpus: vcpus)
        bytes[Int(Self.lowRAMEnd)..<(Int(Self.lowRAMEnd) + mp.count)].copyBytes(from: mp)
        let acpi = ACPITables.bytes(at: Self.acpiTables, vcpus: vcpus, devices: devices)
        bytes[Int(Self.acpiTables)..<(Int(Self.acpiTables) + acpi.count)].copyBytes(from: acpi)
        let kernelStart = Int(LinuxKernel.loadAddress)
        bytes[kernelStart..<(kernelStart + kernel.protectedMode.count)].copyBytes(from: kernel.protectedMode)
        if !initrd.isEmpty {
            bytes[Int(initrdStart)..<(Int(initrdStart) + initrd.count)].copyBytes(from: initrd)
        }
        let line = Array(commandLine.utf8) + [0]
        bytes[Int(Self.commandLineAddress)..<(Int(Self.commandLineAddress) + line.count)].copyBytes(from: line)

        var page = [UInt8](repeating: 0, count: 4096)
        func put<I: FixedWidthInteger>(_ value: I, at offset: Int) {
            withUnsafeBytes(of: value.littleEndian) { for (i, b) in $0.enumerated() { page[offset + i] = b } }
        }
        page.replaceSubrange(LinuxKernel.headerOffset..<(LinuxKernel.headerOffset + kernel.setupHeader.count), with: kernel.setupHeader)
        put(UInt8(0xFF), at: 0x210)                                 // type_of_loader: undefined
        put(page[0x211] | 0x80, at: 0x211)                          // loadflags: CAN_USE_HEAP
        put(UInt16(0xFE00), at: 0x224)                              // heap_end_ptr
        put(UInt32(Self.commandLineAddress), at: 0x228)             // cmd_line_ptr
        put(UInt32(initrdStart), at: 0x218)                         // ramdisk_image
        put(UInt32(initrd.count), at: 0x21C)                        // ramdisk_size
        put(Self.acpiTables, at: 0x070)                             // acpi_rsdp_addr
        // The e820 map: low RAM, the reserved EBDA and BIOS area, RAM from 1 MiB.
        let map: [(UInt64, UInt64, UInt32)] = [
            (0, Self.lowRAMEnd, 1),
            (Self.lowRAMEnd, LinuxKernel.loadAddress - Self.lowRAMEnd, 2),
            (LinuxKernel.loadAddress, memorySize - LinuxKernel.loadAddress, 1),
        ]
        for (i, entry) in map.enumerated() {
            put(entry.0, at: 0x2D0 + i * 20)
            put(entry.1, at: 0x2D0 + i * 20 + 8)
            put(entry.2, at: 0x2D0 + i * 20 + 16)
        }
        put(UInt8(map.count), at: 0x1E8)                            // e820_entries
        bytes[Int(Self.zeroPage)..<(Int(Self.zeroPage) + 4096)].copyBytes(from: page)
        return LinuxKernel.loadAddress + LinuxKernel.entryOffset
    }
}
