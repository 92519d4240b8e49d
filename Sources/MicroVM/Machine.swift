import Foundation
import KVM
import Understudy
import Logging

/// The reference VMM: a KVM guest with vCPU threads, MMIO devices (serial,
/// doorbell), an in-kernel irqchip and PIT, pause/resume, and whole-machine
/// save/restore.
///
/// ```swift
/// let machine = try Machine(configuration: .init(vcpuCount: 2, commandLine: "pages=16 every=1000"),
///                           console: { bytes in FileHandle.standardOutput.write(Data(bytes)) })
/// try machine.start()
/// let pause = try machine.pause()            // every vCPU parked out of KVM_RUN
/// let state = try machine.saveState()        // versioned bytes; memory is `machine.memory`
/// try machine.resume()
/// let reason = machine.waitUntilStopped()    // .guestExit(code:), .shutdown(vcpu:), ...
/// ```
///
/// A machine rebuilt with `init(restoring:memory:network:disk:console:logger:)` continues exactly where
/// the saved one was paused.
public final class Machine: @unchecked Sendable {
    public let configuration: MachineConfiguration
    public let kvm: KVM
    public let vm: VirtualMachine
    /// Guest RAM (a memfd: another process can map the same bytes).
    public let memory: SharedMemory
    /// The KVM memory slots over `memory`.
    public private(set) var slots: [MemoryRegion]
    public let vcpus: [VCPU]
    /// Bounds-checked access to RAM for the VMM's own writes, which it records.
    public let guestMemory: GuestMemory
    public let serial: Serial
    public let doorbell: Doorbell
    /// The network card, when configured.
    public let net: VirtioNet?
    /// The disk, when configured.
    public let block: VirtioBlock?
    /// A Linux guest's interrupt lines for the virtio devices (ISA IRQs, edge).
    public static let virtioNetIRQ: UInt32 = 5
    public static let virtioBlockIRQ: UInt32 = 6
    /// A Linux guest's UART (COM1, IRQ 4: `console=ttyS0`), writing to the console.
    public private(set) var uart: UART8250?
    let devices: [any MMIODevice]
    /// Port-I/O devices (a Linux guest's); ports nobody answers read as all ones.
    private(set) var portDevices: [any PortDevice] = []
    let logger: Logger
    /// The guest's and the VMM's writes to RAM, for checkpoints (nil without dirty tracking).
    public let dirtyTracker: DirtyTracker?

    /// Called on a vCPU thread when its dirty ring is full; must harvest and reset
    /// the rings before returning. Without it the machine's `DirtyTracker`
    /// absorbs the ring: the pages wait for the next `collectDirtyPages`.
    public var onDirtyRingFull: (@Sendable (VCPU) -> Void)?

    // Lifecycle, guarded by `condition`, the lock of the vCPUs' pause gate.
    enum Phase: Equatable { case created, running, paused, stopped }
    /// Parks the vCPU threads for a pause (completing MMIO and I/O exits first).
    let gate: VCPUPauseGate
    var condition: NSCondition { gate.condition }
    var phase = Phase.created
    /// Set by `pause(capturingVCPUState: true)`: every vCPU thread, once all are
    /// parked, reads its own vCPU's state into `parkedStates` (see `captureState`).
    var captureRequested = false
    var parkedStates: [Result<VCPUState, KVMError>?] = []
    /// Whether the current pause is a checkpoint's (`pause(capturingVCPUState: true)`):
    /// its harvest leaves re-arming KVM's dirty log to `rearmDirtyLog()`.
    var pausedForCheckpoint = false
    var reason: StopReason?
    var threads: [pthread_t] = []

    // MARK: building

    /// Builds a machine that boots `configuration.image` from scratch.
    public convenience init(configuration: MachineConfiguration,
                            console: @escaping @Sendable ([UInt8]) -> Void,
                            logger: Logger = Logger(label: "microvm")) throws(MachineError) {
        try configuration.validate()
        let memory: SharedMemory
        do { memory = try SharedMemory(size: Int(configuration.memorySize), name: "\(configuration.name)-ram") } catch { throw .kvm(error) }
        try self.init(configuration: configuration, memory: memory, pc: configuration.linux != nil, console: console, logger: logger)
        try boot()
    }

    /// Builds a machine from `saveState()` bytes and the saved machine's memory
    /// (the same memfd, or a copy). The machine is ready to `start()`.
    /// Host devices are not part of the state: pass the tap and disk the restored
    /// machine should use (it must have the same devices as the saved one).
    public convenience init(restoring state: [UInt8], memory: SharedMemory,
                            network: NetworkConfiguration? = nil, disk: DiskConfiguration? = nil,
                            console: @escaping @Sendable ([UInt8]) -> Void,
                            logger: Logger = Logger(label: "microvm")) throws(MachineError) {
        let saved = try MachineState(decoding: state)
        guard UInt64(memory.size) == saved.memorySize else {
            throw .invalidState(part: "machine header", reason: "memory is \(memory.size) bytes, state expects \(saved.memorySize)")
        }
        var configuration = MachineConfiguration(vcpuCount: saved.vcpuStates.count, memorySize: saved.memorySize,
                                                 maxSlotSize: saved.maxSlotSize, image: GuestImage(raw: [], loadAddress: 0),
                                                 commandLine: "", dirtyTracking: saved.dirtyTracking)
        configuration.network = network
        configuration.disk = disk
        guard saved.hasNetwork == (network != nil), saved.hasDisk == (disk != nil) else {
            throw .invalidState(part: "machine header", reason: "the saved machine had \(saved.hasNetwork ? "a" : "no") network card and \(saved.hasDisk ? "a" : "no") disk; configure the same")
        }
        try configuration.validate()
        try self.init(configuration: configuration, memory: memory, pc: saved.hasUART, console: console, logger: logger)
        try restore(saved)
    }

    /// With `pc`, the machine is a Linux guest's: port-I/O devices (`uart`,
    /// `LegacyPorts`), and virtio devices interrupt on IRQ lines
    /// (`virtioNetIRQ`, `virtioBlockIRQ`) instead of the doorbell.
    private init(configuration: MachineConfiguration, memory: SharedMemory, pc: Bool,
                 console: @escaping @Sendable ([UInt8]) -> Void, logger: Logger) throws(MachineError) {
        if pc, !KVM.runsGuestKernels {
            throw .cannotRun("this host's KVM (\(KVM.module ?? "unknown")) emulates guest kernel code and cannot run Linux: use hardware KVM (kvm_intel, kvm_amd) or the KVM box (Scripts/kvm-box.sh)")
        }
        self.configuration = configuration
        self.memory = memory
        self.logger = logger
        do {
            kvm = try KVM()
            vm = try kvm.createVM()
            switch configuration.dirtyTracking {
            case .none: break
            case .bitmap: try vm.enableManualDirtyLogProtect()
            case .ring(let entries): try vm.enableDirtyRing(entries: entries)
            }
            try vm.setTSSAddress(0xFFFB_D000)
            try vm.setIdentityMapAddress(0xFFFB_C000)
            try vm.createIRQChip()
            try vm.createPIT2()
            // Ticks the guest missed are dropped, not delivered back to back:
            // a checkpoint pause would otherwise end in a burst of timer
            // interrupts (Linux keeps time by kvmclock, not by counting them).
            try vm.setPITReinjection(false)
            slots = Self.slots(memory: memory, maxSlotSize: configuration.maxSlotSize,
                               logDirtyPages: configuration.dirtyTracking != .none)
            for slot in slots { try vm.setUserMemoryRegion(slot) }
            var vcpus: [VCPU] = []
            for index in 0..<configuration.vcpuCount { vcpus.append(try vm.createVCPU(id: UInt32(index))) }
            if configuration.dirtyTracking != .none {
                // A machine that is checkpointed reads registers from kvm_run where the host offers it.
                for vcpu in vcpus { try vcpu.enableSyncedRegisters() }
            }
            self.vcpus = vcpus
            gate = VCPUPauseGate(vcpus: vcpus)
        } catch {
            throw .kvm(error)
        }
        let condition = gate.condition
        serial = Serial(base: GuestLayout.serialBase, output: console)
        let doorbell = Doorbell(base: GuestLayout.doorbellBase) {
            condition.lock()
            condition.broadcast()
            condition.unlock()
        }
        self.doorbell = doorbell
        guestMemory = GuestMemory(memory)
        switch configuration.dirtyTracking {
        case .none: dirtyTracker = nil
        case .bitmap: dirtyTracker = DirtyTracker(vm: vm, slots: slots, vcpus: vcpus, mode: .bitmap, ownWrites: guestMemory)
        case .ring: dirtyTracker = DirtyTracker(vm: vm, slots: slots, vcpus: vcpus, mode: .ring, ownWrites: guestMemory)
        }
        let vm = self.vm
        /// An interrupt: a pulse on `line` for a Linux guest, else a doorbell event.
        func interrupt(line: UInt32, event: UInt64) -> @Sendable () -> Void {
            guard pc else { return { doorbell.raise(event) } }
            return {
                do {
                    try vm.setIRQLine(line, level: true)
                    try vm.setIRQLine(line, level: false)
                } catch {
                    logger.error("raising IRQ \(line): \(error)")
                }
            }
        }
        if let network = configuration.network {
            net = VirtioNet(base: GuestLayout.virtioNetBase, memory: guestMemory, mac: network.mac,
                            tap: try TapPool.shared.take(network.tap), keepsTapOpen: network.keepsTapOpen, logger: logger,
                            notifyGuest: interrupt(line: Self.virtioNetIRQ, event: Doorbell.Event.network))
        } else {
            net = nil
        }
        if let disk = configuration.disk {
            block = try VirtioBlock(base: GuestLayout.virtioBlockBase, memory: guestMemory, path: disk.path,
                                    readOnly: disk.readOnly, logger: logger,
                                    notifyGuest: interrupt(line: Self.virtioBlockIRQ, event: Doorbell.Event.disk))
        } else {
            block = nil
        }
        devices = [serial, doorbell] + [net as (any MMIODevice)?, block].compactMap { $0 }
        if pc {
            let uart = UART8250(output: console, interrupt: interrupt(line: UART8250.com1IRQ, event: 0))
            self.uart = uart
            portDevices = [uart, LegacyPorts { [weak self] in self?.stop(.reset) }]
        }
    }

    deinit {
        stop(.requested)
        joinThreads()
    }

    static func slots(memory: SharedMemory, maxSlotSize: UInt64, logDirtyPages: Bool) -> [MemoryRegion] {
        var slots: [MemoryRegion] = []
        var offset: UInt64 = 0
        let host = UInt64(UInt(bitPattern: memory.base))
        while offset < UInt64(memory.size) {
            let size = min(maxSlotSize, UInt64(memory.size) - offset)
            slots.append(MemoryRegion(slot: UInt32(slots.count), guestPhysicalAddress: offset, size: size,
                                      hostAddress: host + offset, logDirtyPages: logDirtyPages))
            offset += size
        }
        return slots
    }

    /// Loads the image, writes page tables and the boot-info page, and points every
    /// vCPU at the entry in 64-bit user mode; or boots `configuration.linux`.
    private func boot() throws(MachineError) {
        if let linux = configuration.linux {
            try bootLinux(linux)
            return
        }
        let image = configuration.image
        var end = GuestLayout.imageBase
        for segment in image.segments {
            guard segment.address >= GuestLayout.imageBase,
                  segment.memorySize <= configuration.memorySize,
                  segment.address <= configuration.memorySize - segment.memorySize else {
                throw .image(.outOfBounds("segment at 0x\(String(segment.address, radix: 16)) of \(segment.memorySize) bytes outside RAM 0x\(String(GuestLayout.imageBase, radix: 16))..0x\(String(configuration.memorySize, radix: 16))"))
            }
            let start = Int(segment.address)
            memory.bytes[start..<(start + Int(segment.memorySize))].initializeMemory(as: UInt8.self, repeating: 0)
            memory.bytes[start..<(start + segment.data.count)].copyBytes(from: segment.data)
            end = max(end, segment.address + segment.memorySize)
        }
        guard image.segments.contains(where: { image.entry >= $0.address && image.entry < $0.address + $0.memorySize }) else {
            throw .image(.outOfBounds("entry point 0x\(String(image.entry, radix: 16)) is not in a loaded segment"))
        }
        GuestLayout.writeSystemTables(into: memory)
        do {
            let info = BootInfo(vcpuCount: vcpus.count, memorySize: configuration.memorySize,
                                tscKHz: UInt64(try vcpus[0].tscKHz()), serialBase: GuestLayout.serialBase,
                                doorbellBase: GuestLayout.doorbellBase, freeMemoryBase: (end + 4095) & ~4095,
                                commandLine: configuration.commandLine,
                                devices: [net, block].compactMap { $0 }.map { (type: $0.deviceID, base: $0.base, size: $0.size) })
            memory.bytes[Int(GuestLayout.bootInfo)..<Int(GuestLayout.bootInfo + 4096)].copyBytes(from: info.encoded())
            let cpuid = try kvm.supportedCPUID()
            for (index, vcpu) in vcpus.enumerated() {
                try vcpu.setCPUID(cpuid.forVCPU(index, of: vcpus.count))
                try vcpu.setSpecialRegisters(GuestLayout.userModeSpecialRegisters(vcpu.specialRegisters()))
                var regs = kvm_regs()
                regs.rip = image.entry
                regs.rsp = GuestLayout.stackTop(vcpu: index)
                regs.rflags = 2
                regs.rdi = GuestLayout.bootInfo
                regs.rsi = UInt64(index)
                try vcpu.setRegisters(regs)
                // With an in-kernel LAPIC, vCPUs other than the first wait for a SIPI; ours start at once.
                try vcpu.setMPState(kvm_mp_state(mp_state: UInt32(KVM_MP_STATE_RUNNABLE)))
            }
        } catch {
            throw .kvm(error)
        }
    }

    /// Loads a Linux kernel (`LinuxBoot`) and enters its 64-bit entry on the
    /// first vCPU at CPL0 with interrupts off and RSI at the zero page; other
    /// vCPUs wait for the kernel's INIT/SIPI.
    private func bootLinux(_ linux: LinuxBoot) throws(MachineError) {
        // The kernel learns of the virtio-mmio devices from the ACPI tables' DSDT.
        var devices: [ACPITables.VirtioDevice] = []
        if let net { devices.append(.init(base: net.base, size: net.size, irq: Self.virtioNetIRQ)) }
        if let block { devices.append(.init(base: block.base, size: block.size, irq: Self.virtioBlockIRQ)) }
        let entry = try linux.load(into: memory, memorySize: configuration.memorySize, vcpus: vcpus.count, devices: devices)
        GuestLayout.writeSystemTables(into: memory)
        GuestLayout.writeKernelSegments(into: memory)
        do {
            let cpuid = try kvm.supportedCPUID()
            for (index, vcpu) in vcpus.enumerated() {
                try vcpu.setCPUID(cpuid.forVCPU(index, of: vcpus.count).announcingHypervisor())
                guard index == 0 else { continue }
                try vcpu.setSpecialRegisters(GuestLayout.kernelModeSpecialRegisters(vcpu.specialRegisters()))
                var regs = kvm_regs()
                regs.rip = entry
                regs.rsi = LinuxBoot.zeroPage
                regs.rsp = GuestLayout.stackTop(vcpu: 0)
                regs.rflags = 2
                try vcpu.setRegisters(regs)
            }
        } catch {
            throw .kvm(error)
        }
    }

    // MARK: dirty logging

    /// Switches KVM's dirty logging for every slot on or off while the machine exists.
    public func setDirtyLogging(_ enabled: Bool) throws(MachineError) {
        guard configuration.dirtyTracking != .none || !enabled else {
            throw .invalidConfiguration("dirty logging needs a dirty-tracking mode chosen at build time")
        }
        var updated = slots
        for index in updated.indices { updated[index].logDirtyPages = enabled }
        do { for slot in updated { try vm.setUserMemoryRegion(slot) } } catch { throw .kvm(error) }
        slots = updated
    }

    // MARK: lifecycle

    /// Starts one thread per vCPU. The machine runs until stopped or the guest ends.
    public func start() throws(MachineError) {
        condition.lock()
        defer { condition.unlock() }
        guard phase == .created else { throw .wrongState("start: the machine was already started") }
        for index in vcpus.indices {
            let box = Unmanaged.passRetained(VCPUThreadContext(machine: self, index: index))
            var thread = pthread_t()
            let result = pthread_create(&thread, nil, { raw in
                let context = Unmanaged<VCPUThreadContext>.fromOpaque(raw!).takeRetainedValue()
                context.machine.vcpuLoop(context.index)
                return nil
            }, box.toOpaque())
            guard result == 0 else {
                box.release()
                stopLocked(.hostError(vcpu: index, error: "pthread_create failed (errno \(result))"))
                throw .thread(errno: result)
            }
            threads.append(thread)
            gate.threadStartedLocked()
        }
        net?.startReceiving()
        phase = .running
    }

    /// Stops every vCPU out of KVM_RUN and parks it (any MMIO or I/O in flight is
    /// completed first, so devices are quiescent). Returns how long that took.
    ///
    /// With `capturingVCPUState`, each vCPU thread then reads its own vCPU's state
    /// (once every vCPU is out of KVM_RUN), while the caller goes on, e.g. with
    /// the dirty log; `captureState()` collects those reads. A checkpoint's pause
    /// thus overlaps the vCPU ioctls with the harvest and copy.
    @discardableResult
    public func pause(capturingVCPUState: Bool = false) throws(MachineError) -> Duration {
        let clock = ContinuousClock()
        let started = clock.now
        condition.lock()
        defer { condition.unlock() }
        guard phase == .running else { throw .wrongState("pause: the machine is not running (\(phase))") }
        captureRequested = capturingVCPUState
        pausedForCheckpoint = capturingVCPUState
        parkedStates = Array(repeating: nil, count: vcpus.count)
        gate.requestPauseLocked()
        gate.waitUntilParkedLocked()
        // Devices are quiesced outside this lock: a device thread delivers and
        // notifies under its own lock, and the notification wakes vCPUs under
        // this one (device lock, then machine lock). The vCPUs stay parked
        // meanwhile (`pauseRequested`), and `resume` needs `phase == .paused`.
        condition.unlock()
        for device in devices { device.setQuiesced(true) }
        condition.lock()
        phase = gate.isStopping ? .stopped : .paused
        return clock.now - started
    }

    /// Lets the parked vCPUs run again. Returns how long it took to release them.
    @discardableResult
    public func resume() throws(MachineError) -> Duration {
        let clock = ContinuousClock()
        let started = clock.now
        condition.lock()
        defer { condition.unlock() }
        guard phase == .paused else { throw .wrongState("resume: the machine is not paused (\(phase))") }
        // Devices first, outside this lock as in `pause`; the vCPUs are still
        // parked, and the checkpoint's capture is done, so what a device does
        // now belongs to the next epoch.
        condition.unlock()
        for device in devices { device.setQuiesced(false) }
        condition.lock()
        guard phase == .paused else { throw .wrongState("resume: the machine is not paused (\(phase))") }
        captureRequested = false
        phase = .running
        gate.resumeLocked()
        return clock.now - started
    }

    /// Asks the machine to stop; returns at once. `waitUntilStopped()` waits for it.
    public func requestStop() { stop(.requested) }

    /// Waits until every vCPU thread has ended (up to `timeout`), joins them, and
    /// returns why the machine stopped, or nil if it is still running at the timeout.
    public func waitUntilStopped(timeout: Duration? = nil) -> StopReason? {
        let deadline = timeout.map { Date().addingTimeInterval(Double($0.components.seconds) + Double($0.components.attoseconds) / 1e18) }
        condition.lock()
        while !(gate.isStopping && gate.threadsAlive == 0) && !(phase == .created && gate.isStopping) {
            // Once stopping, the vCPUs are asked to leave KVM_RUN again every
            // 100 ms: a kick is a signal, and one was seen lost in the KVM box
            // (a vCPU left in KVM_RUN for minutes after SIGTERM). Asking again
            // costs nothing when the first one worked.
            let wakeAt = gate.isStopping ? Date().addingTimeInterval(0.1) : nil
            let until = [deadline, wakeAt].compactMap { $0 }.min()
            if let until {
                if !condition.wait(until: until) {
                    if let deadline, Date() >= deadline { break }
                    if gate.isStopping { for vcpu in vcpus { vcpu.requestExit() } }
                }
            } else {
                condition.wait()
            }
        }
        let done = gate.isStopping && gate.threadsAlive == 0
        let result = done ? reason : nil
        condition.unlock()
        if done { joinThreads() }
        return result
    }

    /// Why the machine stopped, once it has.
    public var stopReason: StopReason? {
        condition.lock()
        defer { condition.unlock() }
        return reason
    }

    /// Whether every vCPU is parked by `pause()`.
    public var isPaused: Bool {
        condition.lock()
        defer { condition.unlock() }
        return phase == .paused
    }

    func stop(_ why: StopReason) {
        condition.lock()
        stopLocked(why)
        condition.unlock()
    }

    func stopLocked(_ why: StopReason) {
        if reason == nil {
            reason = why
            switch why {
            case .requested, .guestExit: logger.debug("machine stopping: \(why)")
            default: logger.notice("machine stopping: \(why)")
            }
        }
        gate.stopLocked()
    }

    private func joinThreads() {
        condition.lock()
        let toJoin = threads
        threads = []
        condition.unlock()
        for thread in toJoin { pthread_join(thread, nil) }
        for device in devices { device.shutdown() }
    }
}

/// What a vCPU thread is handed at creation.
final class VCPUThreadContext: @unchecked Sendable {
    let machine: Machine
    let index: Int
    init(machine: Machine, index: Int) {
        self.machine = machine
        self.index = index
    }
}
