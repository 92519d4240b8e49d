/// A device on the MMIO bus. Accesses come from vCPU threads; implementations
/// serialise their own state.
public protocol MMIODevice: AnyObject, Sendable {
    /// A short stable name, used in saved state and errors ("serial", "doorbell").
    var name: String { get }
    /// Guest-physical base address.
    var base: UInt64 { get }
    /// Size of the register window in bytes.
    var size: UInt64 { get }
    /// A guest read of `length` bytes at `offset` into the window.
    func read(offset: UInt64, length: Int) -> UInt64
    /// A guest write. Returns what the vCPU thread must do beyond the register update.
    func write(offset: UInt64, length: Int, value: UInt64) -> DeviceAction
    /// The device's state as versioned bytes.
    func saveState() -> [UInt8]
    /// Restores state saved by `saveState()`; validates it as untrusted input.
    func restoreState(_ bytes: [UInt8]) throws(MachineError)
    /// While quiesced (the machine is paused) a device must not touch guest memory
    /// from its own threads.
    func setQuiesced(_ quiesced: Bool)
    /// Ends the device's own threads; called when the machine is torn down.
    func shutdown()
}

extension MMIODevice {
    public func setQuiesced(_ quiesced: Bool) {}
    public func shutdown() {}
}

/// Work a device asks the vCPU thread to do after a write.
public enum DeviceAction: Sendable, Equatable {
    case none
    /// Block this vCPU until an event or `nanoseconds` pass (0: until an event).
    case wait(nanoseconds: UInt64)
    /// The guest is done, with this exit code.
    case exit(code: UInt64)
    /// Write the NUL-terminated string at this guest address to the console.
    case puts(address: UInt64)
}
