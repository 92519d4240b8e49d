import Benchmark
import KVM
import TestGuests

/// KVM-layer costs that bound a checkpoint's pause:
/// - harvesting the dirty log of a 1 GiB slot, bitmap (GET + CLEAR with manual
///   protect) versus ring (harvest + RESET), at 0, 64, 1024 and 16384 dirty pages;
/// - capturing the full state of one vCPU and of the VM (irqchips, PIT, clock).
///
/// Each iteration first lets the page-writer guest dirty the pages (not measured),
/// then measures only the harvest that a checkpoint would do.
let benchmarks: @Sendable () -> Void = {
    guard KVM.isAvailable else {
        print("KVM BENCHMARKS SKIPPED: /dev/kvm is not available")
        return
    }
    Benchmark.defaultConfiguration = .init(
        metrics: [.wallClock],
        timeUnits: .microseconds,
        warmupIterations: 3,
        maxDuration: .seconds(4),
        maxIterations: 400
    )

    let slotSize = 1 << 30                       // the data slot: 1 GiB
    let memorySize = Int(TestMachine.dataAddress) + slotSize

    for dirtyPages in [0, 64, 1024, 16384] {
        let pages = spreadPages(count: dirtyPages, slotPages: slotSize / 4096)

        Benchmark("Dirty harvest, bitmap, \(dirtyPages) pages of 1 GiB") { (benchmark: Benchmark, machine: BenchMachine) in
            try dirty(machine, pages)
            benchmark.startMeasurement()
            try machine.vm.dirtyLog(slot: 1, into: machine.bitmap)
            try machine.vm.clearDirtyLog(slot: 1, bitmap: machine.bitmap)
            benchmark.stopMeasurement()
            try check(machine.bitmap.count, dirtyPages)
        } setup: {
            try BenchMachine(memorySize: memorySize, tracking: .bitmap)
        }

        Benchmark("Dirty harvest, ring, \(dirtyPages) pages of 1 GiB") { (benchmark: Benchmark, machine: BenchMachine) in
            try dirty(machine, pages)
            var harvested = 0
            benchmark.startMeasurement()
            try machine.vcpu.harvestDirtyRing { _, _ in harvested += 1 }
            try machine.vm.resetDirtyRings()
            benchmark.stopMeasurement()
            try check(harvested, dirtyPages)
        } setup: {
            try BenchMachine(memorySize: memorySize, tracking: .ring(entries: 65536))
        }
    }

    Benchmark("State capture, vCPU (full) + VM (irqchips, PIT, clock)") { (benchmark: Benchmark, machine: BenchMachine) in
        benchmark.startMeasurement()
        let vcpu = try machine.vcpu.captureState()
        let vm = try machine.vm.captureState()
        benchmark.stopMeasurement()
        blackHole(vcpu)
        blackHole(vm)
    } setup: {
        let machine = try BenchMachine(memorySize: 8 << 20, tracking: .none, irqchip: true)
        _ = try machine.vcpu.captureState()      // learns which MSRs are readable
        return machine
    }

    Benchmark("State encode + decode, vCPU + VM") { (benchmark: Benchmark, machine: BenchMachine) in
        let vcpu = try machine.vcpu.captureState()
        let vm = try machine.vm.captureState()
        benchmark.startMeasurement()
        let bytes = vcpu.encoded() + vm.encoded()
        let decoded = try VCPUState(decoding: vcpu.encoded())
        benchmark.stopMeasurement()
        blackHole(bytes)
        blackHole(decoded)
    } setup: {
        try BenchMachine(memorySize: 8 << 20, tracking: .none, irqchip: true)
    }
}

/// A `TestMachine` running the page-writer guest, with a bitmap sized for its data slot.
final class BenchMachine: @unchecked Sendable {
    let machine: TestMachine
    let bitmap: DirtyBitmap
    var vm: VirtualMachine { machine.vm }
    var vcpu: VCPU { machine.vcpu }

    init(memorySize: Int, tracking: TestMachine.DirtyTracking, irqchip: Bool = false) throws {
        machine = try TestMachine(memorySize: memorySize, tracking: tracking, irqchip: irqchip)
        try machine.start(GuestCode.pageWriter)
        bitmap = DirtyBitmap(pageCount: machine.slot.pageCount)
        try machine.setPageList([])
        _ = try machine.runToMMIO()
    }
}

/// `count` page numbers spread evenly over the slot.
func spreadPages(count: Int, slotPages: Int) -> [UInt64] {
    guard count > 0 else { return [] }
    return (0..<count).map { TestMachine.dataAddress + UInt64($0 * (slotPages / count)) * 4096 }
}

/// Lets the guest write one byte in each of `pages`, then stop at its MMIO exit.
func dirty(_ machine: BenchMachine, _ pages: [UInt64]) throws {
    try machine.machine.setPageList(pages)
    _ = try machine.machine.runToMMIO()
}

struct HarvestMismatch: Error { let got: Int, expected: Int }

func check(_ got: Int, _ expected: Int) throws {
    guard got == expected else { throw HarvestMismatch(got: got, expected: expected) }
}
