import Foundation
import KVM
import MicroVM
import Synchronization

/// The C guests from Guests/, built by Scripts/build-guests.sh on first use
/// (idempotent: a built tree costs nothing).
public enum GuestPrograms {
    public static let packageRoot: URL = URL(fileURLWithPath: #filePath)
        .deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()

    private static let built = Mutex<Result<Void, BuildFailed>?>(nil)

    public struct BuildFailed: Error, CustomStringConvertible {
        public let output: String
        public var description: String { "Scripts/build-guests.sh failed:\n\(output)" }
    }

    /// The kvstore guest at 10.77.0.2 (the test network's guest address) on `tap`.
    public static func kvstore(tap: String, memorySize: UInt64 = 64 << 20,
                               dirtyTracking: MachineConfiguration.DirtyTracking = .none) throws -> MachineConfiguration {
        var configuration = MachineConfiguration(name: "kvstore", memorySize: memorySize, image: try image("kvstore"),
                                                 commandLine: "ip=10.77.0.2 mask=255.255.255.0", dirtyTracking: dirtyTracking)
        configuration.network = NetworkConfiguration(tap: tap)
        return configuration
    }

    /// Whether every guest image exists and is newer than every guest source file.
    static func upToDate() -> Bool {
        let build = packageRoot.appendingPathComponent("Guests/build")
        let images = ["kvstore", "journal", "badqueue"].map { build.appendingPathComponent("\($0).elf").path }
        func modified(_ path: String) -> Date? {
            (try? FileManager.default.attributesOfItem(atPath: path))?[.modificationDate] as? Date
        }
        guard let oldest = images.map(modified).reduce(Date.distantFuture, { min($0, $1 ?? .distantPast) }) as Date?,
              oldest != .distantPast else { return false }
        for folder in ["apps", "runtime", "drivers", "lwip-port", "include"] {
            let root = packageRoot.appendingPathComponent("Guests/\(folder)")
            let files = FileManager.default.enumerator(atPath: root.path)?.compactMap { $0 as? String } ?? []
            for file in files where (modified(root.appendingPathComponent(file).path) ?? .distantFuture) > oldest { return false }
        }
        return true
    }

    /// The parsed ELF image of `Guests/build/<name>.elf`, building the guests if needed.
    public static func image(_ name: String) throws -> GuestImage {
        try built.withLock { state in
            if state == nil, upToDate() { state = .success(()) }
            if state == nil {
                let process = Process()
                process.executableURL = URL(fileURLWithPath: "/bin/bash")
                process.arguments = [packageRoot.appendingPathComponent("Scripts/build-guests.sh").path]
                let pipe = Pipe()
                process.standardOutput = pipe
                process.standardError = pipe
                do {
                    try process.run()
                    let output = String(decoding: pipe.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
                    state = ChildExit.wait(for: process) == 0 ? .success(()) : .failure(BuildFailed(output: output))
                } catch {
                    state = .failure(BuildFailed(output: "\(error)"))
                }
            }
            try state!.get()
        }
        let path = packageRoot.appendingPathComponent("Guests/build/\(name).elf").path
        guard let data = FileManager.default.contents(atPath: path) else { throw BuildFailed(output: "\(path) missing") }
        return try GuestImage(elf: [UInt8](data))
    }
}

/// Root, `ip` and /dev/net/tun: what the network tests need. Says so when missing.
public let networkTestsAvailable: Bool = {
    let ok = KVM.isAvailable && getuid() == 0 && FileManager.default.fileExists(atPath: "/dev/net/tun")
    if !ok { print("*** NETWORK GUEST TESTS SKIPPED: they need root, /dev/kvm and /dev/net/tun ***") }
    return ok
}()

/// Waits until `condition` holds or `timeout` passes (scaled for the host's KVM: `TestHost`).
public func eventually(timeout: TimeInterval = 30, _ condition: () -> Bool) -> Bool {
    let deadline = Date().addingTimeInterval(TestHost.seconds(timeout))
    while Date() < deadline {
        if condition() { return true }
        usleep(useconds_t(5000 * TestHost.slowdown))    // polling must not starve an emulated guest of the CPU
    }
    return condition()
}

/// The reference streams of the kvstore's bulk commands (Docs/GuestABI.md).
public enum BulkData {
    public static func splitmix(_ value: UInt64) -> UInt64 {
        var z = value
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }

    /// GEN's word `i` for `seed`.
    public static func word(_ i: UInt64, seed: UInt64) -> UInt64 { splitmix(seed &+ (i &+ 1) &* 0x9E37_79B9_7F4A_7C15) }

    /// FNV-1a 64 over `bytes`, continuing from `hash`.
    public static func fnv1a(_ bytes: UnsafeRawBufferPointer, _ hash: UInt64 = 0xCBF2_9CE4_8422_2325) -> UInt64 {
        var h = hash
        for byte in bytes {
            h ^= UInt64(byte)
            h = h &* 0x0000_0100_0000_01B3
        }
        return h
    }
}
