/// XOR delta of a page against its previous version, written as pairs of
/// (zero run, literal run): each run length is a LEB128 varint, the literal run's
/// bytes (the XOR values) follow it. Pairs continue until the page is covered; a
/// trailing zero run is implied. Like QEMU's XBZRLE, but over the XOR so decoding
/// is `old ^ delta`.
public enum ZeroRunXOR {
    /// Encodes `new ^ old` into `output` (appending). Returns false (leaving
    /// `output` as it was) when the encoding would exceed `limit` bytes.
    @inlinable
    public static func encode(new: UnsafeRawPointer, old: UnsafeRawPointer, into output: inout [UInt8], limit: Int) -> Bool {
        let start = output.count
        let n = new.assumingMemoryBound(to: UInt64.self)
        let o = old.assumingMemoryBound(to: UInt64.self)
        let words = pageSize / 8
        var i = 0
        while i < words {
            var zeroWords = 0
            while i + zeroWords < words && n[i + zeroWords] == o[i + zeroWords] { zeroWords += 1 }
            if i + zeroWords == words { break }              // trailing zeros are implied
            var literalWords = 0
            while i + zeroWords + literalWords < words && n[i + zeroWords + literalWords] != o[i + zeroWords + literalWords] {
                literalWords += 1
            }
            appendVarint(zeroWords * 8, to: &output)
            appendVarint(literalWords * 8, to: &output)
            for w in (i + zeroWords)..<(i + zeroWords + literalWords) {
                let x = (n[w] ^ o[w]).littleEndian
                withUnsafeBytes(of: x) { output.append(contentsOf: $0) }
            }
            i += zeroWords + literalWords
            if output.count - start > limit {
                output.removeSubrange(start...)
                return false
            }
        }
        return true
    }

    /// Applies an encoded delta to `page` in place. Every length is checked.
    public static func apply(_ delta: UnsafeRawBufferPointer, to page: UnsafeMutableRawPointer) throws(CodecError) {
        var offset = 0
        var position = 0
        while offset < delta.count {
            let zero = try readVarint(delta, &offset)
            let literal = try readVarint(delta, &offset)
            guard zero <= pageSize - position, literal <= pageSize - position - zero else {
                throw .malformed("zero-run delta runs past the page")
            }
            guard literal <= delta.count - offset else { throw .truncated("zero-run literal") }
            position += zero
            for k in 0..<literal {
                let byte = page.load(fromByteOffset: position + k, as: UInt8.self) ^ delta[offset + k]
                page.storeBytes(of: byte, toByteOffset: position + k, as: UInt8.self)
            }
            position += literal
            offset += literal
        }
    }

    @inlinable
    static func appendVarint(_ value: Int, to output: inout [UInt8]) {
        var v = UInt(value)
        while v >= 0x80 {
            output.append(UInt8(v & 0x7F) | 0x80)
            v >>= 7
        }
        output.append(UInt8(v))
    }

    static func readVarint(_ bytes: UnsafeRawBufferPointer, _ offset: inout Int) throws(CodecError) -> Int {
        var value = 0
        var shift = 0
        while true {
            guard offset < bytes.count else { throw .truncated("zero-run varint") }
            let byte = bytes[offset]
            offset += 1
            value |= Int(byte & 0x7F) << shift
            if byte & 0x80 == 0 { return value }
            shift += 7
            guard shift <= 14 else { throw .malformed("zero-run varint too long") }
        }
    }
}
