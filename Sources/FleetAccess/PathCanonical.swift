// The canonical form of a request path, as the access policy's `paths=` compares it.
//
// A device's server and the gateway must not disagree about which resource a
// path names, or a rule about /admin is bypassed by /api/../admin, /%61dmin,
// /api/%2e%2e/admin, /api%2Fx, //admin or /api/..;/admin (Tomcat's path
// parameters). So a path is either brought to one spelling or called
// NON-CANONICAL, which the policy treats fail-closed (AccessPolicy.swift).
//
// Canonical form of the part before `?`: starts with `/`; unreserved characters
// (A-Z a-z 0-9 - . _ ~) appear raw (percent-decoded when sent encoded); every other
// byte is `%XX` with upper-case hex (a raw `;` or `@` becomes `%3B`, `%40`, a raw UTF-8 e-acute
// `%C3%A9`), so two spellings a server decodes alike compare alike.
// Non-canonical (nil): not origin-form (`*`, ``, `http://...`); a dot segment (`.`
// or `..`, raw or encoded, also before a `;` parameter: `..;x`); an empty segment
// (`//`, `/;x/`); an encoded `/`, `\`, NUL or `%` (`%2F` `%5C` `%00` `%25`: double
// decoding); `%C0`/`%C1` (overlong UTF-8, old IIS), raw or encoded; a raw `\`, `#`,
// space or control character; a `%` without two hex digits.

public enum PathCanonical {
    /// The canonical path of a request target (origin-form; the query after `?` is
    /// dropped), or nil when the path is non-canonical.
    public static func canonical(_ target: String) -> String? {
        var t = target
        return t.withUTF8 { p in canonicalBytes(p, stopAtQuery: true) }.map { String(decoding: $0, as: UTF8.self) }
    }

    /// The same on bytes. `stopAtQuery`: the path ends at the first `?` (a request
    /// target); otherwise a `?` is non-canonical (a rule's path).
    public static func canonicalBytes(_ p: UnsafeBufferPointer<UInt8>, stopAtQuery: Bool) -> [UInt8]? {
        var end = p.count
        if let q = p.firstIndex(of: 0x3F) {
            guard stopAtQuery else { return nil }
            end = q
        }
        guard end > 0, p[0] == 0x2F else { return nil }
        var out: [UInt8] = []
        out.reserveCapacity(end + 8)
        // The segment being read: how many dots, whether anything else, whether a raw `;` began its parameters.
        var dots = 0, other = false, params = false
        func segmentIsFine() -> Bool {
            if params && dots == 0 && !other { return false }   // "/;x/": an empty segment to Tomcat
            if !other && (dots == 1 || dots == 2) { return false }
            return true
        }
        var i = 0
        while i < end {
            let b = p[i]
            if b == 0x2F {
                if i > 0 {
                    if out.last == 0x2F { return nil }  // "//": an empty segment
                    guard segmentIsFine() else { return nil }
                }
                out.append(0x2F)
                dots = 0; other = false; params = false
                i += 1
                continue
            }
            var c = b
            var rawSemicolon = false
            if b == 0x25 {
                guard i + 2 < end, let h = hexValue(p[i + 1]), let l = hexValue(p[i + 2]) else { return nil }
                c = h << 4 | l
                i += 3
                if isUnreserved(c) {
                    out.append(c)
                } else {
                    switch c {
                    case 0x2F, 0x5C, 0x00, 0x25, 0xC0, 0xC1: return nil
                    default: appendEncoded(c, &out)
                    }
                    // A server that decodes before it strips path parameters reads %3B as `;`.
                    rawSemicolon = c == 0x3B
                }
            } else {
                i += 1
                if isUnreserved(b) {
                    out.append(b)
                } else if (b > 0x20 && b < 0x7F && b != 0x5C && b != 0x23) || (b >= 0x80 && b != 0xC0 && b != 0xC1) {
                    appendEncoded(b, &out)
                    rawSemicolon = b == 0x3B
                } else {
                    return nil  // control, space, DEL, `\`, `#`, overlong UTF-8
                }
            }
            if params { continue }
            if rawSemicolon { params = true } else if c == 0x2E { dots += 1 } else { other = true }
        }
        guard segmentIsFine() else { return nil }
        return out
    }

    static func isUnreserved(_ c: UInt8) -> Bool {
        (c >= 0x41 && c <= 0x5A) || (c >= 0x61 && c <= 0x7A) || (c >= 0x30 && c <= 0x39)
            || c == 0x2D || c == 0x2E || c == 0x5F || c == 0x7E
    }

    static func hexValue(_ c: UInt8) -> UInt8? {
        switch c {
        case 0x30...0x39: return c - 0x30
        case 0x41...0x46: return c - 0x41 + 10
        case 0x61...0x66: return c - 0x61 + 10
        default: return nil
        }
    }

    private static let hexDigits: [UInt8] = Array("0123456789ABCDEF".utf8)

    private static func appendEncoded(_ c: UInt8, _ out: inout [UInt8]) {
        out.append(0x25)
        out.append(hexDigits[Int(c >> 4)])
        out.append(hexDigits[Int(c & 15)])
    }
}
