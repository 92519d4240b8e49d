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
