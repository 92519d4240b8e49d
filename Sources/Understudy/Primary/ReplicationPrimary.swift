import Foundation
import Logging
import Synchronization

/// How the primary replicates.
public struct PrimaryConfiguration: Sendable {
    public var standby: SocketAddress
    public var engine: EngineConfiguration
    /// No frame from the standby for this long and it is declared lost.
    public var heartbeatTimeout: Duration
    /// Between attempts to reach a standby.
    public var reconnectInterval: Duration
    /// Between status lines in the log (nil: none).
    public var statusInterval: Duration?
    /// What the standby must be able to give the guest, and the guest's MAC.
    public var devices: Hello.Devices
    public var mac: [UInt8]
    /// The guest's block writes, when it has a disk: copied whole to each new
    /// standby, then sent with every checkpoint.
    public var disk: DiskWriteLog?
    /// The budget a VMM gives the guest's `DiskWriteLog` (`DiskWriteLog.epochBudget`):
    /// what one epoch may write before it ends early, and, while the link is
    /// behind, the point at which the guest is held until the link catches up.
    public var diskEpochBudget = DiskWriteLog.defaultEpochBudget
    /// What a standby needs to run the guest (the VMM fills it in; the hello carries it).
    public var platform = Hello.Platform()
    /// The guest's hold on its key in the arbiter, when one is configured
    /// (its status goes into every status line); nil: no fencing, and every
    /// status line says what that risks.
    public var fence: Fence?
    /// How long output is held at the start while the standby is first
    /// tried; after that the guest runs on unprotected (output released) until
    /// a standby is reached. Zero for a guest that already ran unprotected,
    /// such as one that took over and is to be protected again.
    public var initialHold: Duration = .seconds(5)

    public init(standby: SocketAddress, engine: EngineConfiguration = EngineConfiguration(),
                heartbeatTimeout: Duration = StandbyConfiguration.defaultHeartbeatTimeout,
                reconnectInterval: Duration = .seconds(1), devices: Hello.Devices = [], mac: [UInt8] = [0, 0, 0, 0, 0, 0],
                disk: DiskWriteLog? = nil) {
        self.disk = disk
        self.standby = standby
        self.engine = engine
        self.heartbeatTimeout = heartbeatTimeout
        self.reconnectInterval = reconnectInterval
        statusInterval = .seconds(10)
        self.devices = devices
        self.mac = mac
    }
}

/// The primary's side: connects to the standby, streams checkpoints from a
/// `CheckpointEngine`, releases held output as acknowledgements arrive, and
/// watches the standby through heartbeats.
///
/// Without a standby (never reached, lost, or refusing) the guest runs on
/// unprotected: held output is released, later output passes straight through,
/// the log says so at `critical` level, and `status` is `.unprotected`. The
/// primary keeps trying to reach a standby; a new one gets a full image first,
/// then checkpoints, and protection resumes.
public final class ReplicationPrimary: @unchecked Sendable {
    public enum Status: String, Sendable {
        /// Trying to reach the standby for the first time; output is held.
        case connecting
        /// The standby is receiving the full image; output is held (a guest
        /// that ran unprotected until now keeps releasing it until just before
        /// checkpoint 0, after the disk and RAM copies).
        case synchronizing
        /// The standby has committed a checkpoint; output is released on acknowledgement.
        case protected
        /// No standby: output passes through, a failure of this host loses the guest.
        case unprotected
        /// This host can no longer run or checkpoint the guest (`abandon(reason:)`):
        /// replication ended without goodbye, so the standby takes over from its
        /// last committed checkpoint; no output is ever released here again.
        case failed
        /// Stopped.
        case stopped
        /// Handed to the standby in a planned switchover (`handOver(standby:)`):
        /// the standby runs the guest now, which never runs here again.
        case handedOver = "handed-over"
    }

    /// What a planned switchover did.
    public struct HandoverReport: Sendable {
        /// The last checkpoint: taken with the guest paused, acknowledged, and
        /// the state the standby resumes.
        public var checkpoint: UInt64
        /// From the request to the standby's acceptance (the guest ran on
        /// until the end of its epoch, then stayed paused): what the world
        /// waits, plus the standby's start of the guest.
        public var pause: Duration
        /// Whether the standby answered. Without an answer it takes over all
        /// the same (the connection closes), and the guest stays paused here.
        public var accepted: Bool
    }

    /// Why a planned switchover did not happen; the guest runs on here.
    public enum HandoverError: Error, Sendable, Equatable, CustomStringConvertible {
        /// Only a protected guest can be handed over.
        case notProtected(Status)
        /// Another switchover is under way.
        case inProgress
        /// The standby did not take the final checkpoint (lost, slow, or it
        /// refused): the guest was resumed here.
        case abandoned(String)

        public var description: String {
            switch self {
            case .notProtected(let status): "the guest is \(status.rawValue), not protected: no standby to hand it to"
            case .inProgress: "a switchover is already under way"
            case .abandoned(let why): "switchover abandoned, the guest runs on here: \(why)"
            }
        }
    }

    /// How long an orderly stop waits, at most, for a live standby to
    /// acknowledge the last checkpoint sent before it says goodbye.
    public static let orderlyStopWait: Duration = .seconds(10)

    public let machine: any ReplicatedMachine
    public let output: OutputBuffer
    public let configuration: PrimaryConfiguration
    /// This guest run's id, the same in each of its sessions (`Hello.guest`).
    public let guest = Hello.newSession()
    private let logger: Logger
    private let state = Mutex<(status: Status, engine: CheckpointEngine?, sessions: Int, acked: UInt64?)>((.connecting, nil, 0, nil))
    private let stopping = Atomic<Bool>(false)
    /// Set by `abandon(reason:)`: the session ends without goodbye and output is sealed.
    private let abandoned = Mutex<String?>(nil)
    private let wake = DispatchSemaphore(value: 0)
    /// Entered when the supervisor starts, left when it ends: every `stop()` waits on it.
    private let running = DispatchGroup()
    private let started = Mutex<Bool>(false)
    /// Totals of finished sessions' engines, and the newest finished one's recent epochs.
    private let past = Mutex<(totals: EpochTotals, recent: [EpochStatistics])>((EpochTotals(), []))
    private let wire = Mutex<(bytes: Int, checkpoints: Int)>((0, 0))
    /// A switchover asked for and not yet done or refused.
    private let handoverRequest = Mutex<HandoverRequest?>(nil)
    private let handedOver = Atomic<Bool>(false)
    /// When the newest acknowledgement arrived.
    private let lastAck = Mutex<ContinuousClock.Instant?>(nil)

    private final class HandoverRequest: @unchecked Sendable {
        let standby: SocketAddress?
        private let done = DispatchSemaphore(value: 0)
        private let outcome = Mutex<Result<HandoverReport, HandoverError>?>(nil)
        init(standby: SocketAddress?) { self.standby = standby }
        func finish(_ result: Result<HandoverReport, HandoverError>) {
            if outcome.withLock({ value in defer { if value == nil { value = result } }; return value == nil }) { done.signal() }
        }
        func wait() -> Result<HandoverReport, HandoverError> {
            done.wait()
            return outcome.withLock { $0 } ?? .failure(.abandoned("no outcome"))
        }
    }

    /// Called once, from a replication thread, when this host cannot go on
    /// checkpointing the guest (a capture failed while the guest runs): the VMM
    /// should stop its guest. Replication has already been abandoned
    /// (`abandon(reason:)`): the standby takes over, and nothing the guest does
    /// here reaches the world any more, whether or not the VMM stops it.
    public var hostFaultHandler: (@Sendable (String) -> Void)?

    public init(machine: any ReplicatedMachine, output: OutputBuffer, configuration: PrimaryConfiguration, logger: Logger) {
        self.machine = machine
        self.output = output
        self.configuration = configuration
        self.logger = logger
    }

    public var status: Status { state.withLock { $0.status } }
    /// Replication sessions started so far (1 for the first standby, more after reconnects).
    public var sessions: Int { state.withLock { $0.sessions } }
    /// The newest checkpoint the current standby acknowledged.
    public var acknowledged: UInt64? { state.withLock { $0.acked } }
    /// Per-epoch figures of the current session's most recent epochs (of the
    /// last session's, between sessions), oldest first; bounded.
    public var statistics: [EpochStatistics] {
        state.withLock { $0.engine }?.statistics ?? past.withLock { $0.recent }
    }
    /// Totals over every epoch of every session so far (constant size).
    public var totals: EpochTotals {
        past.withLock { $0.totals } + (state.withLock { $0.engine }?.totals ?? EpochTotals())
    }
    /// Bytes and checkpoints sent on the wire, all sessions.
    public var wireTotals: (bytes: Int, checkpoints: Int) { wire.withLock { $0 } }
    /// Checkpoints and bytes per second and pause quantiles over the last
    /// few seconds (nil until replication has run about a second).
    public var rates: ReplicationRates? { reporter.withLock { $0 }?.rates }
    private let reporter = Mutex<StatusReport?>(nil)
    /// When the current standby last acknowledged a checkpoint.
    public var lastAcknowledgement: ContinuousClock.Instant? { lastAck.withLock { $0 } }

    /// A planned switchover: the guest runs to the end of its epoch, one last
    /// checkpoint is taken with it paused, and once the standby has
    /// acknowledged every checkpoint (so all output is released) the standby
    /// is told to take over, with `standby` as where this host now waits as
    /// its standby (nil: nowhere). From the moment the handover is sent the
    /// guest never runs here again, whether or not the standby answers: an
    /// unanswered handover ends the connection, which makes the standby take
    /// over anyway (never two copies). With fencing, the guest's key is
    /// released first, so the standby wins it at once.
    ///
    /// Returns once the standby accepted (status `.handedOver`); the VMM then
    /// stops its machine (`stop()` says no goodbye). Throws, with the guest
    /// running on here, when it is not protected or the standby did not take
    /// the last checkpoint (the session then starts anew).
    public func handOver(standby: SocketAddress?) throws(HandoverError) -> HandoverReport {
        guard status == .protected else { throw .notProtected(status) }
        let request = HandoverRequest(standby: standby)
        guard handoverRequest.withLock({ value in defer { if value == nil { value = request } }; return value == nil }) else { throw .inProgress }
        defer { handoverRequest.withLock { $0 = nil } }
        wake.signal()
        return try request.wait().get()
    }

    /// Ends a pending switchover request that no session will carry out.
    private func refusePendingHandover(_ why: String) {
        handoverRequest.withLock { $0 }?.finish(.failure(.abandoned(why)))
    }

    /// Starts the supervisor thread; the machine must be running.
    public func start() throws(EngineError) {
        try configuration.engine.validate()
        guard started.withLock({ value in defer { value = true }; return !value }) else { throw .alreadyRunning }
        running.enter()
        let thread = Thread { [self] in supervise(); running.leave() }
        thread.name = "understudy-primary"
        thread.start()
    }

    /// Stops replicating in order: the last captured checkpoints are sent and,
    /// for a bounded time, their acknowledgements awaited; the standby is told
    /// goodbye (so it does not take over) and remaining output is released.
    /// Any number of callers may stop at once (a signal and the guest's exit
    /// together): each returns once replication has ended; the first reason given
    /// is the one the standby hears.
    public func stop(reason: String = "the primary is stopping") {
        goodbyeReason.withLock { if $0.isEmpty { $0 = reason } }
        stopping.store(true, ordering: .relaxed)
        wake.signal()
        running.wait()
    }

    /// This host can no longer run the guest (a host fault: KVM_RUN or a capture
    /// failed, VM entry failed): ends replication *without* goodbye, so the
    /// standby sees the connection close and takes over from its last committed
    /// checkpoint. Output of unacknowledged epochs is discarded (the world never
    /// saw it; the standby resumes from before it) and the output buffer is
    /// sealed: nothing is released from this host again. A guest that merely
    /// exits, or an operator's stop, is `stop(reason:)` instead. Returns once
    /// replication has ended.
    public func abandon(reason: String) {
        abandoned.withLock { if $0 == nil { $0 = reason } }
        output.seal()
        stopping.store(true, ordering: .relaxed)
        wake.signal()
        running.wait()
    }

    private let goodbyeReason = Mutex<String>("")

    private func setStatus(_ status: Status) {
        let old = state.withLock { value in
            defer { value.status = status }
            return value.status
        }
        guard old != status else { return }
        switch status {
        case .unprotected:
            logger.critical("RUNNING UNPROTECTED: no standby holds this guest; a failure of this host loses it",
                            metadata: ["standby": "\(configuration.standby)"])
        case .protected:
            logger.notice("protected by the standby", metadata: ["standby": "\(configuration.standby)"])
        default:
            logger.info("replication \(status.rawValue)")
        }
    }

    private func supervise() {
        let report = StatusReport(primary: self, interval: configuration.statusInterval, logger: logger)
        reporter.withLock { $0 = report }
        report.start()
        defer { report.stop() }
        // Output is held while first trying to reach a standby, and after a
        // session ended for a resync while the standby is reached again; after
        // that the guest runs on unprotected, and the log says so.
        var holdUntil = ContinuousClock.now + configuration.initialHold
        var resyncing = false
        while !stopping.load(ordering: .relaxed) {
            refusePendingHandover("the standby's session ended")
            let link: FrameConnection
            let resume: Bool
            do {
                (link, resume) = try connect(askingToResume: resyncing)
            } catch let error as WireError {
                let holding = ContinuousClock.now < holdUntil
                if case .refused = error {
                    logger.error("the standby refused this guest: \(error)")
                } else if !holding {
                    logger.debug("standby unreachable: \(error)")
                }
                if !holding {
                    if resyncing { configuration.disk?.stopRecording() }
                    resyncing = false
                    runOnWithoutStandby()
                }
                let retry = holding && resyncing ? Self.resyncRetryInterval : configuration.reconnectInterval
                _ = wake.wait(timeout: .now() + .milliseconds(retry.milliseconds))
                continue
            } catch {
                logger.error("standby: \(error)")
                continue
            }
            switch runSession(link, resume: resume && resyncing) {
            case .resync:
                // The standby holds its committed replica: straight into a new
                // session, output still held, for as long as a reconnect may take.
                resyncing = true
                holdUntil = ContinuousClock.now + max(configuration.heartbeatTimeout * 5, .seconds(1))
            case .ended:
                resyncing = false
                holdUntil = ContinuousClock.now
                if !stopping.load(ordering: .relaxed) {
                    _ = wake.wait(timeout: .now() + .milliseconds(configuration.reconnectInterval.milliseconds))
                }
            }
        }
        refusePendingHandover("replication is stopping")
        if handedOver.load(ordering: .relaxed) {
            setStatus(.handedOver)
        } else if let reason = abandoned.withLock({ $0 }) {
            logger.critical("replication abandoned: this host can no longer run the guest; the standby takes over from its last committed checkpoint and this host releases no output again",
                            metadata: ["reason": "\(reason)"])
            setStatus(.failed)
        } else {
            output.passThrough()
            setStatus(.stopped)
        }
    }

    /// No standby: releases the held output and lets new output through. With
    /// fencing, only once the generation was raised, so that the lost
    /// standby's replica (which the world is about to move past) can never be
    /// taken over from; until then output stays held (tried again at each
    /// reconnect attempt).
    private func runOnWithoutStandby() {
        if status != .unprotected, let fence = configuration.fence, !fence.advance() { return }
        output.passThrough()
        setStatus(.unprotected)
    }

    /// Between reconnect attempts after a resync (the standby is expected back at once).
    static let resyncRetryInterval: Duration = .milliseconds(50)

    /// Connects and shakes hands. `askingToResume`: every output since the
    /// last session is still held (the session ended for a resync), so the
    /// standby's committed replica is still a valid takeover point; without it
    /// the standby forgets its replica. Returns the link, and whether the
    /// standby resumes its intact replica of this guest (the welcome's resume flag).
    private func connect(askingToResume: Bool) throws -> (FrameConnection, Bool) {
        let connection = try TCPConnection.connect(to: configuration.standby, timeout: .seconds(1))
        let link = FrameConnection(connection)
        let hello = Hello(session: Hello.newSession(), guest: guest, memorySize: UInt64(machine.guestMemorySize), devices: configuration.devices,
                          epochMicroseconds: UInt32(clamping: configuration.engine.epoch.wholeMicroseconds), mac: configuration.mac,
                          diskSize: configuration.disk?.size ?? 0, flags: askingToResume ? .resume : [], platform: configuration.platform)
        try link.send(Frame(.hello, payload: hello.payload))
        let reply = try link.receive(timeout: .seconds(5))
        let resume: Bool
        switch reply.kind {
        case .welcome:
            let echoed = try Hello(payload: reply.payload)
            guard echoed.session == hello.session, echoed.guest == hello.guest else { throw WireError.unexpected("welcome for another session") }
            resume = echoed.flags.contains(.resume)
        case .refuse:
            throw WireError.refused(String(decoding: reply.payload.prefix(1024), as: UTF8.self))
        default:
            throw WireError.unexpected("\(reply.kind) in answer to hello")
        }
        logger.info("standby accepted the session", metadata: ["standby": "\(configuration.standby)", "session": "\(hello.sessionText)",
                                                               "resume": "\(resume)"])
        return (link, resume)
    }

    /// The switchover's steps inside a session (`handOver(standby:)`). On
    /// failure the guest runs again here and the caller ends the session.
    private func handOver(_ request: HandoverRequest, engine: CheckpointEngine, link: FrameConnection, sentThrough: () -> UInt64?,
                          lost: () -> String?, accepted: () -> Bool) -> Result<HandoverReport, HandoverError> {
        let clock = ContinuousClock()
        let began = clock.now
        logger.notice("switchover: taking the last checkpoint with the guest paused", metadata: ["to": "\(configuration.standby)"])
        // From now the standby releases the output: the world's answers to it
        // then go to the standby, not to this host, which stops listening.
        output.suspendReleases()
        do {
            try engine.stopLeavingGuestPaused()
        } catch {
            output.resumeReleases()
            return .failure(.abandoned("the last checkpoint failed: \(error)"))
        }
        let resume = { [machine, output] in
            try? machine.resumeAfterCheckpoint()
            try? machine.completeCheckpoint()
            output.resumeReleases()
        }
        // Every checkpoint acknowledged (so its output is out) before the standby is told.
        guard let last = sentThrough() else {
            resume()
            return .failure(.abandoned("no checkpoint reached the standby"))
        }
        let deadline = clock.now + max(configuration.heartbeatTimeout * 5, .seconds(2))
        while state.withLock({ $0.acked }).map({ $0 < last }) ?? true, lost() == nil, clock.now < deadline {
            Thread.sleep(forTimeInterval: 0.0005)
        }
        guard state.withLock({ $0.acked }) == last, lost() == nil else {
            resume()
            return .failure(.abandoned(lost() ?? "the standby did not acknowledge the last checkpoint within \((deadline - began).milliseconds) ms"))
        }
        // From here the guest never runs here again. Output held here now
        // (a lapsed grant holds it) is the standby's to release.
        output.seal()
        handedOver.store(true, ordering: .relaxed)
        stopping.store(true, ordering: .relaxed)
        configuration.fence?.stop(release: true)
        let handover = Handover(releasedThrough: output.releasedThrough, standby: request.standby)
        do {
            try link.send(Frame(.handover, sequence: last, payload: handover.payload))
        } catch {
            logger.warning("switchover: sending the handover failed (\(error)); the standby takes over when it sees the connection end")
        }
        let answerBy = clock.now + max(configuration.heartbeatTimeout * 5, .seconds(2))
        while !accepted(), lost() == nil, clock.now < answerBy { _ = wake.wait(timeout: .now() + .milliseconds(5)) }
        let report = HandoverReport(checkpoint: last, pause: clock.now - began, accepted: accepted())
        if report.accepted {
            logger.notice("switchover: the standby took the guest over", metadata: [
                "checkpoint": "\(last)", "time": "\(report.pause.milliseconds) ms",
                "standby-here": "\(request.standby.map(String.init(describing:)) ?? "none")"])
        } else {
            logger.critical("switchover: the standby did not confirm the handover; it takes over when the connection ends, and the guest stays stopped here",
                            metadata: ["checkpoint": "\(last)"])
        }
        return .success(report)
    }

    /// The whole disk image to a new standby while the guest runs (writes made
    /// meanwhile are tracked and resent; the rest rides in checkpoint 0).
    private func copyDisk(_ disk: DiskWriteLog, over link: FrameConnection) throws {
        disk.beginSync()
        let started = ContinuousClock.now
        var tenth = -1
        let sent = try DiskSync.copy(log: disk, send: { offset, bytes in
            var payload: [UInt8] = []
            payload.reserveCapacity(8 + bytes.count)
            payload.appendLittleEndian(offset)
            payload += bytes
            try link.send(Frame(.diskData, payload: payload))
        }, progress: { done, total in
            let now = total == 0 ? 10 : done * 10 / total
            if now > tenth {
                tenth = now
                logger.info("copying the disk to the standby: \(now * 10)% of \(total >> 20) MiB allocated")
            }
        }, pauseGuest: { [machine, logger] in
            logger.notice("the guest writes its disk faster than the link takes it: holding it while the rest of the disk goes")
            try machine.pauseForCheckpoint()
            return {
                try machine.resumeAfterCheckpoint()
                try machine.completeCheckpoint()
            }
        })
        logger.info("disk copied", metadata: ["bytes": "\(sent)", "time": "\(ContinuousClock.now - started)"])
    }

    /// How a session ended.
    private enum SessionEnd {
        /// For a resync: the standby keeps its replica, a new session starts at once.
        case resync
        /// The standby was lost, or replication stopped.
        case ended
    }

    /// One standby, from full image to loss or stop. With `resume`, the
    /// standby kept its replica of this guest (a resync): no disk copy.
    private func runSession(_ link: FrameConnection, resume: Bool) -> SessionEnd {
        let lost = Mutex<String?>(nil)
        let resyncReason = Mutex<String?>(nil)
        let sentThrough = Mutex<UInt64?>(nil)
        let sendFailed = Atomic<Bool>(false)
        let handoverAccepted = Atomic<Bool>(false)
        let markLost: @Sendable (String) -> Void = { [wake] reason in
            let first = lost.withLock { value in
                defer { if value == nil { value = reason } }
                return value == nil
            }
            if first { link.shutdown(); wake.signal() }
        }
        // What the standby sent was wrong (not its absence): the session ends for
        // a resync; the standby is told, unless it asked first. Called by the
        // reader thread only.
        let heartbeatTimeout = configuration.heartbeatTimeout
        let markResync: @Sendable (String, Bool) -> Void = { reason, tell in
            let first = resyncReason.withLock { value in
                defer { if value == nil { value = reason } }
                return value == nil
            }
            if first, tell { link.finish(with: Frame(.resync, payload: Array(reason.utf8.prefix(1024))), timeout: heartbeatTimeout) }
            markLost("resync: \(reason)")
        }
        // Output already going straight out (the guest ran without a standby:
        // it took over, or lost its standby) keeps doing so while a new
        // standby receives the disk and the pre-copy of RAM, and is held from
        // just before checkpoint 0 is captured: no standby holds the guest
        // until that commits anyway, and holding would stall the world for the
        // whole copy (after a planned switchover, most of its pause). What
        // went out meanwhile is in checkpoint 0's state.
        let holdsFromTheStart = output.isProtected || resume
        if holdsFromTheStart { output.protect() }
        let engine = CheckpointEngine(machine: machine, configuration: configuration.engine)
        engine.outputBuffer = output
        let machine = self.machine
        engine.failureHandler = { [self, wake] error in
            // The guest stopped (exited): the run is ending, and whoever stopped it
            // calls stop() (goodbye) or abandon(). Anything else is a fault of this
            // host: going on unprotected would give two copies once the standby,
            // seeing the link close, takes over. Abandon instead, and ask the VMM
            // to stop the guest.
            if machine.hasStopped {
                wake.signal()
            } else {
                let reason = "checkpointing failed: \(error)"
                abandoned.withLock { if $0 == nil { $0 = reason } }
                output.seal()
                stopping.store(true, ordering: .relaxed)
                markLost(reason)
                hostFaultHandler?(reason)
            }
        }
        let log = logger
        engine.sink = { [self] checkpoint in
            guard lost.withLock({ $0 }) == nil, resyncReason.withLock({ $0 }) == nil, !sendFailed.load(ordering: .relaxed) else { return }
            // A state no standby accepts would be refused again at every
            // session (a VMM's bug): say so, and tell the standby goodbye (it
            // must not take over a guest that runs on here), then run on
            // without it.
            guard checkpoint.state.count <= CheckpointBegin.maximumStateBytes else {
                let why = "this guest cannot be protected: its machine state is \(checkpoint.state.count) bytes, over the \(CheckpointBegin.maximumStateBytes) a standby accepts"
                logger.critical("\(why)")
                try? link.send(Frame(.goodbye, payload: Array(why.utf8.prefix(1024))))
                markLost(why)
                return
            }
            var sentBytes = 0
            var tenth = 0
            do {
                // What the world has, not what was acknowledged: an acknowledged
                // epoch's output may still be on its way out.
                let released = output.releasedThrough ?? .max
                try CheckpointFrames.forEach(checkpoint, releasedThrough: released) { (frame) throws(WireError) in
                    // Before the end frame goes: its acknowledgement may come back at once.
                    if frame.kind == .checkpointEnd { sentThrough.withLock { $0 = checkpoint.sequence } }
                    try link.send(frame)
                    sentBytes += frame.payload.count + Frame.headerSize
                    if checkpoint.isFull, checkpoint.encodedSize > 0, sentBytes * 10 / checkpoint.encodedSize > tenth {
                        tenth = sentBytes * 10 / checkpoint.encodedSize
                        log.info("sending the full image: \(min(tenth, 10) * 10)% of \(checkpoint.encodedSize >> 10) KiB")
                    }
                }
                wire.withLock { $0.bytes += sentBytes; $0.checkpoints += 1 }
            } catch let error as WireError where error.meansThePeerIsGone {
                // The connection failed under this send, but the standby may
                // have ended the session first (a resync this side has not
                // read yet): the reader reads what arrived, then meets the same
                // failure, and decides. No more checkpoints go meanwhile.
                sendFailed.store(true, ordering: .relaxed)
                log.warning("sending checkpoint \(checkpoint.sequence) failed: \(error); reading what the standby sent before it")
            } catch {
                markLost("sending checkpoint \(checkpoint.sequence): \(error)")
            }
        }
        state.withLock { $0.engine = engine; $0.sessions += 1; $0.acked = nil }
        setStatus(.synchronizing)
        // The session's acknowledgements, read by one thread that ends with the
        // session and is joined before another session starts: an ack of this
        // session can never release output of the next (epochs restart at 0).
        let receiverDone = DispatchSemaphore(value: 0)
        let receiver = Thread { [self] in
            defer { receiverDone.signal() }
            while lost.withLock({ $0 }) == nil {
                do {
                    let frame = try link.receive(timeout: configuration.heartbeatTimeout)
                    switch frame.kind {
                    case .ack:
                        // Output goes out only for checkpoints sent whole, acknowledged in order.
                        let sent = sentThrough.withLock { $0 }
                        let previous = state.withLock { $0.acked }
                        guard let sent, frame.sequence <= sent, previous.map({ frame.sequence == $0 + 1 }) ?? (frame.sequence == 0) else {
                            markResync("the standby acknowledged checkpoint \(frame.sequence) (sent through \(sent.map(String.init) ?? "none"), acknowledged through \(previous.map(String.init) ?? "none"))", true)
                            continue
                        }
                        guard lost.withLock({ $0 }) == nil else { return }
                        state.withLock { $0.acked = frame.sequence }
                        lastAck.withLock { $0 = .now }
                        configuration.disk?.acknowledge(through: frame.sequence)
                        output.commit(upTo: frame.sequence)
                        if frame.sequence == 0 { setStatus(.protected) }
                    case .heartbeat:
                        continue
                    case .handover:
                        handoverAccepted.store(true, ordering: .relaxed)
                        wake.signal()
                    case .resync:
                        markResync("the standby asked: \(String(decoding: frame.payload.prefix(1024), as: UTF8.self))", false)
                    case .goodbye, .refuse:
                        markLost("the standby ended the session: \(String(decoding: frame.payload.prefix(1024), as: UTF8.self))")
                    default:
                        markResync("the standby sent \(frame.kind)", true)
                    }
                } catch let error as WireError where !error.meansThePeerIsGone {
                    markResync("from the standby: \(error)", true)
                } catch {
                    markLost("\(error)")
                }
            }
        }
        receiver.name = "understudy-primary-acks"
        receiver.start()
        defer { receiverDone.wait() }
        let heartbeats = Heartbeats.start(on: link, every: Heartbeats.interval(for: configuration.heartbeatTimeout), name: "understudy-primary-heartbeat")
        if let disk = configuration.disk {
            engine.diskLog = disk
            if resume {
                disk.beginResync()
                logger.info("the standby kept its disk at its last committed checkpoint: no disk copy; what was written since travels with the full image")
            } else {
                do { try copyDisk(disk, over: link) } catch { markLost("copying the disk: \(error)") }
            }
        }
        // A new replica gets guest RAM while the guest runs, so the first
        // checkpoint's pause copies only what changed meanwhile. A resumed
        // replica keeps its committed image until a whole one replaces it.
        if !resume, lost.withLock({ $0 }) == nil {
            let started = ContinuousClock.now
            var tenth = 0
            do {
                try engine.precopy(progress: { done, total in
                    if done * 10 / total > tenth {
                        tenth = done * 10 / total
                        self.logger.info("copying guest RAM to the standby: \(tenth * 10)% of \(total >> 8) MiB")
                    }
                }, send: { firstPage, chunk in
                    var payload: [UInt8] = []
                    payload.appendLittleEndian(UInt32(firstPage))
                    switch chunk {
                    case .pages(let pages):
                        payload.reserveCapacity(4 + pages.count)
                        payload += pages
                    case .zeroPages(let count):
                        payload.appendLittleEndian(UInt32(count))
                    }
                    try link.send(Frame(.memoryData, payload: payload))
                })
                logger.info("guest RAM copied while it ran", metadata: ["time": "\(ContinuousClock.now - started)"])
            } catch {
                if machine.hasStopped {
                    wake.signal()               // the guest ended meanwhile: whoever stopped it says goodbye
                } else if let wire = error as? WireError, !wire.meansThePeerIsGone {
                    markResync("pre-copy: \(wire)", true)
                } else {
                    markLost("pre-copy: \(error)")
                }
            }
        }
        if lost.withLock({ $0 }) == nil, !machine.hasStopped {
            if !holdsFromTheStart { output.protect() }
            do {
                try engine.start()
            } catch {
                markLost("\(error)")
            }
        }
        while lost.withLock({ $0 }) == nil && !stopping.load(ordering: .relaxed) && handoverRequest.withLock({ $0 }) == nil { wake.wait() }

        if let request = handoverRequest.withLock({ $0 }), lost.withLock({ $0 }) == nil, !stopping.load(ordering: .relaxed) {
            let outcome = handOver(request, engine: engine, link: link, sentThrough: { sentThrough.withLock { $0 } },
                                   lost: { lost.withLock { $0 } }, accepted: { handoverAccepted.load(ordering: .relaxed) })
            request.finish(outcome)
            if case .success = outcome {
                heartbeats.stop()
                markLost("handed over")
                configuration.disk?.stopRecording()
                let (totals, recent) = (engine.totals, engine.statistics)
                state.withLock { $0.engine = nil; past.withLock { $0 = ($0.totals + totals, recent) } }
                return .ended
            }
            if lost.withLock({ $0 }) == nil, case .failure(let error) = outcome { markResync("\(error)", true) }
        }

        var end = SessionEnd.ended
        if abandoned.withLock({ $0 }) != nil {
            // No goodbye: the standby must take over. Close the link at once.
            markLost("abandoned")
            try? engine.stop()
            configuration.disk?.stopRecording()
            heartbeats.stop()
        } else if let reason = resyncReason.withLock({ $0 }) {
            // Output stays held (it rides in the next session's first checkpoint),
            // the disk's unacknowledged writes are carried, and a new session starts.
            try? engine.stop()
            configuration.disk?.endSessionForResync()
            heartbeats.stop()
            logger.warning("session ended for a resync: \(reason); output stays held, a new session starts now",
                           metadata: ["held": "\(output.bytesHeld) bytes"])
            setStatus(.synchronizing)
            end = .resync
        } else if let reason = lost.withLock({ $0 }) {
            try? engine.stop()
            configuration.disk?.stopRecording()
            heartbeats.stop()
            logger.error("standby lost: \(reason)")
            runOnWithoutStandby()
        } else {
            // Orderly stop: deliver what was captured and wait for its acknowledgement,
            // so the standby holds the last state before it is told goodbye. A dead
            // standby ends the wait within the heartbeat timeout; a live but slow one
            // (a full image still being applied) gets up to `orderlyStopWait`.
            do { try engine.stop() } catch { logger.debug("engine stopped: \(error)") }
            let last = sentThrough.withLock { $0 }
            let allAcknowledged = { last.map { last in self.state.withLock { $0.acked }.map { $0 >= last } ?? false } ?? true }
            let deadline = ContinuousClock.now + max(configuration.heartbeatTimeout, Self.orderlyStopWait)
            while !allAcknowledged() && ContinuousClock.now < deadline && lost.withLock({ $0 }) == nil {
                Thread.sleep(forTimeInterval: 0.002)
            }
            heartbeats.stop()
            try? link.send(Frame(.goodbye, payload: Array(goodbyeReason.withLock { $0 }.utf8.prefix(1024))))
            // The standby answers goodbye and closes; closing first, with its
            // heartbeats unread, would reset the connection before it read ours.
            let closeBy = ContinuousClock.now + max(configuration.heartbeatTimeout, .seconds(1))
            while lost.withLock({ $0 }) == nil && ContinuousClock.now < closeBy { Thread.sleep(forTimeInterval: 0.005) }
            markLost("stopped")
            configuration.disk?.stopRecording()
        }
        let (totals, recent) = (engine.totals, engine.statistics)
        state.withLock { $0.engine = nil; past.withLock { $0 = ($0.totals + totals, recent) } }
        return end
    }
}
