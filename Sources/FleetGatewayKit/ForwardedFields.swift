// The fields the gateway, as the edge, owns on their way to a device: who the
// client is (address, scheme, host as the user named it) and cookie scope.
//   Requests: a field name with "_" is dropped (as nginx does by default: CGI and
//   WSGI read X_Forwarded_For and X-Forwarded-For as one variable), every field in
//   `clientFields` is removed, and X-Forwarded-For, X-Forwarded-Proto and
//   Forwarded are set from the connection. From a peer in `trusted_proxies` the
//   received X-Forwarded-For and Forwarded are extended instead, and its
//   X-Forwarded-Proto and X-Forwarded-Host are kept.
//   Responses: Set-Cookie loses its Domain attribute (a host-only cookie), so a
//   device under {cn}.devices.example.com cannot set cookies for its neighbours.
import FleetAccess
import HTTP1
import HTTPCore

enum ForwardedFields {
    /// Fields that claim the client's address, scheme, port or host, or override the
    /// path (a documented list: nginx, HAProxy, Cloudflare, Fastly, Akamai, IIS, Rails, Express).
    static let clientFields: Set<String> = [
        "forwarded", "forwarded-for", "x-forwarded", "x-forwarded-for", "x-forwarded-proto", "x-forwarded-host",
        "x-forwarded-port", "x-forwarded-server", "x-forwarded-prefix", "x-forwarded-ssl", "x-forwarded-scheme",
        "x-original-forwarded-for", "x-original-host", "x-original-url", "x-rewrite-url", "x-host",
        "x-real-ip", "true-client-ip", "x-client-ip", "client-ip", "cf-connecting-ip", "fastly-client-ip",
        "x-cluster-client-ip", "x-proxyuser-ip", "x-url-scheme", "front-end-https",
    ]

    /// The request's HTTP/2 block (HTTPTranslation's, Expect removed) as the device gets
    /// it; pseudo-headers pass unchanged. `drop` removes more fields (it gets the name
    /// in lower case): AccessControl's.
    static func forDevice(_ fields: HTTPHeaders, peer: String, scheme: String, authority: String,
                          trusted: [CIDR], drop: (String) -> Bool = { _ in false }) -> HTTPHeaders {
        let fromProxy = trusted.contains { $0.contains(peer) }
        var out = HTTPHeaders()
        for (n, v) in fields {
            if n.utf8.first != 0x3A {  // pseudo-headers pass
                let name = HTTPFieldBytes.lowercased(n)  // (HTTP/2 names are lower case already: no copy)
                if name.utf8.contains(0x5F) || clientFields.contains(name) || drop(name) { continue }
            }
            out.add(n, v)
        }
        let forAddr = peer.utf8.contains(0x3A) ? "\"[" + peer + "]\"" : peer
        let ours = "for=" + forAddr + ";proto=" + scheme + ";host=\"" + authority + "\""
        if fromProxy {
            out.add("x-forwarded-for", (fields.values("x-forwarded-for") + [peer]).joined(separator: ", "))
            out.add("x-forwarded-proto", fields.first("x-forwarded-proto") ?? scheme)
            if let h = fields.first("x-forwarded-host") { out.add("x-forwarded-host", h) }
            out.add("forwarded", (fields.values("forwarded") + [ours]).joined(separator: ", "))
        } else {
            out.add("x-forwarded-for", peer)
            out.add("x-forwarded-proto", scheme)
            out.add("forwarded", ours)
        }
        return out
    }

    /// The client's address as the access policy's `from=` sees it: the peer's, or, from
    /// a peer in `trusted_proxies`, the nearest X-Forwarded-For address that is not one
    /// of them (each proxy appends the address it saw; what is left of the trusted ones
    /// is the user's claim and counts for nothing more).
    static func clientAddress(_ fields: HTTPHeaders, peer: String, trusted: [CIDR]) -> String {
        guard trusted.contains(where: { $0.contains(peer) }) else { return peer }
        var hops: [String] = []
        for v in fields.values("x-forwarded-for") {
            for part in v.split(separator: ",") { hops.append(String(part.filter { $0 != " " && $0 != "\t" })) }
        }
        for hop in hops.reversed() {
            guard AddressLiteral.parse(hop) != nil else { return peer }
            if !trusted.contains(where: { $0.contains(hop) }) { return hop }
        }
        return peer
    }

    /// A response's Set-Cookie fields without their Domain attribute (RFC 6265 §5.2.3:
    /// without it the cookie is host-only); every other field unchanged.
    static func hostOnlyCookies(_ fields: HTTPHeaders) -> HTTPHeaders {
        guard fields.contains("set-cookie") else { return fields }
        var out = HTTPHeaders()
        for (n, v) in fields {
            out.add(n, HTTPFieldBytes.equalsIgnoringCase(n, "set-cookie") ? withoutDomain(v) : v)
        }
        return out
    }

    /// One Set-Cookie value without any `Domain` attribute (name compared
    /// case-insensitively, blanks around it ignored, as a browser reads it).
    static func withoutDomain(_ value: String) -> String {
        let parts = value.split(separator: ";", omittingEmptySubsequences: false)
        guard parts.count > 1 else { return value }
        var out = String(parts[0])
        for attribute in parts.dropFirst() {
            let name = attribute.prefix { $0 != "=" }.filter { $0 != " " && $0 != "\t" }
            if HostRouting.asciiLowercased(String(name)) == "domain" { continue }
            out += ";" + attribute
        }
        return out
    }
}
