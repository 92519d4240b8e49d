import KVM
import Understudy

extension Machine {
    /// Moves every page written since the last call into `bitmap` (whole-RAM page
    /// numbers): the guest's writes from KVM's dirty log (bitmap or ring, as
    /// configured) merged with the VMM's own writes into guest memory (received
    /// frames, block reads, used rings), by the machine's `DirtyTracker`. Call
    /// while paused.
    ///
    /// In a checkpoint's pause (`pause(capturingVCPUState: true)`) the re-arming
    /// of small slots (KVM_CLEAR_DIRTY_LOG, the costly part) is left to
    /// `rearmDirtyLog()`, after the guest resumed, and the pages re-armed that
    /// way are carried into the next harvest (`DirtyTracker`).
    public func collectDirtyPages(into bitmap: DirtyBitmap) throws(MachineError) {
        guard bitmap.pageCount == memory.size / 4096 else {
            throw .invalidConfiguration("dirty bitmap covers \(bitmap.pageCount) pages, RAM has \(memory.size / 4096)")
        }
        guard let dirtyTracker else { throw .invalidConfiguration("the machine was built without dirty tracking") }
        condition.lock()
        let rearmingLate = pausedForCheckpoint && phase == .paused
        condition.unlock()
        do { try dirtyTracker.collect(into: bitmap, rearmingLate: rearmingLate) } catch { throw .kvm(error) }
    }

    /// Slots with at most this many dirty pages are re-armed after the resume.
    public static let lateRearmLimit = DirtyTracker.lateRearmLimit

    /// Re-arms KVM's dirty log for the pages the last checkpoint harvest left
    /// armed (see `collectDirtyPages`), with the guest running. Call from the
    /// thread that harvests, after `resume()` and before the next harvest.
    /// Does nothing when no harvest left work.
    public func rearmDirtyLog() throws(MachineError) {
        do { try dirtyTracker?.rearm() } catch { throw .kvm(error) }
    }
}
