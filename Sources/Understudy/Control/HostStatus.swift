import Foundation

/// What a running `understudy-primary` or `understudy-standby` reports about
/// itself (`understudy-ctl status`, JSON or text). Durations are whole
/// milliseconds; figures that do not apply are left out of the JSON.
public struct HostStatus: Codable, Sendable, Equatable {
    public enum Role: String, Codable, Sendable {
        /// Runs the guest (protected or not).
        case primary
        /// Holds a replica of a primary's guest.
        case standby
    }

    public var role: Role
    /// A primary: `ReplicationPrimary.Status` (connecting, synchronizing,
    /// protected, unprotected, failed, stopped, handed-over); a standby:
    /// `StandbyReceiver.Progress.Phase` (waiting, synchronizing, protecting, resyncing).
    public var state: String
    public var pid: Int32
    /// Seconds since the process started.
    public var uptimeSeconds: Int
    /// The other side: the primary's standby address, or the connected primary.
    public var peer: String?
    /// The fencing generation this copy holds or follows (nil: no arbiter).
    public var generation: UInt64?
    /// The fencing state in words (or the warning that there is none).
    public var fencing: String
    /// The newest checkpoint the standby committed (as acknowledged to the
    /// primary, or as committed on the standby), and how long ago.
    public var lastCommit: UInt64?
    public var lastCommitAgeMilliseconds: Int?
    /// A primary: how long the oldest held output has waited (what output
    /// commit costs the world now); a standby: how long since the last commit.
    public var lagMilliseconds: Int?
    /// Over the last few seconds (a primary only).
    public var checkpointsPerSecond: Double?
    public var bytesPerSecond: Double?
    public var pauseP50Microseconds: Int?
    public var pauseP99Microseconds: Int?
    /// Output held for commit (a primary only).
    public var heldOutputBytes: Int?
    /// Replication sessions so far (a new standby, a resync).
    public var sessions: Int
    /// Where this host serves as standby after a switchover (a primary; nil: switchover not possible).
    public var switchoverListen: String?

    public init(role: Role, state: String, pid: Int32 = getpid(), uptimeSeconds: Int, peer: String? = nil, generation: UInt64? = nil,
                fencing: String, sessions: Int) {
        self.role = role
        self.state = state
        self.pid = pid
        self.uptimeSeconds = uptimeSeconds
        self.peer = peer
        self.generation = generation
        self.fencing = fencing
        self.sessions = sessions
    }

    /// The status for a person, one fact per line.
    public var text: String {
        var lines = ["\(role.rawValue) (pid \(pid), up \(uptimeSeconds) s): \(state.uppercased())"]
        if let peer { lines.append("  \(role == .primary ? "standby" : "primary"): \(peer)") }
        lines.append("  fencing: \(generation.map { "generation \($0); " } ?? "")\(fencing)")
        if let lastCommit {
            lines.append("  last commit: checkpoint \(lastCommit)\(lastCommitAgeMilliseconds.map { ", \($0) ms ago" } ?? "")")
        } else {
            lines.append("  last commit: none")
        }
        if let lagMilliseconds { lines.append("  lag: \(lagMilliseconds) ms\(role == .primary ? " (oldest held output)" : " (since the last commit)")") }
        if let checkpointsPerSecond {
            var rate = String(format: "  rates: %.0f checkpoints/s", checkpointsPerSecond)
            if let bytesPerSecond { rate += String(format: ", %.1f MB/s", bytesPerSecond / 1e6) }
            if let p50 = pauseP50Microseconds, let p99 = pauseP99Microseconds { rate += ", pause p50 \(p50) µs p99 \(p99) µs" }
            lines.append(rate)
        }
        if let heldOutputBytes { lines.append("  held output: \(heldOutputBytes) bytes") }
        lines.append("  sessions: \(sessions)")
        if role == .primary {
            lines.append("  switchover: \(switchoverListen.map { "possible (this host then listens as standby on \($0))" } ?? "not possible here (no standby protects the guest, or no --listen)")")
        }
        return lines.joined(separator: "\n")
    }
}
