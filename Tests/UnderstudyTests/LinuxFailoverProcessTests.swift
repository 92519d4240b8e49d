import Foundation
import KVM
import MicroVM
import Synchronization
import TestGuests
import Testing

/// Debian's kernel and the journalling kvstore (Scripts/linux-guest.sh) in
/// understudy-primary processes: saved and restored across processes, and
/// protected by understudy-primary and understudy-standby processes, each with
/// its own tap on one bridge and its own disk image. A client in its own
/// network namespace keeps one TCP connection busy with SETs and INCRs; the
/// primary is killed with SIGKILL at a random moment. The same connection goes
/// on against the standby, every write the service acknowledged is there (in
/// its memory and in the journal on the standby's disk), and the guest's
/// console continues.
@Suite("Linux guest across processes",
       .enabled(if: TestNetwork.available, "needs root and ip(8)"), .enabled(if: TestHost.kvmAvailable && KVM.runsGuestKernels,
                "runs in the KVM box on this host (kvm_pvm emulates guest kernels)"),
       .serialized, .deadline(minutes: 60))
struct LinuxFailoverProcessTests {
    static let commandLine = LinuxBoot.defaultCommandLine + " understudy.ip=10.77.0.2/24"

    /// The numbers of the guest's "understudy-linux: tick N" lines in `text`.
    static func ticks(_ text: String) -> [Int] {
        text.split(whereSeparator: \.isNewline).compactMap { $0.hasPrefix("understudy-linux: tick ") ? Int($0.dropFirst(23)) : nil }
    }

    /// Saved in one process (SIGTERM with --save-on-stop), restored in a fresh
    /// one (--restore) on the same tap and disk: the client's TCP connection,
    /// made before the save, is served after the restore, with everything it
    /// was told, and the console goes on from the very next tick.
    @Test func aConnectionSurvivesSaveAndRestoreInAnotherProcess() throws {
        let (kernel, initrd) = try LinuxGuest.files()
        let network = try TestNetwork()
        let tap = try network.addTap()
        let disk = JournalImage.makeImage(megabytes: 16)
        let snapshot = FileManager.default.temporaryDirectory.appendingPathComponent("linux-\(UUID()).snapshot").path
        defer { try? FileManager.default.removeItem(atPath: disk); try? FileManager.default.removeItem(atPath: snapshot) }
        let first = try ChildProcess("understudy-primary", [
            "--unprotected", "--kernel", kernel, "--initrd", initrd, "--append", Self.commandLine,
            "--tap", tap, "--disk", disk, "--memory", "256M", "--save-on-stop", snapshot])
        #expect(eventually(timeout: 60) { first.standardOutput.text.contains("kvstore: listening") || !first.isRunning },
                "first: \(first.standardError.text.suffix(3000)) \(first.standardOutput.text.suffix(3000))")
        let socket = try NamespaceSocket.connect(namespacePath: network.namespacePath, host: "10.77.0.2", port: 7000,
                                                 timeout: 30)
        #expect(try socket.command("SET before save") == "OK 1")
        #expect(try socket.command("INCR n") == "VALUE 1 2")
        first.signal(SIGTERM)
        #expect(first.waitForExit(timeout: TestHost.seconds(60)))
        #expect(first.standardError.text.contains("snapshot written"), "\(first.standardError.text.suffix(2000))")

        let second = try ChildProcess("understudy-primary", ["--unprotected", "--restore", snapshot, "--tap", tap, "--disk", disk])
        defer { second.signal(SIGTERM); _ = second.waitForExit(timeout: TestHost.seconds(60)) }
        #expect(try socket.command("GET before") == "VALUE save", "the connection made before the save is served after the restore")
        #expect(try socket.command("INCR n") == "VALUE 2 3")
        #expect(try LinuxGuest.journal(path: disk).count == 3)
        let ticksBefore = Self.ticks(first.standardOutput.text)
        #expect(eventually(timeout: 30) { Self.ticks(second.standardOutput.text).count >= 2 }, "the console goes on")
        let all = Self.ticks(first.standardOutput.text + second.standardOutput.text)
        #expect(!ticksBefore.isEmpty && all == Array(1...(all.last ?? 0)), "ticks continue with no gap and no repeat: \(all.suffix(8))")
    }

    /// Rounds of SET and INCR (two journal records each) before the client only reads.
    static let writingRounds = 1500

    static var runs: Int { Int(ProcessInfo.processInfo.environment["UNDERSTUDY_LINUX_FAILOVER_RUNS"] ?? "") ?? 5 }

    @Test(arguments: 0..<runs)
    func acknowledgedWritesSurviveTheLossOfThePrimary(run: Int) throws {
        let (kernel, initrd) = try LinuxGuest.files()
        let network = try TestNetwork()
        let primaryTap = try network.addTap(), standbyTap = try network.addTap()
        let primaryDisk = JournalImage.makeImage(megabytes: 16), standbyDisk = JournalImage.makeImage(megabytes: 16)
        defer { try? FileManager.default.removeItem(atPath: primaryDisk); try? FileManager.default.removeItem(atPath: standbyDisk) }
        let standby = try ChildProcess("understudy-standby", ["--listen", "127.0.0.1:0", "--tap", standbyTap, "--disk", standbyDisk,
                                                              "--heartbeat-timeout", "2s"])
        let port = try #require(standby.listeningPort())
        let primary = try ChildProcess("understudy-primary", [
            "--standby", "127.0.0.1:\(port)", "--kernel", kernel, "--initrd", initrd,
            "--append", Self.commandLine,
            "--tap", primaryTap, "--disk", primaryDisk, "--memory", "256M", "--epoch", "10ms", "--heartbeat-timeout", "2s",
            "--status-interval", "5s"])
        #expect(eventually(timeout: 60) {
            (primary.standardError.text.contains("protected by the standby") && primary.standardOutput.text.contains("kvstore: listening"))
                || !primary.isRunning
        }, "primary: \(primary.standardError.text.suffix(3000)) \(primary.standardOutput.text.suffix(3000))")
        try #require(primary.isRunning)

        let socket = try NamespaceSocket.connect(namespacePath: network.namespacePath, host: "10.77.0.2", port: 7000,
                                                 timeout: 30)
        let stop = Atomic<Bool>(false), killed = Atomic<Bool>(false)
        let progress = Mutex<(before: Int, after: Int)>((0, 0))
        let client = ThreadRunner<(acknowledged: [Int: Int], counter: Int, error: String?)> {
            var acknowledged: [Int: Int] = [:]             // SET number → journal record the reply named
            var counter = 0
            var i = 0
            do {
                while !stop.load(ordering: .relaxed) {
                    i += 1
                    if i <= Self.writingRounds {
                        let set = try socket.command("SET k\(i) v\(i * 7)")
                        guard set.hasPrefix("OK "), let record = Int(set.dropFirst(3)) else { return (acknowledged, counter, "SET k\(i): '\(set)'") }
                        acknowledged[i] = record
                        let incr = try socket.command("INCR counter")
                        guard incr.hasPrefix("VALUE \(counter + 1) ") else { return (acknowledged, counter, "counter went from \(counter) to '\(incr)'") }
                        counter += 1
                    } else {
                        // The journal has room for 8192 records: read, no longer write.
                        let get = try socket.command("GET counter")
                        guard get == "VALUE \(counter)" else { return (acknowledged, counter, "counter \(counter) read as '\(get)'") }
                    }
                    progress.withLock { if killed.load(ordering: .relaxed) { $0.after += 1 } else { $0.before += 1 } }
                }
                for (key, _) in acknowledged where try socket.command("GET k\(key)") != "VALUE v\(key * 7)" {
                    return (acknowledged, counter, "acknowledged SET k\(key) lost")
                }
            } catch {
                return (acknowledged, counter, "\(error)")
            }
            return (acknowledged, counter, nil)
        }
        let target = 10 + Int.random(in: 0..<30)
        #expect(eventually(timeout: 120) { progress.withLock { $0.before } >= target }, "the client is served before the kill")
        let ticksBefore = primary.standardOutput.lines.filter { $0.hasPrefix("understudy-linux: tick") }.count
        primary.signal(SIGKILL)
        killed.store(true, ordering: .relaxed)
        _ = primary.waitForExit()
        #expect(eventually(timeout: 120) { progress.withLock { $0.after } >= 10 },
                "the same connection is served after the kill; standby: \(standby.standardError.text.suffix(3000))")
        #expect(eventually(timeout: 60) {
            standby.standardOutput.lines.filter { $0.hasPrefix("understudy-linux: tick") }.count >= 2
        }, "the guest's console continues on the standby")
        stop.store(true, ordering: .relaxed)
        let result = try client.join()
        #expect(result.error == nil, "client: \(result.error ?? "")")
        standby.signal(SIGTERM)
        #expect(standby.waitForExit(timeout: TestHost.seconds(60)))
        #expect(standby.standardError.text.contains("taking over from checkpoint"))
        // The console continues: what the world got from the primary and then
        // from the standby is every tick, none missing (a line may be split
        // between the two: the kill can fall between two epochs of one line;
        // the last epochs may come twice).
        let world = Self.ticks(primary.standardOutput.text + standby.standardOutput.text)
        let last = world.max() ?? 0
        #expect(last > ticksBefore && Set(world) == Set(1...max(1, last)),
                "every tick reached the world, none missing: \(world.suffix(12)) (the primary had printed \(ticksBefore) before the kill)")
        // Every acknowledged SET is in the journal on the standby's disk, as the reply said.
        let journal = try LinuxGuest.journal(path: standbyDisk)
        for (key, record) in result.acknowledged {
            #expect(record <= journal.count && journal[record - 1] == LinuxGuest.Record(("k\(key)", "v\(key * 7)")),
                    "acknowledged SET k\(key) is record \(record) on the standby's disk (\(journal.count) records)")
        }
        print("Linux failover run \(run): \(result.acknowledged.count) SETs acknowledged, \(progress.withLock { $0.after }) rounds after the kill, \(journal.count) records on the standby's disk")
    }
}
