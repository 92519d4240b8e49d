import Foundation
import Logging
import Synchronization

/// What a standby can host, and how it watches its primary.
public struct StandbyConfiguration: Sendable {
    public var listen: SocketAddress
    /// No frame from the primary for this long and it is declared lost.
    public var heartbeatTimeout: Duration
    /// Devices the standby can give a guest on failover (a tap, a disk).
    public var devices: Hello.Devices
    /// The largest guest the standby accepts.
    public var maximumMemory: UInt64
    /// How long a new connection may take to say hello.
    public var handshakeTimeout: Duration
    /// The disk image the guest's disk is replicated into (same size as the primary's).
    public var disk: ReplicaDisk?
    /// Checks, at the handshake, that this host can run the guest the hello
    /// describes (the VMM supplies it: /dev/kvm, CPU features, the tap, the
    /// state format). A throw refuses the session with its description, so a
    /// standby that could not take over never pretends to protect the guest.
    public var preflight: (@Sendable (Hello) throws -> Void)?
    /// Called with the guest's announcement (`Announcement.frames`) when a
    /// handover is accepted, before the standby answers it: the VMM writes
    /// the frames to the guest's tap, so what the world sends from then on
    /// comes to this host rather than to the old primary's, which no longer
    /// reads. Nil: the guest is announced with the takeover, a few
    /// milliseconds later.
    public var announceAtHandover: (@Sendable ([[UInt8]]) -> Void)?

    public init(listen: SocketAddress, heartbeatTimeout: Duration = StandbyConfiguration.defaultHeartbeatTimeout,
                devices: Hello.Devices = [], maximumMemory: UInt64 = 64 << 30, handshakeTimeout: Duration = .seconds(5),
                disk: ReplicaDisk? = nil) {
        self.disk = disk
        self.listen = listen
        self.heartbeatTimeout = heartbeatTimeout
        self.devices = devices
        self.maximumMemory = maximumMemory
        self.handshakeTimeout = handshakeTimeout
    }

    /// 200 ms. Heartbeats go every timeout/4 (50 ms) and every frame counts.
    /// Measured on our 2-core machines (debug build, guest, encoder and standby
    /// sharing the cores, 30 failover runs at 5 ms epochs): the standby waited
    /// at most 20 ms for a frame, and 57 ms during a whole test run with other
    /// tests competing; 200 ms keeps a 3.5x margin over the worst while a
    /// silent failure is detected within 0.2 s. Docs/Operations.md says how to tune it.
    public static let defaultHeartbeatTimeout: Duration = .milliseconds(200)
}

/// The standby's side of a session: accepts a primary, checks its handshake,
/// receives each checkpoint into staging, has the replica verify and apply it,
/// and only then acknowledges it. Returns when the primary is gone (the caller
/// fails over from `replica`), says goodbye, or `stop()` is called.
///
/// A connection that fails the handshake is refused with a reason and changes
/// nothing. Once a session is established, how it ends decides a takeover
/// (DESIGN.md invariant 6):
///
/// - The primary is gone: silent past the heartbeat timeout, or its connection
///   closed or reset, with nothing wrong in what it sent. `run()` returns
///   `.primaryLost`: take over.
/// - What arrived was wrong (a damaged, malformed, oversized, out-of-order or
///   unappliable checkpoint, a frame that does not belong), or this host could
///   not apply it: the primary is alive, so this is *not* a takeover. The
///   standby sends `resync` with the reason, keeps its last committed replica,
///   and waits for the primary's next session, which replaces the replica
///   once its full image commits. If the primary does not come back within
///   `resyncWait`, it is gone after all: take over from the committed replica.
/// - A replica torn by a failed apply that could not be undone is never taken
///   over from: the standby says so and waits for a new session.
///
/// A torn, corrupt, duplicate or out-of-order checkpoint is never applied, and
/// the replica stays exactly the last committed checkpoint.
public final class StandbyReceiver: @unchecked Sendable {
    public enum Outcome: Sendable, Equatable {
        /// The primary is gone (silent past the timeout, or its connection
        /// closed), or did not come back after a resync: take over. (What it
        /// sent being wrong is a resync, not a takeover.)
        case primaryLost(reason: String)
        /// The primary ended the session in order: do not fail over.
        case goodbye(reason: String)
        /// `stop()` was called.
        case stopped
        /// The primary handed the guest over in a planned switchover (every
        /// checkpoint committed, its guest paused for good): take over at once,
        /// and protect the guest with the standby the handover names.
        case handedOver(Handover)
    }

    /// Where the standby stands, for status queries from any thread.
    public struct Progress: Sendable {
        public enum Phase: String, Sendable {
            /// No primary connected.
            case waiting
            /// A primary connected; its full image has not committed yet.
            case synchronizing
            /// Checkpoints commit: the guest is protected.
            case protecting
            /// The last session ended for a resync; the primary is expected back.
            case resyncing
        }
        public var phase: Phase = .waiting
        /// The connected primary.
        public var primary: String?
        /// The newest committed checkpoint, and when it committed.
        public var committed: UInt64?
        public var committedAt: ContinuousClock.Instant?
        /// Sessions served (handshakes accepted).
        public var sessions = 0
    }

    /// Where the standby stands now (safe from any thread).
    public var progress: Progress { progressState.withLock { $0 } }
    private let progressState = Mutex(Progress())

    public let configuration: StandbyConfiguration
    public let listener: TCPListener
    public private(set) var replica: ReplicaImage?
    /// The hello of the session being (or last) served.
    public private(set) var hello: Hello?
    /// IPv4 addresses the guest was seen sending from (for the announcement on failover).
    public private(set) var guestAddresses: [[UInt8]] = []
    /// The output of committed epochs the primary may not have released (those
    /// after the newest `releasedThrough` mark), oldest first: what a standby
    /// taking over releases, so nothing acknowledged to the guest is lost.
    public private(set) var unreleasedOutput: [(sequence: UInt64, output: [OutputRecord])] = []
    /// The longest wait for a frame from the primary in the current session,
    /// after its first commit (what the heartbeat timeout must stay above).
    public private(set) var longestSilence: Duration = .zero
    /// How long the primary had been silent when the session ended.
    public private(set) var silenceBeforeLoss: Duration = .zero
    /// Time at which the newest checkpoint was committed.
    public private(set) var lastCommit: ContinuousClock.Instant?
    /// Sessions that ended for a resync (no takeover) so far.
    public var resyncs: Int { resyncCount.load(ordering: .relaxed) }
    private let resyncCount = Atomic<Int>(0)
    /// The guest id of the session whose checkpoints the replica holds.
    private var replicaGuest: [UInt8]?
    /// Whether the current session resumes an intact replica (no disk copy).
    private var resuming = false
    /// How long, after a session ended for a resync, the standby waits for the
    /// primary to start the next one before it concludes the primary is gone.
    public var resyncWait: Duration { max(configuration.heartbeatTimeout * 10, .seconds(2)) }
    private let logger: Logger
    private let stopping = Atomic<Bool>(false)
    private let current = Mutex<FrameConnection?>(nil)

    /// Binds the listening socket at once (so a caller knows the port), or
    /// takes `listener`, bound earlier (a host that was standby before, with
    /// its socket kept while it ran the guest).
    public init(configuration: StandbyConfiguration, listener: TCPListener? = nil, logger: Logger) throws(WireError) {
        self.configuration = configuration
        self.logger = logger
        if let listener {
            self.listener = listener
        } else {
            self.listener = try TCPListener(address: configuration.listen)
        }
    }

    /// Makes `run()` return `.stopped` soon.
    public func stop() {
        stopping.store(true, ordering: .relaxed)
        current.withLock { $0?.shutdown() }
    }

    /// How one session ended.
    private enum SessionEnd {
        case primaryLost(String)
        case goodbye(String)
        case resync(String)
        case handover(Handover)
        case stopped
    }

    /// Whether the replica can be taken over from: a checkpoint committed, and
    /// no failed apply tore it.
    public var isTakeoverTarget: Bool { replica.map { $0.committedSequence != nil && $0.isIntact } ?? false }

    /// Serves primaries until one is lost after something was committed (or says goodbye).
    public func run() -> Outcome {
        logger.info("standby listening", metadata: ["address": "\(configuration.listen.host):\(listener.port)"])
        // Set when a session ended for a resync: the primary must be back by then.
        var resyncBy: (deadline: ContinuousClock.Instant, reason: String)?
        while !stopping.load(ordering: .relaxed) {
            let connection: TCPConnection
            do {
                guard let accepted = try listener.accept(timeout: .milliseconds(200)) else {
                    if let (deadline, reason) = resyncBy, ContinuousClock.now >= deadline {
                        resyncBy = nil
                        let why = "the primary did not start a new session within \(resyncWait.milliseconds) ms of a resync (\(reason))"
                        if isTakeoverTarget { return .primaryLost(reason: why) }
                        logger.critical("\(why), and the replica is torn: it cannot be taken over from; waiting for a primary")
                    }
                    continue
                }
                connection = accepted
            } catch {
                logger.error("accept failed: \(error)")
                Thread.sleep(forTimeInterval: 0.1)
                continue
            }
            let link = FrameConnection(connection)
            let end = serve(link, established: { resyncBy = nil })
            current.withLock { $0 = nil }
            link.shutdown()
            progressState.withLock {
                $0.primary = nil
                if case .resync? = end { $0.phase = .resyncing } else if end != nil { $0.phase = .waiting }
            }
            switch end {
            case nil:
                continue
            case .resync(let reason)?:
                resyncCount.add(1, ordering: .relaxed)
                resyncBy = (ContinuousClock.now + resyncWait, reason)
            case .primaryLost(let reason)? where replica?.committedSequence == nil:
                logger.warning("session ended before any checkpoint committed (\(reason)); waiting for a primary")
            case .primaryLost(let reason)? where !isTakeoverTarget:
                logger.critical("primary lost (\(reason)), but the replica is torn by a failed apply: it cannot be taken over from; waiting for a primary")
            case .primaryLost(let reason)?:
                return .primaryLost(reason: reason)
            case .goodbye(let reason)?:
                return .goodbye(reason: reason)
            case .handover(let handover)?:
                return .handedOver(handover)
            case .stopped?:
                return .stopped
            }
        }
        return .stopped
    }

    /// One connection: handshake, then checkpoints. nil when the handshake failed.
    private func serve(_ link: FrameConnection, established: () -> Void) -> SessionEnd? {
        let accepted: Hello
        do {
            accepted = try handshake(link)
        } catch {
            logger.error("refused connection from \(link.peer): \(error)")
            try? link.send(Frame(.refuse, payload: Array("\(error)".utf8.prefix(1024))))
            return nil
        }
        established()
        progressState.withLock {
            $0.phase = resuming ? .resyncing : .synchronizing
            $0.primary = "\(link.peer)"
            $0.sessions += 1
        }
        current.withLock { $0 = link }
        if stopping.load(ordering: .relaxed) { return .stopped }
        logger.info("primary connected", metadata: ["peer": "\(link.peer)", "session": "\(accepted.sessionText)",
                                                    "memory": "\(accepted.memorySize >> 20) MiB"])
        let heartbeats = Heartbeats.start(on: link, every: Heartbeats.interval(for: configuration.heartbeatTimeout), name: "understudy-standby-heartbeat")
        let refusing = refuseOthers(while: link)
        defer {
            heartbeats.stop()
            refusing.stop()
        }
        do {
            return try receiveCheckpoints(link)
        } catch {
            if stopping.load(ordering: .relaxed) { return .stopped }
            let metadata: Logger.Metadata = ["committed": "\(replica?.committedSequence.map(String.init) ?? "none")",
                                             "longest-silence": "\(longestSilence.milliseconds) ms",
                                             "silent-for": "\(silenceBeforeLoss.milliseconds) ms"]
            if Self.meansThePrimaryIsGone(error) {
                // The connection failed (an acknowledgement could not be sent,
                // or it was reset), but what the primary sent before that may
                // still be unread: a resync or goodbye there means it is alive,
                // or stopped in order, and is no takeover.
                if let end = lastWord(on: link) {
                    logger.warning("the connection failed (\(error)), but the primary had already ended the session", metadata: metadata)
                    return end
                }
                logger.error("primary lost: \(error)", metadata: metadata)
                return .primaryLost("\(error)")
            }
            // The primary is alive (it just sent this): end the session, keep the
            // committed replica, and ask for a new session. Stop refusing first, so
            // the primary's reconnect is not turned away.
            let reason = "\(error)"
            logger.error("ending the session without a takeover: \(reason); the replica stays at the last committed checkpoint and the primary is asked to resync",
                         metadata: metadata)
            heartbeats.stop()
            refusing.stop()
            link.finish(with: Frame(.resync, payload: Array(reason.utf8.prefix(1024))), timeout: configuration.heartbeatTimeout)
            return .resync(reason)
        }
    }

    /// After the connection failed: how the primary ended the session in the
    /// frames it sent before the failure and this side has not read yet (a
    /// resync or goodbye), or nil. Checkpoints among them are not applied: the
    /// primary released no output of a checkpoint it has no acknowledgement for.
    private func lastWord(on link: FrameConnection) -> SessionEnd? {
        while true {
            guard let frame = try? link.receive(timeout: .zero) else { return nil }
            if let end = ending(frame, on: link) { return end }
        }
    }

    /// The end of the session a goodbye or resync frame from the primary means
    /// (a goodbye is answered), nil for any other frame.
    private func ending(_ frame: Frame, on link: FrameConnection) -> SessionEnd? {
        let reason = String(decoding: frame.payload.prefix(1024), as: UTF8.self)
        switch frame.kind {
        case .goodbye:
            logger.info("primary said goodbye: \(reason)")
            try? link.send(Frame(.goodbye, payload: Array("goodbye".utf8)))
            return .goodbye(reason)
        case .resync:
            logger.warning("the primary ended the session for a resync: \(reason); the replica stays at the last committed checkpoint")
            return .resync("the primary asked: \(reason)")
        default:
            return nil
        }
    }

    /// Whether a session's error means the primary is gone rather than that
    /// what it sent was wrong, or that this host could not apply it.
    static func meansThePrimaryIsGone(_ error: any Error) -> Bool {
        (error as? WireError)?.meansThePeerIsGone ?? false
    }

    private func handshake(_ link: FrameConnection) throws -> Hello {
        let frame = try link.receive(timeout: configuration.handshakeTimeout)
        guard frame.kind == .hello else { throw WireError.unexpected("\(frame.kind) before hello") }
        let offered = try Hello(payload: frame.payload)
        guard offered.pageSize == 4096 else { throw WireError.refused("page size \(offered.pageSize), this standby handles 4096") }
        guard offered.memorySize > 0, offered.memorySize % 4096 == 0 else { throw WireError.refused("guest memory of \(offered.memorySize) bytes is not whole pages") }
        guard offered.memorySize <= configuration.maximumMemory else {
            throw WireError.refused("guest memory \(offered.memorySize >> 20) MiB is over this standby's limit of \(configuration.maximumMemory >> 20) MiB")
        }
        let missingCodecs = offered.codecFeatures & ~Hello.supportedCodecFeatures
        guard missingCodecs == 0 else { throw WireError.refused("page encodings 0x\(String(missingCodecs, radix: 16)) unknown to this standby") }
        let missingDevices = offered.devices.subtracting(configuration.devices)
        guard missingDevices.isEmpty else {
            let names = [missingDevices.contains(.network) ? "a network card (start the standby with --tap)" : nil,
                         missingDevices.contains(.disk) ? "a disk (start the standby with --disk)" : nil].compactMap { $0 }
            throw WireError.refused("the guest has \(names.joined(separator: " and ")) that this standby cannot give it")
        }
        if offered.devices.contains(.disk), let disk = configuration.disk, disk.size != offered.diskSize {
            throw WireError.refused("the guest's disk is \(offered.diskSize) bytes, this standby's image \(disk.path) is \(disk.size)")
        }
        if let preflight = configuration.preflight {
            do { try preflight(offered) } catch { throw WireError.refused("this standby cannot run the guest: \(error)") }
        }
        var welcome = offered
        welcome.flags = []
        if let existing = replica, existing.committedSequence != nil {
            // A new session of the guest whose replica this is (the last one
            // ended for a resync): the replica stays until the new full image
            // commits. Any other guest is refused.
            guard offered.guest == replicaGuest, existing.memory.size == Int(offered.memorySize), offered.devices == hello?.devices,
                  offered.diskSize == hello?.diskSize, offered.mac == hello?.mac else {
                throw WireError.refused("this standby already holds a committed replica of another guest; start a fresh standby")
            }
            // Only a primary that held its output since this replica's
            // checkpoint asks to resume: one that ran unprotected meanwhile has
            // released output the replica does not hold, and taking over from
            // it would take that back (two histories). Its replica is
            // forgotten, and this session fills the image anew.
            let committed = existing.committedSequence.map(String.init) ?? "none"
            let wasIntact = existing.isIntact
            resuming = offered.flags.contains(.resume) && wasIntact
            if resuming {
                existing.beginResync()
                welcome.flags.insert(.resume)
                logger.notice("a new session of the same guest: the committed replica stays until its full image commits", metadata: ["committed": "\(committed)"])
            } else {
                existing.discard()
                unreleasedOutput = []
                logger.notice("a new session of the same guest: \(wasIntact ? "the primary released output since the replica's checkpoint (it ran unprotected), so" : "the replica is torn:") it is no takeover point any more and is replaced",
                              metadata: ["committed": "\(committed)"])
            }
        } else {
            resuming = false
            if replica?.memory.size != Int(offered.memorySize) {
                replica = nil
                replica = try ReplicaImage(memorySize: Int(offered.memorySize))
            }
            guestAddresses = []
            unreleasedOutput = []
        }
        if offered.devices.contains(.disk), let disk = configuration.disk {
            if !resuming {
                do { try disk.reset() } catch { throw WireError.refused("\(error)") }
                logger.notice("the standby's disk image is replaced by the primary's", metadata: ["path": "\(disk.path)"])
            }
            replica?.disk = disk
        } else {
            replica?.disk = nil
        }
        hello = offered
        replicaGuest = offered.guest
        diskBytesReceived = 0
        try link.send(Frame(.welcome, payload: welcome.payload))
        return offered
    }

    private func receiveCheckpoints(_ link: FrameConnection) throws -> SessionEnd {
        guard let replica else { throw WireError.unexpected("no replica") }
        var assembler = CheckpointAssembler(guestPages: replica.pageCount)
        var reportedTenth = 0
        longestSilence = .zero
        while !stopping.load(ordering: .relaxed) {
            // Silence is time spent waiting for the next frame (not time spent
            // applying the previous one): what the heartbeat timeout is compared with.
            let waitStarted = ContinuousClock.now
            let frame: Frame
            do {
                frame = try link.receive(timeout: configuration.heartbeatTimeout)
            } catch {
                silenceBeforeLoss = ContinuousClock.now - waitStarted
                throw error
            }
            if replica.committedSequence != nil { longestSilence = max(longestSilence, ContinuousClock.now - waitStarted) }
            switch frame.kind {
            case .heartbeat:
                continue
            case .diskData:
                try writeInitialDisk(frame, replica: replica)
            case .memoryData:
                try writePrecopy(frame, replica: replica, reported: &reportedTenth)
            case .goodbye, .resync:
                if let end = ending(frame, on: link) { return end }
            case .handover:
                return try acceptHandover(frame, on: link, assembling: assembler.inProgress)
            case .checkpointBegin, .checkpointData, .checkpointEnd:
                guard let (checkpoint, releasedThrough) = try assembler.take(frame) else {
                    let (received, total) = assembler.progress
                    if frame.kind == .checkpointData, replica.committedSequence == nil, total > 0, received * 10 / total > reportedTenth {
                        reportedTenth = received * 10 / total
                        logger.info("receiving the full image: \(reportedTenth * 10)% of \(total >> 10) KiB")
                    }
                    continue
                }
                try replica.apply(checkpoint)
                lastCommit = .now
                progressState.withLock {
                    $0.phase = .protecting
                    $0.committed = checkpoint.sequence
                    $0.committedAt = lastCommit
                }
                // A session's first (full) checkpoint carries all output its
                // primary still held, the previous session's unreleased epochs too.
                if checkpoint.isFull { unreleasedOutput = [] }
                unreleasedOutput.append((checkpoint.sequence, replica.output))
                if releasedThrough != .max { unreleasedOutput.removeAll { $0.sequence <= releasedThrough } }
                learnAddresses(replica.output)
                try link.send(Frame(.ack, sequence: checkpoint.sequence))
                if checkpoint.sequence == 0 {
                    logger.info("full image committed; the guest is protected", metadata: [
                        "sequence": "\(checkpoint.sequence)", "disk-copy": "\(diskBytesReceived >> 10) KiB"])
                }
            case .hello, .welcome, .refuse, .ack:
                throw WireError.unexpected("\(frame.kind) inside a session")
            }
        }
        return .stopped
    }

    /// A planned switchover: taken only when every checkpoint the primary
    /// sent is committed here, whole and intact (else it is a protocol error:
    /// a resync, no takeover). Output the primary released is not released
    /// again. The answer may be lost: the primary never resumes its guest
    /// after sending the handover either way.
    private func acceptHandover(_ frame: Frame, on link: FrameConnection, assembling: Bool) throws -> SessionEnd {
        guard let replica, !assembling, replica.committedSequence == frame.sequence, replica.isIntact else {
            throw WireError.unexpected("handover at checkpoint \(frame.sequence), but this standby committed \(replica?.committedSequence.map(String.init) ?? "none")\(assembling ? " and is receiving another" : "")")
        }
        let handover = try Handover(payload: frame.payload)
        if let released = handover.releasedThrough { unreleasedOutput.removeAll { $0.sequence <= released } }
        if let announce = configuration.announceAtHandover, let mac = hello?.mac {
            announce(Announcement.frames(mac: mac, addresses: guestAddresses))
            announcedAtHandover = true
        }
        logger.notice("the primary hands the guest over (planned switchover): taking over from checkpoint \(frame.sequence)",
                      metadata: ["standby-there": "\(handover.standby.map(String.init(describing:)) ?? "none")"])
        try? link.send(Frame(.handover))
        return .handover(handover)
    }

    /// While a session runs, other connections get an immediate refusal rather
    /// than waiting unanswered, until `stop()` (which waits for the refuser to
    /// let go of the listening socket).
    private final class Refuser: @unchecked Sendable {
        private let done = Atomic<Bool>(false)
        private let exited = DispatchSemaphore(value: 0)
        private let stopped = Mutex<Bool>(false)

        init(listener: TCPListener, link: FrameConnection, logger: Logger) {
            let thread = Thread { [self] in
                while !done.load(ordering: .relaxed) {
                    // A short wait: `stop()` waits for this loop, and a takeover waits for `stop()`.
                    guard let other = try? listener.accept(timeout: .milliseconds(5)) else { continue }
                    logger.warning("refused a second primary from \(other.peer): a session with \(link.peer) is running")
                    try? FrameConnection(other).send(Frame(.refuse, payload: Array("this standby already serves a primary (\(link.peer))".utf8)))
                    other.shutdown()
                }
                exited.signal()
            }
            thread.name = "understudy-standby-refuser"
            thread.start()
        }

        func stop() {
            guard stopped.withLock({ value in defer { value = true }; return !value }) else { return }
            done.store(true, ordering: .relaxed)
            exited.wait()
        }
    }

    private func refuseOthers(while link: FrameConnection) -> Refuser {
        Refuser(listener: listener, link: link, logger: logger)
    }

    /// A chunk of the initial disk copy: only before the first checkpoint
    /// commits (until then there is nothing to fail over to, so writing the
    /// image directly is safe).
    private func writeInitialDisk(_ frame: Frame, replica: ReplicaImage) throws {
        guard !resuming, replica.committedSequence == nil || !replica.isIntact else {
            throw WireError.unexpected("disk data after the first checkpoint, or into a replica being resumed")
        }
        guard let disk = replica.disk else { throw WireError.unexpected("disk data for a standby without a disk") }
        guard frame.payload.count >= 8 else { throw WireError.malformed("disk data payload of \(frame.payload.count) bytes") }
        var offset: UInt64 = 0
        for i in 0..<8 { offset |= UInt64(frame.payload[i]) << (8 * UInt64(i)) }
        let bytes = frame.payload[8...]
        guard offset <= disk.size, UInt64(bytes.count) <= disk.size - offset else {
            throw WireError.malformed("disk data at \(offset)+\(bytes.count) beyond the \(disk.size)-byte disk")
        }
        try disk.write(offset: offset, bytes)
        diskBytesReceived += bytes.count
    }

    /// A chunk of the pre-copy of guest RAM (before the session's first
    /// checkpoint; never into a replica being resumed).
    private func writePrecopy(_ frame: Frame, replica: ReplicaImage, reported: inout Int) throws {
        guard !resuming else { throw WireError.unexpected("pre-copied memory in a session that resumes the replica") }
        guard frame.payload.count >= 4 else { throw WireError.malformed("memory data payload of \(frame.payload.count) bytes") }
        var reader = PayloadReader(frame.payload, what: "memory data")
        let firstPage = Int(try reader.integer(UInt32.self))
        let pages: Int
        if frame.payload.count == 8 {               // a run of zero pages: first page, count
            pages = Int(try reader.integer(UInt32.self))
            try replica.precopyZeroPages(firstPage: firstPage, count: pages)
        } else {
            pages = (frame.payload.count - 4) / pageSize
            try replica.precopy(firstPage: firstPage, frame.payload[4...])
        }
        let done = (firstPage + pages) * 10 / max(1, replica.pageCount)
        if done > reported {
            reported = done
            logger.info("receiving the pre-copy of guest RAM: \(done * 10)% of \(replica.memory.size >> 20) MiB")
        }
    }

    /// Whether the guest was announced when the handover was accepted
    /// (`StandbyConfiguration.announceAtHandover`): frames queued on its tap
    /// since then are the world's, for the guest.
    public private(set) var announcedAtHandover = false

    /// Bytes of the initial disk copy received in this session.
    public private(set) var diskBytesReceived = 0

    private func learnAddresses(_ records: [OutputRecord]) {
        guard let mac = hello?.mac else { return }
        for record in records where record.kind == .network {
            if let address = Announcement.senderAddress(of: record.bytes, mac: mac), address != [0, 0, 0, 0],
               !guestAddresses.contains(address) {
                guestAddresses.append(address)
            }
        }
    }
}
