/// The ACPI tables a Linux guest finds its virtio-mmio devices in: an RSDP
/// (revision 2), an XSDT, a hardware-reduced FADT (no PM timer, SCI or fixed
/// events; no i8042 or VGA), a MADT (local APICs, the IOAPIC, LINT1 as NMI;
/// ISA interrupts identity-mapped, as KVM routes them) and a DSDT with COM1
/// (`PNP0501`) and one `LNRO0005` device per virtio-mmio transport (its 4 KiB
/// window and its interrupt, edge-triggered, active high).
///
/// Debian's kernel is built without `VIRTIO_MMIO_CMDLINE_DEVICES`: its
/// virtio_mmio driver ignores `virtio_mmio.device=` and binds only to devices
/// ACPI (or a device tree) describes. Firecracker and cloud-hypervisor describe
/// theirs the same way.
enum ACPITables {
    /// A virtio-mmio transport as the DSDT declares it.
    struct VirtioDevice: Equatable {
        var base: UInt64
        var size: UInt64
        var irq: UInt32
    }

    static let oemID = Array("UNDSTD".utf8)
    static let oemTableID = Array("MICROVM ".utf8)

    /// The tables laid out from `address` (the RSDP first, 16-byte aligned),
    /// for `vcpus` vCPUs and `devices`. The RSDP is at `address`.
    static func bytes(at address: UInt64, vcpus: Int, devices: [VirtioDevice]) -> [UInt8] {
        let dsdt = table("DSDT", revision: 2, body: differentiatedDefinitionBlock(devices))
        let madt = table("APIC", revision: 4, body: interruptControllerBody(vcpus: vcpus))
        // Layout: RSDP (36 bytes, padded to 48), XSDT (two entries), FADT, MADT, DSDT.
        let xsdtAddress = address + 48
        let fadtAddress = xsdtAddress + 36 + 2 * 8
        let madtAddress = fadtAddress + UInt64(fadtLength)
        let dsdtAddress = madtAddress + UInt64(madt.count)
        let xsdt = table("XSDT", revision: 1, body: le(fadtAddress) + le(madtAddress))
        let fadt = table("FACP", revision: 6, body: fixedDescriptionBody(dsdt: dsdtAddress))

        var rsdp = Array("RSD PTR ".utf8) + [0] + oemID + [2] + le(UInt32(0)) + le(UInt32(36)) + le(xsdtAddress) + [0, 0, 0, 0]
        rsdp[8] = MPTable.checksum(Array(rsdp[0..<20]))
        rsdp[32] = MPTable.checksum(rsdp)
        return rsdp + [UInt8](repeating: 0, count: 12) + xsdt + fadt + madt + dsdt
    }

    // MARK: tables

    /// A system description table: the 36-byte header (with its checksum) and `body`.
    static func table(_ signature: String, revision: UInt8, body: [UInt8]) -> [UInt8] {
        var bytes = Array(signature.utf8) + le(UInt32(36 + body.count)) + [revision, 0] + oemID + oemTableID
            + le(UInt32(1)) + Array("USTD".utf8) + le(UInt32(1)) + body
        bytes[9] = MPTable.checksum(bytes)
        return bytes
    }

    /// An ACPI 6.0 FADT's length.
    static let fadtLength = 276

    /// The FADT after its header: only the DSDT's
    /// address, the boot architecture flags and HW_REDUCED_ACPI are set.
    static func fixedDescriptionBody(dsdt: UInt64) -> [UInt8] {
        var body = [UInt8](repeating: 0, count: fadtLength - 36)
        func put(_ bytes: [UInt8], at offset: Int) { body.replaceSubrange((offset - 36)..<(offset - 36 + bytes.count), with: bytes) }
        put(le(UInt32(truncatingIfNeeded: dsdt)), at: 40)                 // DSDT
        put(le(UInt16(1 << 2)), at: 109)                                   // IAPC_BOOT_ARCH: VGA not present; no 8042
        put(le(UInt32(1 << 20)), at: 112)                                  // flags: HW_REDUCED_ACPI
        put([0], at: 131)                                                  // FADT minor version 0 (6.0)
        put(le(dsdt), at: 140)                                             // X_DSDT
        put(Array("UNDSTUDY".utf8), at: 268)                               // hypervisor vendor identity
        return body
    }

    /// The MADT after its header: local APIC address, PCAT_COMPAT (the
    /// in-kernel PIC is there), one local APIC per vCPU, the IOAPIC (GSI 0-23)
    /// and LINT1 of every local APIC as NMI.
    static func interruptControllerBody(vcpus: Int) -> [UInt8] {
        var body = le(MPTable.lapicAddress) + le(UInt32(1))
        for cpu in 0..<vcpus {
            body += [0, 8, UInt8(cpu), UInt8(cpu)] + le(UInt32(1))                 // processor local APIC, enabled
        }
        body += [1, 12, MPTable.ioapicID, 0] + le(MPTable.ioapicAddress) + le(UInt32(0))
        body += [4, 6, 0xFF] + le(UInt16(0)) + [1]                                 // local APIC NMI on LINT1
        return body
    }

    /// The DSDT's AML: `Scope (\_SB) { Device (COM1) { _HID PNP0501, _UID 0,
    /// _CRS { IO, IRQNoFlags } } Device (VRnn) { _HID "LNRO0005", _UID nn,
    /// _CRS { Memory32Fixed, Interrupt } } ... }`.
    static func differentiatedDefinitionBlock(_ devices: [VirtioDevice]) -> [UInt8] {
        var scope: [UInt8] = [0x5C] + Array("_SB_".utf8) + serialPortDevice
        for (index, device) in devices.enumerated() {
            let resources: [UInt8] =
                [0x86, 0x09, 0x00, 0x01] + le(UInt32(truncatingIfNeeded: device.base)) + le(UInt32(truncatingIfNeeded: device.size))
                + [0x89, 0x06, 0x00, 0x03, 0x01] + le(device.irq)                    // consumer, edge, active high, exclusive
            scope += self.device(name: "VR\(index / 10 % 10)\(index % 10)", id: [0x0D] + Array("LNRO0005".utf8) + [0],
                                 uid: UInt8(index), resources: resources)
        }
        return [0x10] + packageLength(scope)
    }

    /// COM1 (`PNP0501`): its eight ports from 0x3F8 and ISA IRQ 4, edge-triggered,
    /// active high. A hardware-reduced FADT leaves Linux without a legacy PIC,
    /// and so without the identity mapping of ISA interrupts to IOAPIC pins:
    /// the 8250 driver's built-in COM1 entry requests an IRQ 4 that no pin
    /// feeds, and the console's transmit interrupts never come (the kernel's
    /// own messages, written by polling, still appear; everything user space
    /// writes to the console stays in its tty). Declared here, the port is
    /// taken over by 8250_pnp with IRQ 4 mapped to IOAPIC pin 4, where
    /// `UART8250` raises it.
    static var serialPortDevice: [UInt8] {
        let base = UART8250.com1Base
        let resources: [UInt8] = [0x47, 0x01] + le(base) + le(base) + [0x01, 0x08]     // IO (Decode16, base, base, 1, 8)
            + [0x22] + le(UInt16(1) << UART8250.com1IRQ)                             // IRQNoFlags { 4 }
        return device(name: "COM1", id: [0x0C, 0x41, 0xD0, 0x05, 0x01], uid: 0, resources: resources)   // EisaId ("PNP0501")
    }

    /// `Device (name) { Name (_HID, id), Name (_UID, uid), Name (_CRS, ResourceTemplate { resources }) }`,
    /// `id` being an encoded AML constant.
    static func device(name: String, id: [UInt8], uid: UInt8, resources: [UInt8]) -> [UInt8] {
        let template = resources + [0x79, 0x00]                                      // end tag
        let buffer: [UInt8] = [0x11] + packageLength([0x0A, UInt8(template.count)] + template)
        var body: [UInt8] = Array(name.utf8)
        body += [0x08] + Array("_HID".utf8) + id
        body += [0x08] + Array("_UID".utf8) + [0x0A, uid]
        body += [0x08] + Array("_CRS".utf8) + buffer
        return [0x5B, 0x82] + packageLength(body)
    }

    /// `content` preceded by its AML PkgLength (which counts its own bytes).
    static func packageLength(_ content: [UInt8]) -> [UInt8] {
        let n = content.count
        if n + 1 < 0x40 { return [UInt8(n + 1)] + content }
        if n + 2 < 0x1000 {
            let total = n + 2
            return [0x40 | UInt8(total & 0xF), UInt8(total >> 4)] + content
        }
        let total = n + 3
        return [0x80 | UInt8(total & 0xF), UInt8((total >> 4) & 0xFF), UInt8(total >> 12)] + content
    }

    static func le<I: FixedWidthInteger>(_ value: I) -> [UInt8] {
        withUnsafeBytes(of: value.littleEndian) { Array($0) }
    }
}
