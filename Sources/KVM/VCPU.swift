import CKVM
import Synchronization
#if canImport(Glibc)
import Glibc
#endif

/// One virtual CPU: a vCPU file descriptor, its `kvm_run` mapping, and (when the
/// VM uses one) its dirty ring. One method per vCPU ioctl.
///
/// `run()` is called from the vCPU's own thread. `requestExit()` may be called
/// from any thread to make a running `run()` return `.interrupted` promptly.
public final class VCPU: @unchecked Sendable {
    /// The vCPU descriptor.
    public let fd: Int32
    /// The vCPU id given to KVM_CREATE_VCPU.
    public let id: UInt32
    /// The VM this vCPU belongs to.
    public unowned let vm: VirtualMachine
    let ioctl: IOCtl
    /// The shared `kvm_run` structure.
    public let runState: UnsafeMutablePointer<kvm_run>
    let runSize: Int
    let ring: DirtyRing?
    /// The saveable MSRs this vCPU can actually read, found on first capture.
    let readableMSRs = Mutex<[UInt32]?>(nil)
    /// The CPUID last given with `setCPUID` (it does not change while the vCPU
    /// runs), so state capture need not read it back every checkpoint.
    let givenCPUID = Mutex<CPUID?>(nil)
    /// pthread_t of the thread inside `run()`, or 0.
    private let runningThread = Atomic<UInt>(0)
    /// The KVM_SYNC_X86_* classes KVM copies into `kvm_run` on every exit (0: none).
    let syncedClasses = Atomic<UInt64>(0)
    /// Whether that copy is the vCPU's current state: set when `run()` returns,
    /// cleared by every setter (the copy is only refreshed on the next exit).
    let syncedCopyCurrent = Atomic<Bool>(false)

    /// The signal `requestExit()` sends to a vCPU thread.
    public static let kickSignal: Int32 = ckvm_kick_signal()
    private static let handlerInstalled: Int32 = {
        ckvm_install_kick_handler(ckvm_kick_signal()) == 0 ? 0 : errno
    }()

    init(fd: Int32, id: UInt32, vm: VirtualMachine, mmapSize: Int, ringEntries: Int) throws(KVMError) {
        self.fd = fd
        self.id = id
        self.vm = vm
        self.ioctl = IOCtl(fd)
        self.runSize = mmapSize
        let installError = Self.handlerInstalled
        guard installError == 0 else {
            closeDescriptor(fd)
            throw .systemCall(name: "sigaction", errno: installError)
        }
        let address = mmap(nil, mmapSize, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0)
        guard let address, address != MAP_FAILED else {
            let error = errno
            closeDescriptor(fd)
            throw .systemCall(name: "mmap(kvm_run)", errno: error)
        }
        self.runState = address.assumingMemoryBound(to: kvm_run.self)
        if ringEntries > 0 {
            do {
                self.ring = try DirtyRing(vcpuFD: fd, entries: ringEntries)
            } catch {
                munmap(address, mmapSize)
                closeDescriptor(fd)
                throw error
            }
        } else {
            self.ring = nil
        }
    }

    deinit {
        munmap(UnsafeMutableRawPointer(runState), runSize)
        closeDescriptor(fd)
    }

    // MARK: running

    /// Wraps KVM_RUN: enters the guest until it exits, and decodes why.
    ///
    /// Returns `.interrupted` (never throws) when a signal or `requestExit()` cut the
    /// run short; an exit request stays in force until `clearExitRequest()`.
    public func run() throws(KVMError) -> VCPUExit {
        let thread = UInt(bitPattern: Int(bitPattern: UInt(pthread_self())))
        guard ckvm_prepare_vcpu_thread(Self.kickSignal) == 0 else {
            throw .systemCall(name: "pthread_sigmask", errno: errno)
        }
        runningThread.store(thread, ordering: .sequentiallyConsistent)
        let result = ckvm_ioctl_arg(fd, CKVM_RUN, 0)
        let error = ckvm_errno()
        runningThread.store(0, ordering: .sequentiallyConsistent)
        if result < 0 {
            if error == EINTR || error == EAGAIN {
                syncedCopyCurrent.store(true, ordering: .releasing)
                return .interrupted
            }
            syncedCopyCurrent.store(false, ordering: .releasing)
            throw .ioctl(name: "KVM_RUN", errno: error)
        }
        syncedCopyCurrent.store(true, ordering: .releasing)
        return decodeExit()
    }

    /// Asks the vCPU to leave KVM_RUN as soon as possible, from any thread: sets
    /// `immediate_exit` and signals the vCPU's thread if it is inside `run()`.
    /// The current or next `run()` returns `.interrupted`. Needs KVM_CAP_IMMEDIATE_EXIT.
    public func requestExit() {
        ckvm_run_set_immediate_exit(runState, 1)
        let thread = runningThread.load(ordering: .sequentiallyConsistent)
        if thread != 0 {
            _ = pthread_kill(pthread_t(thread), Self.kickSignal)
        }
    }

    /// Withdraws an exit request so the next `run()` enters the guest.
    public func clearExitRequest() {
        ckvm_run_set_immediate_exit(runState, 0)
    }

    /// Whether an exit request is in force.
    public var exitRequested: Bool { ckvm_run_immediate_exit(runState) != 0 }

    /// Whether a thread is inside `run()` right now.
    public var isRunning: Bool { runningThread.load(ordering: .sequentiallyConsistent) != 0 }

    /// Supplies the data of an MMIO read (the last exit was `.mmio` with `isWrite == false`).
    public func setMMIOReadData(_ value: UInt64) {
        withUnsafeMutableBytes(of: &runState.pointee.mmio.data) { raw in
            raw.storeBytes(of: value.littleEndian, as: UInt64.self)
        }
    }

    /// Supplies the data of a port-I/O read (the last exit was `.io` with direction `.in`).
    /// Extra bytes beyond size × count are ignored; missing ones are left as they are.
    public func setIOInData(_ bytes: [UInt8]) {
        let io = runState.pointee.io
        let available = Int(io.size) * Int(io.count)
        let destination = UnsafeMutableRawPointer(runState) + Int(io.data_offset)
        guard Int(io.data_offset) + available <= runSize else { return }
        for (i, byte) in bytes.prefix(available).enumerated() {
            destination.storeBytes(of: byte, toByteOffset: i, as: UInt8.self)
        }
    }

    private func decodeExit() -> VCPUExit {
        let run = runState.pointee
        switch Int32(run.exit_reason) {
        case KVM_EXIT_IO:
            let io = run.io
            let direction: PortIO.Direction = io.direction == UInt8(KVM_EXIT_IO_OUT) ? .out : .in
            var data: [UInt8] = []
            let length = Int(io.size) * Int(io.count)
            if direction == .out, Int(io.data_offset) + length <= runSize {
                let source = UnsafeRawPointer(runState) + Int(io.data_offset)
                data = Array(UnsafeRawBufferPointer(start: source, count: length))
            }
            return .io(PortIO(direction: direction, port: io.port, size: Int(io.size), count: Int(io.count), data: data))
        case KVM_EXIT_MMIO:
            let mmio = run.mmio
            let length = min(Int(mmio.len), 8)
            var value: UInt64 = 0
            if mmio.is_write != 0 {
                withUnsafeBytes(of: mmio.data) { raw in
                    for i in 0..<length { value |= UInt64(raw[i]) << (8 * UInt64(i)) }
                }
            }
            return .mmio(MMIOAccess(address: mmio.phys_addr, length: length, isWrite: mmio.is_write != 0, data: value))
        case KVM_EXIT_HLT:
            return .hlt
        case KVM_EXIT_SHUTDOWN:
            return .shutdown
        case KVM_EXIT_FAIL_ENTRY:
            return .failEntry(reason: run.fail_entry.hardware_entry_failure_reason, cpu: run.fail_entry.cpu)
        case KVM_EXIT_INTERNAL_ERROR:
            let failure = run.`internal`
            let count = min(Int(failure.ndata), 16)
            let data = withUnsafeBytes(of: failure.data) { Array($0.bindMemory(to: UInt64.self).prefix(count)) }
            return .internalError(suberror: failure.suberror, data: data)
        case KVM_EXIT_SYSTEM_EVENT:
            return .systemEvent(type: run.system_event.type, flags: run.system_event.flags)
        case KVM_EXIT_DIRTY_RING_FULL:
            return .dirtyRingFull
        case KVM_EXIT_INTR:
            return .signalPending
        default:
            return .unknown(reason: run.exit_reason)
        }
    }

    /// Decodes an exit reason as if KVM had returned it (the decoding of `run()`),
    /// for reasons this binding has no case for. Used to prove unknown exits are values.
    public func decodeExit(simulatingReason reason: UInt32) -> VCPUExit {
        let saved = runState.pointee.exit_reason
        runState.pointee.exit_reason = reason
        defer { runState.pointee.exit_reason = saved }
        return decodeExit()
    }

    // MARK: dirty ring

    /// Entries of this vCPU's dirty ring, or 0 when the VM has none.
    public var dirtyRingEntries: Int { ring?.entries ?? 0 }

    /// Collects this vCPU's dirty-ring entries published since the last harvest,
    /// calling `body(slot, pageOffset)` for each and marking it for reset. Follow
    /// with `VirtualMachine.resetDirtyRings()` to write-protect the pages again.
    /// Returns how many entries were harvested. Throws if the VM has no dirty ring.
    @discardableResult
    public func harvestDirtyRing(_ body: (UInt32, UInt64) throws -> Void) throws -> Int {
        guard let ring else { throw KVMError.missingCapability(.dirtyLogRing) }
        return try ring.harvest(body)
    }
}
