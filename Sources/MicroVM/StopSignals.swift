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
///
/// Between two phases (`hold()`: a standby's receiver has ended, the machine
/// that takes over is not built yet) a stop signal is kept and goes to the
/// next action as soon as one is set. (It used to go to an action that did
/// nothing: a SIGTERM sent while a standby took over, once the released
/// output of the last epochs had reached the world, was dropped, and the guest
/// ran on; seen in CI as a standby that outlived its SIGTERM.)
final class StopSignals: @unchecked Sendable {
    static let shared = StopSignals()

    private let lock = NSLock()
    private var action: (@Sendable (Int32) -> Void)?
    /// A stop signal that arrived while no action was set.
    private var kept: Int32?
    private var writer: Int32 = -1

    private init() {
        var fds: [Int32] = [-1, -1]
        guard pipe(&fds) == 0 else { return }
        for fd in fds { _ = fcntl(fd, F_SETFD, FD_CLOEXEC) }
        writer = fds[1]
        for number in [SIGINT, SIGTERM] { _ = ckvm_install_stop_signal(number, fds[1]) }
        let reader = fds[0]
        let thread = Thread { [unowned self] in
            var byte: UInt8 = 0
            while true {
                let n = read(reader, &byte, 1)
                if n < 0 && errno == EINTR { continue }
                guard n == 1 else { return }
                let number = Int32(byte)
                let current = lock.withLock { () -> (@Sendable (Int32) -> Void)? in
                    if action == nil { kept = number }
                    return action
                }
                current?(number)
            }
        }
        thread.name = "understudy-stop-signals"
        thread.start()
    }

    /// What the next SIGINT or SIGTERM does; a signal kept since `hold()` is
    /// handed to it at once (on the signal thread, as if it arrived now).
    func onStop(_ action: @escaping @Sendable (Int32) -> Void) {
        let replay = lock.withLock { () -> Int32? in
            self.action = action
            defer { kept = nil }
            return kept
        }
        if var byte = replay.map(UInt8.init(truncatingIfNeeded:)) { _ = write(writer, &byte, 1) }
    }

    /// What SIGTERM does, asked for from inside the process (`understudy-ctl stop`).
    func requestStop() {
        var byte = UInt8(SIGTERM)
        _ = write(writer, &byte, 1)
    }

    /// Until the next `onStop`, a stop signal is kept rather than acted on.
    func hold() {
        lock.withLock { action = nil }
    }

    /// Whether a stop signal arrived since `hold()` and waits for an action.
    var hasKeptSignal: Bool { lock.withLock { kept != nil } }
}
