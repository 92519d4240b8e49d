@testable import MicroVM
import Testing

/// The ACPI tables MicroVM gives a Linux guest: every table's checksum holds,
/// the RSDP leads through the XSDT to the FADT, MADT and DSDT at the addresses
/// it names, and the DSDT's AML declares each virtio-mmio transport with its
/// window and interrupt.
@Suite("ACPI tables")
struct ACPITablesTests {
    static let base: UInt64 = 0xE0000
    static let devices = [ACPITables.VirtioDevice(base: 0xD000_2000, size: 0x1000, irq: 5),
                          ACPITables.VirtioDevice(base: 0xD000_3000, size: 0x1000, irq: 6)]

    /// The table at guest-physical `address` within `bytes` (laid out at `base`).
    static func table(_ bytes: [UInt8], at address: UInt64) -> ArraySlice<UInt8> {
        let offset = Int(address - base)
        let length = Int(u32(bytes[(offset + 4)...]))
        return bytes[offset..<(offset + length)]
    }

    static func u32(_ bytes: ArraySlice<UInt8>) -> UInt32 {
        (0..<4).reduce(0) { $0 | UInt32(bytes[bytes.startIndex + $1]) << (8 * UInt32($1)) }
    }

    static func u64(_ bytes: ArraySlice<UInt8>) -> UInt64 {
        (0..<8).reduce(0) { $0 | UInt64(bytes[bytes.startIndex + $1]) << (8 * UInt64($1)) }
    }

    @Test func theRSDPLeadsToEveryTableAndEveryChecksumHolds() {
        let bytes = ACPITables.bytes(at: Self.base, vcpus: 2, devices: Self.devices)
        #expect(Array(bytes[0..<8]) == Array("RSD PTR ".utf8))
        #expect(bytes[0..<20].reduce(0, &+) == 0 && bytes[0..<36].reduce(0, &+) == 0)
        #expect(bytes[15] == 2)
        let xsdt = Self.table(bytes, at: Self.u64(bytes[24...]))
        #expect(Array(xsdt.prefix(4)) == Array("XSDT".utf8) && xsdt.reduce(0, &+) == 0)
        let entries = (0..<(xsdt.count - 36) / 8).map { Self.u64(xsdt[(xsdt.startIndex + 36 + 8 * $0)...]) }
        let tables = entries.map { Self.table(bytes, at: $0) }
        #expect(tables.map { String(decoding: $0.prefix(4), as: UTF8.self) } == ["FACP", "APIC"])
        for table in tables { #expect(table.reduce(0, &+) == 0) }
        let fadt = tables[0]
        #expect(fadt.count == 276)
        #expect(Self.u32(fadt[(fadt.startIndex + 112)...]) & (1 << 20) != 0, "hardware-reduced ACPI")
        let dsdtAddress = Self.u64(fadt[(fadt.startIndex + 140)...])
        #expect(UInt64(Self.u32(fadt[(fadt.startIndex + 40)...])) == dsdtAddress)
        let dsdt = Self.table(bytes, at: dsdtAddress)
        #expect(Array(dsdt.prefix(4)) == Array("DSDT".utf8) && dsdt.reduce(0, &+) == 0)
        // The MADT: two local APICs, the IOAPIC, the NMI entry.
        let madt = Array(tables[1].dropFirst(44))
        #expect(madt.count == 2 * 8 + 12 + 6)
        #expect(madt[0] == 0 && madt[3] == 0 && madt[8] == 0 && madt[11] == 1 && madt[16] == 1 && madt[28] == 4)
    }

    /// The DSDT's AML, checked byte by byte where it matters: the scope and
    /// device package lengths add up, and each device carries LNRO0005, its
    /// window and its interrupt.
    @Test func theDSDTDeclaresTheSerialPortAndEachVirtioDevice() {
        let aml = ACPITables.differentiatedDefinitionBlock(Self.devices)
        #expect(aml[0] == 0x10)
        let (scopeLength, scopeBytes) = Self.packageLength(aml, at: 1)
        #expect(1 + scopeLength == aml.count, "the scope spans the whole block")
        var offset = 1 + scopeBytes + 5                         // \_SB_
        // COM1 first: PNP0501, ports 0x3F8-0x3FF, IRQ 4.
        #expect(aml[offset] == 0x5B && aml[offset + 1] == 0x82)
        let (serialLength, serialLengthBytes) = Self.packageLength(aml, at: offset + 2)
        let serial = Array(aml[(offset + 2 + serialLengthBytes)..<(offset + 2 + serialLength)])
        #expect(Array(serial.prefix(4)) == Array("COM1".utf8))
        #expect(serial.containsSequence(Array("_HID".utf8) + [0x0C, 0x41, 0xD0, 0x05, 0x01]), "EisaId PNP0501")
        #expect(serial.containsSequence([0x47, 0x01, 0xF8, 0x03, 0xF8, 0x03, 0x01, 0x08, 0x22, 0x10, 0x00, 0x79, 0x00]))
        offset += 2 + serialLength
        for (index, device) in Self.devices.enumerated() {
            #expect(aml[offset] == 0x5B && aml[offset + 1] == 0x82)
            let (length, lengthBytes) = Self.packageLength(aml, at: offset + 2)
            let body = Array(aml[(offset + 2 + lengthBytes)..<(offset + 2 + length)])
            #expect(Array(body.prefix(4)) == Array("VR0\(index)".utf8))
            #expect(body.containsSequence(Array("_HID".utf8) + [0x0D] + Array("LNRO0005".utf8) + [0]))
            #expect(body.containsSequence([0x86, 0x09, 0x00, 0x01] + ACPITables.le(UInt32(device.base)) + ACPITables.le(UInt32(device.size))))
            #expect(body.containsSequence([0x89, 0x06, 0x00, 0x03, 0x01] + ACPITables.le(device.irq) + [0x79, 0x00]))
            offset += 2 + length
        }
        #expect(offset == aml.count)
    }

    @Test func packageLengthsOfEverySize() {
        for n in [0, 1, 61, 62, 63, 100, 4093, 4094, 5000, 70000] {
            let encoded = ACPITables.packageLength([UInt8](repeating: 0xAA, count: n))
            let (length, bytes) = Self.packageLength(encoded, at: 0)
            #expect(length == encoded.count && length - bytes == n, "\(n)")
        }
    }

    /// Decodes an AML PkgLength at `offset`: (the length it states, its own bytes).
    static func packageLength(_ bytes: [UInt8], at offset: Int) -> (Int, Int) {
        let lead = bytes[offset]
        let follow = Int(lead >> 6)
        guard follow > 0 else { return (Int(lead & 0x3F), 1) }
        var value = Int(lead & 0x0F)
        for i in 0..<follow { value |= Int(bytes[offset + 1 + i]) << (4 + 8 * i) }
        return (value, 1 + follow)
    }
}

extension Array where Element == UInt8 {
    func containsSequence(_ needle: [UInt8]) -> Bool {
        guard needle.count <= count else { return false }
        return (0...(count - needle.count)).contains { Array(self[$0..<($0 + needle.count)]) == needle }
    }
}
