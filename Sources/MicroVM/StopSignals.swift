import CKVM
import Foundation
import Glibc

/// SIGINT and SIGTERM, handled once per process: each runs the current stop
/// action on a thread of its own.
///
/// A real handler (`ckvm_install_stop_signal`) writes the signal's number to a
/// pipe that the thread reads, so a stop signal is never lost, whichever thread
/// the kernel delivers it to. (With `SIG_IGN` and a dispatch signal source, a
/// SIGTERM that landed on a thread not blocking it was discarded: a standby
/// that had taken over ran on for minutes after it, seen in the KVM box.)
final class StopSignals: @unchecked Sendable {
    static let shared = StopSignals()

    private let lock = NSLock()
    private var action: @Sendable (Int32) -> Void = { _ in }

    private init() {
        var fds: [Int32] = [-1, -1]
        guard pipe(&fds) == 0 else { return }
        for fd in fds { _ = fcntl(fd, F_SETFD, FD_CLOEXEC) }
        for number in [SIGINT, SIGTERM] { _ = ckvm_install_stop_signal(number, fds[1]) }
        let reader = fds[0]
        let thread = Thread { [unowned self] in
            var byte: UInt8 = 0
            while true {
                let n = read(reader, &byte, 1)
                if n < 0 && errno == EINTR { continue }
                guard n == 1 else { return }
                let current = lock.withLock { action }
                current(Int32(byte))
            }
        }
        thread.name = "understudy-stop-signals"
        thread.start()
    }

    /// What the next SIGINT or SIGTERM does.
    func onStop(_ action: @escaping @Sendable (Int32) -> Void) {
        lock.withLock { self.action = action }
    }
}
