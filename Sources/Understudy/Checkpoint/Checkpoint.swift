import CKVM

/// One checkpoint: the pages that changed since the previous one (all pages for
/// the first), encoded, plus the machine state and the output the epoch produced.
///
/// Page records, concatenated in `pages`: page number (u32 LE), encoding tag (u8),
/// payload length (u32 LE), payload. `digest` is CRC-32C over sequence, page
/// records, state, output and disk writes, so a receiver can verify the whole before applying.
public struct Checkpoint: Sendable, Equatable {
    public var sequence: UInt64
    /// Whether this carries every page of guest RAM (the first of a session).
    public var isFull: Bool
    public var pageCount: Int
    public var pages: [UInt8]
    public var state: [UInt8]
    /// External output of the epoch, released when this checkpoint is acknowledged.
    public var output: [UInt8]
    /// The epoch's block writes (`DiskRecord` bytes), applied by the standby iff this commits.
    public var disk: [UInt8]
    public var digest: UInt32

    public init(sequence: UInt64, isFull: Bool, pageCount: Int, pages: [UInt8], state: [UInt8], output: [UInt8] = [], disk: [UInt8] = []) {
        self.sequence = sequence
        self.isFull = isFull
        self.pageCount = pageCount
        self.pages = pages
        self.state = state
        self.output = output
        self.disk = disk
        self.digest = 0
        self.digest = computedDigest
    }

    /// CRC-32C of the checkpoint's contents.
    public var computedDigest: UInt32 {
        var crc = withUnsafeBytes(of: sequence.littleEndian) { ckvm_crc32c(0, $0.baseAddress, $0.count) }
        crc = withUnsafeBytes(of: UInt8(isFull ? 1 : 0)) { ckvm_crc32c(crc, $0.baseAddress, $0.count) }
        for part in [pages, state, output, disk] {
            crc = part.withUnsafeBytes { ckvm_crc32c(crc, $0.baseAddress, $0.count) }
        }
        return crc
    }

    /// Size of the encoded checkpoint in bytes.
    public var encodedSize: Int { pages.count + state.count + output.count + disk.count }
}

/// Figures for one epoch.
public struct EpochStatistics: Sendable, Equatable {
    public var sequence: UInt64
    /// How long the guest was paused.
    public var pause: Duration
    public var dirtyPages: Int
    /// Bytes before encoding (pages × 4 KiB + state) and after.
    public var rawBytes: Int
    public var encodedBytes: Int
    public var encodeTime: Duration
    /// Whether the epoch was stretched because encoding of the previous one had not finished.
    public var stretched: Bool
    /// The pause, step by step.
    public var breakdown = PauseBreakdown()
    /// Whether the guest was held paused until the link caught up, because it
    /// had written its disk budget (`DiskWriteLog.epochBudget`) in this epoch.
    public var throttled = false
}
