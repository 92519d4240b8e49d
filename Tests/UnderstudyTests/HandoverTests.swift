import Foundation
import KVM
import MicroVM
import Synchronization
import TestGuests
import Testing
@testable import Understudy

/// The primary's side of a switchover against a standby that stops
/// acknowledging (a scripted peer speaking the protocol): the handover must
/// not be sent, the guest runs on, and the session restarts as a resync, so
/// the standby (which never heard a handover) does not take over either.
@Suite("Switchover abandoned", .enabled(if: TestHost.kvmAvailable, "needs /dev/kvm"), .deadline(minutes: 5))
struct HandoverTests {
    /// A standby that acknowledges the first `acknowledging` checkpoints of
    /// its first session and then none, and records every frame kind it got.
    final class SlowStandby: @unchecked Sendable {
        let listener: TCPListener
        let acknowledging: UInt64
        let kinds = Mutex<[Frame.Kind]>([])
        private let stopping = Atomic<Bool>(false)

        init(acknowledging: UInt64) throws {
            listener = try TCPListener(address: SocketAddress(host: "127.0.0.1", port: 0))
            self.acknowledging = acknowledging
            Thread.detachNewThread { [self] in serve() }
        }

        func stop() { stopping.store(true, ordering: .relaxed) }

        private func serve() {
            guard let connection = try? listener.accept(timeout: .seconds(60)) else { return }
            let link = FrameConnection(connection)
            defer { link.shutdown() }
            guard let hello = try? link.receive(timeout: .seconds(10)), hello.kind == .hello else { return }
            guard (try? link.send(Frame(.welcome, payload: hello.payload))) != nil else { return }
            Thread.detachNewThread { [self] in
                while !stopping.load(ordering: .relaxed), (try? link.send(Frame(.heartbeat))) != nil { usleep(50_000) }
            }
            while !stopping.load(ordering: .relaxed) {
                guard let frame = try? link.receive(timeout: .seconds(10)) else { return }
                kinds.withLock { $0.append(frame.kind) }
                if frame.kind == .checkpointEnd, frame.sequence < acknowledging {
                    try? link.send(Frame(.ack, sequence: frame.sequence))
                }
                if frame.kind == .resync { return }
            }
        }
    }

    @Test func aStandbyThatDoesNotAcknowledgeGetsNoHandoverAndTheGuestRunsOn() throws {
        let standby = try SlowStandby(acknowledging: 5)
        defer { standby.stop() }
        let lines = Lines()
        let output = OutputBuffer { _, bytes in lines.sink(bytes) }
        let machine = try Machine(configuration: .init(memorySize: 32 << 20, commandLine: "pages=4 wss=64 every=2000", dirtyTracking: .bitmap),
                                  console: { bytes in bytes.withUnsafeBytes { output.hold(.console, $0) } })
        defer { machine.requestStop(); _ = machine.waitUntilStopped(timeout: TestHost.scaled(.seconds(10))) }
        try machine.start()
        var configuration = PrimaryConfiguration(standby: SocketAddress(host: "127.0.0.1", port: standby.listener.port),
                                                 engine: EngineConfiguration(epoch: .milliseconds(5)),
                                                 heartbeatTimeout: .milliseconds(400))
        configuration.statusInterval = nil
        var logger = Logger(label: "handover-test")
        logger.logLevel = .critical
        let primary = ReplicationPrimary(machine: machine, output: output, configuration: configuration, logger: logger)
        try primary.start()
        defer { primary.stop() }
        #expect(eventually(timeout: 60) { primary.status == .protected }, "protected once checkpoint 0 is acknowledged")
        #expect(eventually(timeout: 60) { standby.kinds.withLock { $0.filter { $0 == .checkpointEnd }.count } > 8 },
                "checkpoints go on past the ones acknowledged")
        let released = lines.lines.count
        do {
            let report = try primary.handOver(standby: SocketAddress(host: "127.0.0.1", port: 1))
            Issue.record("handed over without every checkpoint acknowledged: \(report)")
        } catch {
            guard case .abandoned = error else {
                Issue.record("expected an abandoned switchover, got \(error)")
                return
            }
        }
        #expect(!standby.kinds.withLock { $0 }.contains(.handover), "no handover frame was sent")
        #expect(eventually(timeout: 60) { standby.kinds.withLock { $0 }.contains(.resync) }, "the session ends for a resync: no takeover")
        #expect(!machine.isPaused, "the guest runs again")
        #expect(primary.status != .handedOver)
        // The guest goes on, and its output reaches the world again (unprotected,
        // or held for the next session: either way the machine runs).
        #expect(eventually(timeout: 60) { !machine.isPaused && (lines.lines.count > released || output.bytesHeld > 0) }, "the guest runs on")
    }
}
