// HTTPTranslation: the one mapping between an HTTP/1.1 message head and an HTTP/2
// header block, used wherever a message changes version: the user's request to the
// device and the device's response back (Exchange), a user's HTTP/2 request and its
// response (PublicH2Connection), the agent's request to the local API and the
// response back (LocalExchange). Policy is not translation and stays with the
// caller, applied before or after: who the client is (X-Forwarded-*), credentials
// meant for the gateway, cookie scope, Expect.
//
// The rules (RFC 9113), both ways unless said:
//   - connection-specific fields are dropped (§8.2.2): Connection and every field it
//     names, Keep-Alive, Proxy-Connection, Transfer-Encoding, Upgrade, and TE (an
//     HTTP/2 request may carry only "te: trailers", which is about the hop it came
//     on, so no hop passes it on);
//   - Host and :authority (§8.3.1): to HTTP/2 the authority is the caller's (the
//     target's, else Host) and Host goes; to HTTP/1.1 Host is :authority, else the
//     block's host field, written first and once;
//   - Cookie (§8.2.3): HTTP/2's cookie crumbs become one Cookie field joined with "; ";
//   - HTTP/2 field names are lower case (§8.2.1); pseudo-headers come first, and a
//     regular field never becomes one (a name starting with ":" is dropped);
//   - a 1xx or 204 response carries no Content-Length (RFC 9110 §8.6);
//   - a request block without :method, or without :path (a CONNECT has :authority
//     instead, §8.5), or a response without a three-digit :status, is refused.
// nghttp2 checks received blocks before they get here (upper-case names, pseudo-headers
// misplaced or repeated, connection-specific fields and TE other than "trailers" reset
// the stream); this code does not rely on it: it takes the first of each pseudo-header
// wherever it is, and compares names case-insensitively.

public enum HTTPTranslationError: Error, Equatable, Sendable {
    case missingPseudoHeader(String)
    case invalidStatus(String)

    public var description: String {
        switch self {
        case .missingPseudoHeader(let name): return "the header block has no " + name
        case .invalidStatus(let value): return "invalid :status '" + value + "'"
        }
    }
}

public enum HTTPTranslation {
    /// An HTTP/1.1 request head as an HTTP/2 request block: :method, :scheme,
    /// :authority (`authority`), :path (`head.target`, origin-form or "*"), then the fields.
    public static func http2Request(from head: HTTPRequestHead, scheme: String, authority: String) -> HTTPHeaders {
        var out = HTTPHeaders()
        out.add(":method", head.method)
        out.add(":scheme", scheme)
        out.add(":authority", authority)
        out.add(":path", head.target)
        appendFields(head.headers, to: &out, droppingHost: true, droppingLength: false)
        return out
    }

    /// An HTTP/2 request block as an HTTP/1.1 request head (Host first, cookies joined).
    /// `:scheme` and `:protocol` have no HTTP/1.1 form: callers read them from the block.
    public static func http1Request(fromHTTP2 block: HTTPHeaders) throws(HTTPTranslationError) -> HTTPRequestHead {
        guard let method = block.first(":method") else { throw .missingPseudoHeader(":method") }
        let authority = block.first(":authority") ?? block.first("host")
        let target: String
        if let path = block.first(":path") {
            target = path
        } else if method == "CONNECT", block.first(":protocol") == nil, let authority {
            target = authority  // authority-form, as an HTTP/1.1 CONNECT names it
        } else {
            throw .missingPseudoHeader(":path")
        }
        var regular = HTTPHeaders()
        for (n, v) in block where !HTTPTranslation.isPseudo(n) { regular.add(n, v) }
        regular.removeHopByHop()
        var fields = HTTPHeaders()
        if let authority { fields.add("Host", authority) }
        var cookies: [String] = []
        for (n, v) in regular {
            if HTTPFieldBytes.equalsIgnoringCase(n, "host") { continue }
            if HTTPFieldBytes.equalsIgnoringCase(n, "cookie") {
                cookies.append(v)
            } else {
                fields.add(n, v)
            }
        }
        if !cookies.isEmpty { fields.add("Cookie", cookies.joined(separator: "; ")) }
        return HTTPRequestHead(method: method, target: target, versionMinor: 1, headers: fields)
    }

    /// An HTTP/1.1 response head as an HTTP/2 response block: :status, then the fields.
    public static func http2Response(from head: HTTPResponseHead) -> HTTPHeaders {
        var out = HTTPHeaders()
        out.add(":status", String(head.status))
        appendFields(head.headers, to: &out, droppingHost: false, droppingLength: head.status < 200 || head.status == 204)
        return out
    }

    /// An HTTP/2 response block as an HTTP/1.1 response head (an interim 1xx too:
    /// the caller decides what to do with it).
    public static func http1Response(fromHTTP2 block: HTTPHeaders) throws(HTTPTranslationError) -> HTTPResponseHead {
        guard let value = block.first(":status") else { throw .missingPseudoHeader(":status") }
        guard let status = statusCode(value) else { throw .invalidStatus(value) }
        var fields = HTTPHeaders()
        for (n, v) in block where !HTTPTranslation.isPseudo(n) { fields.add(n, v) }
        fields.removeHopByHop()
        return HTTPResponseHead(status: status, versionMinor: 1, headers: fields)
    }

    /// A pseudo-header's name (":method", ":status", ...).
    @inline(__always)
    static func isPseudo(_ name: String) -> Bool { name.utf8.first == 0x3A }

    /// Three ASCII digits, 100...999.
    static func statusCode(_ value: String) -> Int? {
        let u = Array(value.utf8)
        guard u.count == 3, u[0] >= 0x31, u[0] <= 0x39, u[1] >= 0x30, u[1] <= 0x39, u[2] >= 0x30, u[2] <= 0x39 else { return nil }
        return Int(u[0] - 0x30) * 100 + Int(u[1] - 0x30) * 10 + Int(u[2] - 0x30)
    }

    /// `fields` without the connection-specific ones, a pseudo-header's name, and Host
    /// or Content-Length when asked; names lower-cased.
    private static func appendFields(_ fields: HTTPHeaders, to out: inout HTTPHeaders, droppingHost: Bool, droppingLength: Bool) {
        var kept = fields
        kept.removeHopByHop()
        for (n, v) in kept where !HTTPTranslation.isPseudo(n) {
            if droppingHost && HTTPFieldBytes.equalsIgnoringCase(n, "host") { continue }
            if droppingLength && HTTPFieldBytes.equalsIgnoringCase(n, "content-length") { continue }
            out.add(HTTPFieldBytes.lowercased(n), v)
        }
    }
}
