import KVM

/// A paused machine's saved state (everything but guest RAM): the shape of the
/// machine, every vCPU's full state, the VM's chips and clock, and each device.
///
/// Encoded with the KVM module's section format (magic "UMVM"): every part is
/// length-checked and checksummed, and errors name the part.
struct MachineState {
    static let magic: [UInt8] = Array("UMVM".utf8)
    /// 2: a Linux guest's UART (section 7).
    static let version: UInt16 = 2

    var memorySize: UInt64
    var maxSlotSize: UInt64
    var dirtyTracking: MachineConfiguration.DirtyTracking
    var vcpuStates: [[UInt8]]
    var vmState: [UInt8]
    var devices: [String: [UInt8]]

    enum Tag {
        static let header: UInt16 = 1
        static let vm: UInt16 = 2
        static let serial: UInt16 = 3
        static let doorbell: UInt16 = 4
        static let net: UInt16 = 5
        static let block: UInt16 = 6
        static let uart: UInt16 = 7
        static let firstVCPU: UInt16 = 0x100
    }

    static let deviceTags: [String: UInt16] = ["serial": Tag.serial, "doorbell": Tag.doorbell,
                                               "virtio-net": Tag.net, "virtio-blk": Tag.block, "uart": Tag.uart]
    var hasNetwork: Bool { devices["virtio-net"] != nil }
    var hasDisk: Bool { devices["virtio-blk"] != nil }
    /// A Linux guest's machine: port-I/O devices, virtio interrupts on IRQ lines.
    var hasUART: Bool { devices["uart"] != nil }

    static var names: [UInt16: String] {
        var names: [UInt16: String] = [Tag.header: "machine header", Tag.vm: "VM state",
                                       Tag.serial: "serial", Tag.doorbell: "doorbell",
                                       Tag.net: "virtio-net", Tag.block: "virtio-blk", Tag.uart: "UART"]
        for index in 0..<GuestLayout.maxVCPUs { names[Tag.firstVCPU + UInt16(index)] = "vCPU \(index) state" }
        return names
    }

    func encoded() -> [UInt8] {
        var writer = StateWriter(magic: Self.magic, version: Self.version)
        writer.section(Tag.header) { out in
            StateWriter.append(memorySize, to: &out)
            StateWriter.append(maxSlotSize, to: &out)
            StateWriter.append(UInt32(vcpuStates.count), to: &out)
            switch dirtyTracking {
            case .none: StateWriter.append(UInt32(0), to: &out); StateWriter.append(UInt32(0), to: &out)
            case .bitmap: StateWriter.append(UInt32(1), to: &out); StateWriter.append(UInt32(0), to: &out)
            case .ring(let entries): StateWriter.append(UInt32(2), to: &out); StateWriter.append(UInt32(entries), to: &out)
            }
        }
        writer.section(Tag.vm, payload: vmState)
        for (index, state) in vcpuStates.enumerated() { writer.section(Tag.firstVCPU + UInt16(index), payload: state) }
        for (name, tag) in Self.deviceTags.sorted(by: { $0.value < $1.value }) {
            if let bytes = devices[name] { writer.section(tag, payload: bytes) }
        }
        return writer.bytes
    }

    init(memorySize: UInt64, maxSlotSize: UInt64, dirtyTracking: MachineConfiguration.DirtyTracking,
         vcpuStates: [[UInt8]], vmState: [UInt8], devices: [String: [UInt8]]) {
        self.memorySize = memorySize
        self.maxSlotSize = maxSlotSize
        self.dirtyTracking = dirtyTracking
        self.vcpuStates = vcpuStates
        self.vmState = vmState
        self.devices = devices
    }

    init(decoding bytes: [UInt8]) throws(MachineError) {
        let reader: StateReader
        do {
            reader = try StateReader(bytes, magic: Self.magic, supportedVersions: 1...Self.version,
                                     what: "machine state", names: Self.names)
        } catch {
            throw MachineError.from(error, part: "machine state")
        }
        func payload(_ tag: UInt16) throws(MachineError) -> [UInt8] {
            do { return try reader.payload(tag) } catch { throw MachineError.from(error, part: "machine state") }
        }
        let header = try payload(Tag.header)
        guard header.count == 28 else { throw .invalidState(part: "machine header", reason: "\(header.count) bytes, expected 28") }
        var fields = ByteReader(header, part: "machine header")
        memorySize = try fields.u64()
        maxSlotSize = try fields.u64()
        let vcpuCount = Int(try fields.u32())
        switch (try fields.u32(), Int(try fields.u32())) {
        case (0, _): dirtyTracking = .none
        case (1, _): dirtyTracking = .bitmap
        case (2, let entries): dirtyTracking = .ring(entries: entries)
        case (let mode, _): throw .invalidState(part: "machine header", reason: "unknown dirty-tracking mode \(mode)")
        }
        guard (1...GuestLayout.maxVCPUs).contains(vcpuCount) else {
            throw .invalidState(part: "machine header", reason: "\(vcpuCount) vCPUs")
        }
        vcpuStates = []
        for index in 0..<vcpuCount { vcpuStates.append(try payload(Tag.firstVCPU + UInt16(index))) }
        guard reader.sections[Tag.firstVCPU + UInt16(vcpuCount)] == nil else {
            throw .invalidState(part: "machine header", reason: "more vCPU states than the \(vcpuCount) declared")
        }
        vmState = try payload(Tag.vm)
        var devices: [String: [UInt8]] = [:]
        for (name, tag) in Self.deviceTags {
            if name == "serial" || name == "doorbell" {
                devices[name] = try payload(tag)
            } else if let bytes = reader.sections[tag] {
                devices[name] = bytes
            }
        }
        self.devices = devices
    }
}

extension Machine {
    /// The paused machine's state as versioned bytes (guest RAM is `memory`, saved
    /// separately). Throws unless the machine is paused or was never started.
    public func saveState() throws(MachineError) -> [UInt8] { try captureState()() }

    /// Reads every vCPU's, the VM's and each device's state now (paused or not
    /// yet started) and returns what encodes it as `saveState()` bytes: the
    /// KVM reads happen here, the encoding (and its checksums) whenever the
    /// closure runs, e.g. after the machine resumed.
    public func captureState() throws(MachineError) -> @Sendable () -> [UInt8] {
        condition.lock()
        let phase = self.phase
        condition.unlock()
        guard phase == .paused || phase == .created else {
            throw .wrongState("saveState: pause the machine first (it is \(phase))")
        }
        do {
            let vmState = try vm.captureState()
            let parked = takeParkedStates()
            let vcpuStates = try vcpus.indices.map { (index) throws(KVMError) in
                if let read = parked[index] { return try read.get() }
                return try vcpus[index].captureState()
            }
            var deviceStates: [String: [UInt8]] = [:]
            for device in devices { deviceStates[device.name] = device.saveState() }
            if let uart { deviceStates["uart"] = uart.saveState() }
            let configuration = configuration
            let devices = deviceStates
            return {
                MachineState(memorySize: configuration.memorySize, maxSlotSize: configuration.maxSlotSize,
                             dirtyTracking: configuration.dirtyTracking, vcpuStates: vcpuStates.map { $0.encoded() },
                             vmState: vmState.encoded(), devices: devices).encoded()
            }
        } catch {
            throw .kvm(error)
        }
    }

    /// The vCPU states the vCPU threads read for `pause(capturingVCPUState: true)`,
    /// waited for (nil where none is coming: no such request, or the machine is
    /// stopping). Taken once per pause: a second `captureState()` reads afresh.
    private func takeParkedStates() -> [Result<VCPUState, KVMError>?] {
        condition.lock()
        defer { condition.unlock() }
        guard captureRequested else { return Array(repeating: nil, count: vcpus.count) }
        while !gate.isStopping && parkedStates.contains(where: { $0 == nil }) { condition.wait() }
        captureRequested = false
        return parkedStates
    }

    /// Writes decoded state into this freshly built machine. The vCPU and VM
    /// parts are decoded (validated) before anything is written to KVM; device
    /// parts are decoded by each device as it restores, and a bad one fails
    /// the restore (the machine, half restored, is then discarded).
    func restore(_ saved: MachineState) throws(MachineError) {
        var vcpuStates: [VCPUState] = []
        for (index, bytes) in saved.vcpuStates.enumerated() {
            do { vcpuStates.append(try VCPUState(decoding: bytes)) } catch { throw MachineError.from(error, part: "vCPU \(index) state") }
        }
        let vmState: VMState
        do { vmState = try VMState(decoding: saved.vmState) } catch { throw MachineError.from(error, part: "VM state") }
        for (index, state) in vcpuStates.enumerated() {
            do { try vcpus[index].restoreState(state) } catch { throw .invalidState(part: "vCPU \(index) state", reason: "\(error)") }
        }
        do { try vm.restoreState(vmState) } catch { throw .invalidState(part: "VM state", reason: "\(error)") }
        for device in devices {
            guard let bytes = saved.devices[device.name] else {
                throw .invalidState(part: device.name, reason: "missing")
            }
            try device.restoreState(bytes)
        }
        if let uart {
            guard let bytes = saved.devices["uart"] else { throw .invalidState(part: "UART", reason: "missing") }
            try uart.restoreState(bytes)
        }
    }
}
