import CKVM

extension VCPUState {
    /// Format magic: "UVCP".
    public static let magic: [UInt8] = Array("UVCP".utf8)
    /// Current format version. Readers accept 1 ... `formatVersion`.
    public static let formatVersion: UInt16 = 1

    enum Tag: UInt16, CaseIterable {
        case registers = 1, specialRegisters, xsave, xcrs, lapic, msrs, events, mpState, debugRegisters, cpuid

        var name: String {
            switch self {
            case .registers: "regs"
            case .specialRegisters: "sregs"
            case .xsave: "xsave"
            case .xcrs: "xcrs"
            case .lapic: "lapic"
            case .msrs: "msrs"
            case .events: "vcpu events"
            case .mpState: "mp state"
            case .debugRegisters: "debug registers"
            case .cpuid: "cpuid"
            }
        }
    }

    static let sectionNames = Dictionary(uniqueKeysWithValues: Tag.allCases.map { ($0.rawValue, "vCPU \($0.name)") })

    /// The state as versioned, checksummed bytes (see `StateWriter` for the layout).
    public func encoded() -> [UInt8] {
        var writer = StateWriter(magic: Self.magic, version: Self.formatVersion)
        writer.section(Tag.registers.rawValue, raw: registers)
        writer.section(Tag.specialRegisters.rawValue, raw: specialRegisters)
        writer.section(Tag.xsave.rawValue, payload: xsave)
        writer.section(Tag.xcrs.rawValue, raw: xcrs)
        if let lapic { writer.section(Tag.lapic.rawValue, raw: lapic) }
        writer.section(Tag.msrs.rawValue) { out in
            for msr in msrs {
                StateWriter.append(msr.index, to: &out)
                StateWriter.append(msr.value, to: &out)
            }
        }
        writer.section(Tag.events.rawValue, raw: events)
        writer.section(Tag.mpState.rawValue, raw: mpState)
        writer.section(Tag.debugRegisters.rawValue, raw: debugRegisters)
        writer.section(Tag.cpuid.rawValue) { out in
            for entry in cpuid.entries { withUnsafeBytes(of: entry) { out += $0 } }
        }
        return writer.bytes
    }

    /// Decodes bytes from `encoded()`, checking every length, count and checksum.
    /// Errors name the part that was bad.
    public init(decoding bytes: [UInt8]) throws(KVMError) {
        let reader = try StateReader(bytes, magic: Self.magic, supportedVersions: 1...Self.formatVersion,
                                     what: "vCPU state", names: Self.sectionNames)
        registers = try reader.raw(Tag.registers.rawValue, as: kvm_regs.self)
        specialRegisters = try reader.raw(Tag.specialRegisters.rawValue, as: kvm_sregs.self)
        xsave = try reader.payload(Tag.xsave.rawValue)
        guard xsave.count >= MemoryLayout<kvm_xsave>.size, xsave.count <= 1 << 20, xsave.count % 64 == 0 else {
            throw .invalidState(part: "vCPU xsave", reason: "area of \(xsave.count) bytes")
        }
        xcrs = try reader.raw(Tag.xcrs.rawValue, as: kvm_xcrs.self)
        guard xcrs.nr_xcrs <= UInt32(KVM_MAX_XCRS) else {
            throw .invalidState(part: "vCPU xcrs", reason: "\(xcrs.nr_xcrs) registers, at most \(KVM_MAX_XCRS)")
        }
        lapic = try reader.optionalRaw(Tag.lapic.rawValue, as: kvm_lapic_state.self)
        let msrBytes = try reader.payload(Tag.msrs.rawValue)
        guard msrBytes.count % 12 == 0 else {
            throw .invalidState(part: "vCPU msrs", reason: "\(msrBytes.count) bytes is not a whole number of entries")
        }
        var msrs: [MSR] = []
        msrs.reserveCapacity(msrBytes.count / 12)
        for offset in stride(from: 0, to: msrBytes.count, by: 12) {
            let index = try StateReader.integer(msrBytes, at: offset, as: UInt32.self, part: "vCPU msrs")
            let value = try StateReader.integer(msrBytes, at: offset + 4, as: UInt64.self, part: "vCPU msrs")
            msrs.append(MSR(index: index, value: value))
        }
        self.msrs = msrs
        events = try reader.raw(Tag.events.rawValue, as: kvm_vcpu_events.self)
        mpState = try reader.raw(Tag.mpState.rawValue, as: kvm_mp_state.self)
        guard mpState.mp_state <= 10 else {
            throw .invalidState(part: "vCPU mp state", reason: "unknown state \(mpState.mp_state)")
        }
        debugRegisters = try reader.raw(Tag.debugRegisters.rawValue, as: kvm_debugregs.self)
        let cpuidBytes = try reader.payload(Tag.cpuid.rawValue)
        let entrySize = MemoryLayout<kvm_cpuid_entry2>.size
        guard cpuidBytes.count % entrySize == 0, cpuidBytes.count / entrySize <= 4096 else {
            throw .invalidState(part: "vCPU cpuid", reason: "\(cpuidBytes.count) bytes is not a whole number of entries (at most 4096)")
        }
        cpuid = CPUID(entries: stride(from: 0, to: cpuidBytes.count, by: entrySize).map { offset in
            cpuidBytes.withUnsafeBytes { $0.loadUnaligned(fromByteOffset: offset, as: kvm_cpuid_entry2.self) }
        })
    }
}
