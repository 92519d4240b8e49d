extension HostStatus {
    /// A primary's status (its fence, when it has one, gives the generation).
    public init(primary: ReplicationPrimary, uptime: Duration, switchoverListen: SocketAddress?) {
        let fence = primary.configuration.fence
        self.init(role: .primary, state: primary.status.rawValue, uptimeSeconds: Int(uptime.components.seconds),
                  peer: "\(primary.configuration.standby)", generation: fence?.generation,
                  fencing: fence?.status ?? Fence.unfencedWarning, sessions: primary.sessions)
        lastCommit = primary.acknowledged
        lastCommitAgeMilliseconds = primary.lastAcknowledgement.map { (ContinuousClock.now - $0).milliseconds }
        lagMilliseconds = primary.output.oldestAge.milliseconds
        heldOutputBytes = primary.output.bytesHeld
        if let rates = primary.rates {
            checkpointsPerSecond = rates.checkpointsPerSecond
            bytesPerSecond = rates.bytesPerSecond
            pauseP50Microseconds = rates.pauseP50Microseconds
            pauseP99Microseconds = rates.pauseP99Microseconds
        }
        self.switchoverListen = switchoverListen?.description
    }

    /// A guest running with no standby at all (`--unprotected`, or taken
    /// over without `--reprotect`).
    public init(unprotectedWith fence: Fence?, output: OutputBuffer, uptime: Duration) {
        self.init(role: .primary, state: ReplicationPrimary.Status.unprotected.rawValue, uptimeSeconds: Int(uptime.components.seconds),
                  generation: fence?.generation, fencing: fence?.status ?? Fence.unfencedWarning, sessions: 0)
        heldOutputBytes = output.bytesHeld
    }

    /// A standby's status.
    public init(standby: StandbyReceiver, fencing: StandbyFencing?, uptime: Duration) {
        let progress = standby.progress
        self.init(role: .standby, state: progress.phase.rawValue, uptimeSeconds: Int(uptime.components.seconds),
                  peer: progress.primary, generation: fencing?.generation,
                  fencing: fencing == nil ? Fence.unfencedWarning : "takes over only with the guest's key", sessions: progress.sessions)
        lastCommit = progress.committed
        let age = progress.committedAt.map { (ContinuousClock.now - $0).milliseconds }
        lastCommitAgeMilliseconds = age
        lagMilliseconds = progress.phase == .protecting ? age : nil
    }
}
