import Foundation
import KVM
import Understudy
@testable import MicroVM
import TestGuests
import Testing

/// Guests that wait through the doorbell instead of spinning.
@Suite("Doorbell waits", .enabled(if: TestHost.kvmAvailable, "needs /dev/kvm"), .deadline(minutes: 5))
struct DoorbellGuestTests {
    /// Waits for an event (WAIT_NS 0), reads EVENTS, exits with them as the code.
    static let waitForEvent: [UInt8] = [
        0x48, 0xB8, 0x00, 0x10, 0x00, 0xD0, 0x00, 0x00, 0x00, 0x00,   // movabs rax, doorbell
        0x48, 0xC7, 0x00, 0x00, 0x00, 0x00, 0x00,                     // mov qword [rax], 0   (WAIT_NS)
        0x48, 0x8B, 0x48, 0x08,                                       // mov rcx, [rax+8]     (EVENTS)
        0x48, 0x85, 0xC9,                                             // test rcx, rcx
        0x74, 0xF0,                                                   // jz back to the wait
        0x48, 0x89, 0x48, 0x10,                                       // mov [rax+0x10], rcx  (EXIT)
    ]

    /// Waits 20 ms with nothing pending, then exits with code 7.
    static let waitForDeadline: [UInt8] = [
        0x48, 0xB8, 0x00, 0x10, 0x00, 0xD0, 0x00, 0x00, 0x00, 0x00,   // movabs rax, doorbell
        0x48, 0xB9, 0x00, 0x2D, 0x31, 0x01, 0x00, 0x00, 0x00, 0x00,   // movabs rcx, 20_000_000
        0x48, 0x89, 0x08,                                             // mov [rax], rcx       (WAIT_NS)
        0x48, 0xC7, 0x40, 0x10, 0x07, 0x00, 0x00, 0x00,               // mov qword [rax+0x10], 7
    ]

    static func machine(_ code: [UInt8]) throws -> Machine {
        try Machine(configuration: .init(memorySize: 8 << 20, image: GuestImage(raw: code, loadAddress: GuestLayout.imageBase)),
                    console: { _ in })
    }

    @Test func eventWakesAWaitingGuest() throws {
        let machine = try Self.machine(Self.waitForEvent)
        try machine.start()
        usleep(50_000)
        #expect(machine.stopReason == nil, "the guest waits")
        machine.doorbell.raise(0b1010)
        #expect(machine.waitUntilStopped(timeout: TestHost.scaled(.seconds(10))) == .guestExit(code: 0b1010))
    }

    @Test func deadlineEndsAWait() throws {
        let machine = try Self.machine(Self.waitForDeadline)
        let started = ContinuousClock.now
        try machine.start()
        #expect(machine.waitUntilStopped(timeout: TestHost.scaled(.seconds(10))) == .guestExit(code: 7))
        #expect(ContinuousClock.now - started >= .milliseconds(20))
    }

    /// A vCPU blocked in a doorbell wait pauses promptly, survives save/restore, and
    /// in its new machine still wakes on an event.
    @Test func waitingGuestPausesAndRestores() throws {
        let machine = try Self.machine(Self.waitForEvent)
        try machine.start()
        usleep(20_000)
        let pause = try machine.pause()
        #expect(pause < .milliseconds(500))
        let state = try machine.saveState()
        let memory = try SharedMemory(size: machine.memory.size)
        memory.bytes.copyBytes(from: UnsafeRawBufferPointer(machine.memory.bytes))
        machine.requestStop()
        _ = machine.waitUntilStopped(timeout: TestHost.scaled(.seconds(10)))

        let restored = try Machine(restoring: state, memory: memory, console: { _ in })
        try restored.start()
        usleep(20_000)
        #expect(restored.stopReason == nil)
        restored.doorbell.raise(4)
        #expect(restored.waitUntilStopped(timeout: TestHost.scaled(.seconds(10))) == .guestExit(code: 4))
    }
}

@Suite("Guest memory", .enabled(if: TestHost.kvmAvailable, "needs /dev/kvm"), .deadline(minutes: 5))
struct GuestMemoryTests {
    /// RAM split over several KVM slots works like one, and dirty logging can be
    /// switched on and off while the guest runs.
    @Test func severalSlotsAndDirtyLoggingSwitch() throws {
        let console = ConsoleBuffer()
        let machine = try Machine(configuration: .init(memorySize: 32 << 20, maxSlotSize: 4 << 20,
                                                       commandLine: "pages=16 wss=2000 every=100",
                                                       dirtyTracking: .bitmap),
                                  console: console.sink)
        #expect(machine.slots.count == 8)
        try machine.setDirtyLogging(false)
        try machine.start()
        #expect(eventually { console.lines(cpu: 0).count >= 1 })
        try machine.pause()
        try machine.setDirtyLogging(true)
        try machine.resume()
        let before = console.lines(cpu: 0).count
        #expect(eventually { console.lines(cpu: 0).count >= before + 2 })
        try machine.pause()
        var dirty = 0
        for slot in machine.slots {
            let bitmap = DirtyBitmap(pageCount: slot.pageCount)
            try machine.vm.dirtyLog(slot: slot.slot, into: bitmap)
            dirty += bitmap.count
        }
        #expect(dirty > 100, "the workload's writes are logged once logging is on (\(dirty) pages)")
        try machine.setDirtyLogging(false)
        try machine.resume()
        let after = console.lines(cpu: 0).count
        #expect(eventually { console.lines(cpu: 0).count >= after + 1 }, "runs on with logging off again")
        machine.requestStop()
        _ = machine.waitUntilStopped(timeout: TestHost.scaled(.seconds(10)))
        let lines = console.lines(cpu: 0)
        #expect(lines.count >= 3)
        #expect(lines == WorkloadReference.lines(cpu: 0, pages: 16, wss: 2000, every: 100, count: lines.count))
    }
}
