import Foundation
import TestGuests
import Testing
@testable import Understudy

/// Page kinds the codec must handle, generated from a seed.
enum PageKind: String, CaseIterable, Sendable {
    case zero, random, sparseDelta, runDelta, text, heavyDelta

    /// (new page, previous page or nil).
    func make(_ generator: inout SplitMix) -> ([UInt8], [UInt8]?) {
        var old = [UInt8](repeating: 0, count: pageSize)
        for i in 0..<pageSize { old[i] = UInt8(truncatingIfNeeded: generator.next()) }
        switch self {
        case .zero:
            return ([UInt8](repeating: 0, count: pageSize), Bool.random(using: &generator) ? old : nil)
        case .random:
            return (old, nil)
        case .sparseDelta:
            var new = old
            for _ in 0..<8 { new[Int(generator.next() % UInt64(pageSize))] ^= UInt8(1 + generator.next() % 255) }
            return (new, old)
        case .runDelta:
            var new = old
            let start = Int(generator.next() % UInt64(pageSize - 64))
            for i in start..<(start + 64) { new[i] = UInt8(truncatingIfNeeded: generator.next()) }
            return (new, old)
        case .text:
            let words = ["checkpoint", "epoch", "replica", "standby", "the", "page", "dirty", "commit", " ", "\n"]
            var text: [UInt8] = []
            while text.count < pageSize { text += Array(words[Int(generator.next() % UInt64(words.count))].utf8) }
            return (Array(text.prefix(pageSize)), nil)
        case .heavyDelta:
            var new = old
            for i in stride(from: 0, to: pageSize, by: 4) where generator.next() % 4 == 0 { new[i] = new[i] &+ 1 }
            return (new, old)
        }
    }
}


/// Encodes `new` against `old`, decodes into a copy of `old` (or garbage when there
/// is no previous copy), and returns the result, encoding and payload size.
func roundTrip(_ codec: PageCodec, new: [UInt8], old: [UInt8]?) throws -> ([UInt8], PageEncoding, Int) {
    var payload: [UInt8] = []
    let encoding = new.withUnsafeBytes { n in
        old.map { o in o.withUnsafeBytes { codec.encode(n.baseAddress!, previous: $0.baseAddress!, into: &payload) } }
            ?? codec.encode(n.baseAddress!, previous: nil, into: &payload)
    }
    var page = old ?? [UInt8](repeating: 0xEE, count: pageSize)
    try payload.withUnsafeBytes { p in
        try page.withUnsafeMutableBytes { target in try codec.decode(encoding, payload: p, into: target.baseAddress!) }
    }
    return (page, encoding, payload.count)
}

@Suite("Page codec")
struct PageCodecTests {
    @Test(arguments: CodecLevel.allCases)
    func roundTripIsExactForEveryKind(level: CodecLevel) throws {
        let codec = PageCodec(level: level)
        var generator = SplitMix(state: 1)
        for kind in PageKind.allCases {
            for _ in 0..<50 {
                let (new, old) = kind.make(&generator)
                let (decoded, encoding, size) = try roundTrip(codec, new: new, old: old)
                #expect(decoded == new, "\(kind) with \(level) as \(encoding)")
                #expect(size <= pageSize, "never larger than a raw page")
                if old == nil { #expect(!encoding.isDelta) }
            }
        }
    }

    @Test func choosesTheExpectedEncodings() throws {
        let codec = PageCodec(level: .lz4)
        var generator = SplitMix(state: 2)
        #expect(try roundTrip(codec, new: [UInt8](repeating: 0, count: pageSize), old: nil).1 == .zero)
        let (sparse, old) = PageKind.sparseDelta.make(&generator)
        let sparseResult = try roundTrip(codec, new: sparse, old: old)
        #expect(sparseResult.1 == .xorZeroRun && sparseResult.2 < 200)
        #expect(try roundTrip(codec, new: old!, old: old).1 == .unchanged)
        #expect(try roundTrip(codec, new: PageKind.random.make(&generator).0, old: nil).1 == .raw)
        #expect(try roundTrip(codec, new: PageKind.text.make(&generator).0, old: nil).1 == .lz4)
        #expect(try roundTrip(PageCodec(level: .zstd), new: PageKind.text.make(&generator).0, old: nil).1 == .zstd)
        #expect(try roundTrip(PageCodec(level: .none), new: sparse, old: old).1 == .raw)
    }

    /// Every truncation and many corruptions of real encodings are rejected with an
    /// error or decode to some page; nothing crashes or reads out of bounds.
    @Test func damagedPayloadsNeverCrash() throws {
        let total = 5 * (Int(ProcessInfo.processInfo.environment["UNDERSTUDY_FUZZ_CASES"] ?? "") ?? 1_000)
        var generator = SplitMix(state: 3)
        var cases = 0, rejected = 0
        let codecs = CodecLevel.allCases.map { PageCodec(level: $0) }
        let decoder = PageCodec()
        while cases < total {
            let kind = PageKind.allCases[Int(generator.next() % UInt64(PageKind.allCases.count))]
            let (new, old) = kind.make(&generator)
            var payload: [UInt8] = []
            let codec = codecs[Int(generator.next() % UInt64(codecs.count))]
            let encoding = new.withUnsafeBytes { n in
                old.map { o in o.withUnsafeBytes { codec.encode(n.baseAddress!, previous: $0.baseAddress!, into: &payload) } }
                    ?? codec.encode(n.baseAddress!, previous: nil, into: &payload)
            }
            // Damage: cut, flip, insert, or claim another encoding.
            var damaged = payload
            var tag = encoding
            switch generator.next() % 4 {
            case 0: if !damaged.isEmpty { damaged.removeLast(Int(generator.next() % UInt64(damaged.count)) + 1) }
            case 1: if !damaged.isEmpty { damaged[Int(generator.next() % UInt64(damaged.count))] ^= UInt8(1 + generator.next() % 255) }
            case 2: damaged.insert(UInt8(truncatingIfNeeded: generator.next()), at: Int(generator.next() % UInt64(damaged.count + 1)))
            default: tag = PageEncoding.allCases[Int(generator.next() % UInt64(PageEncoding.allCases.count))]
            }
            var page = old ?? [UInt8](repeating: 0, count: pageSize)
            do {
                try damaged.withUnsafeBytes { p in
                    try page.withUnsafeMutableBytes { target in try decoder.decode(tag, payload: p, into: target.baseAddress!) }
                }
            } catch {
                rejected += 1
            }
            #expect(page.count == pageSize)
            cases += 1
        }
        print("page codec fuzz: \(cases) damaged payloads, \(rejected) rejected, none crashed")
        #expect(cases == total)
        #expect(rejected > 0, "the damage reached the error paths")
    }

    @Test func unknownTagsAndHostileZeroRunsAreRejected() throws {
        let codec = PageCodec()
        var page = [UInt8](repeating: 0, count: pageSize)
        #expect(PageEncoding(rawValue: 200) == nil)
        func decode(_ encoding: PageEncoding, _ payload: [UInt8]) throws {
            try payload.withUnsafeBytes { p in
                try page.withUnsafeMutableBytes { target in try codec.decode(encoding, payload: p, into: target.baseAddress!) }
            }
        }
        #expect(throws: CodecError.self) { try decode(.xorZeroRun, [0x80, 0x40, 0x01, 0xFF]) }       // zero run past the page
        #expect(throws: CodecError.self) { try decode(.xorZeroRun, [0x00, 0x10, 1, 2]) }              // literal cut short
        #expect(throws: CodecError.self) { try decode(.xorZeroRun, [0xFF, 0xFF, 0xFF, 0xFF]) }        // endless varint
        #expect(throws: CodecError.self) { try decode(.raw, [1, 2, 3]) }
        #expect(throws: CodecError.self) { try decode(.zero, [0]) }
        #expect(throws: CodecError.self) { try decode(.lz4, []) }
        #expect(throws: CodecError.self) { try decode(.zstd, [0x28, 0xB5, 0x2F, 0xFD]) }
    }
}
