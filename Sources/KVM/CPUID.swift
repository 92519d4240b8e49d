import CKVM
#if canImport(Glibc)
import Glibc
#endif

/// A list of CPUID entries, as KVM_GET_SUPPORTED_CPUID returns and KVM_SET_CPUID2 takes.
public struct CPUID: Sendable, Equatable {
    public var entries: [kvm_cpuid_entry2]

    public init(entries: [kvm_cpuid_entry2]) { self.entries = entries }

    /// The entry for `function` (and `index`, for leaves that have sub-leaves).
    public func entry(function: UInt32, index: UInt32 = 0) -> kvm_cpuid_entry2? {
        entries.first { $0.function == function && ($0.flags & UInt32(KVM_CPUID_FLAG_SIGNIFCANT_INDEX) == 0 || $0.index == index) }
    }

    /// These entries as vCPU `id` of `count` should see them. KVM_GET_SUPPORTED_CPUID
    /// reports the APIC ID of whichever host CPU answered (hardware KVM reports it;
    /// kvm_pvm reports 0), so giving every vCPU the same list makes them all claim
    /// one APIC ID that need not match the LAPIC KVM gave them (its ID is the vCPU
    /// id). This sets, per vCPU: leaf 1 EBX[31:24] (initial APIC ID) and EBX[23:16]
    /// (logical processors, at least `count`), leaves 0xB and 0x1F EDX (x2APIC ID),
    /// and AMD's leaf 0x8000001E EAX (extended APIC ID). A vCPU's CPUID therefore
    /// differs from its siblings' in those fields only, and is saved with its state.
    public func forVCPU(_ id: Int, of count: Int) -> CPUID {
        let apicID = UInt32(truncatingIfNeeded: id)
        var copy = self
        for i in copy.entries.indices {
            switch copy.entries[i].function {
            case 1:
                var ebx = copy.entries[i].ebx & 0x0000_FFFF
                ebx |= (apicID & 0xFF) << 24
                ebx |= UInt32(min(max(count, Int((copy.entries[i].ebx >> 16) & 0xFF)), 255)) << 16
                copy.entries[i].ebx = ebx
            case 0xB, 0x1F:
                copy.entries[i].edx = apicID
            case 0x8000_001E:
                copy.entries[i].eax = apicID
            default:
                break
            }
        }
        return copy
    }

    /// These entries with the hypervisor bit (leaf 1 ECX bit 31) set, as a
    /// guest kernel needs to look for KVM's own leaves (0x40000000 on) and use
    /// kvmclock and the other paravirtual features they offer.
    /// KVM_GET_SUPPORTED_CPUID leaves the bit to the VMM.
    public func announcingHypervisor() -> CPUID {
        var copy = self
        for i in copy.entries.indices where copy.entries[i].function == 1 { copy.entries[i].ecx |= 1 << 31 }
        return copy
    }

    /// Calls `body` with a heap `kvm_cpuid2` holding these entries.
    @discardableResult
    func withRaw<R>(_ body: (UnsafeMutablePointer<kvm_cpuid2>) throws(KVMError) -> R) throws(KVMError) -> R {
        guard let raw = ckvm_cpuid2_alloc(UInt32(entries.count)) else { throw .systemCall(name: "calloc", errno: ENOMEM) }
        defer { free(raw) }
        let destination = ckvm_cpuid2_entries(raw)!
        for (i, entry) in entries.enumerated() { destination[i] = entry }
        return try body(raw)
    }

    public static func == (lhs: CPUID, rhs: CPUID) -> Bool {
        lhs.entries.count == rhs.entries.count && zip(lhs.entries, rhs.entries).allSatisfy { a, b in
            withUnsafeBytes(of: a) { x in withUnsafeBytes(of: b) { y in x.elementsEqual(y) } }
        }
    }
}

extension kvm_cpuid_entry2: @retroactive @unchecked Sendable {}
