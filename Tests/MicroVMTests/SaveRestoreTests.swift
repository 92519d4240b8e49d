import Foundation
import KVM
@testable import MicroVM
import TestGuests
import Testing

@Suite("Save and restore", .enabled(if: TestHost.kvmAvailable, "needs /dev/kvm"), .deadline(minutes: 5))
struct SaveRestoreTests {
    static let options = "pages=24 wss=600 every=1500"

    static func expected(cpu: Int, count: Int) -> [String] {
        WorkloadReference.lines(cpu: cpu, pages: 24, wss: 600, every: 1500, count: count)
    }

    /// Waits until `console` holds at least `count` lines for every vCPU.
    static func waitForLines(_ console: ConsoleBuffer, cpus: Int, count: Int, timeout: TimeInterval = 30) -> Bool {
        let deadline = Date().addingTimeInterval(TestHost.seconds(timeout))
        while Date() < deadline {
            if (0..<cpus).allSatisfy({ console.lines(cpu: $0).count >= count }) { return true }
            usleep(2000)
        }
        return false
    }

    /// Pause at a random point, save state and memory, destroy the machine, build a
    /// new one from the bytes, resume: the output continues exactly. 20 points; in
    /// the second half the machine is paused as for a checkpoint (dirty tracking on,
    /// registers synced through kvm_run, each vCPU thread reading its own state).
    @Test func randomPointsContinueExactly() throws {
        var generator = SystemRandomNumberGenerator()
        for round in 0..<20 {
            let cpus = round % 2 + 1
            let asCheckpoint = round >= 10
            let console = ConsoleBuffer()
            var original: Machine? = try Machine(
                configuration: .init(vcpuCount: cpus, memorySize: 64 << 20, commandLine: Self.options,
                                     dirtyTracking: asCheckpoint ? .bitmap : .none),
                console: console.sink)
            try original!.start()
            usleep(UInt32.random(in: 1_000...40_000, using: &generator))
            try original!.pause(capturingVCPUState: asCheckpoint)
            let state = try original!.saveState()
            let memory = Array(original!.memory.bytes)
            let before = (0..<cpus).map { console.lines(cpu: $0) }
            original!.requestStop()
            #expect(original!.waitUntilStopped(timeout: TestHost.scaled(.seconds(10))) == .requested)
            original = nil

            let copy = try SharedMemory(size: memory.count)
            copy.bytes.copyBytes(from: memory)
            let after = ConsoleBuffer()
            let restored = try Machine(restoring: state, memory: copy, console: after.sink)
            try restored.start()
            let target = before.map(\.count).max()! + 15
            let reached = Self.waitForLines(after, cpus: cpus, count: 15)
            restored.requestStop()
            _ = restored.waitUntilStopped(timeout: TestHost.scaled(.seconds(10)))
            #expect(reached, "restored machine printed too little (round \(round))")
            for cpu in 0..<cpus {
                let all = before[cpu] + after.lines(cpu: cpu)
                #expect(all == Self.expected(cpu: cpu, count: all.count), "round \(round), vCPU \(cpu)")
                #expect(all.count <= target + 1000)
            }
        }
    }

    /// The same through a snapshot file, resumed by `understudy-primary` in another process.
    @Test func snapshotResumesInAnotherProcess() throws {
        let executable = try #require(ChildProcess.executable("understudy-primary"), "understudy-primary not built next to the tests")
        let console = ConsoleBuffer()
        let machine = try Machine(configuration: .init(vcpuCount: 2, memorySize: 32 << 20, commandLine: Self.options),
                                  console: console.sink)
        try machine.start()
        usleep(30_000)
        try machine.pause()
        let path = FileManager.default.temporaryDirectory.appendingPathComponent("understudy-\(UUID()).snapshot").path
        defer { try? FileManager.default.removeItem(atPath: path) }
        try MachineSnapshot.write(machine, to: path)
        let before = (0..<2).map { console.lines(cpu: $0) }
        machine.requestStop()
        _ = machine.waitUntilStopped(timeout: TestHost.scaled(.seconds(10)))

        let process = Process()
        process.executableURL = URL(fileURLWithPath: executable)
        process.arguments = ["--unprotected", "--restore", path]
        let pipe = Pipe()
        process.standardOutput = pipe
        process.standardError = FileHandle.nullDevice
        let output = ConsoleBuffer()
        let sink = output.sink
        pipe.fileHandleForReading.readabilityHandler = { handle in sink([UInt8](handle.availableData)) }
        try process.run()
        let reached = Self.waitForLines(output, cpus: 2, count: 20)
        process.terminate()                      // SIGTERM: the runner stops the machine cleanly
        let status = ChildExit.wait(for: process)
        pipe.fileHandleForReading.readabilityHandler = nil
        #expect(reached, "the resumed process printed too little")
        #expect(status == 0, "clean stop on SIGTERM")
        for cpu in 0..<2 {
            let all = before[cpu] + output.lines(cpu: cpu)
            #expect(all == Self.expected(cpu: cpu, count: all.count), "vCPU \(cpu)")
        }
    }
}
