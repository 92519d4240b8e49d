// swift-tools-version: 6.1
import PackageDescription

let package = Package(
    name: "Understudy",
    platforms: [.macOS(.v15)],
    products: [
        .library(name: "KVM", targets: ["KVM"]),
        .library(name: "MicroVM", targets: ["MicroVM"]),
        .library(name: "Understudy", targets: ["Understudy"]),
        .library(name: "UnderstudyEtcd", targets: ["UnderstudyEtcd"]),
        .library(name: "UnderstudyConformance", targets: ["UnderstudyConformance"]),
        .executable(name: "understudy-primary", targets: ["understudy-primary"]),
        .executable(name: "understudy-standby", targets: ["understudy-standby"]),
        .executable(name: "understudy-ctl", targets: ["understudy-ctl"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.5.0"),
        .package(url: "https://github.com/apple/swift-log", from: "1.6.0"),
        .package(url: "https://github.com/swift-server/async-http-client", from: "1.37.0"),
        .package(url: "https://github.com/ordo-one/benchmark", from: "1.38.1", traits: ["MallocInterposer"]),
    ],
    targets: [
        // C shims
        .target(name: "CKVM"),
        .systemLibrary(name: "CLZ4", pkgConfig: "liblz4", providers: [.apt(["liblz4-dev"])]),
        .systemLibrary(name: "CZstd", pkgConfig: "libzstd", providers: [.apt(["libzstd-dev"])]),

        // Safe KVM bindings, no policy.
        .target(name: "KVM", dependencies: ["CKVM"]),

        // The fault-tolerance engine.
        .target(name: "Understudy", dependencies: ["KVM", "CLZ4", "CZstd", .product(name: "Logging", package: "swift-log")]),

        // The arbiter in etcd (fencing): its v3 JSON gateway over async-http-client.
        .target(name: "UnderstudyEtcd", dependencies: ["Understudy", .product(name: "AsyncHTTPClient", package: "async-http-client")]),

        // A VMM's proof that it replicates correctly (a test helper for VMMs).
        .target(name: "UnderstudyConformance", dependencies: ["KVM", "Understudy"]),

        // The reference VMM.
        .target(name: "MicroVM", dependencies: ["KVM", "Understudy", .product(name: "Logging", package: "swift-log")]),

        .executableTarget(
            name: "understudy-primary",
            dependencies: [
                "MicroVM", "Understudy", "UnderstudyEtcd",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Logging", package: "swift-log"),
            ]
        ),
        .executableTarget(
            name: "understudy-standby",
            dependencies: [
                "MicroVM", "Understudy", "UnderstudyEtcd",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Logging", package: "swift-log"),
            ]
        ),

        .executableTarget(
            name: "understudy-ctl",
            dependencies: ["Understudy", .product(name: "ArgumentParser", package: "swift-argument-parser")]
        ),

        // Tiny guest programs (machine code) and the long-mode setup they need,
        // shared by the tests and the benchmarks.
        .target(name: "TestGuests", dependencies: ["KVM", "CKVM", "MicroVM", "UnderstudyEtcd"], path: "Tests/TestGuests"),

        .testTarget(name: "KVMTests", dependencies: ["KVM", "CKVM", "TestGuests"]),
        .testTarget(name: "MicroVMTests", dependencies: ["MicroVM", "KVM", "TestGuests", "UnderstudyConformance", "Understudy"]),
        .testTarget(name: "UnderstudyTests", dependencies: ["Understudy", "UnderstudyEtcd", "MicroVM", "KVM", "TestGuests"]),
        .testTarget(name: "CompressionLinkTests", dependencies: ["CLZ4", "CZstd"]),
        .testTarget(name: "UnderstudyEtcdTests", dependencies: ["UnderstudyEtcd", "Understudy", "TestGuests"]),

        .executableTarget(
            name: "KVMBenchmarks",
            dependencies: [
                "KVM", "TestGuests",
                .product(name: "Benchmark", package: "benchmark"),
            ],
            path: "Benchmarks/KVMBenchmarks",
            plugins: [.plugin(name: "BenchmarkPlugin", package: "benchmark")]
        ),
        .executableTarget(
            name: "MicroVMBenchmarks",
            dependencies: [
                "KVM", "MicroVM",
                .product(name: "Benchmark", package: "benchmark"),
            ],
            path: "Benchmarks/MicroVMBenchmarks",
            plugins: [.plugin(name: "BenchmarkPlugin", package: "benchmark")]
        ),
        .executableTarget(
            name: "UnderstudyBenchmarks",
            dependencies: [
                "KVM", "MicroVM", "Understudy",
                .product(name: "Benchmark", package: "benchmark"),
            ],
            path: "Benchmarks/UnderstudyBenchmarks",
            plugins: [.plugin(name: "BenchmarkPlugin", package: "benchmark")]
        ),
        .executableTarget(
            name: "ReplicationBenchmarks",
            dependencies: [
                "KVM", "MicroVM", "Understudy", "TestGuests",
                .product(name: "Benchmark", package: "benchmark"),
                .product(name: "Logging", package: "swift-log"),
            ],
            path: "Benchmarks/ReplicationBenchmarks",
            plugins: [.plugin(name: "BenchmarkPlugin", package: "benchmark")]
        ),
        .executableTarget(
            name: "GuestBenchmarks",
            dependencies: [
                "KVM", "MicroVM", "TestGuests",
                .product(name: "Benchmark", package: "benchmark"),
            ],
            path: "Benchmarks/GuestBenchmarks",
            plugins: [.plugin(name: "BenchmarkPlugin", package: "benchmark")]
        ),
    ]
)
