import CKVM
import Synchronization
#if canImport(Glibc)
import Glibc
#endif

/// The system handle: an open `/dev/kvm`.
///
/// ```swift
/// let kvm = try KVM()                                  // opens /dev/kvm, checks API 12
/// let vm = try kvm.createVM()
/// let memory = try SharedMemory(size: 64 << 20, name: "guest")
/// try vm.setUserMemoryRegion(.init(slot: 0, guestPhysicalAddress: 0, memory: memory, logDirtyPages: true))
/// let vcpu = try vm.createVCPU(id: 0)
/// try vcpu.setCPUID(kvm.supportedCPUID())
/// switch try vcpu.run() { case .mmio(let access): ...; default: ... }
/// let state = try vcpu.captureState()                  // versioned bytes via state.encoded()
/// ```
public final class KVM: @unchecked Sendable {
    /// The API version these bindings speak (KVM_GET_API_VERSION).
    public static let apiVersion: Int32 = 12

    /// The open descriptor of `/dev/kvm`.
    public let fd: Int32
    let ioctl: IOCtl
    private let msrListCache = Mutex<[UInt32]?>(nil)

    /// Opens `path` (normally `/dev/kvm`) and checks the API version.
    public init(path: String = "/dev/kvm") throws(KVMError) {
        let fd = open(path, O_RDWR | O_CLOEXEC)
        guard fd >= 0 else { throw .systemCall(name: "open(\(path))", errno: errno) }
        self.fd = fd
        self.ioctl = IOCtl(fd)
        let version = try ioctl.call("KVM_GET_API_VERSION", CKVM_GET_API_VERSION)
        guard version == Self.apiVersion else { throw .unsupportedAPIVersion(version) }
    }

    deinit { closeDescriptor(fd) }

    /// Whether `/dev/kvm` exists and can be opened read-write by this process.
    public static var isAvailable: Bool { access("/dev/kvm", R_OK | W_OK) == 0 }

    /// The kernel module that provides KVM on this host (kvm_intel, kvm_amd,
    /// kvm_pvm), or nil when none of those is loaded.
    public static var module: String? {
        ["kvm_intel", "kvm_amd", "kvm_pvm"].first { access("/sys/module/\($0)", F_OK) == 0 }
    }

    /// Whether this host's KVM runs guest kernel (CPL0) code natively. kvm_pvm
    /// does not: it emulates it, about 1 µs an instruction, so a Linux kernel
    /// never finishes booting there.
    public static var runsGuestKernels: Bool { module != "kvm_pvm" }

    /// Wraps KVM_CHECK_EXTENSION on the system descriptor: 0 when absent, else the
    /// capability's value (often 1, sometimes a size or a count).
    public func check(_ capability: Capability) throws(KVMError) -> Int32 {
        try ioctl.call("KVM_CHECK_EXTENSION", CKVM_CHECK_EXTENSION, UInt(capability.rawValue))
    }

    /// Wraps KVM_GET_VCPU_MMAP_SIZE: the size of each vCPU's `kvm_run` mapping
    /// (plus any pages after it, such as the coalesced MMIO ring).
    public func vcpuMmapSize() throws(KVMError) -> Int {
        Int(try ioctl.call("KVM_GET_VCPU_MMAP_SIZE", CKVM_GET_VCPU_MMAP_SIZE))
    }

    /// Wraps KVM_GET_SUPPORTED_CPUID: the CPUID entries KVM can offer a guest.
    public func supportedCPUID() throws(KVMError) -> CPUID {
        var capacity: UInt32 = 128
        while true {
            guard let raw = ckvm_cpuid2_alloc(capacity) else {
                throw .systemCall(name: "calloc", errno: ENOMEM)
            }
            defer { free(raw) }
            do {
                try ioctl.call("KVM_GET_SUPPORTED_CPUID", CKVM_GET_SUPPORTED_CPUID, pointer: raw)
                let entries = UnsafeBufferPointer(start: ckvm_cpuid2_entries(raw), count: Int(raw.pointee.nent))
                return CPUID(entries: Array(entries))
            } catch where error.errno == E2BIG && capacity < 4096 {
                capacity *= 2
            }
        }
    }

    /// Wraps KVM_GET_MSR_INDEX_LIST: the MSRs KVM can save and restore for a vCPU.
    public func msrIndexList() throws(KVMError) -> [UInt32] {
        var capacity: UInt32 = 0
        // The first call with room for nothing fails with E2BIG and reports the count.
        if let probe = ckvm_msr_list_alloc(0) {
            defer { free(probe) }
            do {
                try ioctl.call("KVM_GET_MSR_INDEX_LIST", CKVM_GET_MSR_INDEX_LIST, pointer: probe)
                return []
            } catch where error.errno == E2BIG {
                capacity = probe.pointee.nmsrs
            }
        }
        guard let list = ckvm_msr_list_alloc(capacity) else { throw .systemCall(name: "calloc", errno: ENOMEM) }
        defer { free(list) }
        try ioctl.call("KVM_GET_MSR_INDEX_LIST", CKVM_GET_MSR_INDEX_LIST, pointer: list)
        return Array(UnsafeBufferPointer(start: ckvm_msr_list_indices(list), count: Int(list.pointee.nmsrs)))
    }

    /// The MSR index list (KVM_GET_MSR_INDEX_LIST), read once and kept.
    public func saveableMSRs() throws(KVMError) -> [UInt32] {
        if let cached = msrListCache.withLock({ $0 }) { return cached }
        let list = try msrIndexList()
        msrListCache.withLock { $0 = list }
        return list
    }

    /// Wraps KVM_CREATE_VM (machine type 0: the default x86 VM).
    public func createVM() throws(KVMError) -> VirtualMachine {
        let vmfd = try ioctl.call("KVM_CREATE_VM", CKVM_CREATE_VM, 0)
        return try VirtualMachine(fd: vmfd, kvm: self)
    }
}
