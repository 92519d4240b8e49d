import CKVM

/// The VM-wide state KVM keeps in the kernel: the kvmclock, the in-kernel
/// interrupt controllers (PIC master, PIC slave, IOAPIC) and the PIT.
///
/// Chips the VM does not have are absent; restore refuses state for chips the
/// target VM lacks.
public struct VMState: Sendable {
    public var clock: kvm_clock_data
    public var picMaster: kvm_irqchip?
    public var picSlave: kvm_irqchip?
    public var ioapic: kvm_irqchip?
    public var pit: kvm_pit_state2?

    /// Format magic: "UVMS".
    public static let magic: [UInt8] = Array("UVMS".utf8)
    /// Current format version.
    public static let formatVersion: UInt16 = 1

    enum Tag: UInt16, CaseIterable {
        case clock = 1, picMaster, picSlave, ioapic, pit
        var name: String {
            switch self {
            case .clock: "VM clock"
            case .picMaster: "VM PIC master"
            case .picSlave: "VM PIC slave"
            case .ioapic: "VM IOAPIC"
            case .pit: "VM PIT"
            }
        }
    }

    static let sectionNames = Dictionary(uniqueKeysWithValues: Tag.allCases.map { ($0.rawValue, $0.name) })

    /// Versioned, checksummed bytes (see `StateWriter`).
    public func encoded() -> [UInt8] {
        var writer = StateWriter(magic: Self.magic, version: Self.formatVersion)
        writer.section(Tag.clock.rawValue, raw: clock)
        if let picMaster { writer.section(Tag.picMaster.rawValue, raw: picMaster) }
        if let picSlave { writer.section(Tag.picSlave.rawValue, raw: picSlave) }
        if let ioapic { writer.section(Tag.ioapic.rawValue, raw: ioapic) }
        if let pit { writer.section(Tag.pit.rawValue, raw: pit) }
        return writer.bytes
    }

    /// Decodes `encoded()` bytes, validating lengths, checksums and chip ids.
    public init(decoding bytes: [UInt8]) throws(KVMError) {
        let reader = try StateReader(bytes, magic: Self.magic, supportedVersions: 1...Self.formatVersion,
                                     what: "VM state", names: Self.sectionNames)
        clock = try reader.raw(Tag.clock.rawValue, as: kvm_clock_data.self)
        picMaster = try reader.optionalRaw(Tag.picMaster.rawValue, as: kvm_irqchip.self)
        picSlave = try reader.optionalRaw(Tag.picSlave.rawValue, as: kvm_irqchip.self)
        ioapic = try reader.optionalRaw(Tag.ioapic.rawValue, as: kvm_irqchip.self)
        pit = try reader.optionalRaw(Tag.pit.rawValue, as: kvm_pit_state2.self)
        let chips: [(kvm_irqchip?, VirtualMachine.IRQChipID, Tag)] = [
            (picMaster, .picMaster, .picMaster), (picSlave, .picSlave, .picSlave), (ioapic, .ioapic, .ioapic),
        ]
        for (chip, id, tag) in chips {
            if let chip, chip.chip_id != id.rawValue {
                throw .invalidState(part: tag.name, reason: "chip id \(chip.chip_id), expected \(id.rawValue)")
            }
        }
        let present = [picMaster != nil, picSlave != nil, ioapic != nil]
        guard present.allSatisfy({ $0 }) || present.allSatisfy({ !$0 }) else {
            throw .invalidState(part: "VM irqchip", reason: "some interrupt controllers are missing")
        }
    }

    public init(clock: kvm_clock_data, picMaster: kvm_irqchip?, picSlave: kvm_irqchip?, ioapic: kvm_irqchip?, pit: kvm_pit_state2?) {
        self.clock = clock
        self.picMaster = picMaster
        self.picSlave = picSlave
        self.ioapic = ioapic
        self.pit = pit
    }
}

extension VirtualMachine {
    /// Captures the clock, and the irqchips and PIT if this VM has them.
    /// Call with every vCPU out of KVM_RUN.
    public func captureState() throws(KVMError) -> VMState {
        let clock = try self.clock()
        var state = VMState(clock: clock, picMaster: nil, picSlave: nil, ioapic: nil, pit: nil)
        if hasIRQChip {
            state.picMaster = try irqChip(.picMaster)
            state.picSlave = try irqChip(.picSlave)
            state.ioapic = try irqChip(.ioapic)
        }
        if hasPIT { state.pit = try pit2() }
        return state
    }

    /// Restores `state` into this VM, which must have the same chips.
    public func restoreState(_ state: VMState) throws(KVMError) {
        if let chip = state.picMaster {
            guard hasIRQChip else { throw .invalidArgument("saved state has an irqchip but this VM has none") }
            try setIRQChip(chip)
        }
        if let chip = state.picSlave { try setIRQChip(chip) }
        if let chip = state.ioapic { try setIRQChip(chip) }
        if let pit = state.pit {
            guard hasPIT else { throw .invalidArgument("saved state has a PIT but this VM has none") }
            try setPIT2(pit)
        }
        try setClock(state.clock)
    }
}
