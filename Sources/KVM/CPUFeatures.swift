import CKVM

/// The CPU feature bits a guest can use, from its CPUID: leaf 1 ECX and EDX,
/// leaf 7 (sub-leaf 0) EBX, ECX and EDX, leaf 0x8000_0001 ECX and EDX. A host
/// can run a guest (restored from another host) only if it offers every bit
/// the guest was shown; `missing(on:)` names those it lacks.
public struct CPUFeatures: Sendable, Equatable {
    /// The registers, in the order above.
    public var words: [UInt32]

    /// Where each word comes from, for messages.
    public static let names = ["CPUID.1.ECX", "CPUID.1.EDX", "CPUID.7.EBX", "CPUID.7.ECX", "CPUID.7.EDX",
                               "CPUID.80000001.ECX", "CPUID.80000001.EDX"]
    /// Bits that describe the vCPU's situation rather than a feature the guest
    /// relies on: leaf 1 ECX bit 27 (OSXSAVE, mirrors CR4) and bit 31 (running
    /// under a hypervisor). They never make a host unable to run a guest.
    static let ignored: [UInt32] = [1 << 27 | 1 << 31, 0, 0, 0, 0, 0, 0]

    public init(words: [UInt32]) {
        self.words = Array((words + [UInt32](repeating: 0, count: 7)).prefix(7))
    }

    public init(_ cpuid: CPUID) {
        let leaf1 = cpuid.entry(function: 1)
        let leaf7 = cpuid.entry(function: 7, index: 0)
        let extended = cpuid.entry(function: 0x8000_0001)
        self.init(words: [leaf1?.ecx ?? 0, leaf1?.edx ?? 0, leaf7?.ebx ?? 0, leaf7?.ecx ?? 0, leaf7?.edx ?? 0,
                          extended?.ecx ?? 0, extended?.edx ?? 0])
    }

    /// The features a guest shown `self` would miss on a host offering `host`,
    /// e.g. `["CPUID.7.EBX bit 5"]`; empty when the host offers them all.
    public func missing(on host: CPUFeatures) -> [String] {
        var missing: [String] = []
        for (index, word) in words.enumerated() {
            let lacking = word & ~host.words[index] & ~Self.ignored[index]
            for bit in 0..<32 where lacking & (1 << UInt32(bit)) != 0 {
                missing.append("\(Self.names[index]) bit \(bit)")
            }
        }
        return missing
    }
}
