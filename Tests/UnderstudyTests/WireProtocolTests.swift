import Foundation
import Synchronization
import TestGuests
import Testing
@testable import Understudy

/// The replication protocol's pure parts: frames, handshake, checkpoint
/// framing, output records, announcements; and a damage fuzzer over all of them.
@Suite("Wire protocol")
struct WireProtocolTests {
    static func sampleCheckpoint(_ generator: inout SplitMix, sequence: UInt64 = 7) -> Checkpoint {
        let pages = (0..<Int(generator.next() % 5000)).map { _ in UInt8(truncatingIfNeeded: generator.next()) }
        let state = (0..<Int(generator.next() % 300)).map { _ in UInt8(truncatingIfNeeded: generator.next()) }
        let output = OutputRecord.encode([OutputRecord(kind: .console, bytes: Array("seq=1\n".utf8)),
                                          OutputRecord(kind: .network, bytes: [UInt8](repeating: 0xEE, count: Int(generator.next() % 200)))])
        return Checkpoint(sequence: sequence, isFull: generator.next() % 2 == 0, pageCount: 3, pages: pages, state: state, output: output)
    }

    /// Frames split at every kind of boundary come back whole and in order.
    @Test func framesSurviveAnySplit() throws {
        var generator = SplitMix(state: 11)
        let checkpoint = Self.sampleCheckpoint(&generator)
        let frames = [Frame(.heartbeat, sequence: 1)] + CheckpointFrames.frames(for: checkpoint, releasedThrough: 5, chunkSize: 700)
            + [Frame(.ack, sequence: 7)]
        let stream = frames.flatMap(\.encoded)
        for _ in 0..<200 {
            var decoder = FrameDecoder()
            var decoded: [Frame] = []
            var offset = 0
            while offset < stream.count {
                let take = min(stream.count - offset, 1 + Int(generator.next() % 900))
                decoder.append(Array(stream[offset..<(offset + take)]))
                offset += take
                while let frame = try decoder.next() { decoded.append(frame) }
            }
            #expect(decoded == frames)
        }
        var assembler = CheckpointAssembler(guestPages: 10)
        var result: (checkpoint: Checkpoint, releasedThrough: UInt64)?
        for frame in frames where [.checkpointBegin, .checkpointData, .checkpointEnd].contains(frame.kind) {
            result = try assembler.take(frame)
        }
        #expect(result?.checkpoint == checkpoint)
        #expect(result?.releasedThrough == 5)
    }

    @Test func helloRoundTripsAndRefusesOtherVersions() throws {
        let hello = Hello(session: Hello.newSession(), guest: Hello.newSession(), memorySize: 256 << 20, devices: [.network], epochMicroseconds: 5000,
                          mac: [0x52, 0x54, 0, 1, 2, 3], flags: .resume)
        #expect(hello.payload.count == Hello.payloadSize)
        #expect(try Hello(payload: hello.payload) == hello)
        var other = hello
        other.version = 9
        #expect(throws: WireError.refused("protocol version 9, this side speaks version \(Hello.protocolVersion)")) { try Hello(payload: other.payload) }
        #expect(throws: WireError.self) { try Hello(payload: Array(hello.payload.dropLast())) }
        var unknownFlag = hello.payload
        unknownFlag[2] |= 0x80
        #expect(throws: WireError.malformed("hello flags 0x81")) { try Hello(payload: unknownFlag) }
    }

    @Test func checkpointBeginBoundsAreEnforced() throws {
        var begin = CheckpointBegin(Checkpoint(sequence: 1, isFull: false, pageCount: 4, pages: [1, 2], state: [3]))
        #expect(try CheckpointBegin(payload: begin.payload, guestPages: 4) == begin)
        #expect(throws: WireError.self) { try CheckpointBegin(payload: begin.payload, guestPages: 3) }
        begin.pagesLength = UInt64(4 * CheckpointBegin.maximumRecordBytes + 1)
        #expect(throws: WireError.self) { try CheckpointBegin(payload: begin.payload, guestPages: 4) }
        begin.pagesLength = 2
        begin.outputLength = UInt32(CheckpointBegin.maximumOutputBytes + 1)
        #expect(throws: WireError.self) { try CheckpointBegin(payload: begin.payload, guestPages: 4) }
    }

    @Test func outputRecordsRoundTripAndRejectDamage() throws {
        let records = [OutputRecord(kind: .console, bytes: Array("hello\n".utf8)), OutputRecord(kind: .network, bytes: [1, 2, 3]),
                       OutputRecord(kind: .console, bytes: [])]
        let bytes = OutputRecord.encode(records)
        #expect(try OutputRecord.decode(bytes) == records)
        for cut in 1..<bytes.count where ![bytes.count - 5, bytes.count - 5 - 8].contains(cut) {
            #expect(throws: OutputRecord.DecodeError.self) { try OutputRecord.decode(Array(bytes.prefix(cut))) }
        }
        var badKind = bytes
        badKind[0] = 7
        #expect(throws: OutputRecord.DecodeError.self) { try OutputRecord.decode(badKind) }
    }

    /// The output buffer holds by epoch, hands each epoch's records to its
    /// checkpoint, releases on commit in order, and passes through when unprotected.
    @Test func outputBufferHoldsByEpoch() throws {
        let released = Mutex<[[UInt8]]>([])
        let buffer = OutputBuffer(capacityBytes: 10) { _, bytes in released.withLock { $0.append(bytes) } }
        func hold(_ kind: OutputRecord.Kind, _ bytes: [UInt8]) { bytes.withUnsafeBytes { buffer.hold(kind, $0) } }
        hold(.console, [1])
        hold(.network, [2, 2])
        #expect(try OutputRecord.decode(buffer.closeEpoch(0)) == [OutputRecord(kind: .console, bytes: [1]), OutputRecord(kind: .network, bytes: [2, 2])])
        hold(.console, [3])
        hold(.network, [UInt8](repeating: 9, count: 20))   // over the cap: dropped
        #expect(buffer.dropped == 1)
        #expect(released.withLock { $0 }.isEmpty, "nothing leaves before its checkpoint commits")
        buffer.commit(upTo: 0)
        #expect(released.withLock { $0 } == [[1], [2, 2]])
        #expect(buffer.closeEpoch(1) == OutputRecord.encode([OutputRecord(kind: .console, bytes: [3])]))
        hold(.console, [4])
        #expect(buffer.passThrough() == 2)
        #expect(released.withLock { $0 } == [[1], [2, 2], [3], [4]])
        hold(.console, [5])
        #expect(released.withLock { $0 }.last == [5])
    }

    /// The released-through mark a primary sends is never ahead of the world:
    /// while epoch 0's output is still being written out, the mark says none.
    @Test func releasedMarkFollowsTheRelease() throws {
        let inRelease = DispatchSemaphore(value: 0), proceed = DispatchSemaphore(value: 0)
        let buffer = OutputBuffer { _, _ in inRelease.signal(); proceed.wait() }
        [UInt8]([1]).withUnsafeBytes { buffer.hold(.console, $0) }
        _ = buffer.closeEpoch(0)
        let committed = DispatchSemaphore(value: 0)
        Thread.detachNewThread { buffer.commit(upTo: 0); committed.signal() }
        inRelease.wait()
        #expect(buffer.releasedThrough == nil, "epoch 0 is acknowledged but its output is not out yet")
        proceed.signal()
        committed.wait()
        #expect(buffer.releasedThrough == 0)
        buffer.protect()
        #expect(buffer.releasedThrough == nil, "a new session starts with nothing released")
    }

    /// Output held before the first session (the boot banner, everything while
    /// connecting), and output of a session that ended unacknowledged, travels in
    /// the new session's checkpoint 0, so a standby that commits 0 can release it.
    @Test func heldOutputTravelsInTheNextSessionsFirstCheckpoint() throws {
        let released = Mutex<[[UInt8]]>([])
        let buffer = OutputBuffer { _, bytes in released.withLock { $0.append(bytes) } }
        func hold(_ bytes: [UInt8]) { bytes.withUnsafeBytes { buffer.hold(.console, $0) } }
        hold([1])                         // before any session
        buffer.protect()
        hold([2])
        #expect(try OutputRecord.decode(buffer.closeEpoch(0)).map(\.bytes) == [[1], [2]])
        hold([3])
        _ = buffer.closeEpoch(1)
        buffer.commit(upTo: 0)
        #expect(released.withLock { $0 } == [[1], [2]])
        // The session ends before 1 is acknowledged; a new one starts.
        buffer.protect()
        hold([4])
        #expect(try OutputRecord.decode(buffer.closeEpoch(0)).map(\.bytes) == [[3], [4]], "epoch 1's output rides in the new checkpoint 0")
        buffer.commit(upTo: 0)
        #expect(released.withLock { $0 } == [[1], [2], [3], [4]])
    }

    /// Console output is bounded like network output. Past the bound it is
    /// dropped and counted, and once there is room a line says how much was lost.
    @Test func consoleOutputIsBoundedAndTheLossIsSaid() throws {
        let released = Mutex<[UInt8]>([])
        let buffer = OutputBuffer(capacityBytes: 1000, consoleCapacityBytes: 300) { _, bytes in released.withLock { $0 += bytes } }
        let line = [UInt8](repeating: 0x61, count: 95)
        for _ in 0..<5 { line.withUnsafeBytes { buffer.hold(.console, $0) } }
        #expect(buffer.bytesHeld == 300, "three 95-byte items and their headers")
        #expect(buffer.consoleBytesDropped == 190)
        #expect(try OutputRecord.decode(buffer.closeEpoch(0)).count == 3, "what a checkpoint carries stays within the bound")
        buffer.commit(upTo: 0)
        [UInt8]([0x62]).withUnsafeBytes { buffer.hold(.console, $0) }
        _ = buffer.closeEpoch(1)
        buffer.commit(upTo: 1)
        let text = String(decoding: released.withLock { $0 }, as: UTF8.self)
        #expect(text.hasSuffix("[understudy: 190 bytes of console output dropped: held output reached its bound of 300 bytes while the standby fell behind]\nb"), "\(text)")
    }

    @Test func announcementFrames() {
        let mac: [UInt8] = [0x52, 0x54, 0, 0xAA, 0xBB, 0xCC]
        let frames = Announcement.frames(mac: mac, addresses: [[10, 77, 0, 2]])
        #expect(frames.count == 4)
        #expect(frames.allSatisfy { $0.count == 60 && Array($0[0..<6]) == [0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF] && Array($0[6..<12]) == mac })
        #expect(Array(frames[0][12..<14]) == [0x80, 0x35], "RARP")
        #expect(Array(frames[3][12..<14]) == [0x08, 0x06], "ARP")
        #expect(Array(frames[3][28..<32]) == [10, 77, 0, 2] && Array(frames[3][38..<42]) == [10, 77, 0, 2], "gratuitous: sender = target")
        #expect(Announcement.senderAddress(of: frames[3], mac: mac) == [10, 77, 0, 2])
        #expect(Announcement.senderAddress(of: frames[3], mac: [1, 2, 3, 4, 5, 6]) == nil)
    }

    @Test func addressesParse() throws {
        #expect(try SocketAddress(parsing: "127.0.0.1:7700") == SocketAddress(host: "127.0.0.1", port: 7700))
        #expect(throws: WireError.self) { try SocketAddress(parsing: "127.0.0.1") }
        #expect(throws: WireError.self) { try SocketAddress(parsing: "127.0.0.1:0") }
        #expect(try SocketAddress(parsing: "127.0.0.1:0", listening: true).port == 0)
        #expect(throws: WireError.self) { try SocketAddress(parsing: ":80") }
        #expect(throws: WireError.self) { try SocketAddress(parsing: "h:99999") }
    }

    /// The handover payload round-trips, with and without its parts, and
    /// anything else is refused with a reason: random bytes (and real payloads
    /// cut or extended) never crash, and whatever is accepted re-encodes to
    /// the same bytes.
    @Test func handoverPayloadsRoundTripAndRefuseDamage() throws {
        for handover in [Handover(releasedThrough: 41, standby: SocketAddress(host: "10.0.0.2", port: 7701)),
                         Handover(releasedThrough: nil, standby: nil), Handover(releasedThrough: 0, standby: nil)] {
            #expect(try Handover(payload: handover.payload) == handover)
        }
        #expect(throws: WireError.self) { try Handover(payload: [1, 2, 3]) }
        #expect(throws: WireError.self) { try Handover(payload: [UInt8](repeating: 0, count: 8) + Array("no-port".utf8)) }
        #expect(throws: WireError.self) { try Handover(payload: [UInt8](repeating: 0, count: 8) + [0xFF, 0xFE, 0x3A, 0x31]) }
        #expect(throws: WireError.self) { try Handover(payload: [UInt8](repeating: 0, count: 8) + Array(repeating: 0x31, count: 256)) }
        var generator = SystemRandomNumberGenerator()
        let real = Handover(releasedThrough: 7, standby: SocketAddress(host: "127.0.0.1", port: 7000)).payload
        var accepted = 0
        for round in 0..<20_000 {
            var bytes: [UInt8]
            switch round % 3 {
            case 0: bytes = (0..<Int.random(in: 0...40, using: &generator)).map { _ in UInt8.random(in: 0...255, using: &generator) }
            case 1: bytes = Array(real.prefix(Int.random(in: 0...real.count, using: &generator)))
            default:
                bytes = real
                bytes[Int.random(in: 0..<bytes.count, using: &generator)] = UInt8.random(in: 0...255, using: &generator)
            }
            if let handover = try? Handover(payload: bytes) {
                accepted += 1
                #expect(try Handover(payload: handover.payload) == handover)
            }
        }
        print("handover fuzz: 20,000 payloads, \(accepted) accepted (and re-read the same), none crashed")
    }

    /// While releases are suspended (a switchover), acknowledged output stays
    /// held and the released mark does not move: exactly what the standby
    /// releases instead. Resumed (an abandoned switchover), it goes in order.
    @Test func suspendedReleasesHoldAcknowledgedOutput() throws {
        let released = Lines()
        let buffer = OutputBuffer { _, bytes in released.sink(bytes + [0x0A]) }
        buffer.protect()
        func say(_ text: String) { Array(text.utf8).withUnsafeBytes { buffer.hold(.console, $0) } }
        say("zero")
        _ = buffer.closeEpoch(0)
        buffer.commit(upTo: 0)
        #expect(released.lines == ["zero"] && buffer.releasedThrough == 0)
        say("one")
        buffer.suspendReleases()
        _ = buffer.closeEpoch(1)
        buffer.commit(upTo: 1)
        #expect(released.lines == ["zero"], "nothing leaves while suspended")
        #expect(buffer.releasedThrough == 0, "the mark tells the standby what to release")
        buffer.passThrough()
        say("two")
        #expect(released.lines == ["zero"], "not even in pass-through")
        buffer.resumeReleases()
        #expect(released.lines == ["zero", "one", "two"], "resumed: in order")
    }

    /// Damage fuzzer: streams of real frames cut, flipped, extended or shuffled
    /// go through the decoder, the handshake and the checkpoint assembler, and
    /// then the replica; each either errors or yields something well-formed.
    /// Nothing crashes. 1,000 streams; `UNDERSTUDY_FUZZ_CASES` runs more.
    @Test func damagedStreamsNeverCrash() throws {
        let total = Int(ProcessInfo.processInfo.environment["UNDERSTUDY_FUZZ_CASES"] ?? "") ?? 1_000
        var generator = SplitMix(state: 29)
        var cases = 0, rejected = 0
        let replica = try ReplicaImage(memorySize: 64 << 10)
        while cases < total {
            cases += 1
            let checkpoint = Self.sampleCheckpoint(&generator, sequence: generator.next() % 3)
            let hello = Frame(.hello, payload: Hello(session: Hello.newSession(), memorySize: 64 << 10, devices: [], epochMicroseconds: 1).payload)
            var stream = ([hello] + CheckpointFrames.frames(for: checkpoint, chunkSize: 1 + Int(generator.next() % 2000))).flatMap(\.encoded)
            for _ in 0..<(1 + generator.next() % 4) {
                let at = Int(generator.next() % UInt64(stream.count))
                switch generator.next() % 4 {
                case 0: stream.removeLast(Int(generator.next() % UInt64(stream.count - at)) )
                case 1: stream[at] ^= UInt8(1 + generator.next() % 255)
                case 2: stream.insert(contentsOf: (0..<(generator.next() % 16)).map { _ in UInt8(truncatingIfNeeded: generator.next()) }, at: at)
                default: stream.replaceSubrange(at..<min(stream.count, at + 4), with: [0xFF, 0xFF, 0xFF, 0x7F])
                }
                if stream.isEmpty { stream = [0] }
            }
            var decoder = FrameDecoder()
            decoder.append(stream)
            var assembler = CheckpointAssembler(guestPages: 16)
            do {
                while let frame = try decoder.next() {
                    if frame.kind == .hello { _ = try Hello(payload: frame.payload); continue }
                    if let (assembled, _) = try assembler.take(frame) { try replica.apply(assembled) }
                }
            } catch {
                rejected += 1
            }
        }
        print("wire fuzz: \(cases) damaged streams, \(rejected) rejected with an error, none crashed")
        #expect(cases == total)
        #expect(rejected > 0, "the damage reached the error paths")
    }
}
