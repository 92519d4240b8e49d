import Foundation
import TestGuests
import Testing
@testable import Understudy

/// Docs/Protocol.md is the protocol's specification: the sizes, offsets, frame
/// types and bounds written there are checked against the encoders, so the
/// page and the code cannot drift apart unnoticed.
@Suite("Protocol.md matches the code")
struct DocumentedProtocolTests {
    static let page: String = (try? String(contentsOf: GuestPrograms.packageRoot.appendingPathComponent("Docs/Protocol.md"), encoding: .utf8)) ?? ""

    /// The first capture of `pattern` in the page.
    static func capture(_ pattern: String) -> String? {
        guard let regex = try? NSRegularExpression(pattern: pattern),
              let match = regex.firstMatch(in: page, range: NSRange(page.startIndex..., in: page)),
              let range = Range(match.range(at: 1), in: page) else { return nil }
        return String(page[range])
    }

    /// The rows `| offset | size | ... |` of the first table after `heading`.
    static func layout(after heading: String) -> [(offset: Int, size: Int)] {
        guard let start = page.range(of: heading) else { return [] }
        var rows: [(Int, Int)] = []
        var inTable = false
        for line in page[start.upperBound...].split(separator: "\n", omittingEmptySubsequences: false) {
            let trimmed = line.trimmingCharacters(in: .whitespaces)
            let cells = trimmed.split(separator: "|").map { $0.trimmingCharacters(in: .whitespaces) }
            if trimmed.hasPrefix("|") {
                inTable = true
                if cells.count >= 3, let offset = Int(cells[0]), let size = Int(cells[1]) { rows.append((offset, size)) }
            } else if inTable {
                break
            }
        }
        return rows
    }

    static func expectContiguous(_ rows: [(offset: Int, size: Int)], total: Int, _ what: String) {
        #expect(!rows.isEmpty, "\(what): a table in Protocol.md")
        var next = 0
        for row in rows {
            #expect(row.offset == next, "\(what): field at \(row.offset), expected \(next)")
            next = row.offset + row.size
        }
        #expect(next == total, "\(what): fields add up to \(next) bytes, the encoder writes \(total)")
    }

    @Test func versionSizesAndBounds() throws {
        #expect(!Self.page.isEmpty, "Docs/Protocol.md is readable")
        #expect(Self.capture(#"# The replication protocol, version (\d+)"#) == "\(Hello.protocolVersion)")
        #expect(Self.capture(#"a (\d+)-byte header"#) == "\(Frame.headerSize)")
        #expect(Frame(.heartbeat).encoded.count == Frame.headerSize)
        #expect(Self.capture(#"at most 1 MiB \(([0-9,]+)\)"#)?.replacingOccurrences(of: ",", with: "") == "\(Frame.maximumPayload)")

        let hello = Hello(session: Hello.newSession(), memorySize: 1 << 20, devices: [], epochMicroseconds: 1)
        #expect(Self.capture(#"\*\*hello\*\* \((\d+) bytes\)"#) == "\(Hello.payloadSize)")
        #expect(hello.payload.count == Hello.payloadSize)
        Self.expectContiguous(Self.layout(after: "sends **hello**"), total: hello.payload.count, "hello")

        let begin = CheckpointBegin(Checkpoint(sequence: 0, isFull: true, pageCount: 0, pages: [], state: []))
        #expect(Self.capture(#"\*\*checkpoint begin\*\* \((\d+) bytes\)"#) == "\(CheckpointBegin.payloadSize)")
        #expect(begin.payload.count == CheckpointBegin.payloadSize)
        Self.expectContiguous(Self.layout(after: "**checkpoint begin** ("), total: begin.payload.count, "checkpoint begin")

        #expect(Self.capture(#"state at\s+most (\d+) MiB"#) == "\(CheckpointBegin.maximumStateBytes >> 20)")
        #expect(Self.capture(#"output at most (\d+) MiB"#) == "\(CheckpointBegin.maximumOutputBytes >> 20)")
        #expect(Self.capture(#"disk writes at most (\d+) MiB"#) == "\(CheckpointBegin.maximumDiskBytes >> 20)")
        #expect(Self.capture(#"page records at most ([0-9,]+) bytes per page"#)?.replacingOccurrences(of: ",", with: "") == "\(CheckpointBegin.maximumRecordBytes)")
    }

    /// Every frame type the code knows is in the table, by number and name, and no other.
    @Test func frameTypes() {
        guard let start = Self.page.range(of: "| type | name |") else {
            Issue.record("the frame type table")
            return
        }
        var documented: [UInt8: String] = [:]
        for line in Self.page[start.upperBound...].split(separator: "\n").dropFirst().prefix(while: { $0.hasPrefix("|") }) {
            let cells = line.split(separator: "|").map { $0.trimmingCharacters(in: .whitespaces) }
            if cells.count >= 2, let type = UInt8(cells[0]) { documented[type] = cells[1] }
        }
        let inCode = Dictionary(uniqueKeysWithValues: Frame.Kind.allCases.map { kind in
            (kind.rawValue, "\(kind)".reduce(into: "") { name, c in name += c.isUppercase ? " " + c.lowercased() : String(c) })
        })
        #expect(documented == inCode)
    }
}
