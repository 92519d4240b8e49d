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
/// and only then acknowledges it. Returns when the session ends; the caller
/// fails over (or not) from `replica`.
///
/// A connection that fails the handshake is refused with a reason and changes
/// nothing. Once a session is established, any bad frame, a silent primary
/// (heartbeat timeout) or a dropped connection ends the session: a torn,
/// corrupt, duplicate or out-of-order checkpoint is never applied, and the
/// replica stays exactly the last committed checkpoint.
public final class StandbyReceiver: @unchecked Sendable {
    public enum Outcome: Sendable, Equatable {
        /// The primary is gone (or sent something it never should have): fail over.
        case primaryLost(reason: String)
        /// The primary ended the session in order: do not fail over.
        case goodbye(reason: String)
        /// `stop()` was called.
        case stopped
    }

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
    private let logger: Logger
    private let stopping = Atomic<Bool>(false)
    private let current = Mutex<FrameConnection?>(nil)

    /// Binds the listening socket at once (so a caller knows the port).
    public init(configuration: StandbyConfiguration, logger: Logger) throws(WireError) {
        self.configuration = configuration
        self.logger = logger
        listener = try TCPListener(address: configuration.listen)
    }

    /// Makes `run()` return `.stopped` soon.
    public func stop() {
        stopping.store(true, ordering: .relaxed)
        current.withLock { $0?.shutdown() }
    }

    /// Serves primaries until one is lost after something was committed (or says goodbye).
    public func run() -> Outcome {
        logger.info("standby listening", metadata: ["address": "\(configuration.listen.host):\(listener.port)"])
        while !stopping.load(ordering: .relaxed) {
            let connection: TCPConnection
            do {
                guard let accepted = try listener.accept(timeout: .milliseconds(200)) else { continue }
                connection = accepted
            } catch {
                logger.error("accept failed: \(error)")
                Thread.sleep(forTimeInterval: 0.1)
                continue
            }
            let link = FrameConnection(connection)
            let outcome = serve(link)
            current.withLock { $0 = nil }
            link.shutdown()
            switch outcome {
            case .primaryLost(let reason) where replica?.committedSequence == nil:
                logger.warning("session ended before any checkpoint committed (\(reason)); waiting for a primary")
            case .goodbye(let reason) where replica?.committedSequence == nil:
                logger.info("primary said goodbye before any checkpoint committed (\(reason)); waiting for a primary")
            case nil:
                continue
            case let outcome?:
                return outcome
            }
        }
        return .stopped
    }

    /// One connection: handshake, then checkpoints. nil when the handshake failed.
    private func serve(_ link: FrameConnection) -> Outcome? {
        let accepted: Hello
        do {
            accepted = try handshake(link)
        } catch {
            logger.error("refused connection from \(link.peer): \(error)")
            try? link.send(Frame(.refuse, payload: Array("\(error)".utf8.prefix(1024))))
            return nil
        }
        current.withLock { $0 = link }
        if stopping.load(ordering: .relaxed) { return .stopped }
        logger.info("primary connected", metadata: ["peer": "\(link.peer)", "session": "\(accepted.sessionText)",
                                                    "memory": "\(accepted.memorySize >> 20) MiB"])
        let heartbeats = Heartbeats.start(on: link, every: Heartbeats.interval(for: configuration.heartbeatTimeout), name: "understudy-standby-heartbeat")
        let refusing = refuseOthers(while: link)
        defer {
            heartbeats.stop()
            refusing.signal()
        }
        do {
            return try receiveCheckpoints(link)
        } catch {
            if stopping.load(ordering: .relaxed) { return .stopped }
            logger.error("primary lost: \(error)", metadata: ["committed": "\(replica?.committedSequence.map(String.init) ?? "none")",
                                                          "longest-silence": "\(longestSilence.milliseconds) ms",
                                                          "silent-for": "\(silenceBeforeLoss.milliseconds) ms"])
            return .primaryLost(reason: "\(error)")
        }
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
        if let existing = replica, existing.committedSequence != nil {
            throw WireError.refused("this standby already holds a committed replica of another session; start a fresh standby")
        }
        if replica?.memory.size != Int(offered.memorySize) {
            replica = nil
            replica = try ReplicaImage(memorySize: Int(offered.memorySize))
        }
        if offered.devices.contains(.disk), let disk = configuration.disk {
            do { try disk.reset() } catch { throw WireError.refused("\(error)") }
            logger.notice("the standby's disk image is replaced by the primary's", metadata: ["path": "\(disk.path)"])
            replica?.disk = disk
        } else {
            replica?.disk = nil
        }
        hello = offered
        guestAddresses = []
        unreleasedOutput = []
        diskBytesReceived = 0
        try link.send(Frame(.welcome, payload: offered.payload))
        return offered
    }

    private func receiveCheckpoints(_ link: FrameConnection) throws -> Outcome {
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
            case .goodbye:
                let reason = String(decoding: frame.payload.prefix(1024), as: UTF8.self)
                logger.info("primary said goodbye: \(reason)")
                try? link.send(Frame(.goodbye, payload: Array("goodbye".utf8)))
                return .goodbye(reason: reason)
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
                unreleasedOutput.append((checkpoint.sequence, replica.output))
                if releasedThrough != .max { unreleasedOutput.removeAll { $0.sequence <= releasedThrough } }
                learnAddresses(replica.output)
                try link.send(Frame(.ack, sequence: checkpoint.sequence))
                if checkpoint.isFull {
                    logger.info("full image committed; the guest is protected", metadata: [
                        "sequence": "\(checkpoint.sequence)", "disk-copy": "\(diskBytesReceived >> 10) KiB"])
                }
            case .hello, .welcome, .refuse, .ack:
                throw WireError.unexpected("\(frame.kind) inside a session")
            }
        }
        return .stopped
    }

    /// While a session runs, other connections get an immediate refusal rather
    /// than waiting unanswered. Signal the returned semaphore to stop.
    private func refuseOthers(while link: FrameConnection) -> DispatchSemaphore {
        let done = DispatchSemaphore(value: 0)
        let thread = Thread { [self] in
            while done.wait(timeout: .now()) == .timedOut {
                guard let other = try? listener.accept(timeout: .milliseconds(100)) else { continue }
                logger.warning("refused a second primary from \(other.peer): a session with \(link.peer) is running")
                try? FrameConnection(other).send(Frame(.refuse, payload: Array("this standby already serves a primary (\(link.peer))".utf8)))
                other.shutdown()
            }
        }
        thread.name = "understudy-standby-refuser"
        thread.start()
        return done
    }

    /// A chunk of the initial disk copy: only before the first checkpoint
    /// commits (until then there is nothing to fail over to, so writing the
    /// image directly is safe).
    private func writeInitialDisk(_ frame: Frame, replica: ReplicaImage) throws {
        guard replica.committedSequence == nil else { throw WireError.unexpected("disk data after the first checkpoint") }
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
