import Synchronization

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
