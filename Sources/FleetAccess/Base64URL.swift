// base64url without padding (RFC 4648 section 5, as JWS and JWK use it), strict:
// only the 64 letters of the URL alphabet, no '=', no whitespace, and the unused
// bits of the last letter must be zero, so every byte string has exactly one
// encoding (a token cannot be altered without changing its bytes).
public enum Base64URL {
    private static let letters: [UInt8] = Array("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_".utf8)

    private static let values: [UInt8] = {
        var t = [UInt8](repeating: 0xFF, count: 256)
        for (i, c) in letters.enumerated() { t[Int(c)] = UInt8(i) }
        return t
    }()

    public static func encode<C: Collection>(_ bytes: C) -> String where C.Element == UInt8 {
        var out: [UInt8] = []
        out.reserveCapacity((bytes.count * 4 + 2) / 3)
        var it = bytes.makeIterator()
        while let a = it.next() {
            let b = it.next(), c = it.next()
            out.append(letters[Int(a >> 2)])
            out.append(letters[Int((a & 3) << 4 | (b ?? 0) >> 4)])
            if let b { out.append(letters[Int((b & 0xF) << 2 | (c ?? 0) >> 6)]) }
            if let c { out.append(letters[Int(c & 0x3F)]) }
        }
        return String(decoding: out, as: UTF8.self)
    }

    /// The bytes, or nil if `text` is not canonical unpadded base64url.
    public static func decode<C: Collection>(_ text: C) -> [UInt8]? where C.Element == UInt8 {
        if text.count % 4 == 1 { return nil }
        var out: [UInt8] = []
        out.reserveCapacity(text.count * 3 / 4)
        var acc: UInt32 = 0
        var bits = 0
        for c in text {
            let v = values[Int(c)]
            if v == 0xFF { return nil }
            acc = acc << 6 | UInt32(v)
            bits += 6
            if bits >= 8 {
                bits -= 8
                out.append(UInt8(truncatingIfNeeded: acc >> UInt32(bits)))
                acc &= (1 << UInt32(bits)) - 1
            }
        }
        // Leftover bits (2 or 4) must be zero.
        if acc != 0 { return nil }
        return out
    }
}
