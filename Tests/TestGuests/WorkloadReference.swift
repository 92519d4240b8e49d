
/// What the built-in workload guest (Guests/workload/workload.c) prints, computed
/// in Swift: for vCPU `cpu`, the lines `seq=<n> hash=<16 hex> cpu=<cpu>` in order.
public enum WorkloadReference {
    public static func mix(_ value: UInt64) -> UInt64 {
        var x = value
        x ^= x >> 31
        x = x &* 0x7FB5_D329_728E_A185
        x ^= x >> 27
        x = x &* 0x81DA_DEF4_BC2D_D44D
        x ^= x >> 33
        return x
    }

    public static func lines(cpu: Int, pages: Int, wss: Int, every: Int, count: Int) -> [String] {
        var memory = [UInt64](repeating: 0, count: wss * 512)
        var hash = mix(0x5EED_0000_0000_0000 &+ UInt64(cpu))
        var lines: [String] = []
        var iteration: UInt64 = 0
        while lines.count < count {
            for _ in 0..<pages {
                hash = mix(hash &+ iteration)
                let page = Int(hash % UInt64(wss))
                let word = Int((hash >> 40) & 511)
                hash = mix(hash ^ memory[page * 512 + word])
                memory[page * 512 + word] = hash
            }
            if (iteration + 1) % UInt64(every) == 0 {
                let hex = String(hash, radix: 16)
                lines.append("seq=\(lines.count + 1) hash=\(String(repeating: "0", count: 16 - hex.count) + hex) cpu=\(cpu)")
            }
            iteration += 1
        }
        return lines
    }
}

