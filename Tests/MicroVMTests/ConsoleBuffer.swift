import MicroVM
import Synchronization
import TestGuests
import Testing

/// Collects console output from the machine's vCPU threads.
final class ConsoleBuffer: Sendable {
    private let bytes = Mutex<[UInt8]>([])

    var sink: @Sendable ([UInt8]) -> Void { { [self] data in bytes.withLock { $0 += data } } }

    var text: String { String(decoding: bytes.withLock { $0 }, as: UTF8.self) }

    /// Complete lines so far.
    var lines: [String] {
        let text = self.text
        var lines = text.split(separator: "\n", omittingEmptySubsequences: false).map(String.init)
        lines.removeLast()          // the part after the last newline is not a complete line
        return lines
    }

    /// Lines of vCPU `cpu`.
    func lines(cpu: Int) -> [String] { lines.filter { $0.hasSuffix(" cpu=\(cpu)") } }
}

/// Waits until the workload printed `atLeast` lines on each of its vCPUs
/// (progress is waited for, never assumed from the time a test took: in the
/// KVM box a line takes ten times longer), stops `machine`, and checks that
/// every line is exactly the computed one.
func stopAndExpectExactWorkload(_ machine: Machine, console: ConsoleBuffer, cpus: Int, pages: Int, wss: Int, every: Int,
                                atLeast: Int) {
    _ = eventually(timeout: 120) { (0..<cpus).allSatisfy { console.lines(cpu: $0).count >= atLeast } || machine.hasStopped }
    machine.requestStop()
    #expect(machine.waitUntilStopped(timeout: TestHost.scaled(.seconds(10))) == .requested)
    for cpu in 0..<cpus {
        let lines = console.lines(cpu: cpu)
        #expect(lines.count >= atLeast, "vCPU \(cpu) made progress")
        #expect(lines == WorkloadReference.lines(cpu: cpu, pages: pages, wss: wss, every: every, count: lines.count))
    }
}
