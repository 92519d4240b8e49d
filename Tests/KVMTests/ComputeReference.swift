/// What `GuestCode.compute` computes, in Swift, to check the guest against.
struct ComputeReference {
    var rax: UInt64
    var xmmLow: UInt64
    var xmmHigh: UInt64
    var buffer: [UInt64]

    static func run(iterations: Int, mask: Int) -> ComputeReference {
        var rax: UInt64 = 0x243F_6A88_85A3_08D3
        var low: UInt64 = 0, high: UInt64 = 0
        var buffer = [UInt64](repeating: 0, count: mask + 1)
        for _ in 0..<iterations {
            rax = rax &* 6_364_136_223_846_793_005 &+ 1_442_695_040_888_963_407
            buffer[Int((rax >> 33) & UInt64(mask))] ^= rax
            low &+= rax
            swap(&low, &high)              // pshufd 0x4e swaps the two quadwords
        }
        return ComputeReference(rax: rax, xmmLow: low, xmmHigh: high, buffer: buffer)
    }
}
