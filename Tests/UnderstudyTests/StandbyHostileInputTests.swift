import CKVM
import Foundation
import KVM
import Logging
import MicroVM
import Synchronization
import TestGuests
import Testing
@testable import Understudy

/// Log messages, collected (the tests check each attack is named in the log).
final class CollectedLog: @unchecked Sendable {
    let messages = Mutex<[String]>([])
    var text: String { messages.withLock { $0.joined(separator: "\n") } }

    var logger: Logger {
        Logger(label: "test") { _ in Handler(log: self) }
    }

    struct Handler: LogHandler {
        let log: CollectedLog
        var metadata: Logger.Metadata = [:]
        var logLevel: Logger.Level = .trace
        subscript(metadataKey key: String) -> Logger.Metadata.Value? {
            get { metadata[key] }
            set { metadata[key] = newValue }
        }
        func log(level: Logger.Level, message: Logger.Message, metadata: Logger.Metadata?, source: String,
                 file: String, function: String, line: UInt) {
            log.messages.withLock { $0.append("\(level): \(message)") }
        }
    }
}

/// The standby under hostile input: after four good checkpoints of a real
/// workload guest, each attack gets a clear error in the log and the
/// connection is dropped; the committed replica is exactly checkpoint 3, and a
/// guest resumed from it (on the replica's own memory, as in a failover)
/// prints exactly what the original would have.
@Suite("Standby under hostile input", .enabled(if: TestHost.kvmAvailable, "needs /dev/kvm"), .deadline(minutes: 10), .serialized)
struct StandbyHostileInputTests {
    enum Attack: String, CaseIterable, Sendable {
        case randomBytes, truncatedCheckpoint, badChecksum, wrongVersion, replayedCheckpoint, pageBeyondMemory,
             unknownFrameType, oversizedFrame, helloInsideSession
    }

    /// What the log must name for each attack.
    static func expectedError(_ attack: Attack) -> String {
        switch attack {
        case .randomBytes: "bad magic"
        case .truncatedCheckpoint: "torn"
        case .badChecksum: "checksum mismatch"
        case .wrongVersion: "protocol version \(Hello.protocolVersion + 1)"
        case .replayedCheckpoint: "out of sequence"
        case .pageBeyondMemory: "beyond guest RAM"
        case .unknownFrameType: "unknown frame type 99"
        case .oversizedFrame: "over the cap"
        case .helloInsideSession: "hello inside a session"
        }
    }

    static func receiveAck(_ link: FrameConnection, _ sequence: UInt64) throws {
        while true {
            let frame = try link.receive(timeout: .seconds(30))
            if frame.kind == .heartbeat { continue }
            #expect(frame.kind == .ack && frame.sequence == sequence, "expected ack \(sequence), got \(frame.kind) \(frame.sequence)")
            return
        }
    }

    static func hello(_ memorySize: Int, version: UInt16 = Hello.protocolVersion, flags: Hello.Flags = []) -> Frame {
        Frame(.hello, payload: Hello(session: Hello.newSession(), memorySize: UInt64(memorySize), devices: [],
                                     epochMicroseconds: 2000, version: version, flags: flags).payload)
    }

    @Test(arguments: Attack.allCases)
    func attackLeavesTheReplicaIntact(attack: Attack) throws {
        let log = CollectedLog()
        let receiver = try StandbyReceiver(configuration: StandbyConfiguration(listen: SocketAddress(host: "127.0.0.1", port: 0),
                                                                              heartbeatTimeout: .seconds(5)),
                                           logger: log.logger)
        let address = SocketAddress(host: "127.0.0.1", port: receiver.listener.port)
        let served = ThreadRunner { receiver.run() }
        let options = "pages=16 wss=1000 every=300"
        let console = Lines()
        let machine = try Machine(configuration: .init(memorySize: 32 << 20, commandLine: options, dirtyTracking: .bitmap),
                                  console: console.sink)
        defer { machine.requestStop(); _ = machine.waitUntilStopped(timeout: TestHost.scaled(.seconds(10))) }

        // Before any session: a stranger's junk, or a peer of another version, is refused and changes nothing.
        if attack == .randomBytes || attack == .wrongVersion {
            let stranger = FrameConnection(try TCPConnection.connect(to: address))
            if attack == .wrongVersion {
                try stranger.send(Self.hello(machine.memory.size, version: Hello.protocolVersion + 1))
            } else {
                try stranger.connection.send((0..<4096).map { _ in UInt8.random(in: 0...255) })
            }
            let answer = try stranger.receive(timeout: .seconds(10))
            #expect(answer.kind == .refuse)
            #expect(String(decoding: answer.payload, as: UTF8.self).contains(Self.expectedError(attack)))
        }

        // A real session: a full image and three checkpoints, each acknowledged.
        let link = FrameConnection(try TCPConnection.connect(to: address))
        try link.send(Self.hello(machine.memory.size))
        #expect(try link.receive(timeout: .seconds(10)).kind == .welcome)
        let engine = CheckpointEngine(machine: machine)
        let staged = StagedCheckpoint()
        try machine.start()
        var sent: [Checkpoint] = []
        var digestAtThree: UInt32 = 0
        var linesAtThree: [String] = []
        for epoch in 0..<5 {
            usleep(2000)
            try machine.pause()
            try engine.captureWhilePaused(into: staged)
            if epoch == 3 { digestAtThree = memoryDigest(machine); linesAtThree = console.lines }
            try machine.resume()
            sent.append(engine.encode(staged))
            if epoch < 4 {
                try link.send(CheckpointFrames.frames(for: sent[epoch]))
                try Self.receiveAck(link, UInt64(epoch))
            }
        }
        machine.requestStop()
        _ = machine.waitUntilStopped(timeout: TestHost.scaled(.seconds(10)))

        // A second primary is refused at once while the session runs.
        let second = FrameConnection(try TCPConnection.connect(to: address))
        try second.send(Self.hello(machine.memory.size))
        let refusal = try second.receive(timeout: .seconds(10))
        #expect(refusal.kind == .refuse && String(decoding: refusal.payload, as: UTF8.self).contains("already serves a primary"))

        // The attack, on the established session.
        let next = sent[4]
        switch attack {
        case .randomBytes:
            try link.connection.send((0..<4096).map { _ in UInt8.random(in: 0...255) })
        case .truncatedCheckpoint:
            var frames = CheckpointFrames.frames(for: next, chunkSize: 512)
            #expect(frames.count > 3)
            frames.remove(at: 2)                         // a chunk lost in the middle
            try link.send(frames)
        case .badChecksum:
            var bytes = CheckpointFrames.frames(for: next).flatMap(\.encoded)
            bytes[Frame.headerSize * 2 + 40] ^= 0x01      // a bit of the first payload flipped
            try link.connection.send(bytes)
        case .wrongVersion:
            link.shutdown()                              // the primary simply dies
        case .replayedCheckpoint:
            try link.send(CheckpointFrames.frames(for: sent[2]))
        case .pageBeyondMemory:
            var record: [UInt8] = []
            record.appendLittleEndian(UInt32(machine.memory.size / 4096))
            record.append(PageEncoding.raw.rawValue)
            record.appendLittleEndian(UInt32(4096))
            record += [UInt8](repeating: 0xAB, count: 4096)
            try link.send(CheckpointFrames.frames(for: Checkpoint(sequence: 4, isFull: false, pageCount: 1, pages: record, state: next.state)))
        case .unknownFrameType:
            var bytes = Frame(.heartbeat, sequence: 1).encoded
            bytes[4] = 99
            try link.connection.send(bytes)
        case .oversizedFrame:
            var bytes = Frame(.checkpointData, sequence: 4).encoded
            bytes.replaceSubrange(8..<12, with: [0, 0, 0, 4])    // 64 MiB payload announced
            try link.connection.send(bytes)
        case .helloInsideSession:
            try link.send(Self.hello(machine.memory.size))
        }

        if attack == .wrongVersion {
            // The primary is gone (its connection closed): that, and only that, is a takeover.
            let outcome = try served.join()
            guard case .primaryLost = outcome else {
                Issue.record("expected a takeover, got \(outcome)")
                return
            }
        } else {
            // The primary is alive (it just sent this): no takeover. The standby
            // says why with `resync`, keeps checkpoint 3, and waits for the next session.
            var answer = try link.receive(timeout: TestHost.scaled(.seconds(30)))
            while answer.kind == .heartbeat || answer.kind == .ack { answer = try link.receive(timeout: TestHost.scaled(.seconds(30))) }
            #expect(answer.kind == .resync)
            #expect(String(decoding: answer.payload, as: UTF8.self).contains(Self.expectedError(attack)), "\(answer)")
            #expect(eventually(timeout: 30) { receiver.resyncs == 1 })
            #expect(receiver.isTakeoverTarget)
            // Another guest is refused; the same guest's next session resumes the replica.
            let stranger = FrameConnection(try TCPConnection.connect(to: address))
            try stranger.send(Frame(.hello, payload: Hello(session: Hello.newSession(), guest: Hello.newSession(), memorySize: UInt64(machine.memory.size),
                                                           devices: [], epochMicroseconds: 2000).payload))
            let refused = try stranger.receive(timeout: .seconds(10))
            #expect(refused.kind == .refuse && String(decoding: refused.payload, as: UTF8.self).contains("another guest"))
            let resumed = FrameConnection(try TCPConnection.connect(to: address))
            try resumed.send(Self.hello(machine.memory.size, flags: .resume))
            let welcome = try resumed.receive(timeout: .seconds(10))
            #expect(welcome.kind == .welcome)
            #expect(try Hello(payload: welcome.payload).flags.contains(.resume))
            receiver.stop()
            #expect(try served.join() == .stopped)
        }
        #expect(log.text.contains(Self.expectedError(attack)), "the log names the problem: \(log.text)")
        // The connection was ended.
        #expect(throws: WireError.self) {
            while true { _ = try link.receive(timeout: .seconds(10)) }
        }

        // The committed replica is exactly checkpoint 3.
        let replica = try #require(receiver.replica)
        #expect(replica.committedSequence == 3)
        #expect(replica.memoryDigest == digestAtThree)
        #expect(replica.state == sent[3].state)

        // Failing over from it: the guest continues exactly.
        let after = Lines()
        let restored = try Machine(restoring: replica.state, memory: replica.memory, console: after.sink)
        try restored.start()
        _ = eventually { after.lines.count >= 10 }
        restored.requestStop()
        _ = restored.waitUntilStopped(timeout: TestHost.scaled(.seconds(10)))
        let all = linesAtThree + after.lines
        #expect(all.count >= 10)
        #expect(all == WorkloadReference.lines(cpu: 0, pages: 16, wss: 1000, every: 300, count: all.count), "\(attack)")
    }
}

/// A running workload machine and its `ReplicationPrimary`, pointed at a
/// listener the test plays the standby on; `released` counts released output.
final class PrimaryFixture {
    let listener: TCPListener
    private final class Count: Sendable { let value = Mutex<Int>(0) }
    private let released = Count()
    let output: OutputBuffer
    let machine: Machine
    let primary: ReplicationPrimary
    let log = CollectedLog()

    init() throws {
        listener = try TCPListener(address: SocketAddress(host: "127.0.0.1", port: 0))
        let released = self.released
        let output = OutputBuffer { _, _ in released.value.withLock { $0 += 1 } }
        self.output = output
        machine = try Machine(configuration: .init(memorySize: 32 << 20, commandLine: "pages=4 wss=64 every=2000", dirtyTracking: .bitmap),
                              console: { bytes in bytes.withUnsafeBytes { output.hold(.console, $0) } })
        try machine.start()
        var configuration = PrimaryConfiguration(standby: SocketAddress(host: "127.0.0.1", port: listener.port),
                                                 engine: EngineConfiguration(epoch: .milliseconds(5)), heartbeatTimeout: .seconds(5))
        configuration.statusInterval = nil
        configuration.reconnectInterval = .milliseconds(100)
        primary = ReplicationPrimary(machine: machine, output: output, configuration: configuration, logger: log.logger)
        do { try primary.start() } catch { stopMachine(); throw error }
    }

    /// How many times output was released.
    var releasedCount: Int { released.value.withLock { $0 } }

    /// Stops replication, then the machine.
    func stop() {
        primary.stop()
        stopMachine()
    }

    private func stopMachine() {
        machine.requestStop()
        _ = machine.waitUntilStopped(timeout: TestHost.scaled(.seconds(10)))
    }
}

/// The primary does not trust its standby either: an acknowledgement of a
/// checkpoint it has not sent whole (or out of order) releases nothing and ends
/// the session for a resync (output stays held).
@Suite("Primary under a hostile standby", .enabled(if: TestHost.kvmAvailable, "needs /dev/kvm"), .deadline(minutes: 10), .serialized)
struct PrimaryHostileStandbyTests {
    @Test func earlyAcknowledgementReleasesNothing() throws {
        let fixture = try PrimaryFixture()
        defer { fixture.stop() }
        let (listener, output, primary) = (fixture.listener, fixture.output, fixture.primary)

        // A "standby" that welcomes the primary, then acknowledges checkpoint 7 at once.
        let link = FrameConnection(try #require(try listener.accept(timeout: .seconds(30))))
        let helloFrame = try link.receive(timeout: .seconds(10))
        let hello = try Hello(payload: helloFrame.payload)
        try link.send(Frame(.welcome, payload: helloFrame.payload))
        try link.send(Frame(.ack, sequence: 7))
        // The primary ends the session for a resync and says why: a standby that
        // acknowledges what it was not sent is not trusted, nor is it taken for gone.
        var frame = try link.receive(timeout: TestHost.scaled(.seconds(30)))
        while frame.kind != .resync { frame = try link.receive(timeout: TestHost.scaled(.seconds(30))) }
        #expect(String(decoding: frame.payload, as: UTF8.self).contains("acknowledged checkpoint 7"))
        #expect(primary.acknowledged == nil, "the bogus acknowledgement was not taken")
        #expect(fixture.releasedCount == 0, "nothing was released")
        // Output stays held and a new session of the same guest begins at once.
        let again = FrameConnection(try #require(try listener.accept(timeout: .seconds(30))))
        let second = try Hello(payload: again.receive(timeout: .seconds(10)).payload)
        #expect(second.guest == hello.guest && second.session != hello.session)
        #expect(primary.status != .unprotected && output.isProtected)
        #expect(fixture.releasedCount == 0, "nothing was released")
    }
}

extension PrimaryHostileStandbyTests {
    /// Sequence numbers start again at 0 in every session, so an acknowledgement
    /// still arriving on the previous session's connection names checkpoints
    /// the new session has sent too: it must release nothing. Only the new
    /// session's own acknowledgement releases the held output.
    @Test func acknowledgementsOfAnOldSessionReleaseNothing() throws {
        let fixture = try PrimaryFixture()
        defer { fixture.stop() }
        let (listener, primary) = (fixture.listener, fixture.primary)

        /// Welcomes a session and reads until checkpoints 0...2 have ended.
        func session() throws -> FrameConnection {
            let link = FrameConnection(try #require(try listener.accept(timeout: TestHost.scaled(.seconds(30)))))
            let hello = try link.receive(timeout: TestHost.scaled(.seconds(10)))
            try link.send(Frame(.welcome, payload: hello.payload))
            var ended: UInt64?
            while ended.map({ $0 < 2 }) ?? true {
                let frame = try link.receive(timeout: TestHost.scaled(.seconds(30)))
                if frame.kind == .checkpointEnd { ended = frame.sequence }
            }
            return link
        }
        let old = try session()
        try old.send(Frame(.resync, payload: Array("test: a new session, please".utf8)))
        let new = try session()
        // The old connection acknowledges what the new session has also sent.
        for sequence: UInt64 in 0...2 { try? old.send(Frame(.ack, sequence: sequence)) }
        // Let the new session run on a while: several more checkpoints.
        var last: UInt64 = 2
        while last < 8 {
            let frame = try new.receive(timeout: TestHost.scaled(.seconds(30)))
            if frame.kind == .checkpointEnd { last = frame.sequence }
        }
        #expect(primary.acknowledged == nil, "no acknowledgement of the old session was taken")
        #expect(fixture.releasedCount == 0, "nothing was released")
        #expect(primary.status == .synchronizing)
        // The new session's own acknowledgement does release (the test can see a release).
        try new.send(Frame(.ack, sequence: 0))
        #expect(eventually(timeout: TestHost.seconds(30)) { primary.acknowledged == 0 && fixture.releasedCount > 0 })
        #expect(primary.status == .protected)
    }
}

@Suite("Primary lifecycle", .enabled(if: TestHost.kvmAvailable, "needs /dev/kvm"), .deadline(minutes: 10))
struct PrimaryLifecycleTests {
    /// A signal and the guest's exit stop the primary at the same moment: both
    /// callers return (one used to wait for ever on a semaphore signalled once).
    @Test func concurrentStopsAllReturn() throws {
        let log = CollectedLog()
        let output = OutputBuffer { _, _ in }
        let machine = try Machine(configuration: .init(memorySize: 32 << 20, commandLine: "pages=4 wss=64 every=2000", dirtyTracking: .bitmap),
                                  console: { bytes in bytes.withUnsafeBytes { output.hold(.console, $0) } })
        defer { machine.requestStop(); _ = machine.waitUntilStopped(timeout: TestHost.scaled(.seconds(10))) }
        try machine.start()
        // Nobody listens on this port: the primary keeps trying, which is all this test needs.
        let unused = try TCPListener(address: SocketAddress(host: "127.0.0.1", port: 0))
        var configuration = PrimaryConfiguration(standby: SocketAddress(host: "127.0.0.1", port: unused.port),
                                                 engine: EngineConfiguration(epoch: .milliseconds(5)))
        configuration.statusInterval = nil
        let primary = ReplicationPrimary(machine: machine, output: output, configuration: configuration, logger: log.logger)
        try primary.start()
        let returned = DispatchGroup()
        for caller in 0..<3 {
            returned.enter()
            Thread.detachNewThread {
                primary.stop(reason: "caller \(caller)")
                returned.leave()
            }
        }
        #expect(returned.wait(timeout: .now() + TestHost.seconds(60)) == .success, "every stop() returned")
        #expect(primary.status == .stopped)
        primary.stop()          // and once more, after the fact
    }
}
