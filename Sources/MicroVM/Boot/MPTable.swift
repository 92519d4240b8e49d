/// An Intel MultiProcessor Specification 1.4 table: how a Linux guest without
/// ACPI learns its CPUs (one processor entry per vCPU, APIC ID = vCPU id), the
/// in-kernel IOAPIC at 0xFEC00000 and how the 16 ISA interrupts reach it (IRQ
/// n on IOAPIC pin n, KVM's default routing), with the local APIC's LINT0 as
/// ExtINT (the PIC) and LINT1 as NMI. Linux looks for it in the last KB of
/// base memory, where `write(into:at:vcpus:)` puts it (`LinuxBoot.lowRAMEnd`).
enum MPTable {
    static let ioapicAddress: UInt32 = 0xFEC0_0000
    static let lapicAddress: UInt32 = 0xFEE0_0000
    static let ioapicID = UInt8(GuestLayout.maxVCPUs)

    /// The floating pointer and the configuration table, as bytes for `address`.
    static func bytes(at address: UInt64, vcpus: Int) -> [UInt8] {
        var table: [UInt8] = []
        func put<I: FixedWidthInteger>(_ value: I) { withUnsafeBytes(of: value.littleEndian) { table += $0 } }
        var entries: [[UInt8]] = []
        for cpu in 0..<vcpus {
            // Processor: APIC id, version, enabled (and BSP), signature, features (FPU, APIC).
            entries.append([0, UInt8(cpu), 0x14, cpu == 0 ? 3 : 1, 0x00, 0x06, 0, 0, 0x01, 0x02, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0])
        }
        entries.append([1, 0] + Array("ISA   ".utf8))                                            // bus 0: ISA
        entries.append([2, ioapicID, 0x11, 1] + withUnsafeBytes(of: ioapicAddress.littleEndian) { Array($0) })
        for irq in UInt8(0)..<16 {
            entries.append([3, 0, 0, 0, 0, irq, ioapicID, irq])                                   // INT, conforming
        }
        entries.append([4, 3, 0, 0, 0, 0, 0xFF, 0])                                               // ExtINT → LINT0
        entries.append([4, 1, 0, 0, 0, 0, 0xFF, 1])                                               // NMI → LINT1
        let body = entries.flatMap { $0 }
        // The floating pointer: "_MP_", the table's address, 1 paragraph, revision 1.4.
        let configuration = address + 16
        table += Array("_MP_".utf8)
        put(UInt32(configuration))
        table += [1, 4, 0, 0, 0, 0, 0, 0]
        table[10] = checksum(table)
        // The configuration table header, then the entries.
        var header: [UInt8] = Array("PCMP".utf8)
        withUnsafeBytes(of: UInt16(44 + body.count).littleEndian) { header += $0 }
        header += [4, 0]
        header += Array("UNDSTUDY".utf8) + Array("MicroVM     ".utf8)
        header += [0, 0, 0, 0, 0, 0]                                                               // no OEM table
        withUnsafeBytes(of: UInt16(entries.count).littleEndian) { header += $0 }
        withUnsafeBytes(of: lapicAddress.littleEndian) { header += $0 }
        header += [0, 0, 0, 0]                                                                     // no extended table
        var whole = header + body
        whole[7] = checksum(whole)
        return table + whole
    }

    /// The byte that makes `bytes` sum to zero.
    static func checksum(_ bytes: [UInt8]) -> UInt8 {
        0 &- bytes.reduce(UInt8(0), &+)
    }
}
