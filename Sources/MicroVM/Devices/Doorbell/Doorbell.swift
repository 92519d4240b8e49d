import Synchronization

/// The paravirtual doorbell: how a CPL3 guest that cannot execute HLT asks the
/// VMM to wait for it, reads which events arrived, ends itself, and prints a whole
/// string in one exit.
///
/// Registers (64-bit, offsets from `base`), as in Guests/include/understudy_guest.h:
///
/// | offset | access | meaning |
/// |---|---|---|
/// | 0x00 WAIT_NS | write | block this vCPU until an event or N ns (0: until an event) |
/// | 0x08 EVENTS | read | pending event bits; reading clears them |
/// | 0x10 EXIT | write | the guest is done; the value is its exit code |
/// | 0x18 PUTS | write | guest address of a NUL-terminated string for the console |
public final class Doorbell: MMIODevice, @unchecked Sendable {
    public let name = "doorbell"
    public let base: UInt64
    public let size: UInt64 = 0x20

    public enum Register: UInt64 {
        case waitNanoseconds = 0x00, events = 0x08, exit = 0x10, puts = 0x18
    }

    /// Event bits MicroVM raises.
    public enum Event {
        /// Bytes are waiting in the serial port's receive queue.
        public static let serialInput: UInt64 = 1 << 0
        /// virtio-net returned buffers (a frame arrived or a transmit completed).
        public static let network: UInt64 = 1 << 1
        /// virtio-blk completed requests.
        public static let disk: UInt64 = 1 << 2
    }

    private let pending = Mutex<UInt64>(0)
    private let wake: @Sendable () -> Void

    /// `wake` is called after events are raised, so the VMM can wake waiting vCPUs.
    public init(base: UInt64, wake: @escaping @Sendable () -> Void) {
        self.base = base
        self.wake = wake
    }

    /// Marks `events` pending and wakes waiting vCPUs.
    public func raise(_ events: UInt64) {
        pending.withLock { $0 |= events }
        wake()
    }

    /// Pending events, without clearing them.
    public var pendingEvents: UInt64 { pending.withLock { $0 } }

    public func read(offset: UInt64, length: Int) -> UInt64 {
        guard Register(rawValue: offset) == .events else { return 0 }
        return pending.withLock { value in
            defer { value = 0 }
            return value
        }
    }

    public func write(offset: UInt64, length: Int, value: UInt64) -> DeviceAction {
        switch Register(rawValue: offset) {
        case .waitNanoseconds:
            return pendingEvents != 0 ? .none : .wait(nanoseconds: value)
        case .exit: return .exit(code: value)
        case .puts: return .puts(address: value)
        case .events, nil: return .none
        }
    }

    public func saveState() -> [UInt8] {
        var bytes: [UInt8] = [1]
        withUnsafeBytes(of: pendingEvents.littleEndian) { bytes += $0 }
        return bytes
    }

    public func restoreState(_ bytes: [UInt8]) throws(MachineError) {
        guard bytes.count == 9 else { throw .invalidState(part: "doorbell", reason: "\(bytes.count) bytes, expected 9") }
        var reader = ByteReader(bytes, part: "doorbell")
        let version = try reader.u8()
        guard version == 1 else { throw .invalidState(part: "doorbell", reason: "version \(version)") }
        let value = try reader.u64()
        pending.withLock { $0 = value }
    }
}
