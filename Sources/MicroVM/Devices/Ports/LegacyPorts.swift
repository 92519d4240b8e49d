import Foundation

/// The rest of the PC a Linux guest pokes at boot, reduced to what it needs:
/// the CMOS (0x70-0x71: an index register, data that reads as zero, so the
/// real-time clock never shows an update in progress), the i8042 controller
/// and the reset control register (0xCF9).
///
/// The i8042 reads as an idle controller with nothing to read (status 0): its
/// Linux driver gives up after its command timeouts ("Can't read CTR"), and a
/// keyboard-controller reset (`reboot=k`, 0xFE on 0x64) stops the machine with
/// `.reset`. (Reading the status as "output full" instead, as a missing
/// controller's floating bus would, stalled Debian's kernel early in boot.)
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
        case 0x71, 0x60...0x64, 0xCF9: 0
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
