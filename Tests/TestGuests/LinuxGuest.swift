import Foundation

/// The Linux guest of Scripts/linux-guest.sh (Debian's kernel and a busybox
/// initramfs, built on first use and cached outside the checkout).
public enum LinuxGuest {
    public struct BuildFailed: Error, CustomStringConvertible {
        public let output: String
        public var description: String { "Scripts/linux-guest.sh failed: \(output)" }
    }

    /// The kernel's and the initramfs's paths, building them if needed.
    public static func files() throws -> (kernel: String, initrd: String) {
        let script = GuestPrograms.packageRoot.appendingPathComponent("Scripts/linux-guest.sh").path
        let output = try TestNetwork.run([script])
        let paths = output.split(whereSeparator: \.isNewline).last?.split(separator: " ").map(String.init) ?? []
        guard paths.count == 2 else { throw BuildFailed(output: output) }
        return (paths[0], paths[1])
    }
}
