import KVM
import Understudy

/// MicroVM is the first VMM Understudy protects.
extension Machine: ReplicatedMachine {
    public var guestMemoryBase: UnsafeMutableRawPointer { memory.base }
    public var guestMemorySize: Int { memory.size }
    public func pauseForCheckpoint() throws { try pause(capturingVCPUState: true) }
    public func resumeAfterCheckpoint() throws { try resume() }
    public func completeCheckpoint() throws { try rearmDirtyLog() }
    public func saveCheckpointState() throws -> [UInt8] { try saveState() }
    public func captureCheckpointState() throws -> @Sendable () -> [UInt8] { try captureState() }
    public var hasStopped: Bool { stopReason != nil }
}
