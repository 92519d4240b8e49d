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

    /// One record of the guest kvstore's journal (Guests/linux/kvstore.c).
    public struct Record: Equatable, Sendable, CustomStringConvertible {
        public var key: String
        public var value: String
        public init(_ pair: (String, String)) { (key, value) = pair }
        public var description: String { "\(key)=\(value)" }
    }

    /// The records of the kvstore journal on the disk image at `path`, in
    /// order, up to the first sector that is not the next valid record.
    public static func journal(path: String) throws -> [Record] {
        let data = [UInt8](try Data(contentsOf: URL(fileURLWithPath: path)))
        var records: [Record] = []
        while (records.count + 1) * 512 <= data.count {
            let s = Array(data[(records.count * 512)..<((records.count + 1) * 512)])
            func u(_ offset: Int, _ count: Int) -> UInt64 { (0..<count).reduce(0) { $0 | UInt64(s[offset + $1]) << (8 * UInt64($1)) } }
            let keyLength = Int(u(12, 2)), valueLength = Int(u(14, 2))
            guard u(0, 4) == 0x4B56_534A, u(4, 8) == UInt64(records.count + 1), keyLength > 0, 16 + keyLength + valueLength <= 508,
                  UInt64(JournalImage.crc32(s[0..<508])) == u(508, 4) else { break }
            records.append(Record((String(decoding: s[16..<(16 + keyLength)], as: UTF8.self),
                                   String(decoding: s[(16 + keyLength)..<(16 + keyLength + valueLength)], as: UTF8.self))))
        }
        return records
    }
}
