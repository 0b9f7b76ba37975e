// IP address literals as the gateway reads them from text: a Host field on the
// admin listener (DNS rebinding: only an address literal or localhost names the
// gateway itself) and the CIDRs of `trusted_proxies`. Parsed by inet_pton, so
// IPv4 is exactly four decimal octets 0-255 and IPv6 is what the C library takes.
import CLibc
import FleetPKI

public enum AddressLiteral {
    /// The 4 (IPv4) or 16 (IPv6) bytes of an address literal (no brackets, no port), or nil.
    public static func parse(_ text: String) -> [UInt8]? {
        guard !text.isEmpty, text.utf8.count < 64, text.utf8.allSatisfy({ $0 > 0x20 && $0 < 0x7F }) else { return nil }
        var v6 = in6_addr()
        if text.contains(":") {
            guard inet_pton(AF_INET6, text, &v6) == 1 else { return nil }
            return withUnsafeBytes(of: &v6) { Array($0) }
        }
        var v4 = in_addr()
        guard inet_pton(AF_INET, text, &v4) == 1 else { return nil }
        return withUnsafeBytes(of: &v4) { Array($0) }
    }

    /// An IPv4-mapped IPv6 address (::ffff:a.b.c.d) as its IPv4 bytes; others unchanged.
    public static func unmapped(_ a: [UInt8]) -> [UInt8] {
        guard a.count == 16, a[0..<10].allSatisfy({ $0 == 0 }), a[10] == 0xFF, a[11] == 0xFF else { return a }
        return Array(a[12...])
    }

    /// A Host field that names this machine by address, not by a DNS name that an
    /// attacker's domain could rebind to it: an IPv4 literal, a bracketed IPv6
    /// literal, or `localhost`, each with an optional `:port` (1-5 digits, at most 65535).
    public static func isAddressHost(_ host: String) -> Bool {
        var h = Substring(host)
        if h.hasPrefix("[") {
            guard let close = h.firstIndex(of: "]") else { return false }
            let inside = h[h.index(after: h.startIndex)..<close]
            guard isPort(h[h.index(after: close)...]), inside.contains(":"),
                  let a = parse(String(inside)), a.count == 16 else { return false }
            return true
        }
        if let colon = h.firstIndex(of: ":") {
            guard isPort(h[colon...]) else { return false }
            h = h[..<colon]
        }
        if PKI.asciiLowercased(String(h)) == "localhost" { return true }
        return !h.contains(":") && parse(String(h))?.count == 4
    }

    /// "" or ":" followed by 1-5 digits, at most 65535.
    private static func isPort(_ p: Substring) -> Bool {
        if p.isEmpty { return true }
        guard p.first == ":" else { return false }
        let digits = p.dropFirst()
        guard (1...5).contains(digits.count), digits.utf8.allSatisfy({ $0 >= 0x30 && $0 <= 0x39 }), let n = Int(digits) else { return false }
        return n <= 65535
    }
}

/// An address block, e.g. 10.0.0.0/8 or fd00::/8 (a bare address is a /32 or /128).
public struct CIDR: Equatable, Sendable {
    public let network: [UInt8]
    public let prefix: Int

    public init?(_ text: String) {
        let parts = text.split(separator: "/", maxSplits: 1, omittingEmptySubsequences: false)
        guard let a = AddressLiteral.parse(String(parts[0])) else { return nil }
        let bits = a.count * 8
        var p = bits
        if parts.count == 2 {
            guard (1...3).contains(parts[1].count), parts[1].utf8.allSatisfy({ $0 >= 0x30 && $0 <= 0x39 }),
                  let n = Int(parts[1]), n <= bits else { return nil }
            p = n
        }
        network = a
        prefix = p
    }

    /// Whether `address` (text, as a peer's host) is in this block.
    public func contains(_ address: String) -> Bool {
        guard let raw = AddressLiteral.parse(address) else { return false }
        let a = network.count == 4 ? AddressLiteral.unmapped(raw) : raw
        guard a.count == network.count else { return false }
        var left = prefix
        for i in 0..<a.count where left > 0 {
            let mask: UInt8 = left >= 8 ? 0xFF : ~(0xFF >> UInt8(left))
            if a[i] & mask != network[i] & mask { return false }
            left -= 8
        }
        return true
    }
}
