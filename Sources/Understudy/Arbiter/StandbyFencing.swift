import Logging
import Synchronization

/// A standby's side of fencing: the arbiter, this host's name there, and the
/// generation its replica is made under (read at each session's handshake).
/// A takeover needs the key one generation above that one: if the primary ran
/// on without this standby it raised the generation first, and the replica,
/// which the world has moved past, is never taken over from.
public final class StandbyFencing: Sendable {
    public let arbiter: any Arbiter
    public let holder: String
    private let sessionGeneration = Mutex<UInt64?>(nil)

    public init(arbiter: any Arbiter, holder: String) {
        self.arbiter = arbiter
        self.holder = holder
    }

    /// At a handshake: reads the generation the new session runs under. Throws
    /// when the arbiter cannot be read: the standby then refuses the session
    /// (it could not take over, so it must not pretend to protect).
    public func observeSession() throws(ArbiterError) {
        let (_, generation) = try arbiter.holder()
        sessionGeneration.withLock { $0 = generation }
    }

    /// The generation the replica was made under, once a session was observed.
    public var generation: UInt64? { sessionGeneration.withLock { $0 } }

    /// After the primary was lost: waits for the key (`Fence.awaitTakeover`);
    /// nil means no takeover.
    public func awaitTakeover(logger: Logger, giveUp: () -> Bool) -> Fence? {
        guard let generation else {
            logger.critical("no takeover: no session's generation was read from the arbiter")
            return nil
        }
        return Fence.awaitTakeover(arbiter, holder: holder, after: generation, logger: logger, giveUp: giveUp)
    }
}
