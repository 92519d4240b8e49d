import KVM

extension Machine {
    /// Moves every page written since the last call into `bitmap` (whole-RAM page
    /// numbers): the guest's writes from KVM's dirty log (bitmap or ring, as
    /// configured) merged with the VMM's own writes into guest memory (received
    /// frames, block reads, used rings). Call while paused. KVM's log is re-armed
    /// for exactly the pages harvested.
    public func collectDirtyPages(into bitmap: DirtyBitmap) throws(MachineError) {
        guard bitmap.pageCount == memory.size / 4096 else {
            throw .invalidConfiguration("dirty bitmap covers \(bitmap.pageCount) pages, RAM has \(memory.size / 4096)")
        }
        do {
            switch configuration.dirtyTracking {
            case .none:
                throw MachineError.invalidConfiguration("the machine was built without dirty tracking")
            case .bitmap:
                for slot in slots {
                    let log = slotBitmaps[Int(slot.slot)]
                    try vm.dirtyLog(slot: slot.slot, into: log)
                    // Slots start on 2 MiB boundaries, so the merge is word by word; an
                    // empty log needs no KVM_CLEAR_DIRTY_LOG.
                    if bitmap.formUnion(log, atPage: Int(slot.guestPhysicalAddress / 4096)) {
                        try vm.clearDirtyLog(slot: slot.slot, bitmap: log)
                    }
                }
            case .ring:
                for vcpu in vcpus {
                    try vcpu.harvestDirtyRing { slotID, offset in
                        let slot = Int(slotID & 0xFFFF)
                        guard slot < slots.count, offset < UInt64(slots[slot].pageCount) else { return }
                        bitmap[Int(slots[slot].guestPhysicalAddress / 4096) + Int(offset)] = true
                    }
                }
                try vm.resetDirtyRings()
            }
        } catch let error as KVMError {
            throw .kvm(error)
        } catch let error as MachineError {
            throw error
        } catch {
            throw .invalidConfiguration("\(error)")
        }
        guestMemory.takeDirtyPages(into: bitmap)
    }
}
