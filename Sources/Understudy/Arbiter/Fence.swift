import Foundation
import Logging
import Synchronization

/// A copy's hold on its guest's key in the arbiter (Architecture.md,
/// "Fencing"): renews the grant on its own thread, keeps an output buffer's
/// gate open only while the grant is certainly valid, and once the grant has
/// lapsed takes it back only if no other copy took over meanwhile; if one did,
/// the gate stays shut for good, the buffer is sealed, and `onSuperseded` is
/// told (the VMM stops the guest: this copy must never speak again).
public final class Fence: @unchecked Sendable {
    public let arbiter: any Arbiter
    private let grant: Mutex<ArbiterGrant>
    /// The grant's validity, as nanoseconds after `origin` (read by the gate on every release).
    private let validNanoseconds = Atomic<Int64>(0)
    private let origin = ContinuousClock.now
    private let superseded = Atomic<Bool>(false)
    private let stopping = Atomic<Bool>(false)
    private let running = Atomic<Bool>(false)
    private let wake = DispatchSemaphore(value: 0)
    private let stopped = DispatchSemaphore(value: 0)
    private let output = Mutex<OutputBuffer?>(nil)
    private let logger: Logger

    private init(arbiter: any Arbiter, grant: ArbiterGrant, logger: Logger) {
        self.arbiter = arbiter
        self.grant = Mutex(grant)
        self.logger = logger
        setValidity(grant.validUntil)
    }

    /// Takes the guest's key for `holder` (a primary, before its guest runs;
    /// a standby taking over, `after` the generation its replica was made under).
    /// Throws `.held` when another copy holds it.
    public static func acquire(_ arbiter: any Arbiter, holder: String, after generation: UInt64? = nil,
                               logger: Logger) throws(ArbiterError) -> Fence {
        let grant = try arbiter.acquire(holder: holder, after: generation)
        logger.notice("holding the guest's key", metadata: ["generation": "\(grant.generation)", "lease": "\(arbiter.leaseTime)"])
        return Fence(arbiter: arbiter, grant: grant, logger: logger)
    }

    /// A standby that lost its primary: tries to take the key, one generation
    /// above `generation` (the one its replica was made under), until it does
    /// (the primary's lease must expire first), saying what it waits for
    /// (again every 5 s while it waits).
    /// nil if `giveUp` says so first, or if the generation moved on (the
    /// primary ran on without this standby: its replica is stale). Never a
    /// takeover without the key.
    public static func awaitTakeover(_ arbiter: any Arbiter, holder: String, after generation: UInt64, logger: Logger,
                                     giveUp: () -> Bool) -> Fence? {
        var said = ""
        var saidAt = ContinuousClock.now
        while !giveUp() {
            do {
                return try acquire(arbiter, holder: holder, after: generation, logger: logger)
            } catch {
                let why: String
                switch error {
                case .held(let current): why = "the guest's key is held by \(current): waiting for its lease to expire before taking over"
                case .unreachable(let detail): why = "the arbiter cannot be reached (\(detail)): no takeover without it"
                case .superseded(let now):
                    logger.critical("no takeover: the guest went on without this standby (generation \(now), the replica is of generation \(generation)); its replica is stale")
                    return nil
                default: why = "\(error): no takeover"
                }
                if why != said || ContinuousClock.now - saidAt >= .seconds(5) {
                    logger.warning("\(why)")
                    (said, saidAt) = (why, ContinuousClock.now)
                }
                Thread.sleep(forTimeInterval: 0.1)
            }
        }
        return nil
    }

    /// Raises the generation before the primary runs on without its standby
    /// (`Arbiter.advance`). False, with the reason logged, when it could not:
    /// the primary must then keep holding its output.
    public func advance() -> Bool {
        let current = grant.withLock { $0 }
        do {
            let raised = try arbiter.advance(current)
            grant.withLock { $0 = raised }
            logger.notice("generation \(raised.generation): this copy runs on without its standby, whose replica (generation \(current.generation)) can no longer be taken over from")
            return true
        } catch {
            logger.error("cannot raise the guest's generation before running on without the standby: \(error); output stays held")
            return false
        }
    }

    /// What a copy without an arbiter says at start and in every status line.
    public static let unfencedWarning = "no fencing: a network partition can leave two active copies"

    /// Whether output may be released now: the grant is certainly valid.
    public var mayRelease: Bool {
        !superseded.load(ordering: .relaxed) && (ContinuousClock.now - origin).wholeNanoseconds < validNanoseconds.load(ordering: .relaxed)
    }

    /// The generation this copy holds.
    public var generation: UInt64 { grant.withLock { $0.generation } }

    /// Whether another copy took the guest over (this one is done).
    public var isSuperseded: Bool { superseded.load(ordering: .relaxed) }

    /// One phrase for status lines.
    public var status: String {
        let left = Duration.nanoseconds(validNanoseconds.load(ordering: .relaxed)) - (ContinuousClock.now - origin)
        if isSuperseded { return "fenced out: another copy holds a higher generation" }
        return left > .zero ? "fenced: generation \(generation), grant valid for \(left.milliseconds) ms"
                            : "fenced: generation \(generation), grant LAPSED, output held"
    }

    /// Gates `output` on this fence (when given), and starts renewing.
    /// `onSuperseded` is called once, from the renewing thread, if another copy took over.
    public func start(gating output: OutputBuffer?, onSuperseded: @escaping @Sendable (String) -> Void) {
        self.output.withLock { $0 = output }
        output?.releaseGate = { [self] in mayRelease }
        running.store(true, ordering: .relaxed)
        let thread = Thread { [self] in
            renewUntilStopped(onSuperseded: onSuperseded)
            stopped.signal()
        }
        thread.name = "understudy-fence"
        thread.start()
    }

    /// Stops renewing; with `release`, gives the key up (an orderly stop).
    public func stop(release: Bool) {
        guard !stopping.exchange(true, ordering: .relaxed) else { return }
        wake.signal()
        if running.load(ordering: .relaxed) { stopped.wait() }
        if release, !isSuperseded { arbiter.release(grant.withLock { $0 }) }
    }

    private func setValidity(_ instant: ContinuousClock.Instant) {
        validNanoseconds.store((instant - origin).wholeNanoseconds, ordering: .relaxed)
    }

    private func renewUntilStopped(onSuperseded: @Sendable (String) -> Void) {
        let interval = arbiter.leaseTime / 3
        var failing = false
        while !stopping.load(ordering: .relaxed) {
            _ = wake.wait(timeout: .now() + .milliseconds(failing ? 100 : interval.milliseconds))
            if stopping.load(ordering: .relaxed) { return }
            let current = grant.withLock { $0 }
            do {
                if mayRelease {
                    setValidity(try arbiter.renew(current))
                } else {
                    // Lapsed: back only with this generation, so only if nobody took over.
                    let renewed = try arbiter.reacquire(current)
                    grant.withLock { $0 = renewed }
                    setValidity(renewed.validUntil)
                    logger.notice("the guest's key is held again, with no takeover in between", metadata: ["generation": "\(renewed.generation)"])
                }
                if failing { logger.notice("the arbiter answers again: releasing output") }
                failing = false
                output.withLock { $0 }?.flush()
            } catch {
                if case .superseded(let generation) = error {
                    superseded.store(true, ordering: .relaxed)
                    output.withLock { $0 }?.seal()
                    let reason = "another copy took the guest over (generation \(generation), this copy held \(current.generation)): this copy stops for good and releases nothing more"
                    logger.critical("\(reason)")
                    onSuperseded(reason)
                    return
                }
                if !failing {
                    logger.error("cannot renew the guest's key: \(error); output is held from the end of the grant on", metadata: ["generation": "\(current.generation)"])
                }
                failing = true
            }
        }
    }
}
