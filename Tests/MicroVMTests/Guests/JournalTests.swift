import Foundation
import KVM
@testable import MicroVM
import TestGuests
import Testing

@Suite("journal guest", .enabled(if: TestHost.kvmAvailable, "needs /dev/kvm"), .deadline(minutes: 5), .serialized)
struct JournalTests {
    /// 10,000 records and a clean stop: the image holds exactly the records the
    /// guest reported as flushed, checked by reading the image from the host.
    @Test func tenThousandRecordsMatchWhatWasReported() throws {
        let disk = JournalImage.makeImage(megabytes: 16)
        defer { try? FileManager.default.removeItem(atPath: disk) }
        let console = ConsoleBuffer()
        var configuration = MachineConfiguration(name: "journal", memorySize: 64 << 20,
                                                 image: try GuestPrograms.image("journal"), commandLine: "count=10000")
        configuration.disk = DiskConfiguration(path: disk)
        let machine = try Machine(configuration: configuration, console: console.sink)
        try machine.start()
        #expect(machine.waitUntilStopped(timeout: TestHost.scaled(.seconds(120))) == .guestExit(code: 0))
        let flushed = JournalImage.flushed(in: console.lines)
        #expect(flushed.first == 8 && flushed.last == 10_000)
        #expect(flushed == Array(stride(from: 8, through: 10_000, by: 8)), "every flush reported once, in order")
        #expect(try JournalImage.recordCount(path: disk) == 10_000)
        #expect(console.text.contains("journal: found 0 records"))

        // A second boot finds them all and continues from 10,001.
        let again = ConsoleBuffer()
        configuration.commandLine = "count=16"
        let second = try Machine(configuration: configuration, console: again.sink)
        try second.start()
        #expect(second.waitUntilStopped(timeout: TestHost.scaled(.seconds(60))) == .guestExit(code: 0))
        #expect(again.text.contains("journal: found 10000 records"))
        #expect(try JournalImage.recordCount(path: disk) == 10_016)
    }
}

@Suite("Malformed virtqueues from a guest", .enabled(if: networkTestsAvailable, "needs root, /dev/kvm, /dev/net/tun"), .deadline(minutes: 5), .serialized)
struct BadQueueTests {
    /// A guest hands virtio-net a looping chain, an address outside RAM, a zero and a
    /// huge length: each is refused (DEVICE_NEEDS_RESET), the VMM stays up, and a
    /// driver reset recovers the device.
    @Test func malformedChainsAreRefused() throws {
        let network = try TestNetwork()
        let tap = try network.addTap()
        for mode in ["loop", "range", "zero", "huge", "ok"] {
            let console = ConsoleBuffer()
            var configuration = MachineConfiguration(name: "badqueue", memorySize: 16 << 20,
                                                     image: try GuestPrograms.image("badqueue"), commandLine: "mode=\(mode)")
            configuration.network = NetworkConfiguration(tap: tap)
            let machine = try Machine(configuration: configuration, console: console.sink)
            try machine.start()
            #expect(machine.waitUntilStopped(timeout: TestHost.scaled(.seconds(30))) == .guestExit(code: 0), "\(mode): \(console.text)")
            let status = console.lines.first { $0.hasPrefix("badqueue: mode=") }.flatMap { UInt32($0.split(separator: "x").last ?? "", radix: 16) }
            let broken = (status ?? 0) & 0x40 != 0
            #expect(broken == (mode != "ok"), "\(mode): \(console.text)")
            #expect(console.text.contains("badqueue: recovered status=0xf"), "\(mode): \(console.text)")
        }
    }
}
