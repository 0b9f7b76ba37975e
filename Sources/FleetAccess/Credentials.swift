// The credentials a user's request carries in its Authorization field: a Bearer
// token (RFC 6750) or Basic auth (RFC 7617). Parsing only: what they are worth is
// for TokenStore and JWTVerifier to say.

public enum Credentials: Equatable, Sendable {
    case bearer(String)
    case basic(user: String, password: String)

    /// The longest Authorization value looked at; longer is no credential at all.
    public static let maxLength = 8192

    /// An Authorization field value: "Bearer X" or "Basic base64(user:password)", the
    /// scheme case-insensitive (RFC 9110 §11.1); nil for anything else: another
    /// scheme, no credentials, more than `maxLength` bytes, Basic that is not base64
    /// of valid UTF-8 with a colon, a token68 with characters RFC 9110 §11.2 does not allow.
    public static func parse(authorization: String) -> Credentials? {
        let bytes = authorization.utf8
        guard bytes.count <= maxLength else { return nil }
        var v = Substring(authorization)
        while let f = v.utf8.first, f == 0x20 || f == 0x09 { v = v.dropFirst() }
        while let l = v.utf8.last, l == 0x20 || l == 0x09 { v = v.dropLast() }
        guard let space = v.utf8.firstIndex(where: { $0 == 0x20 || $0 == 0x09 }) else { return nil }
        let scheme = v[..<space]
        var rest = v[space...]
        while let f = rest.utf8.first, f == 0x20 || f == 0x09 { rest = rest.dropFirst() }
        guard !rest.isEmpty, rest.utf8.allSatisfy(isToken68Byte) else { return nil }
        switch asciiLowercased(scheme) {
        case "bearer":
            return .bearer(String(rest))
        case "basic":
            guard let decoded = Base64.decode(rest.utf8, urlSafe: false) else { return nil }
            // RFC 7617 §2.1: user-id and password are UTF-8 (charset="UTF-8"); no CTLs.
            guard !decoded.contains(where: { $0 < 0x20 || $0 == 0x7F }),
                  let text = String(validating: decoded, as: UTF8.self),
                  let colon = text.firstIndex(of: ":") else { return nil }
            return .basic(user: String(text[..<colon]), password: String(text[text.index(after: colon)...]))
        default:
            return nil
        }
    }

    /// token68 = 1*( ALPHA / DIGIT / "-" / "." / "_" / "~" / "+" / "/" ) *"="
    /// (the "=" only at the end: checked by the decoder for Basic, and a Bearer
    /// secret or JWT has none).
    static func isToken68Byte(_ b: UInt8) -> Bool {
        switch b {
        case UInt8(ascii: "A")...UInt8(ascii: "Z"), UInt8(ascii: "a")...UInt8(ascii: "z"),
             UInt8(ascii: "0")...UInt8(ascii: "9"),
             UInt8(ascii: "-"), UInt8(ascii: "."), UInt8(ascii: "_"), UInt8(ascii: "~"),
             UInt8(ascii: "+"), UInt8(ascii: "/"), UInt8(ascii: "="):
            return true
        default:
            return false
        }
    }

    static func asciiLowercased(_ s: Substring) -> String {
        String(decoding: s.utf8.map { $0 >= 0x41 && $0 <= 0x5A ? $0 | 0x20 : $0 }, as: UTF8.self)
    }
}

/// Base64 (RFC 4648 §4) and base64url (§5).
public enum Base64 {
    static let standard = Array("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/".utf8)
    static let url = Array("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_".utf8)

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

    static func value(_ c: UInt8, urlSafe: Bool) -> UInt8? {
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
