import Foundation
import KVM
@testable import MicroVM
import TestGuests
import Testing

/// Percentile of durations, in microseconds.
func microseconds(_ values: [Duration], percentile: Double) -> Double {
    let sorted = values.sorted()
    let index = min(sorted.count - 1, Int(Double(sorted.count - 1) * percentile))
    let d = sorted[index].components
    return Double(d.seconds) * 1e6 + Double(d.attoseconds) / 1e12
}

@Suite("Pause and resume", .enabled(if: TestHost.kvmAvailable, "needs /dev/kvm"), .deadline(minutes: 5))
struct PauseResumeTests {
    /// 1000 pause/resume cycles while the workload runs on two vCPUs: every line
    /// it prints is still exactly the computed one.
    @Test func thousandCyclesLeaveOutputUnchanged() throws {
        let console = ConsoleBuffer()
        let machine = try Machine(configuration: .init(vcpuCount: 2, memorySize: 64 << 20,
                                                       commandLine: "pages=16 wss=512 every=2000"),
                                  console: console.sink)
        try machine.start()
        var pauses: [Duration] = []
        var resumes: [Duration] = []
        for cycle in 0..<1000 {
            pauses.append(try machine.pause())
            #expect(machine.isPaused)
            // While paused, nothing is printed.
            let before = console.text.count
            if cycle % 100 == 0 { usleep(2000) }
            #expect(console.text.count == before, "output while paused")
            resumes.append(try machine.resume())
            usleep(300)
        }
        stopAndExpectExactWorkload(machine, console: console, cpus: 2, pages: 16, wss: 512, every: 2000, atLeast: 3)
        print(String(format: "pause latency (2 vCPUs, 1000 cycles): median %.0f µs, p99 %.0f µs; resume: median %.0f µs, p99 %.0f µs",
                     microseconds(pauses, percentile: 0.5), microseconds(pauses, percentile: 0.99),
                     microseconds(resumes, percentile: 0.5), microseconds(resumes, percentile: 0.99)))
    }

    @Test func lifecycleMisuseIsAnError() throws {
        let machine = try Machine(configuration: .init(memorySize: 16 << 20, commandLine: "every=100000"), console: { _ in })
        #expect(throws: MachineError.self) { try machine.pause() }
        #expect(throws: MachineError.self) { try machine.resume() }
        try machine.start()
        #expect(throws: MachineError.self) { try machine.start() }
        #expect(throws: MachineError.self) { try machine.saveState() }
        try machine.pause()
        _ = try machine.saveState()
        try machine.resume()
        machine.requestStop()
        #expect(machine.waitUntilStopped(timeout: TestHost.scaled(.seconds(10))) == .requested)
    }
}
