@testable import MicroVM
import Synchronization
import Testing

/// Devices as pure state machines: no KVM needed.
@Suite("Devices")
struct DeviceTests {
    final class Sink: Sendable {
        let bytes = Mutex<[UInt8]>([])
        var closure: @Sendable ([UInt8]) -> Void { { [self] data in bytes.withLock { $0 += data } } }
    }

    @Test func serialTransmitsReceivesAndKeepsRegisters() throws {
        let sink = Sink()
        let serial = Serial(base: 0x1000, output: sink.closure)
        for byte in Array("hi\n".utf8) { _ = serial.write(offset: 0, length: 1, value: UInt64(byte)) }
        #expect(sink.bytes.withLock { $0 } == Array("hi\n".utf8))
        #expect(serial.read(offset: 5, length: 1) & 0x01 == 0, "no data ready")
        #expect(serial.read(offset: 5, length: 1) & 0x20 != 0, "transmitter empty")
        serial.receive([0x41, 0x42])
        #expect(serial.read(offset: 5, length: 1) & 0x01 == 1)
        #expect(serial.read(offset: 0, length: 1) == 0x41)
        // Divisor latch: DLAB set redirects registers 0 and 1.
        _ = serial.write(offset: 3, length: 1, value: 0x83)
        _ = serial.write(offset: 0, length: 1, value: 0x01)
        #expect(serial.read(offset: 0, length: 1) == 0x01)
        _ = serial.write(offset: 3, length: 1, value: 0x03)
        _ = serial.write(offset: 7, length: 1, value: 0x5A)
        // Loopback: transmitted bytes come back as input, not output.
        _ = serial.write(offset: 4, length: 1, value: 0x10)
        _ = serial.write(offset: 0, length: 1, value: 0x43)
        #expect(sink.bytes.withLock { $0 }.count == 3)

        let copy = Serial(base: 0x1000, output: { _ in })
        try copy.restoreState(serial.saveState())
        #expect(copy.saveState() == serial.saveState())
        #expect(copy.read(offset: 7, length: 1) == 0x5A)
        #expect(copy.read(offset: 0, length: 1) == 0x42)
        #expect(copy.read(offset: 0, length: 1) == 0x43)
    }

    @Test func serialStateIsValidated() {
        let serial = Serial(base: 0, output: { _ in })
        let good = serial.saveState()
        #expect(throws: MachineError.self) { try serial.restoreState([]) }
        #expect(throws: MachineError.self) { try serial.restoreState(Array(good.dropLast())) }
        var badVersion = good
        badVersion[0] = 9
        #expect(throws: MachineError.self) { try serial.restoreState(badVersion) }
        var hugeQueue = good
        hugeQueue[16] = 0xFF; hugeQueue[17] = 0xFF
        #expect(throws: MachineError.self) { try serial.restoreState(hugeQueue) }
    }

    @Test func doorbellActionsAndEvents() throws {
        let wakes = Mutex(0)
        let doorbell = Doorbell(base: 0x2000) { wakes.withLock { $0 += 1 } }
        #expect(doorbell.write(offset: 0x00, length: 8, value: 500) == .wait(nanoseconds: 500))
        #expect(doorbell.write(offset: 0x10, length: 8, value: 3) == .exit(code: 3))
        #expect(doorbell.write(offset: 0x18, length: 8, value: 0x4000) == .puts(address: 0x4000))
        doorbell.raise(0b101)
        #expect(wakes.withLock { $0 } == 1)
        #expect(doorbell.write(offset: 0x00, length: 8, value: 0) == .none, "no wait while events are pending")
        let copy = Doorbell(base: 0x2000) {}
        try copy.restoreState(doorbell.saveState())
        #expect(doorbell.read(offset: 0x08, length: 8) == 0b101)
        #expect(doorbell.read(offset: 0x08, length: 8) == 0, "reading clears")
        #expect(copy.pendingEvents == 0b101)
        #expect(throws: MachineError.self) { try copy.restoreState([1, 2]) }
    }
}
