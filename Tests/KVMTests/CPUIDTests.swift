import CKVM
import KVM
import Testing

@Suite("CPUID per vCPU")
struct CPUIDTests {
    static func entry(_ function: UInt32, eax: UInt32 = 0, ebx: UInt32 = 0, edx: UInt32 = 0) -> kvm_cpuid_entry2 {
        var entry = kvm_cpuid_entry2()
        entry.function = function
        entry.eax = eax; entry.ebx = ebx; entry.edx = edx
        return entry
    }

    /// What KVM_GET_SUPPORTED_CPUID gave on one hardware-KVM host: APIC ID 1 (the
    /// host CPU that answered) in leaf 1 and 0xB. Each vCPU gets its own ID instead.
    @Test func eachVCPUGetsItsOwnAPICID() {
        let supported = CPUID(entries: [
            Self.entry(0, eax: 0xD),
            Self.entry(1, eax: 0x0080_0F12, ebx: 0x0102_0800, edx: 0x078B_FBFD),
            Self.entry(0xB, edx: 1),
            Self.entry(0x8000_001E, eax: 1, ebx: 0x100),
        ])
        for id in 0..<4 {
            let cpuid = supported.forVCPU(id, of: 4)
            #expect(cpuid.entry(function: 1)!.ebx >> 24 == UInt32(id), "initial APIC ID")
            #expect((cpuid.entry(function: 1)!.ebx >> 16) & 0xFF == 4, "logical processors")
            #expect(cpuid.entry(function: 1)!.ebx & 0xFFFF == 0x0800, "CLFLUSH size and brand index kept")
            #expect(cpuid.entry(function: 1)!.eax == 0x0080_0F12 && cpuid.entry(function: 1)!.edx == 0x078B_FBFD)
            #expect(cpuid.entry(function: 0xB)!.edx == UInt32(id), "x2APIC ID")
            #expect(cpuid.entry(function: 0x8000_001E)!.eax == UInt32(id), "extended APIC ID")
            #expect(cpuid.entry(function: 0x8000_001E)!.ebx == 0x100)
            #expect(cpuid.entry(function: 0)!.eax == 0xD)
        }
    }
}
