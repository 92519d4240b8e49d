import Foundation
import KVM
@testable import MicroVM
import TestGuests
import Testing

/// The kvstore guest (lwIP over virtio-net over a real tap) serving a client in
/// its own network namespace.
@Suite("kvstore guest", .enabled(if: networkTestsAvailable, "needs root, /dev/kvm, /dev/net/tun"), .deadline(minutes: 5), .serialized)
struct KVStoreTests {
    static let guestAddress = "10.77.0.2"

    /// A running kvstore machine on a fresh test network.
    final class Setup: @unchecked Sendable {
        let network: TestNetwork
        let tap: String
        let console = ConsoleBuffer()
        let machine: Machine

        init(memory: UInt64 = 256 << 20, tracking: MachineConfiguration.DirtyTracking = .none) throws {
            network = try TestNetwork()
            tap = try network.addTap()
            let configuration = try GuestPrograms.kvstore(tap: tap, memorySize: memory, dirtyTracking: tracking)
            machine = try Machine(configuration: configuration, console: console.sink)
            try machine.start()
            guard eventually({ console.text.contains("listening") }) else {
                throw TestNetwork.CommandFailed(command: ["kvstore boot"], status: -1, output: console.text)
            }
        }

        func connect() throws -> NamespaceSocket {
            try NamespaceSocket.connect(namespacePath: network.namespacePath, host: KVStoreTests.guestAddress, port: 7000)
        }

        func stop() {
            machine.requestStop()
            _ = machine.waitUntilStopped(timeout: TestHost.scaled(.seconds(10)))
        }
    }

    @Test func thousandSetGetOnOneConnection() throws {
        let setup = try Setup()
        defer { setup.stop() }
        let client = try setup.connect()
        for i in 0..<1000 {
            #expect(try client.command("SET key\(i) value-\(i * 7919)") == "OK")
        }
        for i in 0..<1000 {
            #expect(try client.command("GET key\(i)") == "VALUE value-\(i * 7919)")
        }
        #expect(try client.command("GET missing") == "NOT_FOUND")
        #expect(try client.command("INCR counter") == "VALUE 1")
        #expect(try client.command("INCR counter") == "VALUE 2")
        #expect(try client.command("SIZE") == "VALUE 1001")
        #expect(try client.command("BOGUS") == "ERROR unknown command")
    }

    @Test func fiftyConnectionsAtOnce() throws {
        let setup = try Setup()
        defer { setup.stop() }
        let clients = try (0..<50).map { _ in try setup.connect() }
        let runners = clients.enumerated().map { index, client in
            ThreadRunner<Int> {
                var wrong = 0
                for round in 0..<20 {
                    if try client.command("SET c\(index)-\(round) \(index * 1000 + round)") != "OK" { wrong += 1 }
                }
                for round in 0..<20 {
                    if try client.command("GET c\(index)-\(round)") != "VALUE \(index * 1000 + round)" { wrong += 1 }
                    if try client.command("INCR shared") .hasPrefix("VALUE") == false { wrong += 1 }
                }
                return wrong
            }
        }
        let wrong = try runners.map { try $0.join() }.reduce(0, +)
        #expect(wrong == 0)
        #expect(try clients[0].command("GET shared") == "VALUE 1000", "50 × 20 increments, none lost")
    }

    @Test func pingWorks() throws {
        let setup = try Setup()
        defer { setup.stop() }
        let output = try setup.network.inClient(["ping", "-c", "3", "-W", "2", Self.guestAddress])
        #expect(output.contains("3 received"), "\(output)")
    }

    /// 100 MB from the guest (GEN, checked word by word) and 100 MB to it (SINK,
    /// checked by the FNV-1a the guest computes).
    @Test func hundredMegabytesEachWay() throws {
        let setup = try Setup()
        defer { setup.stop() }
        let size = 100_000_000
        let client = try setup.connect()

        var started = Date()
        #expect(try client.command("GEN \(size) 42") == "VALUE \(size)")
        var index: UInt64 = 0
        var carry: [UInt8] = []
        var mismatches = 0
        try client.read(count: size) { chunk in
            carry += chunk
            let whole = carry.count / 8 * 8
            carry.withUnsafeBytes { raw in
                for offset in stride(from: 0, to: whole, by: 8) {
                    if raw.loadUnaligned(fromByteOffset: offset, as: UInt64.self) != BulkData.word(index, seed: 42) { mismatches += 1 }
                    index += 1
                }
            }
            carry.removeFirst(whole)
        }
        #expect(mismatches == 0 && carry.isEmpty)
        let download = Double(size) / Date().timeIntervalSince(started) / 1e6

        started = Date()
        try client.send("SINK \(size)\n")
        var hash: UInt64 = 0xCBF2_9CE4_8422_2325
        var chunk = [UInt8](repeating: 0, count: 1 << 20)
        var sent = 0
        var word: UInt64 = 0
        while sent < size {
            let count = min(chunk.count, size - sent)
            chunk.withUnsafeMutableBytes { raw in
                for offset in stride(from: 0, to: count, by: 8) {
                    raw.storeBytes(of: BulkData.word(word, seed: 7), toByteOffset: offset, as: UInt64.self)
                    word += 1
                }
            }
            try client.send(Array(chunk[0..<count]))
            hash = chunk.withUnsafeBytes { BulkData.fnv1a(UnsafeRawBufferPointer(rebasing: $0[0..<count]), hash) }
            sent += count
        }
        let hex = String(hash, radix: 16)
        #expect(try client.readLine() == "OK " + String(repeating: "0", count: 16 - hex.count) + hex)
        let upload = Double(size) / Date().timeIntervalSince(started) / 1e6
        print(String(format: "kvstore 100 MB: guest→client %.1f MB/s, client→guest %.1f MB/s (debug-build client)", download, upload))
    }
}
