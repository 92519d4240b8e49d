import Benchmark
import KVM
import MicroVM
#if canImport(Glibc)
import Glibc
#endif

/// MicroVM costs that bound a checkpoint's pause: stopping every vCPU out of
/// KVM_RUN (and releasing them), and saving the whole machine's state.
let benchmarks: @Sendable () -> Void = {
    guard KVM.isAvailable else {
        print("MICROVM BENCHMARKS SKIPPED: /dev/kvm is not available")
        return
    }
    Benchmark.defaultConfiguration = .init(
        metrics: [.wallClock],
        timeUnits: .microseconds,
        warmupIterations: 10,
        maxDuration: .seconds(4),
        maxIterations: 2000
    )

    for vcpus in [1, 2] {
        let paused = Holder()
        Benchmark("Pause, workload running on \(vcpus) vCPU(s)") { benchmark in
            let machine = try paused.get()
            benchmark.startMeasurement()
            try machine.pause()
            benchmark.stopMeasurement()
            try machine.resume()
            waitUntilInGuest(machine)
            usleep(200)
        } setup: {
            try paused.start(vcpus: vcpus)
        } teardown: {
            paused.stop()
        }

        let resumed = Holder()
        Benchmark("Resume until every vCPU is back in KVM_RUN, \(vcpus) vCPU(s)") { benchmark in
            let machine = try resumed.get()
            try machine.pause()
            benchmark.startMeasurement()
            try machine.resume()
            waitUntilInGuest(machine)
            benchmark.stopMeasurement()
            usleep(200)
        } setup: {
            try resumed.start(vcpus: vcpus)
        } teardown: {
            resumed.stop()
        }

        let saved = Holder()
        Benchmark("Save state (all vCPUs, VM, devices, encoded), \(vcpus) vCPU(s)") { benchmark in
            let machine = try saved.get()
            try machine.pause()
            benchmark.startMeasurement()
            let state = try machine.saveState()
            benchmark.stopMeasurement()
            blackHole(state)
            try machine.resume()
        } setup: {
            try saved.start(vcpus: vcpus)
        } teardown: {
            saved.stop()
        }
    }
}

/// Holds the machine a benchmark runs against, from setup to teardown.
final class Holder: @unchecked Sendable {
    private var machine: Machine?

    struct NotStarted: Error {}

    func get() throws -> Machine {
        guard let machine else { throw NotStarted() }
        return machine
    }

    func start(vcpus: Int) throws {
        machine = try runningWorkload(vcpus: vcpus)
    }

    func stop() {
        machine?.requestStop()
        _ = machine?.waitUntilStopped()
        machine = nil
    }
}

/// Waits (yielding the core, which a vCPU thread may need) until every vCPU thread is inside KVM_RUN.
func waitUntilInGuest(_ machine: Machine) {
    while !machine.vcpus.allSatisfy(\.isRunning) { sched_yield() }
}

func runningWorkload(vcpus: Int) throws -> Machine {
    let machine = try Machine(configuration: .init(vcpuCount: vcpus, memorySize: 64 << 20,
                                                   commandLine: "pages=16 wss=1024 every=100000000"),
                              console: { _ in })
    try machine.start()
    return machine
}
