/// The payload of a `checkpointBegin` frame: the shape of the checkpoint whose
/// body (page records, then state, then output) follows in `checkpointData`
/// frames. The receiver checks every size against its limits before it
/// allocates anything.
public struct CheckpointBegin: Sendable, Equatable {
    public static let payloadSize = 36
    /// Bounds a receiver applies.
    public static let maximumStateBytes = 16 << 20
    public static let maximumOutputBytes = 64 << 20
    /// The most block-write bytes one checkpoint may carry (what the standby holds
    /// in memory until the checkpoint commits).
    public static let maximumDiskBytes = 256 << 20
    /// The most one encoded page record may take (9-byte header, payload never
    /// larger than a raw page plus compressor overhead).
    public static let maximumRecordBytes = 9 + 2 * 4096

    public var isFull: Bool
    public var pageCount: UInt32
    public var pagesLength: UInt64
    public var stateLength: UInt32
    public var outputLength: UInt32
    /// The newest checkpoint whose output the primary had released when it sent
    /// this one (`UInt64.max`: none yet). A standby taking over releases the
    /// output of every committed epoch after it, so none is lost.
    public var releasedThrough: UInt64
    public var diskLength: UInt32

    public init(_ checkpoint: Checkpoint, releasedThrough: UInt64 = .max) {
        self.releasedThrough = releasedThrough
        diskLength = UInt32(checkpoint.disk.count)
        isFull = checkpoint.isFull
        pageCount = UInt32(checkpoint.pageCount)
        pagesLength = UInt64(checkpoint.pages.count)
        stateLength = UInt32(checkpoint.state.count)
        outputLength = UInt32(checkpoint.output.count)
    }

    public var bodyLength: Int { Int(pagesLength) + Int(stateLength) + Int(outputLength) + Int(diskLength) }

    public var payload: [UInt8] {
        var out: [UInt8] = [isFull ? 1 : 0, 0, 0, 0]
        out.appendLittleEndian(pageCount)
        out.appendLittleEndian(pagesLength)
        out.appendLittleEndian(stateLength)
        out.appendLittleEndian(outputLength)
        out.appendLittleEndian(releasedThrough)
        out.appendLittleEndian(diskLength)
        return out
    }

    /// Reads and bounds-checks a begin payload for a guest of `guestPages` pages.
    public init(payload: [UInt8], guestPages: Int) throws(WireError) {
        var reader = PayloadReader(payload, what: "checkpoint begin")
        let flags = try reader.integer(UInt32.self)
        guard flags <= 1 else { throw .malformed("checkpoint flags 0x\(String(flags, radix: 16))") }
        isFull = flags == 1
        pageCount = try reader.integer()
        pagesLength = try reader.integer()
        stateLength = try reader.integer()
        outputLength = try reader.integer()
        releasedThrough = try reader.integer()
        diskLength = try reader.integer()
        try reader.finish()
        guard Int(pageCount) <= guestPages else { throw .malformed("\(pageCount) pages, the guest has \(guestPages)") }
        guard pagesLength <= UInt64(pageCount) * UInt64(Self.maximumRecordBytes) else {
            throw .malformed("\(pagesLength) bytes of page records for \(pageCount) pages")
        }
        guard stateLength <= Self.maximumStateBytes else { throw .malformed("state of \(stateLength) bytes") }
        guard outputLength <= Self.maximumOutputBytes else { throw .malformed("output of \(outputLength) bytes") }
        guard diskLength <= Self.maximumDiskBytes else { throw .malformed("\(diskLength) bytes of disk writes, over the \(Self.maximumDiskBytes) a standby holds") }
    }
}
