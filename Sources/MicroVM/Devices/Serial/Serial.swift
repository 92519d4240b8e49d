import Synchronization

/// An 8250/16550-compatible UART with one byte per register, reached through MMIO.
///
/// Output (THR writes) goes to `output`, a sink the caller chooses (stdout, a
/// buffer, later the output-commit buffer). Input is queued with `receive(_:)`
/// and read by the guest from RBR while LSR.DR is set. Guests poll; no
/// interrupt is raised. A pure state machine: testable without KVM.
public final class Serial: MMIODevice, @unchecked Sendable {
    public let name = "serial"
    public let base: UInt64
    public let size: UInt64 = 8
    /// Bytes held in the receive queue at most; more are dropped (and counted).
    public static let inputCapacity = 4096

    private let state = Mutex(SerialState())
    private let output: @Sendable ([UInt8]) -> Void

    public init(base: UInt64, output: @escaping @Sendable ([UInt8]) -> Void) {
        self.base = base
        self.output = output
    }

    /// Queues bytes for the guest to read.
    public func receive(_ bytes: [UInt8]) {
        state.withLock { s in
            let room = Self.inputCapacity - s.input.count
            s.input.append(contentsOf: bytes.prefix(max(0, room)))
            s.droppedInput += UInt64(max(0, bytes.count - room))
        }
    }

    /// Writes bytes to the output sink as if the guest had sent them (used by the doorbell's PUTS).
    public func transmit(_ bytes: [UInt8]) { output(bytes) }

    public func read(offset: UInt64, length: Int) -> UInt64 {
        let (value, _) = state.withLock { s in s.read(register: Int(offset)) }
        return UInt64(value)
    }

    public func write(offset: UInt64, length: Int, value: UInt64) -> DeviceAction {
        let sent = state.withLock { s in s.write(register: Int(offset), value: UInt8(truncatingIfNeeded: value)) }
        if let byte = sent { output([byte]) }
        return .none
    }

    public func saveState() -> [UInt8] { state.withLock { $0.encoded() } }

    public func restoreState(_ bytes: [UInt8]) throws(MachineError) {
        let decoded = try SerialState(decoding: bytes)
        state.withLock { $0 = decoded }
    }
}

/// The UART's registers and receive queue.
struct SerialState: Equatable {
    var ier: UInt8 = 0
    var lcr: UInt8 = 0x03
    var mcr: UInt8 = 0
    var scr: UInt8 = 0
    var fcr: UInt8 = 0
    var dll: UInt8 = 0x0C          // 9600 baud
    var dlm: UInt8 = 0
    var input: [UInt8] = []
    var droppedInput: UInt64 = 0

    static let version: UInt8 = 1
    var dlab: Bool { lcr & 0x80 != 0 }

    /// Returns the register value and whether a byte was consumed.
    mutating func read(register: Int) -> (UInt8, Bool) {
        switch register {
        case 0:
            if dlab { return (dll, false) }
            guard !input.isEmpty else { return (0, false) }
            return (input.removeFirst(), true)
        case 1: return (dlab ? dlm : ier, false)
        case 2: return ((fcr & 1 != 0 ? 0xC0 : 0) | 0x01, false)     // no interrupt pending
        case 3: return (lcr, false)
        case 4: return (mcr, false)
        case 5: return (0x60 | (input.isEmpty ? 0 : 0x01), false)      // THRE | TEMT | DR
        case 6: return (mcr & 0x10 != 0 ? (mcr & 0x0F) << 4 : 0xB0, false)   // DCD, DSR, CTS
        case 7: return (scr, false)
        default: return (0xFF, false)
        }
    }

    /// Applies a write; returns the byte to transmit, if any.
    mutating func write(register: Int, value: UInt8) -> UInt8? {
        switch register {
        case 0:
            if dlab { dll = value; return nil }
            if mcr & 0x10 != 0 {                                        // loopback
                if input.count < Serial.inputCapacity { input.append(value) }
                return nil
            }
            return value
        case 1: if dlab { dlm = value } else { ier = value & 0x0F }
        case 2: fcr = value; if value & 0x02 != 0 { input.removeAll() }
        case 3: lcr = value
        case 4: mcr = value & 0x1F
        case 7: scr = value
        default: break
        }
        return nil
    }

    func encoded() -> [UInt8] {
        var bytes: [UInt8] = [Self.version, ier, lcr, mcr, scr, fcr, dll, dlm]
        withUnsafeBytes(of: droppedInput.littleEndian) { bytes += $0 }
        withUnsafeBytes(of: UInt32(input.count).littleEndian) { bytes += $0 }
        return bytes + input
    }

    init() {}

    init(decoding bytes: [UInt8]) throws(MachineError) {
        guard bytes.count >= 20 else { throw .invalidState(part: "serial", reason: "\(bytes.count) bytes, need at least 20") }
        guard bytes[0] == Self.version else { throw .invalidState(part: "serial", reason: "version \(bytes[0])") }
        (ier, lcr, mcr, scr, fcr, dll, dlm) = (bytes[1], bytes[2], bytes[3], bytes[4], bytes[5], bytes[6], bytes[7])
        guard ier & 0xF0 == 0, mcr & 0xE0 == 0 else { throw .invalidState(part: "serial", reason: "reserved register bits set") }
        var reader = ByteReader(bytes: bytes[8...], part: "serial")
        droppedInput = try reader.u64()
        let count = Int(try reader.u32())
        guard count <= Serial.inputCapacity, bytes.count == 20 + count else {
            throw .invalidState(part: "serial", reason: "input queue of \(count) bytes does not match \(bytes.count - 20)")
        }
        input = Array(bytes[20...])
    }
}
