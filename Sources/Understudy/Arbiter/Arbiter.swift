/// Who may release a guest's output: the one copy that holds the guest's key in
/// a coordination service (etcd: `UnderstudyEtcd.EtcdArbiter`), under a lease
/// it must keep renewing, with a generation number that only grows (the
/// fencing token). Architecture.md, "Fencing", has the whole design.
///
/// The rules a caller keeps, and why two copies never both release output:
/// - a copy releases output only before its grant's `validUntil`, a local
///   monotonic instant computed from *before* the renewal request was sent, so
///   it is never later than the service's own expiry of the lease;
/// - a copy acquires the key only when nobody holds it (the previous holder's
///   lease expired or was revoked), and every acquisition raises the
///   generation; a copy that lost its lease may take the key back only with
///   its own generation, so only if nobody acquired it in between;
/// - a standby takes over only with the generation its replica was made under
///   (`acquire(holder:after:)`), and a primary that runs on without its
///   standby first raises the generation (`advance`): a replica the world has
///   moved past is never taken over from.
///
/// Calls block (at most the arbiter's request timeout per service member
/// tried); they are made from the caller's own threads, never the vCPUs'.
public protocol Arbiter: Sendable {
    /// The lease's time to live.
    var leaseTime: Duration { get }

    /// Takes the guest's key for `holder` if nobody holds it, one generation
    /// above the highest granted so far. Throws `.held` when someone does.
    /// With `after`, only if the highest generation is still that one (a
    /// standby whose replica was made under it); `.superseded` otherwise.
    func acquire(holder: String, after generation: UInt64?) throws(ArbiterError) -> ArbiterGrant

    /// Raises the generation of a key this copy holds, keeping its lease: a
    /// primary about to run on without its standby makes that standby's
    /// replica (made under the old generation) no takeover point. Throws
    /// `.lost` or `.superseded` when the key is no longer this grant's.
    func advance(_ grant: ArbiterGrant) throws(ArbiterError) -> ArbiterGrant

    /// Takes the key back after `grant`'s lease was lost, with the same
    /// generation: only if nobody holds it and nobody acquired it since.
    /// Throws `.superseded` when someone did (this copy must never speak again).
    func reacquire(_ grant: ArbiterGrant) throws(ArbiterError) -> ArbiterGrant

    /// Renews `grant`'s lease. Returns the new instant until which it is
    /// certainly valid; throws `.lost` when the lease is gone.
    func renew(_ grant: ArbiterGrant) throws(ArbiterError) -> ContinuousClock.Instant

    /// Gives the key up (an orderly stop): the other copy can acquire it at once.
    func release(_ grant: ArbiterGrant)

    /// The key's holder now, nil when nobody holds it; and the highest generation granted.
    func holder() throws(ArbiterError) -> (holder: ArbiterHolder?, generation: UInt64)
}

extension Arbiter {
    /// `acquire(holder:after:)` whatever the generation.
    public func acquire(holder: String) throws(ArbiterError) -> ArbiterGrant { try acquire(holder: holder, after: nil) }
}

/// A holder of a guest's key.
public struct ArbiterHolder: Sendable, Equatable, CustomStringConvertible {
    public var name: String
    public var generation: UInt64

    public init(name: String, generation: UInt64) {
        self.name = name
        self.generation = generation
    }

    public var description: String { "\(name) (generation \(generation))" }
}

/// The key, held: by whom, with which generation and lease, and until when
/// it is certainly valid (the local clock).
public struct ArbiterGrant: Sendable, Equatable {
    public var holder: ArbiterHolder
    /// The coordination service's lease id.
    public var lease: Int64
    public var validUntil: ContinuousClock.Instant

    public init(holder: ArbiterHolder, lease: Int64, validUntil: ContinuousClock.Instant) {
        self.holder = holder
        self.lease = lease
        self.validUntil = validUntil
    }

    public var generation: UInt64 { holder.generation }
}

/// Why an arbiter call failed.
public enum ArbiterError: Error, Equatable, Sendable, CustomStringConvertible {
    /// No member of the service answered (each member's failure, in order).
    case unreachable(String)
    /// Someone else holds the key.
    case held(by: ArbiterHolder)
    /// Someone acquired the key after this grant: a higher generation exists.
    case superseded(by: UInt64)
    /// The grant's lease is gone (expired or revoked).
    case lost(String)
    /// The service answered something this side cannot read.
    case malformed(String)
    /// The arbiter was configured wrong (its address, the guest's name, the lease).
    case invalid(String)

    public var description: String {
        switch self {
        case .unreachable(let why): "the arbiter is unreachable: \(why)"
        case .held(let holder): "the guest's key is held by \(holder)"
        case .superseded(let generation): "another copy took the guest over (generation \(generation))"
        case .lost(let why): "the lease is lost: \(why)"
        case .malformed(let why): "the arbiter's answer is malformed: \(why)"
        case .invalid(let why): why
        }
    }
}
