import Benchmark
import Foundation
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
    throughputBenchmarks()
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
            Benchmark("Checkpoint pause (pause, harvest, copy, state, resume), \(name), ~\(wss) dirty pages, 256 MiB guest",
                      configuration: .init(metrics: [.wallClock], timeUnits: .microseconds, warmupIterations: 5,
                                           maxDuration: .seconds(4), maxIterations: 400)) { benchmark in
                guard let machine = rig.machine, let engine = rig.engine else { return }
                usleep(wss > 4096 ? 30_000 : 5_000)          // let the guest dirty its working set
                benchmark.startMeasurement()
                try machine.pause()
                try engine.captureWhilePaused(into: rig.staged)
                try machine.resume()
                benchmark.stopMeasurement()
                blackHole(engine.encode(rig.staged))
            } setup: {
                try rig.start(wss: wss, tracking: tracking)
            } teardown: {
                rig.stop()
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
