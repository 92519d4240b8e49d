import Foundation
import Glibc
import Synchronization
import TestGuests
import Testing
@testable import Understudy

/// Resets that overtake a session's last word. A side that ends a session for
/// a resync sends the resync frame, then closes; the connection can still be
/// reset before the other side has *read* that frame (it closed on a timeout
/// with frames unread, or a proxy reset it), and the reader's next send fails
/// with ECONNRESET. That failure is not the loss of the peer: the frame that
/// says "resync" is already in the socket, and is read before anything is
/// concluded. Taking it for a loss made a standby take over while its primary
/// ran on (two histories).
enum ConnectionReset {
    /// Waits until every byte sent on `connection` is in the peer's receive
    /// queue (its kernel acknowledged it), then closes with a reset (SO_LINGER
    /// 0) when the caller lets go of the connection.
    static func resetOnceDelivered(_ connection: TCPConnection) {
        var unacknowledged: Int32 = 1
        while ioctl(connection.fd, UInt(TIOCOUTQ), &unacknowledged) == 0, unacknowledged > 0 { usleep(20) }
        var linger = Glibc.linger(l_onoff: 1, l_linger: 0)
        setsockopt(connection.fd, SOL_SOCKET, SO_LINGER, &linger, socklen_t(MemoryLayout<Glibc.linger>.size))
    }
}

@Suite("A reset after a resync", .deadline(minutes: 5), .serialized)
struct ResetAfterResyncTests {
    static let memorySize = 16 << 20
    static var pageCount: Int { memorySize / 4096 }

    /// Checkpoint 0 of a session: every page, all zero.
    static var fullImage: Checkpoint {
        var records: [UInt8] = []
        for page in 0..<pageCount {
            records.appendLittleEndian(UInt32(page))
            records.append(PageEncoding.zero.rawValue)
            records.appendLittleEndian(UInt32(0))
        }
        return Checkpoint(sequence: 0, isFull: true, pageCount: pageCount, pages: records, state: [1, 2, 3])
    }

    /// Checkpoint 1: most pages, random bytes (so that applying it takes the
    /// standby a while, and the reset arrives before its acknowledgement goes).
    static func bigCheckpoint(seed: UInt64) -> Checkpoint {
        var random = SplitMix(seed: seed)
        let pages = pageCount * 3 / 4
        var records: [UInt8] = []
        records.reserveCapacity(pages * (9 + 4096))
        for page in 0..<pages {
            records.appendLittleEndian(UInt32(page))
            records.append(PageEncoding.raw.rawValue)
            records.appendLittleEndian(UInt32(4096))
            for _ in 0..<512 { records.appendLittleEndian(random.next()) }
        }
        return Checkpoint(sequence: 1, isFull: false, pageCount: pages, pages: records, state: [4, 5, 6])
    }

    /// The standby applied checkpoint 1 and could not acknowledge it: the
    /// connection was reset after the primary's resync frame arrived. The
    /// standby reads that frame, ends the session for a resync (no takeover),
    /// keeps checkpoint 1, and resumes when the primary asks; a primary that
    /// does not ask (it ran unprotected) makes it forget the replica, which is
    /// then no takeover point.
    @Test func standbyReadsTheResyncBeforeConcludingAnything() throws {
        let log = CollectedLog()
        let receiver = try StandbyReceiver(configuration: StandbyConfiguration(listen: SocketAddress(host: "127.0.0.1", port: 0),
                                                                               heartbeatTimeout: .seconds(30)), logger: log.logger)
        let address = SocketAddress(host: "127.0.0.1", port: receiver.listener.port)
        let outcome = Mutex<StandbyReceiver.Outcome?>(nil)
        let finished = DispatchSemaphore(value: 0)
        Thread.detachNewThread { let result = receiver.run(); outcome.withLock { $0 = result }; finished.signal() }
        defer { receiver.stop(); finished.wait() }
        let guest = Hello.newSession()
        let full = Self.fullImage

        /// One session: checkpoints 0 and 1, a resync, a reset. The link is
        /// closed (and so reset) when this returns.
        func session(_ attempt: Int) throws {
            let link = FrameConnection(try TCPConnection.connect(to: address))
            let resume = attempt > 1
            try link.send(Frame(.hello, payload: Hello(session: Hello.newSession(), guest: guest, memorySize: UInt64(Self.memorySize), devices: [],
                                                       epochMicroseconds: 5000, flags: resume ? .resume : []).payload))
            let welcome = try link.receive(timeout: .seconds(30))
            #expect(welcome.kind == .welcome, "\(String(decoding: welcome.payload, as: UTF8.self))")
            #expect(try Hello(payload: welcome.payload).flags.contains(.resume) == resume, "an intact replica is resumed when asked")
            try link.send(CheckpointFrames.frames(for: full))
            try StandbyHostileInputTests.receiveAck(link, 0)
            try link.send(CheckpointFrames.frames(for: Self.bigCheckpoint(seed: UInt64(attempt))) + [Frame(.resync, payload: Array("test: resync".utf8))])
            ConnectionReset.resetOnceDelivered(link.connection)
        }

        // The reset usually overtakes the acknowledgement; where it did not, again.
        var attempt = 0
        var overtaken = false
        while !overtaken && attempt < 20 {
            attempt += 1
            try session(attempt)
            #expect(eventually(timeout: 60) { receiver.resyncs == attempt || outcome.withLock { $0 } != nil }, "\(log.text)")
            guard outcome.withLock({ $0 }) == nil else { break }
            overtaken = log.text.contains("but the primary had already ended the session")
        }
        #expect(overtaken, "in \(attempt) sessions the reset never came before the acknowledgement: \(log.text)")
        #expect(outcome.withLock { $0 } == nil, "no takeover while the primary is alive: \(log.text)")
        #expect(!log.text.contains("primary lost"), "\(log.text)")
        #expect(receiver.replica?.committedSequence == 1, "checkpoint 1 was applied and kept")
        #expect(receiver.isTakeoverTarget)

        // A primary that ran unprotected meanwhile does not ask to resume: the
        // standby forgets its replica, and losing that primary before its new
        // full image commits is no takeover (there is nothing safe to take over).
        do {
            let link = FrameConnection(try TCPConnection.connect(to: address))
            try link.send(Frame(.hello, payload: Hello(session: Hello.newSession(), guest: guest, memorySize: UInt64(Self.memorySize), devices: [],
                                                       epochMicroseconds: 5000).payload))
            let welcome = try link.receive(timeout: .seconds(30))
            #expect(welcome.kind == .welcome)
            #expect(try !Hello(payload: welcome.payload).flags.contains(.resume))
            #expect(!receiver.isTakeoverTarget, "the replica is forgotten")
            link.shutdown()
        }
        #expect(eventually(timeout: 60) { log.text.contains("session ended before any checkpoint committed") }, "\(log.text)")
        #expect(outcome.withLock { $0 } == nil, "no takeover from a forgotten replica: \(log.text)")
    }
}

/// The primary's side: a standby that ends the session for a resync and resets
/// the connection at once is asked to resume (the primary held its output); a
/// standby whose connection is reset without a word is lost, the primary runs
/// unprotected and releases its output, and so its next hello does not ask to
/// resume (the standby's replica is no takeover point any more).
@Suite("A reset after a resync, at the primary", .enabled(if: TestHost.kvmAvailable, "needs /dev/kvm"), .deadline(minutes: 10), .serialized)
struct PrimaryResetAfterResyncTests {
    @Test func theHelloAsksToResumeOnlyWhileOutputWasHeld() throws {
        let fixture = try PrimaryFixture()
        defer { fixture.stop() }
        let (listener, primary) = (fixture.listener, fixture.primary)

        /// Welcomes a session and reads until checkpoint 2 has ended; the hello it got.
        func session() throws -> (FrameConnection, Hello) {
            let link = FrameConnection(try #require(try listener.accept(timeout: TestHost.scaled(.seconds(30)))))
            let frame = try link.receive(timeout: TestHost.scaled(.seconds(10)))
            try link.send(Frame(.welcome, payload: frame.payload))
            var ended: UInt64?
            while ended.map({ $0 < 2 }) ?? true {
                let next = try link.receive(timeout: TestHost.scaled(.seconds(30)))
                if next.kind == .checkpointEnd { ended = next.sequence }
            }
            return (link, try Hello(payload: frame.payload))
        }

        let first: Hello
        do {
            let (link, hello) = try session()
            first = hello
            #expect(!hello.flags.contains(.resume), "a first session resumes nothing")
            try link.send(Frame(.resync, payload: Array("test: resync".utf8)))
            ConnectionReset.resetOnceDelivered(link.connection)
        }
        let second: Hello
        do {
            let (link, hello) = try session()
            second = hello
            #expect(hello.guest == first.guest)
            #expect(hello.flags.contains(.resume), "output was held since the resync: \(fixture.log.text)")
            #expect(!fixture.log.text.contains("standby lost"), "the resync was read: \(fixture.log.text)")
            #expect(fixture.releasedCount == 0 && primary.status != .unprotected)
            ConnectionReset.resetOnceDelivered(link.connection)   // gone without a word
        }
        #expect(eventually(timeout: 60) { primary.status == .unprotected }, "\(fixture.log.text)")
        let (_, third) = try session()
        #expect(third.guest == second.guest)
        #expect(!third.flags.contains(.resume), "the primary ran unprotected: the standby's replica must be forgotten")
    }
}
