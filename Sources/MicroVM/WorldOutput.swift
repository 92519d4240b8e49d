import Foundation
import Glibc
import Logging
import Understudy

/// Where released output goes: console bytes to standard output, frames to the tap.
///
/// A sink that fails (standard output closed: EPIPE; a full disk behind it:
/// ENOSPC; a tap gone down) never stops the guest: the bytes are dropped, the
/// first failure of each kind and every change of errno is logged at error
/// level, and the counts are kept. SIGPIPE is ignored for the process (see
/// `ignoreBrokenPipes()`), so a closed pipe is an EPIPE error, not a signal
/// that kills the only copy of the guest.
final class WorldOutput: @unchecked Sendable {
    var tap: Tap?
    private let logger: Logger
    private let lock = NSLock()
    private var lastErrno: [OutputRecord.Kind: Int32] = [:]
    private var failures: [OutputRecord.Kind: Int] = [:]

    init(logger: Logger) {
        self.logger = logger
        Self.ignoreBrokenPipes()
    }

    /// Items that could not be delivered, by kind.
    func failedCount(_ kind: OutputRecord.Kind) -> Int { lock.withLock { failures[kind] ?? 0 } }

    func release(_ kind: OutputRecord.Kind, _ bytes: [UInt8]) {
        let code: Int32? = bytes.withUnsafeBytes { raw in
            switch kind {
            case .console: Self.writeAll(STDOUT_FILENO, raw)
            case .network: tap.map { $0.write(raw) ? nil : errno } ?? nil
            }
        }
        guard let code else { return }
        let report = lock.withLock { () -> Bool in
            failures[kind, default: 0] += 1
            defer { lastErrno[kind] = code }
            return lastErrno[kind] != code
        }
        if report {
            let sink = kind == .console ? "standard output" : "the tap"
            logger.error("the guest's output could not be written to \(sink): write failed: \(String(cString: strerror(code))) (errno \(code)); the guest runs on, this output is dropped")
        }
    }

    /// Writes all of `raw` to `fd`; nil, or the errno of the failure.
    private static func writeAll(_ fd: Int32, _ raw: UnsafeRawBufferPointer) -> Int32? {
        var done = 0
        while done < raw.count {
            let n = Glibc.write(fd, raw.baseAddress! + done, raw.count - done)
            if n < 0 {
                if errno == EINTR { continue }
                return errno
            }
            done += n
        }
        return nil
    }

    /// A write to a closed pipe or socket returns EPIPE instead of killing the process.
    static func ignoreBrokenPipes() {
        signal(SIGPIPE, SIG_IGN)
    }
}
