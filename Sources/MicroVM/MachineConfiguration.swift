/// What machine to build.
public struct MachineConfiguration: Sendable, Equatable {
    /// How guest writes are tracked (choose before the machine is built: the ring
    /// must be enabled before vCPUs exist).
    public enum DirtyTracking: Sendable, Equatable {
        case none
        /// KVM's dirty bitmap with manual protection (KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2).
        case bitmap
        /// Per-vCPU dirty rings of this many entries (KVM_CAP_DIRTY_LOG_RING).
        case ring(entries: Int)
    }

    /// vCPUs, 1 to `GuestLayout.maxVCPUs`.
    public var vcpuCount: Int
    /// Guest RAM in bytes from guest-physical 0 (a multiple of 2 MiB, at least 4 MiB,
    /// below `GuestLayout.maxMemory`).
    public var memorySize: UInt64
    /// RAM is split into KVM memory slots of at most this size.
    public var maxSlotSize: UInt64
    /// The program to run (unless `linux` is set).
    public var image: GuestImage
    /// A Linux kernel to boot instead of `image` (needs a KVM that runs guest
    /// kernel code natively: kvm_intel or kvm_amd).
    public var linux: LinuxBoot?
    /// The boot-info command line (at most 2047 bytes).
    public var commandLine: String
    public var dirtyTracking: DirtyTracking
    /// A virtio-net device on a tap interface, if any.
    public var network: NetworkConfiguration?
    /// A virtio-blk device on a file, if any.
    public var disk: DiskConfiguration?
    /// A name for logs and for the guest-RAM memfd (`/proc/<pid>/fd` shows `memfd:<name>`).
    public var name: String

    public init(name: String = "microvm", vcpuCount: Int = 1, memorySize: UInt64 = 256 << 20, maxSlotSize: UInt64 = 1 << 30,
                image: GuestImage = .workload, commandLine: String = "", dirtyTracking: DirtyTracking = .none) {
        self.vcpuCount = vcpuCount
        self.memorySize = memorySize
        self.maxSlotSize = maxSlotSize
        self.image = image
        self.commandLine = commandLine
        self.dirtyTracking = dirtyTracking
        self.name = name
        self.network = nil
        self.disk = nil
        self.linux = nil
    }

    /// Checks the values that do not depend on the host.
    public func validate() throws(MachineError) {
        guard (1...GuestLayout.maxVCPUs).contains(vcpuCount) else {
            throw .invalidConfiguration("\(vcpuCount) vCPUs; 1 to \(GuestLayout.maxVCPUs) are supported")
        }
        guard memorySize >= 4 << 20, memorySize % (2 << 20) == 0, memorySize <= GuestLayout.maxMemory else {
            throw .invalidConfiguration("memory size \(memorySize) must be a multiple of 2 MiB from 4 MiB to \(GuestLayout.maxMemory >> 20) MiB")
        }
        guard maxSlotSize >= 2 << 20, maxSlotSize % (2 << 20) == 0 else {
            throw .invalidConfiguration("slot size \(maxSlotSize) must be a multiple of 2 MiB")
        }
        if let network, network.mac.count != 6 {
            throw .invalidConfiguration("MAC address of \(network.mac.count) bytes; it must be 6")
        }
        guard commandLine.utf8.count <= BootInfo.maxCommandLine else {
            throw .invalidConfiguration("command line longer than \(BootInfo.maxCommandLine) bytes")
        }
        try linux?.validate(memorySize: memorySize)
    }
}

/// The guest's network card: virtio-net on a tap interface.
public struct NetworkConfiguration: Sendable, Equatable {
    /// The tap interface (created if absent; needs CAP_NET_ADMIN).
    public var tap: String
    /// The card's MAC address.
    public var mac: [UInt8]
    /// When the machine ends, its tap stays attached in this process
    /// (`TapPool`) for the next machine on it: a host that changes role keeps
    /// its tap's carrier up. A kept tap is also what the machine takes first.
    public var keepsTapOpen: Bool

    public init(tap: String, mac: [UInt8] = [0x52, 0x54, 0x00, 0x12, 0x34, 0x56], keepsTapOpen: Bool = false) {
        self.tap = tap
        self.mac = mac
        self.keepsTapOpen = keepsTapOpen
    }
}

/// The guest's disk: virtio-blk on an existing file.
public struct DiskConfiguration: Sendable, Equatable {
    public var path: String
    public var readOnly: Bool

    public init(path: String, readOnly: Bool = false) {
        self.path = path
        self.readOnly = readOnly
    }
}

/// Why a machine stopped.
public enum StopReason: Sendable, Equatable, CustomStringConvertible {
    /// The guest wrote its exit code to the doorbell.
    case guestExit(code: UInt64)
    /// The host asked it to stop.
    case requested
    /// A vCPU shut down (triple fault: an exception the guest could not handle).
    case shutdown(vcpu: Int)
    /// KVM could not emulate or handle something for this vCPU.
    case internalError(vcpu: Int, suberror: UInt32)
    /// VM entry failed.
    case failEntry(vcpu: Int, reason: UInt64)
    /// The guest touched guest-physical memory that is neither RAM nor a device.
    case badAccess(vcpu: Int, address: UInt64, isWrite: Bool)
    /// An exit MicroVM has no use for (port I/O from a CPL3 guest, an unknown reason, ...).
    case unexpectedExit(vcpu: Int, exit: String)
    /// A host-side call failed while running this vCPU.
    case hostError(vcpu: Int, error: String)
    /// The guest asked for a reset (a Linux guest's reboot): MicroVM stops it.
    case reset

    /// Whether the stop is this host's fault rather than the guest's: KVM_RUN or
    /// another host call failed, VM entry failed, KVM could not handle an exit.
    /// A protected guest that stops so is taken over by its standby (the guest
    /// itself is fine there); one that exits or faults by itself is not (it
    /// would do the same again).
    public var isHostFault: Bool {
        switch self {
        case .hostError, .failEntry, .internalError: true
        case .guestExit, .requested, .shutdown, .badAccess, .unexpectedExit, .reset: false
        }
    }

    public var description: String {
        switch self {
        case .guestExit(let code): "guest exited with code \(code)"
        case .requested: "stopped on request"
        case .shutdown(let vcpu): "vCPU \(vcpu) shut down (triple fault)"
        case .internalError(let vcpu, let sub): "vCPU \(vcpu): KVM internal error, suberror \(sub)"
        case .failEntry(let vcpu, let reason): "vCPU \(vcpu): VM entry failed, reason 0x\(String(reason, radix: 16))"
        case .badAccess(let vcpu, let address, let isWrite):
            "vCPU \(vcpu): \(isWrite ? "write to" : "read from") unbacked guest-physical address 0x\(String(address, radix: 16))"
        case .unexpectedExit(let vcpu, let exit): "vCPU \(vcpu): unexpected exit \(exit)"
        case .hostError(let vcpu, let error): "vCPU \(vcpu): \(error)"
        case .reset: "the guest asked for a reset"
        }
    }
}
