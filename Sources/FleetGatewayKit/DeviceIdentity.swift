// A device's identity and the public hostname it serves. The identity is taken
// once, from the verified certificate's CN (or the configured name on a
// plaintext listener), when the connection is accepted; nothing later changes it.

import FleetAccess
import FleetPKI
import HTTPCore
struct DeviceIdentity: Hashable {
    /// The certificate CN, in canonical (lower-case) form.
    let name: String
    /// The public hostname routed to this device, lower-cased.
    let hostname: String

    /// The device name a certificate CN gives, nil unless the CN is a device name
    /// (PKI.isValidDeviceName: a hostname, not an IPv4 address) in canonical form:
    /// "DEV1.EXAMPLE" is refused, not folded, for `pki revoke dev1.example` cannot know
    /// a certificate another tool issued under that spelling. The same function as `pki`.
    static func name(commonName cn: String) -> String? {
        PKI.isCanonicalDeviceName(cn) ? cn : nil
    }
}

/// Maps a CN to a hostname: "{cn}" (the default, as HAProxy's
/// `pool-conn-name req.hdr(host)` with `ssl_c_s_dn(CN)`) or e.g. "{cn}.devices.example.com".
struct HostnameTemplate: Equatable {
    let prefix: String
    let suffix: String

    static let identity = HostnameTemplate(prefix: "", suffix: "")

    private init(prefix: String, suffix: String) {
        self.prefix = prefix
        self.suffix = suffix
    }

    init?(_ text: String) {
        guard text.utf8.allSatisfy({ $0 < 0x80 }) else { return nil }
        let t = HostRouting.asciiLowercased(text)
        guard let r = t.firstRange(of: "{cn}"), t[r.upperBound...].firstRange(of: "{cn}") == nil else { return nil }
        prefix = String(t[..<r.lowerBound])
        suffix = String(t[r.upperBound...])
        guard PKI.isValidDeviceName(prefix + "x" + suffix) else { return nil }
    }

    /// The public hostname of device `cn`; nil when the template makes it something
    /// that is not a hostname (a label over 63 or a name over 253 characters), which no
    /// Host could ever reach: the gateway refuses such a device.
    func hostname(for cn: String) -> String? {
        PKI.canonicalDeviceName(prefix + cn + suffix)
    }

    /// The device name whose hostname `hostname` (a routing key) is, if any: the inverse of `hostname(for:)`.
    func deviceName(for hostname: String) -> String? {
        guard hostname.utf8.count > prefix.utf8.count + suffix.utf8.count,
              hostname.hasPrefix(prefix), hostname.hasSuffix(suffix) else { return nil }
        let u = Array(hostname.utf8)
        return String(decoding: u[prefix.utf8.count..<(u.count - suffix.utf8.count)], as: UTF8.self)
    }
}

enum HostRouting {
    /// The routing key of a Host header or URI authority: port stripped, lower-cased,
    /// trailing dot removed. nil when it is not a hostname (IP literals, garbage).
    static func routingKey(_ host: String) -> String? {
        // Every request routes: bytes, one pass, one String made (the key).
        var host = host
        return host.withUTF8 { b -> String? in
            var end = b.count
            if end == 0 || b[0] == 0x5B { return nil }  // "[" an IPv6 literal
            var colon = end
            while colon > 0 && b[colon - 1] != 0x3A { colon -= 1 }
            if colon > 0 {
                let digits = end - colon
                guard digits >= 1 && digits <= 5 else { return nil }
                for i in colon..<end where !(b[i] >= 0x30 && b[i] <= 0x39) { return nil }
                end = colon - 1
            }
            if end > 0 && b[end - 1] == 0x2E { end -= 1 }  // trailing dot
            let name = UnsafeBufferPointer(rebasing: b[0..<end])
            // Validated before lower-casing: "dev1.\u{212A}" (KELVIN SIGN) is not "dev1.k".
            guard PKI.isValidDeviceName(name) else { return nil }
            return String(unsafeUninitializedCapacity: end) { out in
                for i in 0..<end { out[i] = HTTPFieldBytes.lower(name[i]) }
                return end
            }
        }
    }

    /// A CONNECT's authority (`dev1.devices.example.com:22`): the device's routing key
    /// and the TCP port, which is required and 1-65535. nil for anything else, IP
    /// literals included (an IPv6 literal `[::1]:22` names no device: 400).
    static func connectTarget(_ authority: String) -> (host: String, port: Int)? {
        let u = Array(authority.utf8)
        guard let colon = u.lastIndex(of: 0x3A), colon + 1 < u.count, u.count - colon - 1 <= 5,
              u[(colon + 1)...].allSatisfy({ $0 >= 0x30 && $0 <= 0x39 }) else { return nil }
        let port = u[(colon + 1)...].reduce(0) { $0 * 10 + Int($1 - 0x30) }
        guard port >= 1 && port <= 65535, let host = routingKey(authority) else { return nil }
        return (host, port)
    }

    /// A-Z to a-z, nothing else (Unicode lower-casing maps some non-ASCII to ASCII).
    static func asciiLowercased(_ s: String) -> String {
        String(decoding: s.utf8.map { $0 >= 0x41 && $0 <= 0x5A ? $0 | 0x20 : $0 }, as: UTF8.self)
    }
}
