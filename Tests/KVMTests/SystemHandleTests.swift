import CKVM
import KVM
import TestGuests
import Testing

@Suite("System handle", .enabled(if: TestHost.kvmAvailable, "needs /dev/kvm"), .deadline(minutes: 5))
struct SystemHandleTests {
    @Test func apiVersionAndCapabilities() throws {
        let kvm = try KVM()
        #expect(try kvm.check(.userMemory) > 0)
        #expect(try kvm.check(.immediateExit) > 0)
        #expect(try kvm.vcpuMmapSize() >= 4096)
        // A capability number KVM does not know reports 0, not an error.
        #expect(try kvm.check(Capability(rawValue: 100_000)) == 0)
    }

    @Test func supportedCPUIDHasVendorLeaf() throws {
        let cpuid = try KVM().supportedCPUID()
        let leaf0 = try #require(cpuid.entry(function: 0))
        #expect(leaf0.eax >= 1)
        // Vendor string is ebx, edx, ecx.
        var vendor: [UInt8] = []
        for register in [leaf0.ebx, leaf0.edx, leaf0.ecx] { withUnsafeBytes(of: register) { vendor += $0 } }
        #expect(["GenuineIntel", "AuthenticAMD", "HygonGenuine"].contains(String(decoding: vendor, as: UTF8.self)))
    }

    @Test func msrIndexListIncludesTSC() throws {
        let list = try KVM().msrIndexList()
        #expect(list.contains(0x10), "IA32_TSC must be saveable")
        #expect(list.contains(0xC000_0080) || list.contains(0xC000_0081), "EFER or STAR expected")
    }
}
