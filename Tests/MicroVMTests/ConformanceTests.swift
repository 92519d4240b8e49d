import Foundation
import KVM
import MicroVM
import TestGuests
import Testing
import Understudy
import UnderstudyConformance

/// The conformance kit (`UnderstudyConformance`, what another VMM runs to
/// prove itself) run against MicroVM: the workload guest on two vCPUs with
/// each kind of dirty tracking, and the journal guest on a virtio disk, whose
/// used rings and block reads are the VMM's own writes into guest RAM.
@Suite("Conformance kit on MicroVM", .enabled(if: TestHost.kvmAvailable, "needs /dev/kvm"), .deadline(minutes: 10), .serialized)
struct ConformanceTests {
    static func subject(_ machine: Machine) -> ConformanceSubject {
        ConformanceSubject(machine: machine, start: { try machine.start() }, stop: {
            machine.requestStop()
            _ = machine.waitUntilStopped(timeout: TestHost.scaled(.seconds(10)))
        })
    }

    @Test(arguments: [MachineConfiguration.DirtyTracking.bitmap, .ring(entries: 4096)])
    func workloadOnTwoVCPUs(tracking: MachineConfiguration.DirtyTracking) throws {
        let configuration = MachineConfiguration(vcpuCount: 2, memorySize: 64 << 20, maxSlotSize: 16 << 20,
                                                 commandLine: "pages=16 wss=1500 every=20000", dirtyTracking: tracking)
        let machine = try Machine(configuration: configuration, console: { _ in })
        let report = try ConformanceKit.check(Self.subject(machine), restore: { replica in
            Self.subject(try Machine(restoring: replica.state, memory: replica.memory, console: { _ in }))
        }, checkpoints: TestHost.rounds(100, minimum: 20), restoredCheckpoints: TestHost.rounds(30, minimum: 10))
        #expect(report.dirtyPages > 0, "the guest wrote memory: \(report)")
        print("conformance, workload, \(tracking): \(report)")
    }

    @Test func journalOnAVirtioDisk() throws {
        let image = JournalImage.makeImage(megabytes: 16)
        defer { try? FileManager.default.removeItem(atPath: image) }
        var configuration = MachineConfiguration(name: "journal", memorySize: 32 << 20, image: try GuestPrograms.image("journal"),
                                                 commandLine: "count=100000000 flush_every=4", dirtyTracking: .bitmap)
        configuration.disk = DiskConfiguration(path: image)
        let machine = try Machine(configuration: configuration, console: { _ in })
        let report = try ConformanceKit.check(Self.subject(machine), restore: { replica in
            Self.subject(try Machine(restoring: replica.state, memory: replica.memory, disk: DiskConfiguration(path: image), console: { _ in }))
        }, checkpoints: TestHost.rounds(200, minimum: 20), restoredCheckpoints: TestHost.rounds(50, minimum: 10))
        #expect(report.dirtyPages > 0, "the guest and its disk wrote memory: \(report)")
        print("conformance, journal on a virtio disk: \(report)")
    }

    /// The kit fails a VMM that loses writes: MicroVM with one dirty page
    /// dropped from every harvest (as a VMM that forgot its own writes, or a
    /// late re-arming's carry, would) is reported with the pages that differ.
    @Test func aMachineThatLosesADirtyPageFails() throws {
        let machine = try Machine(configuration: .init(memorySize: 32 << 20, commandLine: "pages=16 wss=400 every=20000",
                                                       dirtyTracking: .bitmap), console: { _ in })
        let forgetful = ForgetfulMachine(machine)
        let subject = ConformanceSubject(machine: forgetful, start: { try machine.start() }, stop: {
            machine.requestStop()
            _ = machine.waitUntilStopped(timeout: TestHost.scaled(.seconds(10)))
        })
        do {
            let report = try ConformanceKit.check(subject, restore: { replica in
                Self.subject(try Machine(restoring: replica.state, memory: replica.memory, console: { _ in }))
            }, checkpoints: TestHost.rounds(200, minimum: 20), restoredCheckpoints: 5)
            Issue.record("a machine that drops dirty pages passed: \(report)")
        } catch {
            guard case .replicaDiffers(let phase, _, let pages, _) = error else {
                Issue.record("expected the replica to differ, got \(error)")
                return
            }
            #expect(phase == "original" && !pages.isEmpty, "\(error)")
            print("conformance kit on a machine that drops a dirty page: \(error)")
        }
    }
}

/// MicroVM, but every harvest drops the lowest dirty page after the first.
final class ForgetfulMachine: ReplicatedMachine, @unchecked Sendable {
    let inner: Machine
    private var harvests = 0
    init(_ inner: Machine) { self.inner = inner }
    var guestMemoryBase: UnsafeMutableRawPointer { inner.guestMemoryBase }
    var guestMemorySize: Int { inner.guestMemorySize }
    func pauseForCheckpoint() throws { try inner.pauseForCheckpoint() }
    func resumeAfterCheckpoint() throws { try inner.resumeAfterCheckpoint() }
    func completeCheckpoint() throws { try inner.completeCheckpoint() }
    func saveCheckpointState() throws -> [UInt8] { try inner.saveCheckpointState() }
    func captureCheckpointState() throws -> @Sendable () -> [UInt8] { try inner.captureCheckpointState() }
    var hasStopped: Bool { inner.hasStopped }
    func collectDirtyPages(into bitmap: DirtyBitmap) throws {
        try inner.collectDirtyPages(into: bitmap)
        harvests += 1
        guard harvests > 1, let page = (0..<bitmap.pageCount).first(where: { bitmap[$0] }) else { return }
        bitmap[page] = false
    }
}
