import CLZ4
#if canImport(Glibc)
import Glibc
#endif
import CZstd

/// Encodes and decodes single pages. One instance per thread: it owns scratch
/// buffers and a zstd context, allocated once, so encoding allocates nothing per
/// page beyond the growth of the caller's output buffer.
///
/// ```swift
/// let codec = PageCodec(level: .lz4)
/// var out: [UInt8] = []
/// let encoding = codec.encode(page, previous: lastSent, into: &out)   // appends the payload
/// try codec.decode(encoding, payload: payloadBytes, into: replicaPage)  // replicaPage holds the old copy
/// ```
public final class PageCodec {
    public let level: CodecLevel
    private let scratch: UnsafeMutableRawPointer           // XOR of new and old
    private let compressed: UnsafeMutableRawPointer        // compressor output
    private let compressedCapacity: Int
    private let zstdCompress: OpaquePointer?
    private let zstdDecompress: OpaquePointer?
    /// LZ4 acceleration (1 = default; LIMITS.md: 8 is ~1.4x faster at nearly the same ratio on deltas).
    public var lz4Acceleration: Int32 = 1
    /// zstd compression level (1 = fastest).
    public var zstdLevel: Int32 = 1

    public init(level: CodecLevel = .lz4) {
        self.level = level
        scratch = .allocate(byteCount: pageSize, alignment: 64)
        compressedCapacity = max(Int(LZ4_compressBound(Int32(pageSize))), ZSTD_compressBound(pageSize))
        compressed = .allocate(byteCount: compressedCapacity, alignment: 64)
        zstdCompress = ZSTD_createCCtx()
        zstdDecompress = ZSTD_createDCtx()
    }

    deinit {
        scratch.deallocate()
        compressed.deallocate()
        ZSTD_freeCCtx(zstdCompress)
        ZSTD_freeDCtx(zstdDecompress)
    }

    // MARK: encoding

    /// Encodes `page`, appending its payload to `output`. `previous` is the
    /// receiver's current copy of this page, if the sender knows it.
    public func encode(_ page: UnsafeRawPointer, previous: UnsafeRawPointer?, into output: inout [UInt8]) -> PageEncoding {
        if Self.isZero(page) { return .zero }
        if let previous {
            if memcmp(page, previous, pageSize) == 0 { return .unchanged }
            if level != .none {
                // A zero-run delta is cheap and usually tiny; accept it if under a quarter page.
                if ZeroRunXOR.encode(new: page, old: previous, into: &output, limit: pageSize / 4) { return .xorZeroRun }
                xor(page, previous)
                let size = lz4(scratch)
                if size > 0 && size < pageSize / 2 {
                    output.append(contentsOf: UnsafeRawBufferPointer(start: compressed, count: size))
                    return .lz4XOR
                }
            }
        }
        switch level {
        case .none:
            break
        case .lz4, .auto:
            let size = lz4(page)
            if size > 0 && size < pageSize - pageSize / 16 {
                output.append(contentsOf: UnsafeRawBufferPointer(start: compressed, count: size))
                return .lz4
            }
        case .zstd:
            let size = zstd(page)
            if size > 0 && size < pageSize - pageSize / 16 {
                output.append(contentsOf: UnsafeRawBufferPointer(start: compressed, count: size))
                return .zstd
            }
        }
        output.append(contentsOf: UnsafeRawBufferPointer(start: page, count: pageSize))
        return .raw
    }

    static func isZero(_ page: UnsafeRawPointer) -> Bool {
        let words = page.assumingMemoryBound(to: UInt64.self)
        var any: UInt64 = 0
        for i in 0..<(pageSize / 8) { any |= words[i] }
        return any == 0
    }

    private func xor(_ a: UnsafeRawPointer, _ b: UnsafeRawPointer) {
        let x = a.assumingMemoryBound(to: UInt64.self), y = b.assumingMemoryBound(to: UInt64.self)
        let out = scratch.assumingMemoryBound(to: UInt64.self)
        for i in 0..<(pageSize / 8) { out[i] = x[i] ^ y[i] }
    }

    private func lz4(_ source: UnsafeRawPointer) -> Int {
        Int(LZ4_compress_fast(source.assumingMemoryBound(to: CChar.self), compressed.assumingMemoryBound(to: CChar.self),
                              Int32(pageSize), Int32(compressedCapacity), lz4Acceleration))
    }

    private func zstd(_ source: UnsafeRawPointer) -> Int {
        let size = ZSTD_compressCCtx(zstdCompress, compressed, compressedCapacity, source, pageSize, zstdLevel)
        return ZSTD_isError(size) != 0 ? 0 : size
    }

    // MARK: decoding

    /// Decodes a payload into `page`, which holds the receiver's current copy
    /// (needed by delta encodings). Every length is checked; on error `page` may
    /// be partly written, so decode into a staging copy.
    public func decode(_ encoding: PageEncoding, payload: UnsafeRawBufferPointer, into page: UnsafeMutableRawPointer) throws(CodecError) {
        switch encoding {
        case .zero:
            guard payload.isEmpty else { throw .malformed("zero page with a payload") }
            page.initializeMemory(as: UInt8.self, repeating: 0, count: pageSize)
        case .unchanged:
            guard payload.isEmpty else { throw .malformed("unchanged page with a payload") }
        case .raw:
            guard payload.count == pageSize else { throw .malformed("raw page of \(payload.count) bytes") }
            page.copyMemory(from: payload.baseAddress!, byteCount: pageSize)
        case .xorZeroRun:
            try ZeroRunXOR.apply(payload, to: page)
        case .lz4, .lz4XOR:
            guard !payload.isEmpty, payload.count <= compressedCapacity else { throw .malformed("LZ4 payload of \(payload.count) bytes") }
            let target = encoding == .lz4 ? page : scratch
            let size = LZ4_decompress_safe(payload.baseAddress!.assumingMemoryBound(to: CChar.self),
                                           target.assumingMemoryBound(to: CChar.self), Int32(payload.count), Int32(pageSize))
            guard size == Int32(pageSize) else { throw .malformed("LZ4 payload decodes to \(size) bytes, not a page") }
            if encoding == .lz4XOR {
                let out = page.assumingMemoryBound(to: UInt64.self), delta = scratch.assumingMemoryBound(to: UInt64.self)
                for i in 0..<(pageSize / 8) { out[i] ^= delta[i] }
            }
        case .zstd:
            guard !payload.isEmpty else { throw .malformed("empty zstd payload") }
            guard ZSTD_getFrameContentSize(payload.baseAddress, payload.count) == UInt64(pageSize) else {
                throw .malformed("zstd frame does not declare one page")
            }
            let size = ZSTD_decompressDCtx(zstdDecompress, page, pageSize, payload.baseAddress, payload.count)
            guard ZSTD_isError(size) == 0, size == pageSize else { throw .malformed("zstd payload does not decode to a page") }
        }
    }
}
