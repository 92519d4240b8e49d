import Foundation
import Glibc

/// Whether a child process has ended, learned without depending on SIGCHLD.
///
/// Foundation's `Process` learns that a child ended from SIGCHLD. A SIGCHLD the
/// kernel hands to a thread that does not block it is discarded (its default
/// action is to ignore it), and then `isRunning` stays true and
/// `waitUntilExit()` never returns, though the child is a zombie: seen in the
/// KVM box, where `ip` had exited and a test waited on it for good. This asks
/// the kernel directly (`waitid` with `WNOWAIT`, which leaves the child for
/// Foundation to reap).
public enum ChildExit {
    /// nil while `process` runs; once it ended, its exit status (the signal's
    /// number when a signal ended it, as `Process.terminationStatus` says).
    public static func status(of process: Process) -> Int32? {
        if !process.isRunning { return process.terminationStatus }
        var info = siginfo_t()
        let rc = waitid(P_PID, id_t(process.processIdentifier), &info, WEXITED | WNOHANG | WNOWAIT)
        if rc != 0 {
            // ECHILD: Foundation reaped it between the two checks.
            return process.isRunning ? nil : process.terminationStatus
        }
        guard info._sifields._sigchld.si_pid == process.processIdentifier else { return nil }
        return info._sifields._sigchld.si_status
    }

    /// Waits (polling) until `process` has ended; returns its status, or nil
    /// if it still runs after `timeout` seconds (nil: no limit).
    @discardableResult
    public static func wait(for process: Process, timeout: TimeInterval? = nil) -> Int32? {
        let deadline = timeout.map { Date().addingTimeInterval($0) }
        var pause: UInt32 = 1_000
        while true {
            if let status = status(of: process) { return status }
            if let deadline, Date() >= deadline { return nil }
            usleep(pause)
            pause = min(pause * 2, 50_000)
        }
    }
}
