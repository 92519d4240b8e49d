import Foundation

/// An 8250/16550A UART as Linux's `8250` driver drives it (`console=ttyS0`):
/// transmit, interrupt enable and identification, line and modem control and
/// status, scratch and divisor latch registers, and the transmitter-empty
/// interrupt on its IRQ line (an edge, raised through `interrupt`).
///
/// Receive is not modelled: the guest's console is output only (the line status
/// never shows data ready). Transmitted bytes go to `output` at once; the
/// transmitter is always empty, so the guest never waits for it.
public final class UART8250: PortDevice, @unchecked Sendable {
    /// Its eight registers' ports.
    public let ports: Range<UInt16>
    private let output: @Sendable ([UInt8]) -> Void
    private let interrupt: @Sendable () -> Void
    private let lock = NSLock()
    private var registers = Registers()

    /// The register file (what a checkpoint saves).
    struct Registers: Equatable {
        var interruptEnable: UInt8 = 0
        var lineControl: UInt8 = 0x03
        var modemControl: UInt8 = 0x08
        var scratch: UInt8 = 0
        var divisorLow: UInt8 = 0x0C
        var divisorHigh: UInt8 = 0
        var fifoControl: UInt8 = 0
        /// A transmitter-empty interrupt is pending (cleared by reading IIR or writing THR).
        var transmitterEmptyPending = false
    }

    static let interruptEnableTransmitterEmpty: UInt8 = 0x02
    static let lineControlDivisorLatch: UInt8 = 0x80

    /// The COM1 UART: ports 0x3F8-0x3FF, IRQ 4.
    public static let com1Base: UInt16 = 0x3F8
    public static let com1IRQ: UInt32 = 4

    public init(base: UInt16 = UART8250.com1Base, output: @escaping @Sendable ([UInt8]) -> Void,
                interrupt: @escaping @Sendable () -> Void) {
        ports = base..<(base + 8)
        self.output = output
        self.interrupt = interrupt
    }

    public func owns(_ port: UInt16) -> Bool { ports.contains(port) }

    public func read(port: UInt16, size: Int) -> UInt32 {
        lock.lock()
        defer { lock.unlock() }
        let divisorLatch = registers.lineControl & Self.lineControlDivisorLatch != 0
        switch port - ports.lowerBound {
        case 0: return divisorLatch ? UInt32(registers.divisorLow) : 0          // no received data
        case 1: return UInt32(divisorLatch ? registers.divisorHigh : registers.interruptEnable)
        case 2:
            let fifo: UInt32 = registers.fifoControl & 1 != 0 ? 0xC0 : 0
            if registers.transmitterEmptyPending {
                registers.transmitterEmptyPending = false
                return fifo | 0x02
            }
            return fifo | 0x01                                                  // no interrupt pending
        case 3: return UInt32(registers.lineControl)
        case 4: return UInt32(registers.modemControl)
        case 5: return 0x60                                                     // THR and transmitter empty
        case 6:
            // Loopback mode reflects the modem control outputs; otherwise DCD, DSR and CTS are up.
            if registers.modemControl & 0x10 != 0 {
                let m = registers.modemControl
                return UInt32((m & 0x01) << 5 | (m & 0x02) << 3 | (m & 0x04) << 4 | (m & 0x08) << 4)
            }
            return 0xB0
        default: return UInt32(registers.scratch)
        }
    }

    public func write(port: UInt16, size: Int, value: UInt32) {
        let byte = UInt8(truncatingIfNeeded: value)
        var transmitted: UInt8?
        var raise = false
        lock.lock()
        let divisorLatch = registers.lineControl & Self.lineControlDivisorLatch != 0
        switch port - ports.lowerBound {
        case 0:
            if divisorLatch {
                registers.divisorLow = byte
            } else {
                if registers.modemControl & 0x10 == 0 { transmitted = byte }
                // The byte left at once: the transmitter is empty again.
                raise = registers.interruptEnable & Self.interruptEnableTransmitterEmpty != 0
                registers.transmitterEmptyPending = raise
            }
        case 1:
            if divisorLatch {
                registers.divisorHigh = byte
            } else {
                let enabling = byte & Self.interruptEnableTransmitterEmpty != 0
                    && registers.interruptEnable & Self.interruptEnableTransmitterEmpty == 0
                registers.interruptEnable = byte & 0x0F
                if enabling {
                    registers.transmitterEmptyPending = true
                    raise = true
                } else if byte & Self.interruptEnableTransmitterEmpty == 0 {
                    registers.transmitterEmptyPending = false
                }
            }
        case 2: registers.fifoControl = byte
        case 3: registers.lineControl = byte
        case 4: registers.modemControl = byte & 0x1F
        case 7: registers.scratch = byte
        default: break                                                          // LSR, MSR: read-only
        }
        lock.unlock()
        if let transmitted { output([transmitted]) }
        if raise { interrupt() }
    }

    // MARK: state

    /// The register file as bytes (version 1).
    public func saveState() -> [UInt8] {
        lock.lock()
        defer { lock.unlock() }
        let r = registers
        return [1, r.interruptEnable, r.lineControl, r.modemControl, r.scratch, r.divisorLow, r.divisorHigh,
                r.fifoControl, r.transmitterEmptyPending ? 1 : 0]
    }

    /// Restores `saveState()` bytes; refuses anything else with the reason.
    public func restoreState(_ bytes: [UInt8]) throws(MachineError) {
        guard bytes.count == 9, bytes[0] == 1, bytes[8] <= 1 else {
            throw .invalidState(part: "UART", reason: "\(bytes.count) bytes, version \(bytes.first.map(String.init) ?? "none")")
        }
        let restored = Registers(interruptEnable: bytes[1] & 0x0F, lineControl: bytes[2], modemControl: bytes[3] & 0x1F,
                                 scratch: bytes[4], divisorLow: bytes[5], divisorHigh: bytes[6], fifoControl: bytes[7],
                                 transmitterEmptyPending: bytes[8] == 1)
        lock.withLock { registers = restored }
    }
}
