import Foundation
import TestGuests
import Understudy
import Testing

/// Primary and standby as separate processes on loopback, the built-in
/// workload guest, and failures made with SIGKILL.
@Suite("Replication across processes", .enabled(if: TestHost.kvmAvailable, "needs /dev/kvm"), .deadline(minutes: 10), .serialized)
struct ReplicationProcessTests {
    static let workload = (pages: 16, wss: 256, every: 5000)
    static let cmdline = "pages=\(workload.pages) wss=\(workload.wss) every=\(workload.every)"

    static func standby(port: UInt16 = 0) throws -> (ChildProcess, UInt16) {
        let standby = try ChildProcess("understudy-standby", ["--listen", "127.0.0.1:\(port)", "--heartbeat-timeout", "2s"])
        let bound = try #require(standby.listeningPort(), "the standby logs where it listens: \(standby.standardError.text)")
        return (standby, bound)
    }

    static func primary(port: UInt16, epoch: String = "5ms") throws -> ChildProcess {
        try ChildProcess("understudy-primary", ["--standby", "127.0.0.1:\(port)", "--memory", "32M", "--epoch", epoch,
                                                "--heartbeat-timeout", "2s", "--status-interval", "1s", "--cmdline", cmdline])
    }

    /// What the world saw (the primary's output, then the standby's) is exactly
    /// the workload's deterministic stream: the primary's output is a prefix of
    /// it, the standby's continues it with no gap, repeating at most the output
    /// it released for the unacknowledged epochs.
    static func expectContinuous(primary: [UInt8], standby: [UInt8], standbyLog: String) {
        let count = (primary + standby).filter { $0 == 10 }.count + 5
        let expected = Array(WorkloadReference.lines(cpu: 0, pages: workload.pages, wss: workload.wss, every: workload.every, count: count)
            .map { $0 + "\n" }.joined().utf8)
        let matches = expected.starts(with: primary)
        let firstDifference = zip(expected, primary).enumerated().first { $0.element.0 != $0.element.1 }?.offset ?? min(expected.count, primary.count)
        #expect(matches, "the primary printed what the guest computes; first difference at byte \(firstDifference): \(String(decoding: primary[max(0, firstDifference - 80)..<min(primary.count, firstDifference + 80)], as: UTF8.self))")
        var released = 0
        if let range = standbyLog.range(of: #"bytes=[0-9]+"#, options: .regularExpression) {
            released = Int(standbyLog[range].dropFirst(6)) ?? 0
        }
        let latest = primary.count, earliest = max(0, primary.count - released)
        let start = (earliest...max(earliest, latest)).first { k in
            k + standby.count <= expected.count && expected[k..<(k + standby.count)].elementsEqual(standby)
        }
        #expect(start != nil, "the standby's output continues the primary's with no gap (primary \(primary.count) bytes, released \(released))")
        if let start { #expect(primary.count - start <= released, "at most the released epochs are seen twice") }
    }

    /// SIGKILLs the primary, waits for `lines` more lines from the standby that
    /// took over, stops it, and checks the world's output is one stream.
    static func killPrimaryAndExpectTheStandbyContinues(_ primary: ChildProcess, _ standby: ChildProcess, lines: Int = 20) {
        primary.signal(SIGKILL)
        _ = primary.waitForExit()
        let before = standby.standardOutput.lines.count
        #expect(eventually(timeout: 120) { standby.standardOutput.lines.count >= before + lines }, "the guest runs on: \(standby.standardError.text)")
        standby.signal(SIGTERM)
        #expect(standby.waitForExit())
        #expect(standby.standardError.text.contains("taking over from checkpoint"))
        Self.expectContinuous(primary: primary.standardOutput.data, standby: standby.standardOutput.data, standbyLog: standby.standardError.text)
    }

    /// 20 SIGKILLs on native KVM, 5 in the KVM box (where each takes ~10x longer).
    static var runs: Int { Int(ProcessInfo.processInfo.environment["UNDERSTUDY_FAILOVER_RUNS"] ?? "") ?? TestHost.rounds(20, minimum: 5) }

    /// SIGKILL the primary at a random moment: the world's output continues
    /// exactly on the standby, which keeps running the guest.
    @Test(arguments: 0..<runs)
    func workloadContinuesAfterPrimaryIsKilled(run: Int) throws {
        let (standby, port) = try Self.standby()
        let primary = try Self.primary(port: port)
        #expect(eventually(timeout: 60) { primary.standardError.text.contains("protected by the standby") },
                "primary: \(primary.standardError.text)")
        usleep(UInt32.random(in: 100_000...1_500_000))
        Self.killPrimaryAndExpectTheStandbyContinues(primary, standby)
        let log = standby.standardError.text
        if let longest = log.range(of: #"longest-silence=[0-9]+ ms"#, options: .regularExpression),
           let last = log.range(of: #"silent-for=[0-9]+ ms"#, options: .regularExpression) {
            print("failover run \(run): \(log[longest]) between frames from the primary; \(log[last]) when its loss was seen")
        }
    }

    /// The standby dies: the primary runs on unprotected and says so, a new
    /// standby on the same address gets a full image and protects it again, and
    /// a failover to that standby then works.
    @Test func newStandbyAfterTheFirstDies() throws {
        let (first, port) = try Self.standby()
        let primary = try Self.primary(port: port)
        #expect(eventually(timeout: 60) { primary.standardError.text.contains("protected by the standby") })
        first.signal(SIGKILL)
        _ = first.waitForExit()
        #expect(eventually(timeout: 30) { primary.standardError.text.contains("RUNNING UNPROTECTED") })
        #expect(eventually(timeout: 30) { primary.standardError.text.contains("status: UNPROTECTED") }, "the status line says so")
        let linesUnprotected = primary.standardOutput.lines.count
        #expect(eventually(timeout: 30) { primary.standardOutput.lines.count > linesUnprotected + 10 }, "output flows while unprotected")

        let (second, _) = try Self.standby(port: port)
        #expect(eventually(timeout: 60) { primary.standardError.text.components(separatedBy: "protected by the standby").count == 3 },
                "protected again: \(primary.standardError.text)")
        #expect(eventually(timeout: 10) { second.standardError.text.contains("full image committed") })
        #expect(eventually(timeout: 30) { primary.standardError.text.components(separatedBy: "status: PROTECTED").count > 1 },
                "status lines report protection with checkpoints/s, pause and held output")
        usleep(300_000)
        Self.killPrimaryAndExpectTheStandbyContinues(primary, second)
    }

    /// The guest exits by itself on the primary: all its output is released, the
    /// standby is told goodbye and does not take over. The two sides run with
    /// different heartbeat timeouts (standby 2 s, primary the default 200 ms):
    /// the standby's heartbeats must still reach the primary in time.
    @Test func guestExitIsNotAFailover() throws {
        let (standby, port) = try Self.standby()
        let primary = try ChildProcess("understudy-primary", ["--standby", "127.0.0.1:\(port)", "--memory", "32M", "--epoch", "5ms",
                                                              "--cmdline", Self.cmdline + " count=30"])
        #expect(primary.waitForExit(timeout: 120))
        #expect(primary.exitStatus == 0)
        #expect(standby.waitForExit(timeout: 30), "the standby exits after goodbye: \(standby.standardError.text)")
        #expect(standby.exitStatus == 0)
        #expect(standby.standardOutput.data.count == 0, "nothing ran on the standby")
        #expect(!standby.standardError.text.contains("taking over"), "standby: \(standby.standardError.text)")
        #expect(primary.standardOutput.lines == WorkloadReference.lines(cpu: 0, pages: Self.workload.pages, wss: Self.workload.wss,
                                                                        every: Self.workload.every, count: 30))
    }

    /// One bit flipped on the link between a protected primary and its standby,
    /// in either direction. What arrives damaged ends the session *without* a
    /// takeover (the peer is alive): the standby keeps its replica, the primary
    /// keeps holding output and resynchronises, and is protected again. Only
    /// one copy of the guest ever speaks; when the primary is then killed, the
    /// standby's output continues the primary's exactly (the resync was right).
    @Test(arguments: DamagingProxy.Direction.allCases)
    func damagedFrameIsAResyncNotATakeover(direction: DamagingProxy.Direction) throws {
        let (standby, port) = try Self.standby()
        let proxy = try DamagingProxy(to: SocketAddress(host: "127.0.0.1", port: port))
        defer { proxy.stop() }
        let primary = try Self.primary(port: proxy.port)
        let protected = { primary.standardError.text.components(separatedBy: "protected by the standby").count - 1 }
        #expect(eventually(timeout: 120) { protected() == 1 && primary.standardOutput.lines.count >= 3 }, "\(primary.standardError.text)")
        proxy.flipOneBit(direction)
        #expect(eventually(timeout: 60) { proxy.flipped == 1 })
        #expect(eventually(timeout: 120) { primary.standardError.text.contains("session ended for a resync") }, "primary: \(primary.standardError.text)")
        #expect(eventually(timeout: 120) { protected() == 2 }, "protected again: \(primary.standardError.text)")
        let before = primary.standardOutput.lines.count
        #expect(eventually(timeout: 60) { primary.standardOutput.lines.count > before + 2 }, "the guest's output still flows")
        #expect(standby.exitStatus == nil, "the standby runs on: \(standby.standardError.text)")
        #expect(!standby.standardError.text.contains("taking over"), "no takeover: \(standby.standardError.text)")
        #expect(standby.standardOutput.data.count == 0, "nothing ran on the standby")
        #expect(!primary.standardError.text.contains("RUNNING UNPROTECTED"), "\(primary.standardError.text)")
        #expect(standby.standardError.text.contains(direction == .toStandby ? "ending the session without a takeover" : "the primary ended the session for a resync"),
                "\(standby.standardError.text)")

        Self.killPrimaryAndExpectTheStandbyContinues(primary, standby, lines: 5)
    }

    /// The primary's standard output is a pipe nobody reads any more: writing
    /// the guest's console fails with EPIPE. That is an error in the log, not
    /// a SIGPIPE that kills the only copy of the guest: it runs to its end
    /// (exit code 0), and the standby is told goodbye.
    @Test func closedStandardOutputIsAnErrorNotACrash() throws {
        let (standby, port) = try Self.standby()
        let primary = try ChildProcess("understudy-primary", ["--standby", "127.0.0.1:\(port)", "--memory", "32M", "--epoch", "5ms",
                                                              "--cmdline", Self.cmdline + " count=30"], closingStandardOutput: true)
        #expect(primary.waitForExit(timeout: 120))
        #expect(primary.process.terminationReason == .exit, "the primary was not killed by a signal: \(primary.standardError.text)")
        #expect(primary.exitStatus == 0, "the guest's own exit code: \(primary.standardError.text)")
        #expect(primary.standardError.text.contains("could not be written to standard output"), "\(primary.standardError.text)")
        #expect(primary.standardError.text.contains("Broken pipe"), "\(primary.standardError.text)")
        #expect(standby.waitForExit(timeout: 30), "the standby exits after goodbye: \(standby.standardError.text)")
        #expect(!standby.standardError.text.contains("taking over"), "standby: \(standby.standardError.text)")
    }

    /// An orderly stop of the primary: the standby is told goodbye and does not take over.
    @Test func orderlyStopIsNotAFailover() throws {
        let (standby, port) = try Self.standby()
        let primary = try Self.primary(port: port)
        #expect(eventually(timeout: 60) { primary.standardError.text.contains("protected by the standby") })
        primary.signal(SIGTERM)
        #expect(primary.waitForExit())
        #expect(standby.waitForExit(timeout: 30), "the standby exits after goodbye")
        #expect(standby.standardOutput.data.count == 0, "nothing ran on the standby")
        #expect(standby.standardError.text.contains("primary said goodbye"), "standby: \(standby.standardError.text)")
        Self.expectContinuous(primary: primary.standardOutput.data, standby: [], standbyLog: "")
    }
}

/// The journal guest on virtio-blk, replicated between processes with a disk
/// image on each side; SIGKILL the primary at random moments: every record the
/// world was told is flushed is on the standby's image, intact, and the guest
/// keeps appending there.
@Suite("Disk replication across processes", .enabled(if: TestHost.kvmAvailable, "needs /dev/kvm"), .deadline(minutes: 10), .serialized)
struct DiskReplicationProcessTests {
    static var runs: Int { Int(ProcessInfo.processInfo.environment["UNDERSTUDY_DISK_FAILOVER_RUNS"] ?? "") ?? 4 }

    @Test(arguments: 0..<runs)
    func reportedRecordsSurviveTheLossOfThePrimary(run: Int) throws {
        _ = try GuestPrograms.image("journal")
        let image = GuestPrograms.packageRoot.appendingPathComponent("Guests/build/journal.elf").path
        let primaryDisk = JournalImage.makeImage(megabytes: 64)
        let standbyDisk = JournalImage.makeImage(megabytes: 64)
        defer { try? FileManager.default.removeItem(atPath: primaryDisk); try? FileManager.default.removeItem(atPath: standbyDisk) }
        let standby = try ChildProcess("understudy-standby", ["--listen", "127.0.0.1:0", "--disk", standbyDisk, "--heartbeat-timeout", "2s"])
        let port = try #require(standby.listeningPort())
        let primary = try ChildProcess("understudy-primary", [
            "--standby", "127.0.0.1:\(port)", "--guest", image, "--disk", primaryDisk, "--memory", "32M",
            "--cmdline", "flush_every=8", "--epoch", "5ms", "--heartbeat-timeout", "2s"])
        #expect(eventually(timeout: 60) { primary.standardError.text.contains("protected by the standby") }, "primary: \(primary.standardError.text)")
        usleep(UInt32.random(in: 200_000...1_500_000))
        primary.signal(SIGKILL)
        _ = primary.waitForExit()
        let before = JournalImage.flushed(in: standby.standardOutput.lines).count
        #expect(eventually(timeout: 60) { JournalImage.flushed(in: standby.standardOutput.lines).count >= before + 5 },
                "the journal goes on: \(standby.standardError.text)")
        standby.signal(SIGTERM)
        #expect(standby.waitForExit(timeout: 60), "the standby stops on SIGTERM: \(standby.standardError.text.suffix(3000))")
        let seenOnPrimary = JournalImage.flushed(in: primary.standardOutput.lines)
        let seenOnStandby = JournalImage.flushed(in: standby.standardOutput.lines)
        let reported = seenOnPrimary + seenOnStandby
        #expect(!seenOnPrimary.isEmpty, "the primary reported flushes before it died")
        let onDisk = try JournalImage.recordCount(path: standbyDisk)
        #expect(onDisk >= reported.max() ?? .max, "every reported record is on the standby's disk, intact (\(onDisk) records, reported up to \(reported.max() ?? 0))")
        // Reports continue without a gap (at most the unacknowledged epochs repeated).
        if let last = seenOnPrimary.last, let first = seenOnStandby.first {
            #expect(first <= last + 8, "no report lost across the failover: primary ended at \(last), standby began at \(first)")
        }
    }

    /// The journal guest writes its disk as fast as it can for a minute while
    /// the standby sits behind a link shaped to 8 Mbit/s (tc tbf on a veth into
    /// a network namespace): the guest is held to the link's pace (throttled
    /// epochs), no session ends, nobody takes over, and every record the
    /// primary reported flushed is on the standby's image. Before the disk
    /// budget, a stretched epoch grew with every round trip until a checkpoint
    /// passed what a standby accepts, and the standby took over a live primary.
    @Test(.enabled(if: TestNetwork.available, "needs root and ip(8)"))
    func aFastWriterOnAThrottledLinkKeepsItsSession() throws {
        _ = try GuestPrograms.image("journal")
        let image = GuestPrograms.packageRoot.appendingPathComponent("Guests/build/journal.elf").path
        let link = try ThrottledLink(rate: "8mbit")
        defer { link.tearDown() }
        let primaryDisk = JournalImage.makeImage(megabytes: 512)
        let standbyDisk = JournalImage.makeImage(megabytes: 512)
        defer { try? FileManager.default.removeItem(atPath: primaryDisk); try? FileManager.default.removeItem(atPath: standbyDisk) }
        let standby = try ChildProcess("understudy-standby", ["--listen", "\(link.peerAddress):0", "--disk", standbyDisk, "--heartbeat-timeout", "2s"],
                                       launcher: link.launcher)
        let port = try #require(standby.listeningPort())
        let primary = try ChildProcess("understudy-primary", [
            "--standby", "\(link.peerAddress):\(port)", "--guest", image, "--disk", primaryDisk, "--memory", "32M",
            "--cmdline", "flush_every=64", "--epoch", "5ms", "--heartbeat-timeout", "2s", "--status-interval", "1s", "--disk-budget", "2M"])
        #expect(eventually(timeout: 120) { primary.standardError.text.contains("protected by the standby") }, "primary: \(primary.standardError.text)")
        // A minute of writing as fast as the guest can.
        let end = Date().addingTimeInterval(60)
        while Date() < end, primary.isRunning, standby.isRunning { Thread.sleep(forTimeInterval: 1) }
        let log = primary.standardError.text, standbyLog = standby.standardError.text
        #expect(primary.isRunning && standby.isRunning, "both still run: \(log.suffix(2000)) \(standbyLog.suffix(2000))")
        for failure in ["session ended", "standby lost", "UNPROTECTED", "resync", "refused"] {
            #expect(!log.contains(failure), "the primary never lost its standby (\(failure)): \(log.suffix(3000))")
        }
        #expect(!standbyLog.contains("taking over") && !standbyLog.contains("resync"), "the standby never took over: \(standbyLog.suffix(3000))")
        let throttled = Self.statusCounts(log, "throttled").reduce(0, +)
        #expect(throttled > 0, "the guest out-wrote the link and was held to its pace: \(log.suffix(2000))")
        let flushedOnPrimary = JournalImage.flushed(in: primary.standardOutput.lines)
        #expect(flushedOnPrimary.count >= 2, "the guest reported flushes throughout")
        let longestHeld = Self.statusCounts(log, "ms\\)").max() ?? 0
        print("throttled link, 8 Mbit/s, disk budget 2 MiB: \(flushedOnPrimary.last ?? 0) records flushed, " +
              "\(throttled) throttled epochs, held output up to \(longestHeld) ms")
        // Every flushed record the world was told of is on the standby: kill the
        // primary, let the standby take over from what it committed, and read its image.
        primary.signal(SIGKILL)
        _ = primary.waitForExit()
        let before = JournalImage.flushed(in: standby.standardOutput.lines).count
        #expect(eventually(timeout: 120) { JournalImage.flushed(in: standby.standardOutput.lines).count > before },
                "the journal goes on on the standby: \(standby.standardError.text.suffix(2000))")
        standby.signal(SIGTERM)
        #expect(standby.waitForExit(timeout: 60), "the standby stops on SIGTERM: \(standby.standardError.text.suffix(3000))")
        let onDisk = try JournalImage.recordCount(path: standbyDisk)
        let reported = JournalImage.flushed(in: primary.standardOutput.lines).max() ?? .max
        #expect(onDisk >= reported, "every record reported flushed is on the standby's image (\(onDisk) records, reported up to \(reported))")
    }

    /// The numbers before `word` in the primary's status lines ("… 3 throttled, …").
    static func statusCounts(_ log: String, _ word: String) -> [Int] {
        log.split(separator: "\n").filter { $0.contains("status: ") }.compactMap { line in
            guard let range = line.range(of: "[0-9]+ \(word)", options: .regularExpression) else { return nil }
            return Int(line[range].split(separator: " ")[0])
        }
    }
}
