import Foundation
import KVM
@testable import MicroVM
import TestGuests
import Testing

/// Checks the dirty-completeness invariant between two pauses: every page whose
/// bytes changed is in the collected set. Returns (changed, collected) counts.
func checkDirtyCompleteness(_ machine: Machine, previous: inout [UInt8], round: Int) throws -> (Int, Int) {
    let bitmap = DirtyBitmap(pageCount: machine.memory.size / 4096)
    try machine.collectDirtyPages(into: bitmap)
    var changed = 0
    let current = machine.memory.base
    previous.withUnsafeMutableBytes { old in
        for page in 0..<bitmap.pageCount where memcmp(old.baseAddress! + page * 4096, current + page * 4096, 4096) != 0 {
            changed += 1
            #expect(bitmap[page], "round \(round): page \(page) changed but is not in the dirty set")
            (old.baseAddress! + page * 4096).copyMemory(from: current + page * 4096, byteCount: 4096)
        }
    }
    return (changed, bitmap.count)
}

@Suite("Dirty completeness", .enabled(if: TestHost.kvmAvailable, "needs /dev/kvm"), .deadline(minutes: 5))
struct DirtyCompletenessTests {
    /// With a ring of 512 entries the guest (1,500 pages of working set) fills
    /// its ring between pauses: the machine empties it itself and the pages
    /// still reach the next harvest.
    @Test(arguments: [MachineConfiguration.DirtyTracking.bitmap, .ring(entries: 4096), .ring(entries: 512)])
    func everyChangedPageIsCollected(tracking: MachineConfiguration.DirtyTracking) throws {
        let machine = try Machine(configuration: .init(vcpuCount: 2, memorySize: 32 << 20, maxSlotSize: 8 << 20,
                                                       commandLine: "pages=8 wss=1500 every=50",
                                                       dirtyTracking: tracking),
                                  console: { _ in })
        var previous = Array(machine.memory.bytes)
        let initial = DirtyBitmap(pageCount: machine.memory.size / 4096)
        try machine.collectDirtyPages(into: initial)      // boot-time writes by the host are not logged
        try machine.start()
        var totalChanged = 0
        for round in 0..<25 {
            usleep(3000)
            try machine.pause()
            let (changed, _) = try checkDirtyCompleteness(machine, previous: &previous, round: round)
            totalChanged += changed
            try machine.resume()
        }
        machine.requestStop()
        _ = machine.waitUntilStopped(timeout: TestHost.scaled(.seconds(10)))
        #expect(totalChanged > 100, "the workload changed pages")
    }

    /// A ring-tracked guest that nobody harvests (no standby yet, a disk copy or
    /// full image in flight, a machine that took over) writes ten times its
    /// ring's worth of distinct pages: it runs on (a full ring used to stop it
    /// with "dirty ring full with no handler"), and the first harvest after all
    /// that still holds every page it changed.
    @Test func aFullRingThatNobodyHarvestsDoesNotStopTheGuest() throws {
        let lines = ConsoleBuffer()
        let machine = try Machine(configuration: .init(vcpuCount: 2, memorySize: 64 << 20, maxSlotSize: 16 << 20,
                                                       commandLine: "pages=64 wss=6000 every=20", dirtyTracking: .ring(entries: 512)),
                                  console: lines.sink)
        var previous = Array(machine.memory.bytes)
        let initial = DirtyBitmap(pageCount: machine.memory.size / 4096)
        try machine.collectDirtyPages(into: initial)
        try machine.start()
        #expect(eventually(timeout: 120) { lines.lines.count >= 60 || machine.hasStopped }, "the guest makes progress")
        #expect(!machine.hasStopped, "still running: \(String(describing: machine.waitUntilStopped(timeout: .zero)))")
        try machine.pause()
        let (changed, _) = try checkDirtyCompleteness(machine, previous: &previous, round: 0)
        #expect(changed > 5120, "the guest changed \(changed) pages, over ten rings' worth")
        try machine.resume()
        machine.requestStop()
        _ = machine.waitUntilStopped(timeout: TestHost.scaled(.seconds(10)))
    }

    /// Checkpoint pauses leave the re-arming of KVM's log until after the guest
    /// resumed, here after a random delay of up to 0.5 ms while it writes: still
    /// every changed page is in the next set. (Without carrying the re-armed pages
    /// into the next harvest this fails within a few rounds.)
    @Test func lateRearmingLosesNoPage() throws {
        // At most 2 × 100 pages per epoch: below `Machine.lateRearmLimit`, so every slot is re-armed late.
        let machine = try Machine(configuration: .init(vcpuCount: 2, memorySize: 32 << 20, maxSlotSize: 8 << 20,
                                                       commandLine: "pages=8 wss=100 every=50", dirtyTracking: .bitmap),
                                  console: { _ in })
        var previous = Array(machine.memory.bytes)
        let initial = DirtyBitmap(pageCount: machine.memory.size / 4096)
        try machine.collectDirtyPages(into: initial)
        try machine.start()
        var generator = SystemRandomNumberGenerator()
        var totalChanged = 0, deferred = 0, rearmedLate = 0
        for round in 0..<300 {
            usleep(UInt32.random(in: 200...2000, using: &generator))
            try machine.pause(capturingVCPUState: true)
            let (changed, _) = try checkDirtyCompleteness(machine, previous: &previous, round: round)
            totalChanged += changed
            if machine.dirtyTracker?.isRearmPending == true { deferred += 1 }
            try machine.resume()
            usleep(UInt32.random(in: 0...500, using: &generator))
            try machine.rearmDirtyLog()
            if machine.dirtyTracker?.pagesRearmedLate ?? 0 > 0 { rearmedLate += 1 }
        }
        machine.requestStop()
        _ = machine.waitUntilStopped(timeout: TestHost.scaled(.seconds(10)))
        #expect(totalChanged > 1000, "the workload changed pages")
        #expect(deferred == 300, "every checkpoint harvest left the re-arming for later")
        #expect(rearmedLate >= 150, "pages were re-armed after the resume in \(rearmedLate) of 300 rounds")
    }
}
