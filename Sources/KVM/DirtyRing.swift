import CKVM
#if canImport(Glibc)
import Glibc
#endif

/// One vCPU's dirty ring: an array of `kvm_dirty_gfn` the kernel fills with the
/// pages that vCPU dirties, mapped from the vCPU descriptor at
/// `KVM_DIRTY_LOG_PAGE_OFFSET` pages.
final class DirtyRing: @unchecked Sendable {
    let entries: Int
    let base: UnsafeMutablePointer<kvm_dirty_gfn>
    let size: Int
    /// Next index to look at (free-running; masked when used).
    private var fetchIndex: UInt32 = 0

    init(vcpuFD: Int32, entries: Int) throws(KVMError) {
        self.entries = entries
        self.size = entries * MemoryLayout<kvm_dirty_gfn>.stride
        let pageSize = Int(sysconf(Int32(_SC_PAGESIZE)))
        let address = mmap(nil, size, PROT_READ | PROT_WRITE, MAP_SHARED, vcpuFD, off_t(Int(CKVM_DIRTY_LOG_PAGE_OFFSET) * pageSize))
        guard let address, address != MAP_FAILED else { throw .systemCall(name: "mmap(dirty ring)", errno: errno) }
        self.base = address.assumingMemoryBound(to: kvm_dirty_gfn.self)
    }

    deinit { munmap(UnsafeMutableRawPointer(base), size) }

    func harvest(_ body: (UInt32, UInt64) throws -> Void) rethrows -> Int {
        let mask = UInt32(entries - 1)
        var harvested = 0
        while true {
            let entry = base + Int(fetchIndex & mask)
            let flags = ckvm_dirty_gfn_load_flags(entry)
            guard flags & CKVM_DIRTY_GFN_F_DIRTY != 0 else { break }
            try body(entry.pointee.slot, entry.pointee.offset)
            ckvm_dirty_gfn_store_flags(entry, CKVM_DIRTY_GFN_F_RESET)
            fetchIndex &+= 1
            harvested += 1
        }
        return harvested
    }
}
