/// How one 4 KiB page is encoded in a checkpoint. The raw value is the tag byte
/// on the wire (Docs/Protocol.md).
public enum PageEncoding: UInt8, Sendable, CaseIterable, CustomStringConvertible {
    /// All zero; no payload.
    case zero = 0
    /// The 4096 bytes as they are.
    case raw = 1
    /// XOR with the receiver's current copy, as zero-run/literal pairs (`ZeroRunXOR`).
    case xorZeroRun = 2
    /// LZ4 of the page.
    case lz4 = 3
    /// zstd of the page.
    case zstd = 4
    /// LZ4 of the XOR with the receiver's current copy.
    case lz4XOR = 5
    /// Identical to the receiver's current copy; no payload.
    case unchanged = 6

    /// Whether decoding needs the receiver's previous copy of the page.
    public var isDelta: Bool { self == .xorZeroRun || self == .lz4XOR || self == .unchanged }

    public var description: String {
        switch self {
        case .zero: "zero"
        case .raw: "raw"
        case .xorZeroRun: "xor+zero-run"
        case .lz4: "lz4"
        case .zstd: "zstd"
        case .lz4XOR: "lz4(xor)"
        case .unchanged: "unchanged"
        }
    }
}

/// Which encodings the encoder may choose from.
public enum CodecLevel: String, Sendable, CaseIterable {
    /// Zero pages, unchanged pages and raw pages only: the least CPU, for fast links.
    case none
    /// Adds XOR deltas (zero-run and LZ4) and LZ4 of new pages: the default.
    case lz4
    /// Adds zstd for new pages and deltas LZ4 does not shrink: for slow links.
    case zstd
    /// Chooses per page the smallest of what `lz4` offers (same as `lz4` today;
    /// kept separate so a future rate-based choice does not change `lz4`'s meaning).
    case auto
}

/// A page could not be decoded; the checkpoint carrying it must be discarded.
public enum CodecError: Error, Equatable, Sendable, CustomStringConvertible {
    case unknownEncoding(UInt8)
    case truncated(String)
    case malformed(String)

    public var description: String {
        switch self {
        case .unknownEncoding(let tag): "unknown page encoding \(tag)"
        case .truncated(let what): "truncated \(what)"
        case .malformed(let what): "malformed \(what)"
        }
    }
}

/// The page size every codec works in.
public let pageSize = 4096
