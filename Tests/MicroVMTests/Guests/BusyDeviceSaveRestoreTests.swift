import Foundation
import KVM
@testable import MicroVM
import Synchronization
import TestGuests
import Testing

/// Save/restore while devices are busy: the machine is paused mid-exchange,
/// snapshotted, stopped, and resumed by `understudy-primary` in a new process
/// that takes over the same tap (and disk). The client's TCP connection carries on.
@Suite("Busy devices across processes", .enabled(if: networkTestsAvailable, "needs root, /dev/kvm, /dev/net/tun"), .deadline(minutes: 5), .serialized)
struct BusyDeviceSaveRestoreTests {
    /// Starts `understudy-primary --restore` on `snapshot` with the given host devices.
    static func resume(snapshot: String, tap: String, disk: String?, console: ConsoleBuffer) throws -> Process {
        let executable = try #require(ChildProcess.executable("understudy-primary"))
        let process = Process()
        process.executableURL = URL(fileURLWithPath: executable)
        process.arguments = ["--unprotected", "--restore", snapshot, "--tap", tap] + (disk.map { ["--disk", $0] } ?? [])
        let pipe = Pipe()
        process.standardOutput = pipe
        process.standardError = pipe
        let sink = console.sink
        pipe.fileHandleForReading.readabilityHandler = { sink([UInt8]($0.availableData)) }
        try process.run()
        return process
    }

    /// Pauses `machine`, writes it to a new snapshot file, stops it (releasing its
    /// tap), and returns the file's path.
    static func snapshotAndStop(_ machine: Machine) throws -> String {
        try machine.pause()
        let path = FileManager.default.temporaryDirectory.appendingPathComponent("busy-\(UUID()).snapshot").path
        try MachineSnapshot.write(machine, to: path)
        machine.requestStop()
        _ = machine.waitUntilStopped(timeout: TestHost.scaled(.seconds(10)))
        return path
    }

    /// A client INCRs a counter in a loop over one connection while the machine
    /// moves to another process: every reply is the next number, none lost or wrong.
    @Test func kvstoreConnectionSurvivesMoveToNewProcess() throws {
        let network = try TestNetwork()
        let tap = try network.addTap()
        let console = ConsoleBuffer()
        let configuration = try GuestPrograms.kvstore(tap: tap, memorySize: 128 << 20)
        let machine = try Machine(configuration: configuration, console: console.sink)
        try machine.start()
        #expect(eventually { console.text.contains("listening") })
        let client = try NamespaceSocket.connect(namespacePath: network.namespacePath, host: "10.77.0.2", port: 7000)

        let stopClient = Atomic<Bool>(false)
        let served = Atomic<Int>(0)
        let worker = ThreadRunner<[String]> {
            var replies: [String] = []
            while !stopClient.load(ordering: .relaxed) {
                replies.append(try client.command("INCR counter"))
                served.add(1, ordering: .relaxed)
            }
            return replies
        }
        usleep(150_000)
        let snapshot = try Self.snapshotAndStop(machine)
        defer { try? FileManager.default.removeItem(atPath: snapshot) }
        let beforeMove = served.load(ordering: .relaxed)

        let newConsole = ConsoleBuffer()
        let process = try Self.resume(snapshot: snapshot, tap: tap, disk: nil, console: newConsole)
        defer { if ChildExit.status(of: process) == nil { process.terminate() }; ChildExit.wait(for: process) }
        // Progress, not time: the new process must serve 50 more replies.
        _ = eventually(timeout: 60) { served.load(ordering: .relaxed) >= beforeMove + 50 }
        stopClient.store(true, ordering: .relaxed)
        let replies: [String]
        do { replies = try worker.join() } catch {
            Issue.record("client failed: \(error); new process said: \(newConsole.text)")
            throw error
        }
        let numbers = replies.map { $0.hasPrefix("VALUE ") ? Int($0.dropFirst(6)) ?? -1 : -1 }
        #expect(numbers == Array(1...numbers.count), "replies were lost or wrong; new process said: \(newConsole.text)")
        #expect(numbers.count > 50)
        // And the moved machine still serves new connections.
        let fresh = try NamespaceSocket.connect(namespacePath: network.namespacePath, host: "10.77.0.2", port: 7000)
        #expect(try fresh.command("GET counter") == "VALUE \(numbers.count)")
    }

    /// The journal appends and reports flushes over TCP while it moves to a new
    /// process with the same tap and disk: the reports continue in order, none
    /// missing, and the disk holds every record reported.
    @Test func journalKeepsWritingAndReportingAcrossTheMove() throws {
        let network = try TestNetwork()
        let tap = try network.addTap()
        let disk = JournalImage.makeImage(megabytes: 64)
        defer { try? FileManager.default.removeItem(atPath: disk) }
        let console = ConsoleBuffer()
        var configuration = MachineConfiguration(name: "journal", memorySize: 64 << 20, image: try GuestPrograms.image("journal"),
                                                 commandLine: "ip=10.77.0.2 flush_every=8")
        configuration.network = NetworkConfiguration(tap: tap)
        configuration.disk = DiskConfiguration(path: disk)
        let machine = try Machine(configuration: configuration, console: console.sink)
        try machine.start()
        #expect(eventually { console.text.contains("found 0 records") })
        let client = try NamespaceSocket.connect(namespacePath: network.namespacePath, host: "10.77.0.2", port: 7001)
        let stopClient = Atomic<Bool>(false)
        let reports = Atomic<Int>(0)
        let reader = ThreadRunner<[Int]> {
            var reported: [Int] = []
            while !stopClient.load(ordering: .relaxed) {
                let line = try client.readLine()
                if line.hasPrefix("flushed "), let n = Int(line.dropFirst(8)) { reported.append(n); reports.add(1, ordering: .relaxed) }
            }
            return reported
        }
        usleep(200_000)
        let snapshot = try Self.snapshotAndStop(machine)
        defer { try? FileManager.default.removeItem(atPath: snapshot) }
        let beforeMove = reports.load(ordering: .relaxed)

        let process = try Self.resume(snapshot: snapshot, tap: tap, disk: disk, console: ConsoleBuffer())
        _ = eventually(timeout: 60) { reports.load(ordering: .relaxed) >= beforeMove + 25 }
        stopClient.store(true, ordering: .relaxed)
        let reported = try reader.join()
        process.terminate()
        ChildExit.wait(for: process)
        #expect(reported.count > 20)
        #expect(reported == Array(stride(from: reported.first ?? 8, through: reported.last ?? 0, by: 8)),
                "flush reports in order with none missing")
        #expect(try JournalImage.recordCount(path: disk) >= reported.last ?? .max, "every reported record is on disk")
    }

    /// Dirty completeness with busy devices: while frames arrive (and, in the
    /// journal, blocks are read), every changed page is in the merged dirty set,
    /// and some changed pages were written only by the VMM.
    @Test func devicesWritesAreInTheDirtySet() throws {
        let network = try TestNetwork()
        let tap = try network.addTap()
        let console = ConsoleBuffer()
        let configuration = try GuestPrograms.kvstore(tap: tap, dirtyTracking: .bitmap)
        let machine = try Machine(configuration: configuration, console: console.sink)
        try machine.collectDirtyPages(into: DirtyBitmap(pageCount: machine.memory.size / 4096))
        var previous = Array(machine.memory.bytes)
        try machine.start()
        #expect(eventually { console.text.contains("listening") })
        let client = try NamespaceSocket.connect(namespacePath: network.namespacePath, host: "10.77.0.2", port: 7000)
        let stopClient = Atomic<Bool>(false)
        let worker = ThreadRunner<Int> {
            var count = 0
            let value = String(repeating: "v", count: 3000)
            while !stopClient.load(ordering: .relaxed) {
                _ = try client.command("SET k\(count % 500) \(value)")
                count += 1
            }
            return count
        }
        var vmmOnly = 0
        for round in 0..<15 {
            usleep(20_000)
            try machine.pause()
            let vmm = DirtyBitmap(pageCount: machine.memory.size / 4096)
            machine.guestMemory.takeDirtyPages(into: vmm)        // the VMM's own writes, set aside
            let kvm = DirtyBitmap(pageCount: vmm.pageCount)
            try machine.collectDirtyPages(into: kvm)             // now KVM's log alone
            let current = machine.memory.base
            previous.withUnsafeMutableBytes { old in
                for page in 0..<kvm.pageCount where memcmp(old.baseAddress! + page * 4096, current + page * 4096, 4096) != 0 {
                    #expect(kvm[page] || vmm[page], "round \(round): page \(page) changed but is in neither dirty set")
                    if !kvm[page] && vmm[page] { vmmOnly += 1 }
                    (old.baseAddress! + page * 4096).copyMemory(from: current + page * 4096, byteCount: 4096)
                }
            }
            try machine.resume()
        }
        stopClient.store(true, ordering: .relaxed)
        #expect(try worker.join() > 10)
        machine.requestStop()
        _ = machine.waitUntilStopped(timeout: TestHost.scaled(.seconds(10)))
        #expect(vmmOnly > 0, "received frames land in pages only the VMM wrote")
    }
}
