// A jwt_jwks_url taken apart (checked when the configuration is read, so that
// --check-config and a reload refuse a bad one).
import FleetAccess
import EventLoop
import ConfigFormat

/// A jwt_jwks_url taken apart: https://HOST[:PORT]/PATH[?QUERY], or http:// to loopback.
struct JWKSURL {
    let https: Bool
    let host: String
    let port: Int
    /// The Host field: the host (IPv6 in brackets) and a port that is not the scheme's.
    let hostField: String
    /// Path and query (a fragment is dropped).
    let target: String

    init(_ url: String) throws(ConfigError) {
        func bad(_ why: String) -> ConfigError {
            ConfigError("jwt_jwks_url: " + why + " (want https://HOST[:PORT]/PATH, or http:// to a loopback address)")
        }
        guard url.utf8.count <= 2048, url.utf8.allSatisfy({ $0 > 0x20 && $0 < 0x7F }) else {
            throw bad("not a URL of at most 2048 visible ASCII characters")
        }
        let lower = url.lowercased()
        let rest: Substring
        if lower.hasPrefix("https://") {
            https = true
            rest = url.dropFirst(8)
        } else if lower.hasPrefix("http://") {
            https = false
            rest = url.dropFirst(7)
        } else {
            throw bad("'" + url + "' is neither https:// nor http://")
        }
        let end = rest.firstIndex(where: { $0 == "/" || $0 == "?" || $0 == "#" }) ?? rest.endIndex
        let authority = rest[..<end]
        var tail = rest[end...]
        if let hash = tail.firstIndex(of: "#") { tail = tail[..<hash] }
        target = tail.hasPrefix("/") ? String(tail) : "/" + tail
        guard !authority.contains("@") else { throw bad("user information in the URL is not supported") }
        let defaultPort = https ? 443 : 80
        if authority.hasPrefix("[") {
            guard let hp = HostPort(parsing: authority.contains("]:") ? String(authority) : authority + ":" + String(defaultPort)),
                  AddressLiteral.parse(hp.host)?.count == 16 else { throw bad("bad IPv6 address in '" + url + "'") }
            host = hp.host
            port = hp.port
        } else if authority.contains(":") {
            guard let hp = HostPort(parsing: String(authority)) else { throw bad("bad host:port in '" + url + "'") }
            host = hp.host
            port = hp.port
        } else {
            host = String(authority)
            port = defaultPort
        }
        guard !host.isEmpty, host.utf8.count <= 253,
              AddressLiteral.parse(host) != nil || host.utf8.allSatisfy({ ($0 | 0x20) >= 0x61 && ($0 | 0x20) <= 0x7A || ($0 >= 0x30 && $0 <= 0x39) || $0 == 0x2D || $0 == 0x2E })
        else { throw bad("bad host in '" + url + "'") }
        if !https && !Loopback.isLoopback(host) {
            throw bad("plain http:// is allowed to a loopback address only (127.0.0.0/8, ::1, localhost), not '" + host + "'")
        }
        let bracketed = host.contains(":") ? "[" + host + "]" : host
        hostField = port == defaultPort ? bracketed : bracketed + ":" + String(port)
    }
}
