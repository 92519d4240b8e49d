// swift-tools-version: 6.1
import PackageDescription

let package = Package(
    name: "Understudy",
    platforms: [.macOS(.v15)],
    products: [
        .library(name: "KVM", targets: ["KVM"]),
    ],
    dependencies: [
        .package(url: "https://github.com/ordo-one/benchmark", from: "1.38.1", traits: ["MallocInterposer"]),
    ],
    targets: [
        // C shims
        .target(name: "CKVM"),
        .systemLibrary(name: "CLZ4", pkgConfig: "liblz4", providers: [.apt(["liblz4-dev"])]),
        .systemLibrary(name: "CZstd", pkgConfig: "libzstd", providers: [.apt(["libzstd-dev"])]),

        // Safe KVM bindings, no policy.
        .target(name: "KVM", dependencies: ["CKVM"]),

        // Tiny guest programs (machine code) and the long-mode setup they need,
        // shared by the tests and the benchmarks.
        .target(name: "TestGuests", dependencies: ["KVM"], path: "Tests/TestGuests"),

        .testTarget(name: "KVMTests", dependencies: ["KVM", "CKVM", "TestGuests"]),
        .testTarget(name: "CompressionLinkTests", dependencies: ["CLZ4", "CZstd"]),

        .executableTarget(
            name: "KVMBenchmarks",
            dependencies: [
                "KVM", "TestGuests",
                .product(name: "Benchmark", package: "benchmark"),
            ],
            path: "Benchmarks/KVMBenchmarks",
            plugins: [.plugin(name: "BenchmarkPlugin", package: "benchmark")]
        ),
    ]
)
