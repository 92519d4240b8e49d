import CKVM
#if canImport(Glibc)
import Glibc
#endif

/// Guest RAM: a memfd of `size` bytes mapped shared into this process.
///
/// Because it is a memfd, another process (or a standby) can map the same
/// bytes through `fd`, and KVM can be handed the mapping with no copy.
/// The mapping and the descriptor are released when the value is freed.
public final class SharedMemory: @unchecked Sendable {
    /// The host address of the first byte.
    public let base: UnsafeMutableRawPointer
    /// Size in bytes (a multiple of the page size).
    public let size: Int
    /// The memfd descriptor backing the mapping.
    public let fd: Int32

    /// Creates a new memfd of `size` bytes (rounded up to 4 KiB) and maps it.
    /// Pages are allocated by the kernel on first touch.
    public convenience init(size: Int, name: String = "understudy-guest") throws(KVMError) {
        guard size > 0 else { throw .invalidArgument("memory size must be positive") }
        let rounded = (size + 4095) & ~4095
        let fd = ckvm_memfd_create(name)
        guard fd >= 0 else { throw .systemCall(name: "memfd_create", errno: errno) }
        guard ftruncate(fd, off_t(rounded)) == 0 else {
            let error = errno
            closeDescriptor(fd)
            throw .systemCall(name: "ftruncate", errno: error)
        }
        try self.init(mapping: fd, size: rounded)
    }

    /// Maps an existing memfd (or other shareable file) of `size` bytes; takes
    /// ownership of `fd`.
    public init(mapping fd: Int32, size: Int) throws(KVMError) {
        let address = mmap(nil, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0)
        guard let address, address != MAP_FAILED else {
            let error = errno
            closeDescriptor(fd)
            throw .systemCall(name: "mmap", errno: error)
        }
        self.base = address
        self.size = size
        self.fd = fd
    }

    deinit {
        munmap(base, size)
        closeDescriptor(fd)
    }

    /// The whole region as raw bytes.
    public var bytes: UnsafeMutableRawBufferPointer { UnsafeMutableRawBufferPointer(start: base, count: size) }

    /// Copies `data` to `offset`, refusing writes that would leave the region.
    public func write<C: Collection>(_ data: C, at offset: Int) throws(KVMError) where C.Element == UInt8 {
        guard offset >= 0, offset <= size, data.count <= size - offset else {
            throw .invalidArgument("write of \(data.count) bytes at \(offset) leaves \(size)-byte memory")
        }
        var address = base + offset
        for byte in data {
            address.storeBytes(of: byte, as: UInt8.self)
            address += 1
        }
    }
}
