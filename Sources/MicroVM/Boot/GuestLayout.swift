import KVM

/// Where MicroVM puts things in guest-physical memory, and how it starts a vCPU
/// in 64-bit mode at CPL3 with no guest CPL0 code at all.
///
/// ```
/// 0x1000 PML4 · 0x2000 PDPT · 0x3000-0x6fff four PDs: identity map of 4 GiB, 2 MiB user pages
/// 0x7000 GDT · 0x8000 boot-info page
/// 0x80000-0x100000 vCPU stacks, 64 KiB each (at most 8 vCPUs)
/// 0x100000 guest image (first byte of RAM it may use)
/// 0xD000_0000 serial · 0xD000_1000 doorbell · 0xD000_2000 virtio-net · 0xD000_3000 virtio-blk
/// ```
public enum GuestLayout {
    public static let pml4: UInt64 = 0x1000
    public static let gdt: UInt64 = 0x7000
    public static let bootInfo: UInt64 = 0x8000
    public static let stacksBase: UInt64 = 0x80000
    public static let stackSize: UInt64 = 0x10000
    public static let maxVCPUs = 8
    public static let imageBase: UInt64 = 0x100000
    public static let mmioBase: UInt64 = 0xD000_0000
    public static let maxMemory: UInt64 = mmioBase
    public static let serialBase: UInt64 = mmioBase
    public static let doorbellBase: UInt64 = mmioBase + 0x1000
    public static let virtioNetBase: UInt64 = mmioBase + 0x2000
    public static let virtioBlockBase: UInt64 = mmioBase + 0x3000

    /// Top of vCPU `index`'s stack.
    public static func stackTop(vcpu index: Int) -> UInt64 { stacksBase + UInt64(index + 1) * stackSize }

    /// Writes the page tables and GDT. Entries have the accessed and dirty bits
    /// preset, so the CPU never writes to them (they stay out of dirty logs).
    public static func writeSystemTables(into memory: SharedMemory) {
        let base = memory.base
        func entry(_ address: UInt64, _ value: UInt64) {
            base.storeBytes(of: value.littleEndian, toByteOffset: Int(address), as: UInt64.self)
        }
        let present: UInt64 = 1, writable: UInt64 = 2, user: UInt64 = 4, accessed: UInt64 = 0x20
        let dirty: UInt64 = 0x40, large: UInt64 = 0x80
        entry(pml4, 0x2000 | present | writable | user | accessed)
        for gib in 0..<UInt64(4) {
            entry(0x2000 + gib * 8, (0x3000 + gib * 0x1000) | present | writable | user | accessed)
            for i in 0..<UInt64(512) {
                entry(0x3000 + gib * 0x1000 + i * 8, (gib << 30 | i << 21) | present | writable | user | accessed | dirty | large)
            }
        }
        entry(gdt + 5 * 8, 0x00CF_F300_0000_FFFF)   // 0x28: user data
        entry(gdt + 6 * 8, 0x00AF_FB00_0000_FFFF)   // 0x30: user code, 64-bit
    }

    /// Adds the flat kernel segments the Linux 64-bit boot protocol asks for to
    /// the GDT: __BOOT_CS (0x10, 64-bit code) and __BOOT_DS (0x18, data).
    public static func writeKernelSegments(into memory: SharedMemory) {
        memory.base.storeBytes(of: UInt64(0x00AF_9B00_0000_FFFF).littleEndian, toByteOffset: Int(gdt + 2 * 8), as: UInt64.self)
        memory.base.storeBytes(of: UInt64(0x00CF_9300_0000_FFFF).littleEndian, toByteOffset: Int(gdt + 3 * 8), as: UInt64.self)
    }

    /// Special registers for CPL0 64-bit mode with interrupts off, as the Linux
    /// 64-bit boot protocol enters the kernel: the same paging as user mode,
    /// CS = __BOOT_CS, the data segments __BOOT_DS.
    public static func kernelModeSpecialRegisters(_ current: kvm_sregs) -> kvm_sregs {
        var s = userModeSpecialRegisters(current)
        s.cs.selector = 0x10; s.cs.dpl = 0
        var data = s.ds
        data.selector = 0x18; data.dpl = 0
        s.ds = data; s.es = data; s.fs = data; s.gs = data; s.ss = data
        return s
    }

    /// Special registers for CPL3 64-bit mode: paging, PAE, SSE, long mode, user segments.
    public static func userModeSpecialRegisters(_ current: kvm_sregs) -> kvm_sregs {
        var s = current
        s.cr3 = pml4
        s.cr4 = 1 << 5 | 1 << 9 | 1 << 10          // PAE, OSFXSR, OSXMMEXCPT
        s.cr0 = 0x8000_0033 | 1 << 16               // PG, WP, NE, ET, MP, PE
        s.efer = 0x500                              // LME, LMA
        var code = kvm_segment()
        code.limit = 0xFFFF_FFFF; code.selector = 0x33; code.type = 11
        code.present = 1; code.dpl = 3; code.s = 1; code.l = 1; code.g = 1
        var data = kvm_segment()
        data.limit = 0xFFFF_FFFF; data.selector = 0x2B; data.type = 3
        data.present = 1; data.dpl = 3; data.db = 1; data.s = 1; data.g = 1
        s.cs = code
        s.ds = data; s.es = data; s.fs = data; s.gs = data; s.ss = data
        var task = kvm_segment()
        task.base = 0x9000; task.limit = 0x67; task.selector = 0x40; task.type = 11; task.present = 1
        s.tr = task
        s.gdt.base = gdt
        s.gdt.limit = 0x4F
        return s
    }
}
