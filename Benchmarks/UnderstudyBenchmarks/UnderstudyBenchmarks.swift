import Benchmark
import Foundation
import Synchronization
import KVM
import MicroVM
import Understudy

/// The checkpoint engine: page codec speed per page kind and level; the pause a
/// checkpoint costs vs dirty pages (bitmap vs ring); and guest throughput with
/// checkpointing every 1, 5 and 25 ms against none, in one run.
let benchmarks: @Sendable () -> Void = {
    Benchmark.defaultConfiguration = .init(metrics: [.wallClock], timeUnits: .microseconds,
                                           warmupIterations: 3, maxDuration: .seconds(3), maxIterations: 2000)
    codecBenchmarks()
    guard KVM.isAvailable else {
        print("ENGINE BENCHMARKS SKIPPED: /dev/kvm is not available")
        return
    }
    pauseBenchmarks()
    firstPauseBenchmarks()
    loopBenchmarks()
    throughputBenchmarks()
    steadyThroughputBenchmarks()
}

// MARK: codec

/// 256 pages of one kind, and what the receiver holds of them.
struct PageSet {
    static let count = 256
    let new: UnsafeMutableRawPointer
    let old: UnsafeMutableRawPointer
    let hasOld: Bool

    init(kind: String) {
        new = .allocate(byteCount: Self.count * 4096, alignment: 64)
        old = .allocate(byteCount: Self.count * 4096, alignment: 64)
        var state: UInt64 = 0x1234
        func next() -> UInt64 {
            state &+= 0x9E37_79B9_7F4A_7C15
            var z = state
            z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
            z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
            return z ^ (z >> 31)
        }
        let words = Self.count * 512
        let o = old.assumingMemoryBound(to: UInt64.self), n = new.assumingMemoryBound(to: UInt64.self)
        for i in 0..<words { o[i] = next() }
        hasOld = kind.hasPrefix("XOR")
        switch kind {
        case "zero page": for i in 0..<words { n[i] = 0 }
        case "random": for i in 0..<words { n[i] = next() }
        case "text":
            let text = Array("the standby commits the checkpoint after verifying every page of the epoch; ".utf8)
            let bytes = new.assumingMemoryBound(to: UInt8.self)
            for i in 0..<(words * 8) { bytes[i] = text[(i * 7 / 5) % text.count] }
        case "XOR, 8 scattered words":
            for i in 0..<words { n[i] = o[i] }
            for p in 0..<Self.count { for _ in 0..<8 { n[p * 512 + Int(next() % 512)] ^= next() } }
        case "XOR, one 64-byte run":
            for i in 0..<words { n[i] = o[i] }
            for p in 0..<Self.count { let s = Int(next() % 504); for w in s..<(s + 8) { n[p * 512 + w] ^= next() } }
        default: // "XOR, 25 % changed"
            for i in 0..<words { n[i] = next() % 4 == 0 ? o[i] ^ next() : o[i] }
        }
    }
}

func codecBenchmarks() {
    let kinds = ["zero page", "XOR, 8 scattered words", "XOR, one 64-byte run", "XOR, 25 % changed", "random", "text"]
    for level in [CodecLevel.lz4, .zstd, .none] {
        for kind in kinds {
            let pages = PageSet(kind: kind)
            let codec = PageCodec(level: level)
            var output: [UInt8] = []
            output.reserveCapacity(PageSet.count * 4200)
            Benchmark("Codec encode \(level), \(kind) (256 pages)") { benchmark in
                for _ in benchmark.scaledIterations {
                    output.removeAll(keepingCapacity: true)
                    for p in 0..<PageSet.count {
                        blackHole(codec.encode(pages.new + p * 4096, previous: pages.hasOld ? pages.old + p * 4096 : nil, into: &output))
                    }
                }
                blackHole(output.count)
            }
        }
    }
    // Decode, and the ratio each level reaches (printed once).
    for kind in kinds {
        let pages = PageSet(kind: kind)
        let codec = PageCodec(level: .lz4)
        var encoded: [(PageEncoding, [UInt8])] = []
        var total = 0
        for p in 0..<PageSet.count {
            var out: [UInt8] = []
            let e = codec.encode(pages.new + p * 4096, previous: pages.hasOld ? pages.old + p * 4096 : nil, into: &out)
            encoded.append((e, out))
            total += out.count
        }
        print("ratio lz4, \(kind): \(String(format: "%.1f", Double(PageSet.count * 4096) / Double(max(total, 1))))x")
        let target = UnsafeMutableRawPointer.allocate(byteCount: 4096, alignment: 64)
        Benchmark("Codec decode lz4, \(kind) (256 pages)") { benchmark in
            for (p, (encoding, payload)) in encoded.enumerated() {
                target.copyMemory(from: pages.old + p * 4096, byteCount: 4096)
                try payload.withUnsafeBytes { try codec.decode(encoding, payload: $0, into: target) }
            }
        }
    }
}

// MARK: pause

final class EngineRig: @unchecked Sendable {
    var machine: Machine?
    var engine: CheckpointEngine?
    let staged = StagedCheckpoint(initialCapacityPages: 20_000)

    func start(wss: Int, tracking: MachineConfiguration.DirtyTracking) throws {
        let pages = wss == 0 ? 0 : max(1, wss / 8)
        let machine = try Machine(configuration: .init(memorySize: 256 << 20, commandLine: "pages=\(pages) wss=\(max(wss, 1)) every=100000000",
                                                       dirtyTracking: tracking), console: { _ in })
        let engine = CheckpointEngine(machine: machine)
        try machine.start()
        try machine.pause()
        try engine.captureWhilePaused(into: staged)      // the full first checkpoint
        _ = engine.encode(staged)
        try machine.resume()
        self.machine = machine
        self.engine = engine
    }

    func stop() {
        machine?.requestStop()
        _ = machine?.waitUntilStopped()
        machine = nil
        engine = nil
    }
}

func pauseBenchmarks() {
    for tracking in [MachineConfiguration.DirtyTracking.bitmap, .ring(entries: 65536)] {
        for wss in [0, 64, 1024, 16384] {
            let rig = EngineRig()
            let name = tracking == .bitmap ? "bitmap" : "ring"
            var steps: [PauseBreakdown] = []
            Benchmark("Checkpoint pause (pause, harvest, copy, state, resume), \(name), ~\(wss) dirty pages, 256 MiB guest",
                      configuration: .init(metrics: [.wallClock], timeUnits: .microseconds, warmupIterations: 5,
                                           maxDuration: .seconds(4), maxIterations: 400)) { benchmark in
                guard let machine = rig.machine, let engine = rig.engine else { return }
                usleep(wss > 4096 ? 30_000 : 5_000)          // let the guest dirty its working set
                let clock = ContinuousClock()
                benchmark.startMeasurement()
                let started = clock.now
                try machine.pauseForCheckpoint()
                let stopped = clock.now
                var step = try engine.captureWhilePaused(into: rig.staged)
                let resuming = clock.now
                try machine.resumeAfterCheckpoint()
                step.resume = clock.now - resuming
                benchmark.stopMeasurement()
                try machine.completeCheckpoint()
                step.stop = stopped - started
                steps.append(step)
                blackHole(engine.encode(rig.staged))
            } setup: {
                steps = []
                try rig.start(wss: wss, tracking: tracking)
            } teardown: {
                rig.stop()
                print("pause steps, \(name), ~\(wss) dirty pages: \(PauseSteps(steps).medians)")
            }
        }
    }
}

/// The first checkpoint's pause for a 1 GiB guest (light writer): copying all
/// of RAM inside the pause (stop-and-copy, before pre-copy existed) against
/// pre-copying it while the guest runs first (into a replica's memory, as a
/// standby on the same host would take it) and pausing only for what changed.
func firstPauseBenchmarks() {
    for precopy in [false, true] {
        let name = precopy ? "after pre-copy" : "stop-and-copy"
        var steps: [PauseBreakdown] = []
        var pauses: [Duration] = []
        Benchmark("First checkpoint pause, 1 GiB guest, \(name)",
                  configuration: .init(metrics: [.wallClock], timeUnits: .milliseconds, warmupIterations: 0,
                                       maxDuration: .seconds(60), maxIterations: 5)) { benchmark in
            // The benchmark's own clock covers building the machine too: the
            // pause is timed here and printed at the end.
            let machine = try Machine(configuration: .init(memorySize: 1 << 30, commandLine: "pages=16 wss=256 every=100000",
                                                           dirtyTracking: .bitmap), console: { _ in })
            let engine = CheckpointEngine(machine: machine)
            let staged = StagedCheckpoint()
            try machine.start()
            if precopy {
                let replica = try ReplicaImage(memorySize: machine.memory.size)
                try engine.precopy { firstPage, chunk in
                    switch chunk {
                    case .pages(let pages): try replica.precopy(firstPage: firstPage, Array(pages)[...])
                    case .zeroPages(let count): try replica.precopyZeroPages(firstPage: firstPage, count: count)
                    }
                }
            }
            let clock = ContinuousClock()
            let started = clock.now
            try machine.pauseForCheckpoint()
            let step = try engine.captureWhilePaused(into: staged)
            try machine.resumeAfterCheckpoint()
            pauses.append(clock.now - started)
            steps.append(step)
            blackHole(benchmark)
            machine.requestStop()
            _ = machine.waitUntilStopped()
        } setup: {
            steps = []
            pauses = []
        } teardown: {
            print("first pause, 1 GiB guest, \(name): p50 \(PauseSteps.micros(pauses, 0.5)) µs, max \(PauseSteps.micros(pauses, 1)) µs "
                  + "over \(pauses.count) runs; steps: \(PauseSteps(steps).medians)")
        }
    }
}

/// Medians of each pause step, for the benchmark log.
struct PauseSteps {
    let steps: [PauseBreakdown]
    init(_ steps: [PauseBreakdown]) { self.steps = steps }

    static func micros(_ values: [Duration], _ quantile: Double) -> Int {
        guard !values.isEmpty else { return 0 }
        let sorted = values.sorted()
        let d = sorted[min(sorted.count - 1, Int(Double(sorted.count - 1) * quantile))].components
        return Int(d.seconds) * 1_000_000 + Int(d.attoseconds / 1_000_000_000_000)
    }

    var medians: String {
        let parts: [(String, KeyPath<PauseBreakdown, Duration>)] = [("stop", \.stop), ("harvest", \.harvest), ("copy", \.copy),
                                                                     ("state", \.state), ("resume", \.resume)]
        return parts.map { name, path in "\(name) \(Self.micros(steps.map { $0[keyPath: path] }, 0.5)) µs" }.joined(separator: ", ")
            + " (medians of \(steps.count))"
    }
}

// MARK: the loop

/// The engine's own loop at 0.5 and 1 ms for a guest dirtying ~64 pages an
/// epoch: checkpoints per second achieved, the pause and its steps. The
/// checkpoints are encoded and dropped (the standby is another host).
func loopBenchmarks() {
    for tracking in [MachineConfiguration.DirtyTracking.bitmap, .ring(entries: 65536)] {
        for epochMicroseconds in [500, 1000] {
            let name = tracking == .bitmap ? "bitmap" : "ring"
            var reports: [String] = []
            Benchmark("Checkpoint loop, \(name), epoch \(epochMicroseconds) µs, ~64 dirty pages, 3 s",
                      configuration: .init(metrics: [.wallClock], timeUnits: .milliseconds, warmupIterations: 0,
                                           maxDuration: .seconds(10), maxIterations: 2)) { benchmark in
                let machine = try Machine(configuration: .init(memorySize: 256 << 20, commandLine: "pages=8 wss=64 every=100000000",
                                                               dirtyTracking: tracking), console: { _ in })
                let engine = CheckpointEngine(machine: machine, configuration: .init(epoch: .microseconds(epochMicroseconds)))
                try machine.start()
                try engine.start()
                usleep(500_000)                               // past the full first checkpoint
                let skip = engine.epochCount
                let steal = StealMeter()
                usleep(3_000_000)
                let window = engine.statistics(since: skip)
                try engine.stop()
                machine.requestStop()
                _ = machine.waitUntilStopped()
                let pauses = window.map(\.pause)
                reports.append("loop \(name) \(epochMicroseconds) µs (host steal \(steal.percent) %): \(window.count / 3) checkpoints/s, dirty pages p50 \(window.map(\.dirtyPages).sorted()[window.count / 2]), "
                      + "pause p50 \(PauseSteps.micros(pauses, 0.5)) µs p99 \(PauseSteps.micros(pauses, 0.99)) µs max \(PauseSteps.micros(pauses, 1)) µs, "
                      + "stretched \(window.filter(\.stretched).count), encode p50 \(PauseSteps.micros(window.map(\.encodeTime), 0.5)) µs; "
                      + "steps: \(PauseSteps(window.map(\.breakdown)).medians)")
                blackHole(benchmark)
            } teardown: {
                reports.forEach { print($0) }
                reports = []
            }
        }
    }
}

// MARK: guest throughput

/// Time for the workload to print 40 lines (fixed work), with and without
/// checkpointing: a heavy writer (512 pages re-dirtied per epoch) and a light one
/// (16 pages).
func throughputBenchmarks() {
    for (weight, options) in [("heavy", "pages=16 wss=512 every=20000 count=40"), ("light", "pages=2 wss=16 every=100000 count=400")] {
        for epoch in [0, 1, 5, 10, 25] where weight == "light" || epoch != 10 {
            let label = epoch == 0 ? "no checkpointing" : "checkpoint every \(epoch) ms"
            Benchmark("Guest throughput (\(weight) writer): \(weight == "light" ? 400 : 40) workload lines, \(label)",
                      configuration: .init(metrics: [.wallClock], timeUnits: .milliseconds, warmupIterations: 1,
                                           maxDuration: .seconds(15), maxIterations: 8)) { benchmark in
                let machine = try Machine(configuration: .init(memorySize: 64 << 20, commandLine: options, dirtyTracking: .bitmap),
                                          console: { _ in })
                let replica = try ReplicaImage(memorySize: machine.memory.size)
                let engine = CheckpointEngine(machine: machine, configuration: .init(epoch: .milliseconds(max(epoch, 1))))
                engine.sink = { try? replica.apply($0) }
                benchmark.startMeasurement()
                try machine.start()
                if epoch > 0 { try engine.start() }
                let reason = machine.waitUntilStopped()
                benchmark.stopMeasurement()
                if epoch > 0 { try? engine.stop() }
                blackHole(reason)
            }
        }
    }
}

/// The guest's steady-state slowdown under checkpointing, paired: one light
/// writer (16 pages re-dirtied per epoch) alternates 1 s windows with the engine
/// stopped and running (a restarted engine continues incrementally; the pages
/// written while it was stopped go in its next checkpoint). Pairing cancels the
/// host's drift, which between separate runs exceeds the few per cent measured.
func steadyThroughputBenchmarks() {
    for epoch in [1, 5, 10, 25] {
        pairedSlowdownBenchmark("Guest slowdown, paired windows (light writer, 16 pages), checkpoint every \(epoch) ms",
                                label: "checkpoint every \(epoch) ms") { machine in
            let engine = CheckpointEngine(machine: machine, configuration: .init(epoch: .milliseconds(epoch)))
            try engine.start()                                 // the full first checkpoint, then incremental
            usleep(1_000_000)
            try engine.stop()
            return ({ try engine.start() }, { try engine.stop() })
        }
    }
    // Which part of a checkpoint the guest feels, every 10 ms: a bare pause and
    // resume; a pause with the dirty log harvested and re-armed; the whole checkpoint.
    for (name, step) in [("pause and resume only", SlowdownStep.pauseOnly), ("pause, harvest and re-arm", .harvest),
                         ("whole checkpoint", .checkpoint)] {
        pairedSlowdownBenchmark("Guest slowdown, paired windows (light writer, 16 pages), 10 ms: \(name)", label: name) { machine in
            let engine = CheckpointEngine(machine: machine)
            let staged = StagedCheckpoint()
            try machine.pauseForCheckpoint()
            try engine.captureWhilePaused(into: staged)                  // the full first checkpoint
            try machine.resumeAfterCheckpoint()
            let loop = StepLoop(machine: machine, engine: engine, staged: staged, step: step)
            return ({ loop.start() }, { loop.stop() })
        }
    }
}

/// What `StepLoop` does every 10 ms.
enum SlowdownStep { case pauseOnly, harvest, checkpoint }

/// A thread doing one part of a checkpoint every 10 ms, to see what the guest feels of it.
final class StepLoop: @unchecked Sendable {
    let machine: Machine, engine: CheckpointEngine, staged: StagedCheckpoint, step: SlowdownStep
    let running = Atomic<Bool>(false)
    let done = DispatchSemaphore(value: 0)
    init(machine: Machine, engine: CheckpointEngine, staged: StagedCheckpoint, step: SlowdownStep) {
        (self.machine, self.engine, self.staged, self.step) = (machine, engine, staged, step)
    }

    func start() {
        running.store(true, ordering: .sequentiallyConsistent)
        Thread { [self] in
            let bitmap = DirtyBitmap(pageCount: machine.memory.size / 4096)
            while running.load(ordering: .sequentiallyConsistent) {
                usleep(10_000)
                switch step {
                case .pauseOnly:
                    try? machine.pause()
                    try? machine.resume()
                case .harvest:
                    bitmap.removeAll()
                    try? machine.pause()
                    try? machine.collectDirtyPages(into: bitmap)
                    try? machine.resume()
                case .checkpoint:
                    try? machine.pauseForCheckpoint()
                    _ = try? engine.captureWhilePaused(into: staged)
                    try? machine.resumeAfterCheckpoint()
                    try? machine.completeCheckpoint()
                    blackHole(engine.encode(staged))
                }
            }
            done.signal()
        }.start()
    }

    func stop() {
        running.store(false, ordering: .sequentiallyConsistent)
        done.wait()
    }
}

/// A benchmark that boots the light writer (a line per 20,000 iterations), lets
/// `prepare` set up what slows it, then runs 8 pairs of 1 s windows with it
/// stopped and running (order alternating) and prints the median slowdown.
func pairedSlowdownBenchmark(_ name: String, label: String,
                             prepare: @escaping (Machine) throws -> (start: () throws -> Void, stop: () throws -> Void)) {
    var reports: [String] = []
    Benchmark(name, configuration: .init(metrics: [.wallClock], timeUnits: .milliseconds, warmupIterations: 0,
                                         maxDuration: .seconds(60), maxIterations: 1)) { benchmark in
        let lines = Atomic<Int>(0)
        let machine = try Machine(configuration: .init(memorySize: 64 << 20, commandLine: "pages=2 wss=16 every=20000",
                                                       dirtyTracking: .bitmap),
                                  console: { bytes in lines.add(bytes.filter { $0 == 10 }.count, ordering: .relaxed) })
        try machine.start()
        let (start, stop) = try prepare(machine)
        let steal = StealMeter()
        func window(running: Bool) throws -> Double {
            if running { try start() }
            let first = lines.load(ordering: .relaxed)
            usleep(1_000_000)
            let count = lines.load(ordering: .relaxed) - first
            if running { try stop() }
            return Double(count)
        }
        var slowdowns: [Double] = []
        for pair in 0..<8 {
            var off = 0.0, on = 0.0
            if pair % 2 == 0 {
                off = try window(running: false)
                on = try window(running: true)
            } else {
                on = try window(running: true)
                off = try window(running: false)
            }
            slowdowns.append(100 * (1 - on / max(off, 1)))
        }
        machine.requestStop()
        _ = machine.waitUntilStopped()
        let sorted = slowdowns.sorted()
        reports.append(String(format: "slowdown, %@ (host steal %d %%): median %.1f %%, range %.1f..%.1f %% over %d pairs",
                              label, steal.percent, (sorted[3] + sorted[4]) / 2, sorted.first!, sorted.last!, sorted.count))
        blackHole(benchmark)
    } teardown: {
        reports.forEach { print($0) }
        reports = []
    }
}

/// The share of CPU time the hypervisor took from this machine (steal, /proc/stat)
/// since the meter was made, in percent: the noise under a measurement.
struct StealMeter {
    let start: (steal: Int, total: Int)
    init() { start = Self.read() }

    static func read() -> (steal: Int, total: Int) {
        guard let text = try? String(contentsOfFile: "/proc/stat", encoding: .utf8),
              let line = text.split(separator: "\n").first(where: { $0.hasPrefix("cpu ") }) else { return (0, 0) }
        let fields = line.split(separator: " ").dropFirst().compactMap { Int($0) }
        return (fields.count > 7 ? fields[7] : 0, fields.reduce(0, +))
    }

    var percent: Int {
        let now = Self.read()
        let total = now.total - start.total
        return total > 0 ? 100 * (now.steal - start.steal) / total : 0
    }
}
