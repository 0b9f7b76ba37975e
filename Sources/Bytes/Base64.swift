// Base64 (RFC 4648 §4: Basic auth, EST bodies) and base64url (§5: token secrets,
// JWS and JWK), one implementation for the gateway and the agent. Strict: only the alphabet's letters and no leftover bits set,
// so every byte string has exactly one encoding.

/// Base64 (RFC 4648 §4) and base64url (§5).
public enum Base64 {
    public static let standard = Array("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/".utf8)
    public static let url = Array("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_".utf8)

    /// `bytes` encoded; base64url without padding when `urlSafe`, else padded base64.
    public static func encode(_ bytes: [UInt8], urlSafe: Bool) -> String {
        let table = urlSafe ? url : standard
        var out: [UInt8] = []
        out.reserveCapacity((bytes.count + 2) / 3 * 4)
        var i = 0
        while i + 3 <= bytes.count {
            let n = UInt32(bytes[i]) << 16 | UInt32(bytes[i + 1]) << 8 | UInt32(bytes[i + 2])
            out += [table[Int(n >> 18)], table[Int(n >> 12 & 63)], table[Int(n >> 6 & 63)], table[Int(n & 63)]]
            i += 3
        }
        let left = bytes.count - i
        if left > 0 {
            let n = UInt32(bytes[i]) << 16 | (left == 2 ? UInt32(bytes[i + 1]) << 8 : 0)
            out += [table[Int(n >> 18)], table[Int(n >> 12 & 63)]]
            if left == 2 { out.append(table[Int(n >> 6 & 63)]) }
            if !urlSafe { out += Array(repeating: UInt8(ascii: "="), count: 3 - left) }
        }
        return String(decoding: out, as: UTF8.self)
    }

    /// The bytes `text` encodes, nil when it is not canonical base64 (base64url when
    /// `urlSafe`): only the alphabet's characters, padding optional but, when present,
    /// complete and only at the end, no leftover bits set.
    public static func decode<C: Collection>(_ text: C, urlSafe: Bool) -> [UInt8]? where C.Element == UInt8 {
        var body = Array(text)
        var pad = 0
        while body.last == UInt8(ascii: "=") { body.removeLast(); pad += 1 }
        if pad > 0 && (pad > 2 || (body.count + pad) % 4 != 0) { return nil }
        if body.count % 4 == 1 { return nil }
        var out: [UInt8] = []
        out.reserveCapacity(body.count * 3 / 4)
        var acc: UInt32 = 0
        var bits = 0
        for c in body {
            guard let v = value(c, urlSafe: urlSafe) else { return nil }
            acc = acc << 6 | UInt32(v)
            bits += 6
            if bits >= 8 {
                bits -= 8
                out.append(UInt8(truncatingIfNeeded: acc >> UInt32(bits)))
                acc &= (1 << UInt32(bits)) - 1
            }
        }
        return acc == 0 ? out : nil
    }

    /// The 6-bit value of one letter of the alphabet, nil for anything else.
    public static func value(_ c: UInt8, urlSafe: Bool) -> UInt8? {
        switch c {
        case UInt8(ascii: "A")...UInt8(ascii: "Z"): return c - UInt8(ascii: "A")
        case UInt8(ascii: "a")...UInt8(ascii: "z"): return c - UInt8(ascii: "a") + 26
        case UInt8(ascii: "0")...UInt8(ascii: "9"): return c - UInt8(ascii: "0") + 52
        case UInt8(ascii: "+") where !urlSafe, UInt8(ascii: "-") where urlSafe: return 62
        case UInt8(ascii: "/") where !urlSafe, UInt8(ascii: "_") where urlSafe: return 63
        default: return nil
        }
    }
}

/// base64url without padding, as JWS and JWK use it: a '=' anywhere is refused (a
/// token cannot be altered without changing its bytes).
public enum Base64URL {
    public static func encode<C: Collection>(_ bytes: C) -> String where C.Element == UInt8 {
        Base64.encode(Array(bytes), urlSafe: true)
    }

    /// The bytes, or nil if `text` is not canonical unpadded base64url.
    public static func decode<C: Collection>(_ text: C) -> [UInt8]? where C.Element == UInt8 {
        text.contains(UInt8(ascii: "=")) ? nil : Base64.decode(text, urlSafe: true)
    }
}
