// RequestTarget: the four forms of an HTTP/1.1 request-target (RFC 9112 §3.2),
// classified exactly, as a pure function of the method and the target's bytes:
//   origin-form    "/" path [ "?" query ]            any method but CONNECT
//   absolute-form  http(s)://authority[path][?query] any method but CONNECT; the scheme
//                  is case-insensitive, only http and https; no userinfo (RFC 9110 §4.2.4),
//                  a non-empty host (§4.2.1), no fragment
//   authority-form host ":" port                     CONNECT only
//   asterisk-form  "*"                               OPTIONS only
// Anything else is nil (answer 400). A proxy must route by one authority: with
// absolute-form it is the target's, and the Host field is ignored (RFC 9112 §3.2.2).

public enum RequestTarget: Equatable, Sendable {
    /// Origin-form: the path and query exactly as received ("/a?b").
    case origin(String)
    /// Absolute-form: the scheme lower-cased, the authority as received, and the
    /// target in origin-form ("/" when the path is empty).
    case absolute(scheme: String, authority: String, path: String)
    /// Authority-form (CONNECT): "host:port".
    case authority(String)
    /// Asterisk-form (OPTIONS *).
    case asterisk

    /// The target to send on (as `:path`): origin-form, or "*".
    public var path: String? {
        switch self {
        case .origin(let p), .absolute(_, _, let p): return p
        case .asterisk: return "*"
        case .authority: return nil
        }
    }

    /// The authority the target names itself (absolute- and authority-form), else nil.
    public var authority: String? {
        switch self {
        case .absolute(_, let a, _), .authority(let a): return a
        case .origin, .asterisk: return nil
        }
    }

    /// The form of `target` for a request with `method`, or nil when it is none of
    /// the forms that method allows.
    public static func classify(method: String, target: String) -> RequestTarget? {
        let t = Array(target.utf8)
        if method == "CONNECT" {
            return isAuthority(t[...], portRequired: true) ? .authority(target) : nil
        }
        if t == [0x2A] { return method == "OPTIONS" ? .asterisk : nil }
        if t.first == 0x2F { return isPathAndQuery(t[...]) ? .origin(target) : nil }
        return absolute(t)
    }

    /// Same rules for an HTTP/2 `:path` (RFC 9113 §8.3.1): origin-form, or "*" for OPTIONS.
    public static func isValidH2Path(method: String, path: String) -> Bool {
        switch classify(method: method, target: path) {
        case .origin, .asterisk: return true
        default: return false
        }
    }

    // MARK: Grammar (RFC 3986 §3)

    private static func absolute(_ t: [UInt8]) -> RequestTarget? {
        // scheme ":" "//" authority path-abempty [ "?" query ]
        guard let colon = t.firstIndex(of: 0x3A) else { return nil }
        let scheme = String(decoding: t[..<colon].map(HTTP1Bytes.lower), as: UTF8.self)
        guard scheme == "http" || scheme == "https" else { return nil }
        let rest = t[(colon + 1)...]
        guard rest.count >= 2, rest[rest.startIndex] == 0x2F, rest[rest.startIndex + 1] == 0x2F else { return nil }
        let aStart = rest.startIndex + 2
        let aEnd = rest[aStart...].firstIndex { $0 == 0x2F || $0 == 0x3F || $0 == 0x23 } ?? rest.endIndex
        let auth = rest[aStart..<aEnd]
        guard isAuthority(auth, portRequired: false) else { return nil }
        let tail = rest[aEnd...]
        guard isPathAndQuery(tail) else { return nil }
        var path = String(decoding: tail, as: UTF8.self)
        if path.isEmpty || path.hasPrefix("?") { path = "/" + path }
        return .absolute(scheme: scheme, authority: String(decoding: auth, as: UTF8.self), path: path)
    }

    /// host [ ":" port ]: IP-literal, IPv4address or reg-name, non-empty, no userinfo.
    static func isAuthority(_ a: ArraySlice<UInt8>, portRequired: Bool) -> Bool {
        var hostEnd = a.endIndex
        if a.first == 0x5B {  // "[" IP-literal "]"
            guard let close = a.firstIndex(of: 0x5D), close > a.startIndex + 1 else { return false }
            for b in a[(a.startIndex + 1)..<close] where !(isHex(b) || b == 0x3A || b == 0x2E) { return false }
            hostEnd = close + 1
        } else {
            hostEnd = a.firstIndex(of: 0x3A) ?? a.endIndex
            if hostEnd == a.startIndex { return false }
            for b in a[a.startIndex..<hostEnd] where !(isUnreserved(b) || isSubDelim(b) || b == 0x25) { return false }
        }
        let port = a[hostEnd...]
        if port.isEmpty { return !portRequired }
        guard port.first == 0x3A else { return false }
        let digits = port.dropFirst()
        if digits.isEmpty { return !portRequired }
        return digits.count <= 5 && digits.allSatisfy { $0 >= 0x30 && $0 <= 0x39 }
    }

    /// path-abempty [ "?" query ] in the bytes a request line can carry: visible
    /// ASCII only (no fragment: "#" never reaches a server).
    static func isPathAndQuery(_ p: ArraySlice<UInt8>) -> Bool {
        if let f = p.first, f != 0x2F && f != 0x3F { return false }
        return p.allSatisfy { $0 > 0x20 && $0 < 0x7F && $0 != 0x23 }
    }

    private static func isHex(_ b: UInt8) -> Bool {
        (b >= 0x30 && b <= 0x39) || (b >= 0x41 && b <= 0x46) || (b >= 0x61 && b <= 0x66)
    }

    private static func isUnreserved(_ b: UInt8) -> Bool {
        (b >= 0x30 && b <= 0x39) || (b >= 0x41 && b <= 0x5A) || (b >= 0x61 && b <= 0x7A)
            || b == 0x2D || b == 0x2E || b == 0x5F || b == 0x7E
    }

    private static func isSubDelim(_ b: UInt8) -> Bool {
        switch b {
        case 0x21, 0x24, 0x26, 0x27, 0x28, 0x29, 0x2A, 0x2B, 0x2C, 0x3B, 0x3D: return true
        default: return false
        }
    }
}
