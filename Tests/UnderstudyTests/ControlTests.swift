import Foundation
import Glibc
import Logging
import Synchronization
import TestGuests
import Testing
@testable import Understudy

/// The control socket (`understudy-ctl`): its request parser (fuzzed), the
/// server and client over a real unix socket, and what a status says.
@Suite("Control socket")
struct ControlTests {
    static func path() -> String {
        FileManager.default.temporaryDirectory.appendingPathComponent("control-\(getpid())-\(UInt32.random(in: 0...UInt32.max)).sock").path
    }

    static var logger: Logger {
        var logger = Logger(label: "control-test")
        logger.logLevel = .critical
        return logger
    }

    /// Only the exact command words are requests; anything else (random
    /// bytes, near misses, over-long lines) is refused with a reason, never a crash.
    @Test func requestsAreExactWords() throws {
        for request in ControlRequest.allCases { #expect(try ControlRequest(line: Array(request.rawValue.utf8)) == request) }
        for bad in ["", "Status", "status ", " stop", "stop\r", "switch", "statusstatus", String(repeating: "s", count: 65), "stop\u{0}"] {
            #expect(throws: ControlError.self, "'\(bad)'") { try ControlRequest(line: Array(bad.utf8)) }
        }
        var generator = SystemRandomNumberGenerator()
        var accepted = 0
        for _ in 0..<50_000 {
            let bytes = (0..<Int.random(in: 0...12, using: &generator)).map { _ in UInt8.random(in: 0...255, using: &generator) }
            if let request = try? ControlRequest(line: bytes) {
                accepted += 1
                #expect(Array(request.rawValue.utf8) == bytes)
            }
        }
        print("control request fuzz: 50,000 lines, \(accepted) accepted (each exactly a command word)")
    }

    /// A request goes over a real unix socket to the handler and its reply
    /// comes back; a bad request gets an error reply; the socket is owner-only.
    @Test func serverAnswersOverAUnixSocket() throws {
        let path = Self.path()
        let server = try ControlServer(path: path, logger: Self.logger)
        defer { server.stop() }
        let seen = Mutex<[ControlRequest]>([])
        server.handler = { request in
            seen.withLock { $0.append(request) }
            var status = HostStatus(role: .standby, state: "protecting", uptimeSeconds: 3, peer: "127.0.0.1:1", fencing: "none", sessions: 2)
            status.lastCommit = 41
            return ControlReply(ok: request != .switchover, message: "\(request.rawValue) seen", status: status)
        }
        let reply = try ControlClient.send(.status, to: path)
        #expect(reply.ok && reply.message == "status seen" && reply.status?.lastCommit == 41 && reply.status?.role == .standby)
        #expect(try ControlClient.send(.switchover, to: path).ok == false)
        #expect(seen.withLock { $0 } == [.status, .switchover])
        var info = stat()
        #expect(stat(path, &info) == 0 && info.st_mode & 0o777 == 0o600, "owner-only socket")
        // A line that is not a request: an error reply, the handler not called.
        let fd = try ControlClient.connect(to: path)
        defer { close(fd) }
        try UnixSocketAddress.writeAll(fd, Array("reboot\n".utf8))
        let answer = try ControlReply(line: UnixSocketAddress.readLine(fd, limit: ControlReply.maximumLineBytes, timeoutMilliseconds: 10_000))
        #expect(!answer.ok && answer.message?.contains("unknown command 'reboot'") == true, "\(answer)")
        #expect(seen.withLock { $0.count } == 2)
    }

    /// A socket left by a process that died is replaced; one a live server
    /// holds is not taken over (two processes never answer for one path).
    @Test func staleSocketsAreReplacedLiveOnesAreNot() throws {
        let path = Self.path()
        let first = try ControlServer(path: path, logger: Self.logger)
        #expect(throws: ControlError.inUse(path: path)) { try ControlServer(path: path, logger: Self.logger) }
        // A peer that leaves before its answer costs the server nothing (no
        // SIGPIPE: this test process would die of it, as it once did).
        for _ in 0..<20 {
            let fd = try ControlClient.connect(to: path)
            try UnixSocketAddress.writeAll(fd, Array("status\n".utf8))
            close(fd)
        }
        first.handler = { _ in ControlReply(ok: true, message: "first") }
        // (While it still finishes with those, it may answer "busy".)
        #expect(eventually(timeout: 60) { (try? ControlClient.send(.status, to: path))?.message == "first" }, "the server goes on")
        first.stop()
        // What a SIGKILLed process leaves: the file, nobody listening.
        let fd = try UnixSocketAddress.socket()
        _ = try UnixSocketAddress(path: path).withSockaddr { bind(fd, $0, $1) }
        close(fd)
        #expect(FileManager.default.fileExists(atPath: path))
        let second = try ControlServer(path: path, logger: Self.logger)
        second.handler = { _ in ControlReply(ok: true, message: "second") }
        #expect(try ControlClient.send(.status, to: path).message == "second")
        second.stop()
        #expect(!FileManager.default.fileExists(atPath: path), "stop removes the socket file")
        #expect(throws: ControlError.self) { try ControlClient.send(.status, to: path) }
    }

    /// Replies are JSON a script can read back, and the text form says each fact.
    @Test func statusReadsBackAndReadsWell() throws {
        var status = HostStatus(role: .primary, state: "protected", pid: 7, uptimeSeconds: 12, peer: "10.0.0.2:7700", generation: 4,
                                fencing: "fenced: generation 4, grant valid for 1800 ms", sessions: 1)
        status.lastCommit = 991
        status.lastCommitAgeMilliseconds = 3
        status.lagMilliseconds = 6
        status.checkpointsPerSecond = 190
        status.bytesPerSecond = 2_400_000
        status.pauseP50Microseconds = 410
        status.pauseP99Microseconds = 1900
        status.heldOutputBytes = 120
        status.switchoverListen = "10.0.0.1:7701"
        let reply = ControlReply(ok: true, status: status)
        #expect(try ControlReply(line: reply.encoded) == reply)
        #expect(throws: ControlError.self) { try ControlReply(line: Array("{\"ok\":".utf8)) }
        let text = status.text
        for fact in ["primary (pid 7, up 12 s): PROTECTED", "standby: 10.0.0.2:7700", "generation 4", "checkpoint 991, 3 ms ago",
                     "lag: 6 ms", "190 checkpoints/s", "2.4 MB/s", "p50 410 µs p99 1900 µs", "held output: 120 bytes", "10.0.0.1:7701"] {
            #expect(text.contains(fact), "'\(fact)' in:\n\(text)")
        }
    }
}
