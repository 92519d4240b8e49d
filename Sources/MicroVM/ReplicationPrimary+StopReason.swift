import Understudy

extension ReplicationPrimary {
    /// Ends replication the way `reason` calls for: a host fault abandons it (no
    /// goodbye: the standby takes over, this host releases nothing more); a
    /// guest that exited, faulted by itself, or was stopped on request says
    /// goodbye (the standby does not take over: it would only do the same again).
    public func end(after reason: StopReason) {
        if reason.isHostFault {
            abandon(reason: "\(reason)")
        } else {
            stop(reason: "\(reason)")
        }
    }
}
