import CLZ4
import CZstd
import Testing

/// Proves the system LZ4 and zstd libraries are found, linked and work.
@Suite("Compression libraries")
struct CompressionLinkTests {
    static let input: [UInt8] = (0..<65536).map { UInt8(truncatingIfNeeded: ($0 / 16) &* 31) }

    @Test func lz4RoundTrip() {
        let input = Self.input
        var compressed = [UInt8](repeating: 0, count: Int(LZ4_compressBound(Int32(input.count))))
        let size = input.withUnsafeBytes { source in
            compressed.withUnsafeMutableBytes { destination in
                LZ4_compress_default(source.baseAddress!.assumingMemoryBound(to: CChar.self),
                                     destination.baseAddress!.assumingMemoryBound(to: CChar.self),
                                     Int32(input.count), Int32(destination.count))
            }
        }
        #expect(size > 0 && Int(size) < input.count / 4)
        var output = [UInt8](repeating: 0, count: input.count)
        let decoded = compressed.withUnsafeBytes { source in
            output.withUnsafeMutableBytes { destination in
                LZ4_decompress_safe(source.baseAddress!.assumingMemoryBound(to: CChar.self),
                                    destination.baseAddress!.assumingMemoryBound(to: CChar.self),
                                    size, Int32(destination.count))
            }
        }
        #expect(Int(decoded) == input.count)
        #expect(output == input)
    }

    @Test func zstdRoundTrip() {
        let input = Self.input
        var compressed = [UInt8](repeating: 0, count: ZSTD_compressBound(input.count))
        let size = input.withUnsafeBytes { source in
            compressed.withUnsafeMutableBytes { destination in
                ZSTD_compress(destination.baseAddress, destination.count, source.baseAddress, source.count, 1)
            }
        }
        #expect(ZSTD_isError(size) == 0 && size < input.count / 4)
        var output = [UInt8](repeating: 0, count: input.count)
        let decoded = compressed.withUnsafeBytes { source in
            output.withUnsafeMutableBytes { destination in
                ZSTD_decompress(destination.baseAddress, destination.count, source.baseAddress, size)
            }
        }
        #expect(ZSTD_isError(decoded) == 0 && decoded == input.count)
        #expect(output == input)
    }
}
