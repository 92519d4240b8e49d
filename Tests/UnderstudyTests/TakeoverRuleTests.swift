import Foundation
import Glibc
import KVM
import Logging
import MicroVM
import Synchronization
import TestGuests
import Testing
@testable import Understudy

/// Who takes over and when (DESIGN.md invariant 6): the standby takes over
/// only when the primary is gone, and a primary that cannot go on hands over
/// instead of running on beside the standby.
@Suite("Takeover rules", .enabled(if: TestHost.kvmAvailable, "needs /dev/kvm"), .deadline(minutes: 10), .serialized)
struct TakeoverRuleTests {
    /// The primary host can no longer run the guest (KVM_RUN fails: its vCPU
    /// file descriptor is replaced by /dev/null, a real failing ioctl). That is
    /// a failover, not an orderly end: no goodbye goes to the standby, which
    /// takes over; the primary is `.failed` and releases nothing any more.
    @Test func hostFaultOnThePrimaryIsAFailover() throws {
        let log = CollectedLog()
        let receiver = try StandbyReceiver(configuration: StandbyConfiguration(listen: SocketAddress(host: "127.0.0.1", port: 0),
                                                                               heartbeatTimeout: .seconds(5)), logger: log.logger)
        let outcome = Mutex<StandbyReceiver.Outcome?>(nil)
        Thread.detachNewThread { let result = receiver.run(); outcome.withLock { $0 = result } }
        defer { receiver.stop() }

        let world = Mutex<[UInt8]>([])
        let output = OutputBuffer { _, bytes in world.withLock { $0 += bytes } }
        let machine = try Machine(configuration: .init(memorySize: 32 << 20, commandLine: "pages=4 wss=64 every=2000", dirtyTracking: .bitmap),
                                  console: { bytes in bytes.withUnsafeBytes { output.hold(.console, $0) } })
        defer { machine.requestStop(); _ = machine.waitUntilStopped(timeout: TestHost.scaled(.seconds(10))) }
        try machine.start()
        var configuration = PrimaryConfiguration(standby: SocketAddress(host: "127.0.0.1", port: receiver.listener.port),
                                                 engine: EngineConfiguration(epoch: .milliseconds(5)), heartbeatTimeout: .seconds(5))
        configuration.statusInterval = nil
        let primary = ReplicationPrimary(machine: machine, output: output, configuration: configuration, logger: log.logger)
        try primary.start()
        #expect(eventually(timeout: 120) { primary.status == .protected && world.withLock { $0.count } > 0 }, "\(log.text)")

        // The fault: KVM_RUN on /dev/null fails with ENOTTY.
        let null = open("/dev/null", O_RDWR)
        #expect(dup2(null, machine.vcpus[0].fd) == machine.vcpus[0].fd)
        close(null)
        let reason = try #require(machine.waitUntilStopped(timeout: TestHost.scaled(.seconds(60))))
        #expect(reason.isHostFault, "stopped for \(reason)")
        primary.end(after: reason)

        #expect(primary.status == .failed)
        #expect(output.isSealed)
        #expect(eventually(timeout: 60) { outcome.withLock { $0 } != nil }, "\(log.text)")
        guard case .primaryLost = outcome.withLock({ $0 }) else {
            Issue.record("the standby must take over, not hear goodbye: \(String(describing: outcome.withLock { $0 })); \(log.text)")
            return
        }
        #expect(!log.text.contains("primary said goodbye"))
        // Everything the world got is output of committed checkpoints: the
        // standby's replica holds it (released, or to be released on takeover).
        let released = world.withLock { $0 }
        let seen = released.count
        output.commit(upTo: .max - 1)
        [UInt8]([0x21]).withUnsafeBytes { output.hold(.console, $0) }
        output.passThrough()
        #expect(world.withLock { $0 }.count == seen, "a sealed buffer releases nothing more")
    }
}

/// A standby learns at the handshake, not at takeover, whether it can run the
/// guest: each thing it could not do refuses the session with the reason (the
/// primary then logs it and runs unprotected, loudly).
@Suite("Standby preflight", .enabled(if: TestHost.kvmAvailable, "needs /dev/kvm"), .deadline(minutes: 5), .serialized)
struct StandbyPreflightTests {
    enum Mismatch: String, CaseIterable, Sendable {
        case none, cpuFeature, otherVMM, stateFormat, xsave, tsc, tapThatDoesNotOpen, linuxGuest
    }

    @Test(arguments: Mismatch.allCases)
    func refusedAtTheHandshakeWithTheReason(mismatch: Mismatch) throws {
        let log = CollectedLog()
        let tap: String? = mismatch == .tapThatDoesNotOpen ? "understudy-no-such-tap-name" : nil     // over IFNAMSIZ
        let receiver = try StandbyRunner.receiver(.init(listen: SocketAddress(host: "127.0.0.1", port: 0), tap: tap), logger: log.logger)
        let served = ThreadRunner { receiver.run() }
        defer { receiver.stop(); _ = try? served.join() }

        // What the guest of a real machine on this host looks like.
        let machine = try Machine(configuration: .init(memorySize: 16 << 20, commandLine: "pages=1 wss=1 every=1000"), console: { _ in })
        var platform = try machine.platform
        #expect(platform.vmm == "microvm" && platform.xsaveBytes >= 512 && platform.cpuFeatures.words.contains { $0 != 0 })
        var devices: Hello.Devices = []
        switch mismatch {
        case .none: break
        case .cpuFeature: platform.cpuFeatures.words[4] = 0xFFFF_FFFF          // every CPUID.7.EDX feature
        case .otherVMM: platform.vmm = "othervmm"
        case .stateFormat: platform.stateFormat = 99
        case .xsave: platform.xsaveBytes = 1 << 30
        case .tsc: platform.tscKilohertz = platform.tscKilohertz / 10 * 11 + 1
        case .tapThatDoesNotOpen: devices = [.network]
        case .linuxGuest: platform.vmm = Machine.linuxVMMName
        }
        let link = FrameConnection(try TCPConnection.connect(to: SocketAddress(host: "127.0.0.1", port: receiver.listener.port)))
        try link.send(Frame(.hello, payload: Hello(session: Hello.newSession(), memorySize: UInt64(machine.memory.size), devices: devices,
                                                   epochMicroseconds: 5000, platform: platform).payload))
        let answer = try link.receive(timeout: .seconds(30))
        let reason = String(decoding: answer.payload, as: UTF8.self)
        let expected: String
        switch mismatch {
        case .none:
            #expect(answer.kind == .welcome, "\(reason)")
            return
        case .linuxGuest where KVM.runsGuestKernels:
            #expect(answer.kind == .welcome, "a KVM that runs kernel code takes a Linux guest: \(reason)")
            return
        case .linuxGuest: expected = "the guest is a Linux guest and this host's KVM"
        case .cpuFeature: expected = "lacks CPU features the guest was shown: CPUID.7.EDX bit"
        case .otherVMM: expected = "VMM 'othervmm'"
        case .stateFormat: expected = "state format 99"
        case .xsave: expected = "XSAVE area is 1073741824 bytes"
        case .tsc: expected = "TSC runs at"
        case .tapThatDoesNotOpen: expected = "the tap understudy-no-such-tap-name does not open"
        }
        #expect(answer.kind == .refuse)
        #expect(reason.contains("this standby cannot run the guest: ") && reason.contains(expected), "\(reason)")
        #expect(log.text.contains(expected), "the standby logs it too")
    }
}
