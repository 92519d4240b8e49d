import Foundation

/// The rest of the PC a Linux guest pokes at boot, reduced to what it needs:
/// the CMOS (0x70-0x71: an index register, data that reads as zero, so the
/// real-time clock never shows an update in progress), the i8042 controller
/// and the reset control register (0xCF9).
///
/// There is no keyboard controller, and the guest must learn that without
/// polling: each poll is an exit, and Linux's i8042 driver, finding a status
/// of 0, polled for seconds per command (minutes in the KVM box, where an exit
/// costs about a millisecond). So the status port (0x64) reads 0xFD, "output
/// full, input empty", and the data port 0xFF: Linux drains 16 bytes, says "No
/// controller found" and stops; a keyboard-controller reset (`reboot=k`)
/// finds the input buffer empty at once and writes 0xFE to 0x64, which stops
/// the machine with `.reset`.
public final class LegacyPorts: PortDevice, @unchecked Sendable {
    private let reset: @Sendable () -> Void
    private let lock = NSLock()
    private var cmosIndex: UInt8 = 0

    /// `reset` is called when the guest asks the machine to reset.
    public init(reset: @escaping @Sendable () -> Void) {
        self.reset = reset
    }

    public func owns(_ port: UInt16) -> Bool {
        (0x60...0x64).contains(port) || (0x70...0x71).contains(port) || port == 0xCF9
    }

    public func read(port: UInt16, size: Int) -> UInt32 {
        switch port {
        case 0x70: lock.withLock { UInt32(cmosIndex) }
        case 0x64: 0xFD
        case 0x60...0x63: 0xFF
        case 0x71, 0xCF9: 0
        default: UInt32.max
        }
    }

    public func write(port: UInt16, size: Int, value: UInt32) {
        switch port {
        case 0x70: lock.withLock { cmosIndex = UInt8(truncatingIfNeeded: value) & 0x7F }
        case 0x64 where value & 0xFF == 0xFE: reset()
        case 0xCF9 where value & 0x04 != 0: reset()
        default: break
        }
    }
}
