import Foundation
import KVM

/// A paused machine on disk: its saved state and its RAM, in one file.
///
/// Layout (little endian): magic "UMSN", version u16, reserved u16,
/// state length u64, state bytes, memory length u64, CRC-32C of the memory u32,
/// memory bytes. The state carries its own per-part checksums.
public enum MachineSnapshot {
    static let magic: [UInt8] = Array("UMSN".utf8)
    static let version: UInt16 = 1

    /// Writes `machine` (which must be paused or never started) to `path`.
    public static func write(_ machine: Machine, to path: String) throws(MachineError) {
        let state = try machine.saveState()
        var header = magic
        StateWriter.append(version, to: &header)
        StateWriter.append(UInt16(0), to: &header)
        StateWriter.append(UInt64(state.count), to: &header)
        var middle: [UInt8] = []
        StateWriter.append(UInt64(machine.memory.size), to: &middle)
        StateWriter.append(ckvm_crc32c(0, machine.memory.base, machine.memory.size), to: &middle)
        guard let handle = FileHandle(forWritingAtPath: path) ?? create(path) else {
            throw .wrongState("cannot open \(path) for writing")
        }
        defer { try? handle.close() }
        do {
            try handle.truncate(atOffset: 0)
            try handle.write(contentsOf: header + state + middle)
            try handle.write(contentsOf: Data(bytesNoCopy: machine.memory.base, count: machine.memory.size, deallocator: .none))
        } catch {
            throw .wrongState("writing \(path): \(error)")
        }
    }

    private static func create(_ path: String) -> FileHandle? {
        FileManager.default.createFile(atPath: path, contents: nil) ? FileHandle(forWritingAtPath: path) : nil
    }

    /// Reads a snapshot: the state bytes and a fresh memfd holding the RAM.
    public static func read(from path: String) throws(MachineError) -> (state: [UInt8], memory: SharedMemory) {
        guard let handle = FileHandle(forReadingAtPath: path) else { throw .invalidState(part: "snapshot", reason: "cannot open \(path)") }
        defer { try? handle.close() }
        func readExactly(_ count: Int, _ what: String) throws(MachineError) -> Data {
            let data: Data?
            do { data = try handle.read(upToCount: count) } catch { throw .invalidState(part: "snapshot", reason: "reading \(what): \(error)") }
            guard let data, data.count == count else { throw .invalidState(part: "snapshot", reason: "truncated in \(what)") }
            return data
        }
        let header = [UInt8](try readExactly(16, "header"))
        guard Array(header[0..<4]) == magic else { throw .invalidState(part: "snapshot", reason: "not a machine snapshot") }
        let version = UInt16(header[4]) | UInt16(header[5]) << 8
        guard version == Self.version else { throw .invalidState(part: "snapshot", reason: "version \(version)") }
        var headerFields = ByteReader(bytes: header[8...], part: "snapshot")
        let stateLength = try headerFields.u64()
        guard stateLength <= 64 << 20 else { throw .invalidState(part: "snapshot", reason: "state of \(stateLength) bytes") }
        let state = [UInt8](try readExactly(Int(stateLength), "state"))
        let middle = [UInt8](try readExactly(12, "memory header"))
        var middleFields = ByteReader(middle, part: "snapshot")
        let memoryLength = try middleFields.u64()
        let checksum = try middleFields.u32()
        guard memoryLength >= 4 << 20, memoryLength <= GuestLayout.maxMemory, memoryLength % 4096 == 0 else {
            throw .invalidState(part: "snapshot", reason: "memory of \(memoryLength) bytes")
        }
        let memory: SharedMemory
        do { memory = try SharedMemory(size: Int(memoryLength), name: "microvm-ram") } catch { throw .kvm(error) }
        var offset = 0
        while offset < Int(memoryLength) {
            let chunk = try readExactly(min(16 << 20, Int(memoryLength) - offset), "memory")
            chunk.withUnsafeBytes { UnsafeMutableRawBufferPointer(rebasing: memory.bytes[offset..<(offset + chunk.count)]).copyMemory(from: $0) }
            offset += chunk.count
        }
        guard ckvm_crc32c(0, memory.base, memory.size) == checksum else {
            throw .invalidState(part: "snapshot memory", reason: "checksum mismatch")
        }
        return (state, memory)
    }
}
