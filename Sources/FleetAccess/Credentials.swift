// The credentials a user's request carries in its Authorization field: a Bearer
// token (RFC 6750) or Basic auth (RFC 7617). Parsing only: what they are worth is
// for TokenStore and JWTVerifier to say.
import Bytes

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
