import CKVM

extension VirtualMachine {
    /// What KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2 offers on this host.
    public struct ManualProtectSupport: OptionSet, Sendable {
        public let rawValue: UInt64
        public init(rawValue: UInt64) { self.rawValue = rawValue }
        /// KVM_DIRTY_LOG_MANUAL_PROTECT_ENABLE: GET_DIRTY_LOG no longer re-protects; CLEAR_DIRTY_LOG does.
        public static let manualProtect = ManualProtectSupport(rawValue: 1)
        /// KVM_DIRTY_LOG_INITIALLY_SET: new slots start all-dirty and unprotected.
        public static let initiallySet = ManualProtectSupport(rawValue: 2)
    }

    /// Wraps KVM_ENABLE_CAP(KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2). Needs that capability.
    ///
    /// After this, KVM_GET_DIRTY_LOG only reads the log; the pages stay writable
    /// until `clearDirtyLog` re-protects exactly the pages it is given. This lets
    /// the re-protection (the expensive part) be chunked or run after the guest resumes.
    /// With `initiallySet`, new slots start with every page marked dirty and nothing
    /// write-protected, which makes adding a big slot cheap.
    public func enableManualDirtyLogProtect(initiallySet: Bool = false) throws(KVMError) {
        let offered = ManualProtectSupport(rawValue: UInt64(max(0, try check(.manualDirtyLogProtect2))))
        guard offered.contains(.manualProtect) else { throw .missingCapability(.manualDirtyLogProtect2) }
        var wanted: ManualProtectSupport = .manualProtect
        if initiallySet {
            guard offered.contains(.initiallySet) else { throw .missingCapability(.manualDirtyLogProtect2) }
            wanted.insert(.initiallySet)
        }
        try enable(.manualDirtyLogProtect2, wanted.rawValue)
    }

    /// Wraps KVM_GET_DIRTY_LOG: fills `bitmap` with the pages of `slot` written since
    /// they were last cleared. The slot must log dirty pages and `bitmap` must cover it.
    public func dirtyLog(slot: UInt32, into bitmap: DirtyBitmap) throws(KVMError) {
        var log = kvm_dirty_log()
        log.slot = slot
        log.dirty_bitmap = UnsafeMutableRawPointer(bitmap.words.baseAddress)
        try ioctl.call("KVM_GET_DIRTY_LOG", CKVM_GET_DIRTY_LOG, &log)
    }

    /// Wraps KVM_CLEAR_DIRTY_LOG: clears (and write-protects again) the pages of
    /// `slot` that are marked in `bitmap`, within `firstPage ..< firstPage + pageCount`.
    /// Needs manual dirty-log protection. `firstPage` must be a multiple of 64 and
    /// `pageCount` too, unless the range ends at the end of the slot.
    public func clearDirtyLog(slot: UInt32, bitmap: DirtyBitmap, firstPage: Int = 0, pageCount: Int? = nil) throws(KVMError) {
        let count = pageCount ?? (bitmap.pageCount - firstPage)
        guard firstPage >= 0, firstPage % 64 == 0, count >= 0, firstPage + count <= bitmap.pageCount,
              count % 64 == 0 || firstPage + count == bitmap.pageCount else {
            throw .invalidArgument("clear range \(firstPage)+\(count) is not 64-page aligned within \(bitmap.pageCount) pages")
        }
        if count == 0 { return }
        var clear = kvm_clear_dirty_log()
        clear.slot = slot
        clear.first_page = UInt64(firstPage)
        clear.num_pages = UInt32(count)
        clear.dirty_bitmap = UnsafeMutableRawPointer(bitmap.words.baseAddress! + firstPage / 64)
        try ioctl.call("KVM_CLEAR_DIRTY_LOG", CKVM_CLEAR_DIRTY_LOG, &clear)
    }
}
