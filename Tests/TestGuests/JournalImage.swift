import Foundation

/// Reads a journal guest's disk image from the host side (record format in
/// Guests/apps/journal.c) and says which records it holds.
public enum JournalImage {
    static let magic: UInt32 = 0x4A52_4E4C

    static let crcTable: [UInt32] = (0..<256).map { n in
        (0..<8).reduce(UInt32(n)) { c, _ in c & 1 != 0 ? 0xEDB8_8320 ^ (c >> 1) : c >> 1 }
    }

    public static func crc32(_ bytes: ArraySlice<UInt8>) -> UInt32 {
        ~bytes.reduce(~UInt32(0)) { crcTable[Int(($0 ^ UInt32($1)) & 0xFF)] ^ ($0 >> 8) }
    }

    /// Whether `sector` holds a valid record number `n`.
    public static func isRecord(_ sector: ArraySlice<UInt8>, number n: UInt64) -> Bool {
        let s = Array(sector)
        func u32(_ o: Int) -> UInt32 { (0..<4).reduce(0) { $0 | UInt32(s[o + $1]) << (8 * $1) } }
        func u64(_ o: Int) -> UInt64 { (0..<8).reduce(0) { $0 | UInt64(s[o + $1]) << (8 * UInt64($1)) } }
        guard s.count == 512, u32(0) == magic, u64(4) == n else { return false }
        return crc32(s[0..<508]) == u32(508) && u32(12) == 16 + UInt32((n * 37) % 473)
    }

    /// The number of consecutive valid records from record 1.
    public static func recordCount(path: String) throws -> Int {
        let data = [UInt8](try Data(contentsOf: URL(fileURLWithPath: path)))
        var n = 0
        while (n + 1) * 512 <= data.count, isRecord(data[(n * 512)..<((n + 1) * 512)], number: UInt64(n + 1)) { n += 1 }
        return n
    }

    /// The numbers from "flushed <n>" lines, in order.
    public static func flushed(in lines: [String]) -> [Int] {
        lines.compactMap { line in line.hasPrefix("flushed ") ? Int(line.dropFirst(8)) : nil }
    }

    public static func makeImage(megabytes: Int) -> String {
        let path = FileManager.default.temporaryDirectory.appendingPathComponent("journal-\(UUID()).img").path
        FileManager.default.createFile(atPath: path, contents: nil)
        truncate(path, off_t(megabytes << 20))
        return path
    }
}
