// Loopback, by address text: where the gateway allows what it refuses elsewhere
// (an admin listener without admin_token, plain http:// for jwt_jwks_url).
public enum Loopback {
    /// 127.0.0.0/8, ::1 (also as ::ffff:127.x.y.z) or `localhost` (any case); not a
    /// bracketed literal, not an address with a port.
    public static func isLoopback(_ host: String) -> Bool {
        if host.utf8.count == 9 && host.lowercased() == "localhost" { return true }
        guard let a = AddressLiteral.parse(host).map(AddressLiteral.unmapped) else { return false }
        if a.count == 4 { return a[0] == 127 }
        return a[0..<15].allSatisfy { $0 == 0 } && a[15] == 1
    }
}
