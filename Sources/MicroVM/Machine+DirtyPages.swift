import KVM

extension Machine {
    /// Moves every page written since the last call into `bitmap` (whole-RAM page
    /// numbers): the guest's writes from KVM's dirty log (bitmap or ring, as
    /// configured) merged with the VMM's own writes into guest memory (received
    /// frames, block reads, used rings). Call while paused. KVM's log is re-armed
    /// for exactly the pages harvested.
    ///
    /// In a checkpoint's pause (`pause(capturingVCPUState: true)`) with bitmap
    /// tracking, the re-arming (KVM_CLEAR_DIRTY_LOG, the costly part) is left to
    /// `rearmDirtyLog()`, after the guest resumed. A page the guest writes before
    /// its re-arming leaves no mark in KVM's log, so the next harvest includes
    /// every page re-armed that way: never fewer pages than were written, and no
    /// more for a guest that keeps writing the same pages. Without the call the
    /// log stays armed as it was, and the next harvest reports those pages again.
    /// A slot with more than `lateRearmLimit` dirty pages is re-armed in the pause
    /// as before: there the re-arming is a small share of the pause, and measured
    /// at 1,024 pages the late re-arming made the next copy slower (Performance.md).
    public func collectDirtyPages(into bitmap: DirtyBitmap) throws(MachineError) {
        guard bitmap.pageCount == memory.size / 4096 else {
            throw .invalidConfiguration("dirty bitmap covers \(bitmap.pageCount) pages, RAM has \(memory.size / 4096)")
        }
        condition.lock()
        let deferRearm = pausedForCheckpoint && phase == .paused
        condition.unlock()
        do {
            switch configuration.dirtyTracking {
            case .none:
                throw MachineError.invalidConfiguration("the machine was built without dirty tracking")
            case .bitmap:
                for slot in slots {
                    let log = slotBitmaps[Int(slot.slot)]
                    let firstPage = Int(slot.guestPhysicalAddress / 4096)
                    try vm.dirtyLog(slot: slot.slot, into: log)
                    if rearmedPending { bitmap.formUnion(rearmedBitmaps[Int(slot.slot)], atPage: firstPage) }
                    // Slots start on 2 MiB boundaries, so the merge is word by word; an
                    // empty log needs no KVM_CLEAR_DIRTY_LOG.
                    if bitmap.formUnion(log, atPage: firstPage) && !(deferRearm && log.count <= Self.lateRearmLimit) {
                        try vm.clearDirtyLog(slot: slot.slot, bitmap: log)
                        if deferRearm { log.removeAll() }          // nothing left to re-arm late
                    }
                }
                rearmedPending = false
                rearmPending = deferRearm
            case .ring:
                for vcpu in vcpus { try harvestRing(of: vcpu, into: bitmap) }
                try vm.resetDirtyRings()
                ringOverflowLock.withLock {
                    if let overflow = ringOverflow {
                        bitmap.formUnion(overflow)
                        overflow.removeAll()
                    }
                }
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

extension Machine {
    /// Moves `vcpu`'s harvested ring entries into `bitmap` (whole-RAM page numbers).
    private func harvestRing(of vcpu: VCPU, into bitmap: DirtyBitmap) throws {
        _ = try vcpu.harvestDirtyRing { slotID, offset in
            let slot = Int(slotID & 0xFFFF)
            guard slot < slots.count, offset < UInt64(slots[slot].pageCount) else { return }
            bitmap[Int(slots[slot].guestPhysicalAddress / 4096) + Int(offset)] = true
        }
    }

    /// `vcpu`'s dirty ring filled before anyone harvested it: a guest that wrote
    /// more pages than the ring holds within one epoch, or nobody harvesting at
    /// all (no standby, a disk copy or a full image in progress, a machine that
    /// took over). The entries move into `ringOverflow` and the rings are reset,
    /// so the vCPU runs on; the next `collectDirtyPages` includes those pages
    /// (dirty completeness holds). Called on `vcpu`'s own thread, while the
    /// machine runs (a harvest in a pause never runs at the same time).
    func absorbFullRing(_ vcpu: VCPU) throws {
        try ringOverflowLock.withLock {
            let overflow = ringOverflow ?? DirtyBitmap(pageCount: memory.size / 4096)
            ringOverflow = overflow
            try harvestRing(of: vcpu, into: overflow)
            try vm.resetDirtyRings()
        }
    }

    /// Slots with at most this many dirty pages are re-armed after the resume.
    public static let lateRearmLimit = 256

    /// Re-arms KVM's dirty log for the pages the last checkpoint harvest left
    /// armed (see `collectDirtyPages`), with the guest running. Call from the
    /// thread that harvests, after `resume()` and before the next harvest.
    /// Does nothing when no harvest left work.
    public func rearmDirtyLog() throws(MachineError) {
        guard rearmPending else { return }
        rearmPending = false
        do {
            for slot in slots {
                let log = slotBitmaps[Int(slot.slot)]
                let rearmed = rearmedBitmaps[Int(slot.slot)]
                var any: UInt64 = 0
                for i in 0..<log.wordCount {
                    rearmed.words[i] = log.words[i]
                    any |= log.words[i]
                }
                if any != 0 { try vm.clearDirtyLog(slot: slot.slot, bitmap: log) }
            }
        } catch {
            throw .kvm(error)
        }
        rearmedPending = true
    }
}
