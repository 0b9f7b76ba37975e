// HTTPTranslation: every rule of RFC 9113 §8.2.2 (and §8.2.3, §8.3) both ways,
// round trips, and hostile blocks. The results are those of the six hand-written
// translations it replaced (Exchange's request and response, LocalExchange's
// request and response, PublicH2Connection's both ways); where a hostile block
// that nghttp2 refuses before any of them sees it now gets a safer result, the
// test says so. Also ShortResponse (the one error answer) and HTTPMethod.
import XCTest
import HTTPCore

final class HTTPTranslationTests: XCTestCase {
    /// "name: value" per field, in order (byte-exact).
    private func lines(_ h: HTTPHeaders) -> [String] { h.map { $0.name + ": " + $0.value } }

    private func block(_ pairs: [(String, String)]) -> HTTPHeaders { HTTPHeaders(pairs) }

    private func request(_ pairs: [(String, String)], method: String = "GET", target: String = "/a?b") -> HTTPRequestHead {
        HTTPRequestHead(method: method, target: target, versionMinor: 1, headers: HTTPHeaders(pairs))
    }

    // MARK: HTTP/1.1 request -> HTTP/2 (the gateway's request to the device)

    func testRequestToHTTP2PseudoHeadersFirstNamesLowerCaseHostAsAuthority() {
        let h = HTTPTranslation.http2Request(from: request([("Host", "dev1.example"), ("Accept", "*/*"), ("X-Custom", "A b")]),
                                             scheme: "https", authority: "dev1.example")
        XCTAssertEqual(lines(h), [":method: GET", ":scheme: https", ":authority: dev1.example", ":path: /a?b",
                                  "accept: */*", "x-custom: A b"])
    }

    func testRequestToHTTP2AuthorityIsTheCallersNotHost() {
        // absolute-form: the target's authority routes, Host is ignored (RFC 9112 §3.2.2) and dropped.
        let h = HTTPTranslation.http2Request(from: request([("host", "other.example"), ("HOST", "third")], target: "/"),
                                             scheme: "http", authority: "dev2.example")
        XCTAssertEqual(lines(h), [":method: GET", ":scheme: http", ":authority: dev2.example", ":path: /"])
    }

    func testRequestToHTTP2DropsConnectionSpecificFields() {
        let h = HTTPTranslation.http2Request(from: request([
            ("Connection", "keep-alive, X-Hop, , x-other"), ("Keep-Alive", "timeout=5"), ("Proxy-Connection", "close"),
            ("Transfer-Encoding", "chunked"), ("Upgrade", "h2c"), ("TE", "trailers"), ("X-Hop", "1"), ("x-other", "2"),
            ("X-Kept", "3"), ("Connection", "close"),
        ], method: "POST"), scheme: "https", authority: "d")
        XCTAssertEqual(lines(h), [":method: POST", ":scheme: https", ":authority: d", ":path: /a?b", "x-kept: 3"])
    }

    func testRequestToHTTP2DropsTEWhateverItSays() {
        // TE is hop-by-hop: "trailers" (the only value HTTP/2 allows) is about the user's hop, "gzip" is not allowed.
        for te in ["trailers", "gzip", "trailers, deflate"] {
            let h = HTTPTranslation.http2Request(from: request([("TE", te), ("a", "1")]), scheme: "https", authority: "d")
            XCTAssertEqual(lines(h).dropFirst(4), ["a: 1"], te)
        }
    }

    func testRequestToHTTP2KeepsCookiesAsReceivedAndNoFieldBecomesAPseudoHeader() {
        // A head a program made (the HTTP/1.1 parser refuses ":" in a name): never a second :path.
        let h = HTTPTranslation.http2Request(from: request([("Cookie", "a=1"), (":path", "/admin"), ("cookie", "b=2")]),
                                             scheme: "https", authority: "d")
        XCTAssertEqual(lines(h), [":method: GET", ":scheme: https", ":authority: d", ":path: /a?b", "cookie: a=1", "cookie: b=2"])
    }

    // MARK: HTTP/2 request -> HTTP/1.1 (the agent's request to the local API; the user's HTTP/2 request)

    func testRequestFromHTTP2HostFirstPseudoHeadersGone() throws {
        let head = try HTTPTranslation.http1Request(fromHTTP2: block([
            (":method", "PUT"), (":scheme", "https"), (":authority", "dev1.example"), (":path", "/x?y"),
            ("content-type", "text/plain"), ("x-forwarded-for", "10.0.0.1"),
        ]))
        XCTAssertEqual(head.method, "PUT")
        XCTAssertEqual(head.target, "/x?y")
        XCTAssertEqual(head.versionMinor, 1)
        XCTAssertEqual(lines(head.headers), ["Host: dev1.example", "content-type: text/plain", "x-forwarded-for: 10.0.0.1"])
    }

    func testRequestFromHTTP2AuthorityWinsOverHostAndHostIsOne() throws {
        let both = try HTTPTranslation.http1Request(fromHTTP2: block([
            (":method", "GET"), (":scheme", "https"), (":authority", "a.example"), (":path", "/"), ("host", "b.example"), ("x", "1"),
        ]))
        XCTAssertEqual(lines(both.headers), ["Host: a.example", "x: 1"])
        let hostOnly = try HTTPTranslation.http1Request(fromHTTP2: block([
            (":method", "GET"), (":scheme", "https"), (":path", "/"), ("x", "1"), ("host", "b.example"),
        ]))
        XCTAssertEqual(lines(hostOnly.headers), ["Host: b.example", "x: 1"])
        let neither = try HTTPTranslation.http1Request(fromHTTP2: block([(":method", "GET"), (":scheme", "https"), (":path", "/")]))
        XCTAssertEqual(lines(neither.headers), [])
    }

    func testRequestFromHTTP2JoinsCookieCrumbs() throws {
        // RFC 9113 §8.2.3: one Cookie field, crumbs joined with "; ", after the other fields.
        let head = try HTTPTranslation.http1Request(fromHTTP2: block([
            (":method", "GET"), (":scheme", "https"), (":authority", "d"), (":path", "/"),
            ("cookie", "a=1"), ("accept", "*/*"), ("cookie", "b=2"), ("cookie", "c=3"),
        ]))
        XCTAssertEqual(lines(head.headers), ["Host: d", "accept: */*", "Cookie: a=1; b=2; c=3"])
    }

    func testRequestFromHTTP2DropsConnectionSpecificFieldsAndTE() throws {
        // nghttp2 resets a stream with any of these but "te: trailers"; the translation drops them all.
        let head = try HTTPTranslation.http1Request(fromHTTP2: block([
            (":method", "POST"), (":scheme", "https"), (":authority", "d"), (":path", "/"),
            ("te", "trailers"), ("connection", "x-a, x-b"), ("x-a", "1"), ("x-b", "2"), ("keep-alive", "5"),
            ("proxy-connection", "keep-alive"), ("transfer-encoding", "chunked"), ("upgrade", "websocket"), ("x-c", "3"),
        ]))
        XCTAssertEqual(lines(head.headers), ["Host: d", "x-c: 3"])
        let gzip = try HTTPTranslation.http1Request(fromHTTP2: block([
            (":method", "GET"), (":scheme", "https"), (":authority", "d"), (":path", "/"), ("te", "gzip"),
        ]))
        XCTAssertEqual(lines(gzip.headers), ["Host: d"])
    }

    func testRequestFromHTTP2ConnectionCannotNameHostAway() throws {
        // Hostile (nghttp2 refuses "connection"): Host comes from :authority, which no field names.
        let head = try HTTPTranslation.http1Request(fromHTTP2: block([
            (":method", "GET"), (":scheme", "https"), (":authority", "d"), (":path", "/"), ("connection", "host, cookie"),
            ("cookie", "a=1"),
        ]))
        XCTAssertEqual(lines(head.headers), ["Host: d"])
    }

    func testRequestFromHTTP2ExtendedConnectKeepsPathProtocolIsTheCallers() throws {
        let head = try HTTPTranslation.http1Request(fromHTTP2: block([
            (":method", "CONNECT"), (":protocol", "websocket"), (":scheme", "https"), (":authority", "d"), (":path", "/ws"),
            ("sec-websocket-version", "13"),
        ]))
        XCTAssertEqual(head.method, "CONNECT")
        XCTAssertEqual(head.target, "/ws")
        XCTAssertEqual(lines(head.headers), ["Host: d", "sec-websocket-version: 13"])
    }

    func testRequestFromHTTP2PlainConnectIsAuthorityForm() throws {
        // RFC 9113 §8.5: no :path, :authority is the target (as an HTTP/1.1 CONNECT writes it).
        let head = try HTTPTranslation.http1Request(fromHTTP2: block([(":method", "CONNECT"), (":authority", "d.example:443")]))
        XCTAssertEqual(head.target, "d.example:443")
    }

    func testRequestFromHTTP2RefusesMissingPseudoHeaders() {
        let cases: [([(String, String)], HTTPTranslationError)] = [
            ([(":scheme", "https"), (":authority", "d"), (":path", "/")], .missingPseudoHeader(":method")),
            ([(":method", "GET"), (":scheme", "https"), (":authority", "d")], .missingPseudoHeader(":path")),
            ([(":method", "CONNECT"), (":protocol", "websocket"), (":authority", "d")], .missingPseudoHeader(":path")),
            ([(":method", "CONNECT")], .missingPseudoHeader(":path")),
            ([], .missingPseudoHeader(":method")),
        ]
        for (pairs, want) in cases {
            XCTAssertThrowsError(try HTTPTranslation.http1Request(fromHTTP2: block(pairs))) { error in
                XCTAssertEqual(error as? HTTPTranslationError, want, "\(pairs)")
            }
        }
    }

    func testRequestFromHTTP2HostileBlocks() throws {
        // All refused by nghttp2 before a translation sees them. Pseudo-headers after
        // regular fields and a repeated :path: the first of each, as LocalExchange took them.
        let misplaced = try HTTPTranslation.http1Request(fromHTTP2: block([
            ("accept", "*/*"), (":path", "/first"), (":method", "GET"), (":path", "/second"), (":authority", "d"), (":foo", "bar"),
        ]))
        XCTAssertEqual(misplaced.method, "GET")
        XCTAssertEqual(misplaced.target, "/first")
        XCTAssertEqual(lines(misplaced.headers), ["Host: d", "accept: */*"])
        // Upper-case names: looked up case-insensitively (pseudo-headers, Host, Cookie, the
        // connection-specific ones), kept as they came otherwise. LocalExchange compared
        // "host" and "cookie" byte-exactly: "Host" made a second Host field and "Cookie" was not joined.
        let upper = try HTTPTranslation.http1Request(fromHTTP2: block([
            (":METHOD", "GET"), (":Path", "/"), (":authority", "d"), ("Host", "evil"), ("Cookie", "a=1"), ("cookie", "b=2"),
            ("Connection", "X-Y"), ("x-y", "1"), ("X-Kept", "2"),
        ]))
        XCTAssertEqual(upper.method, "GET")
        XCTAssertEqual(upper.target, "/")
        XCTAssertEqual(lines(upper.headers), ["Host: d", "X-Kept: 2", "Cookie: a=1; b=2"])
    }

    // MARK: HTTP/1.1 response -> HTTP/2 (the agent's answer; the gateway's answer on an HTTP/2 stream)

    func testResponseToHTTP2() {
        let h = HTTPTranslation.http2Response(from: HTTPResponseHead(status: 200, headers: HTTPHeaders([
            ("Content-Type", "text/html"), ("Connection", "keep-alive, X-Hop"), ("Keep-Alive", "timeout=5"), ("X-Hop", "1"),
            ("Transfer-Encoding", "chunked"), ("Upgrade", "h2c"), ("Proxy-Connection", "x"), ("TE", "trailers"),
            ("Set-Cookie", "a=1"), ("Set-Cookie", "b=2"), ("Content-Length", "5"),
        ])))
        XCTAssertEqual(lines(h), [":status: 200", "content-type: text/html", "set-cookie: a=1", "set-cookie: b=2", "content-length: 5"])
    }

    func testResponseToHTTP2NoContentLengthOn1xxAnd204() {
        // RFC 9110 §8.6; HTTP/2 peers treat a 204 with content-length as malformed. A 304's stays.
        for (status, kept) in [(204, false), (103, false), (304, true), (200, true), (404, true)] {
            let h = HTTPTranslation.http2Response(from: HTTPResponseHead(status: status, headers: HTTPHeaders([("Content-Length", "0"), ("X", "y")])))
            XCTAssertEqual(lines(h), [":status: " + String(status)] + (kept ? ["content-length: 0"] : []) + ["x: y"], String(status))
        }
    }

    // MARK: HTTP/2 response -> HTTP/1.1 (the device's answer to the user)

    func testResponseFromHTTP2() throws {
        let head = try HTTPTranslation.http1Response(fromHTTP2: block([
            (":status", "201"), ("content-type", "application/json"), ("set-cookie", "a=1"), ("set-cookie", "b=2"),
        ]))
        XCTAssertEqual(head.status, 201)
        XCTAssertEqual(head.reason, "Created")
        XCTAssertEqual(head.versionMinor, 1)
        XCTAssertEqual(lines(head.headers), ["content-type: application/json", "set-cookie: a=1", "set-cookie: b=2"])
    }

    func testResponseFromHTTP2DropsConnectionSpecificFields() throws {
        let head = try HTTPTranslation.http1Response(fromHTTP2: block([
            (":status", "200"), ("connection", "x-a"), ("x-a", "1"), ("keep-alive", "5"), ("transfer-encoding", "chunked"),
            ("upgrade", "h2c"), ("proxy-connection", "close"), ("te", "trailers"), ("x-b", "2"),
        ]))
        XCTAssertEqual(lines(head.headers), ["x-b: 2"])
    }

    func testResponseFromHTTP2InterimIsTheCallers() throws {
        XCTAssertEqual(try HTTPTranslation.http1Response(fromHTTP2: block([(":status", "103"), ("link", "</a>")])).status, 103)
        XCTAssertEqual(try HTTPTranslation.http1Response(fromHTTP2: block([(":status", "999")])).status, 999)
    }

    func testResponseFromHTTP2RefusesABadStatus() {
        // Exchange answered each of these 502 (nghttp2 refuses all but a missing one first); "+20x"
        // was Int("+200") = 200 there, three digits are the rule now (RFC 9110 §15).
        XCTAssertThrowsError(try HTTPTranslation.http1Response(fromHTTP2: block([("content-type", "x")]))) {
            XCTAssertEqual($0 as? HTTPTranslationError, .missingPseudoHeader(":status"))
        }
        for bad in ["", "20", "2000", "abc", "099", "000", "+200", " 200", "2x0", "-20"] {
            XCTAssertThrowsError(try HTTPTranslation.http1Response(fromHTTP2: block([(":status", bad)])), bad) {
                XCTAssertEqual($0 as? HTTPTranslationError, .invalidStatus(bad))
            }
        }
    }

    // MARK: Round trips

    func testRequestRoundTripHTTP1ToHTTP2AndBack() throws {
        let original = request([("Host", "dev1.example"), ("accept", "*/*"), ("x-a", "1"), ("Cookie", "a=1; b=2")], method: "DELETE")
        let h2 = HTTPTranslation.http2Request(from: original, scheme: "https", authority: "dev1.example")
        XCTAssertEqual(try HTTPTranslation.http1Request(fromHTTP2: h2), original)
    }

    func testRequestRoundTripHTTP2ToHTTP1AndBack() throws {
        let original = block([(":method", "POST"), (":scheme", "https"), (":authority", "d"), (":path", "/p"),
                              ("content-type", "text/plain"), ("cookie", "a=1; b=2"), ("x", "y")])
        let h1 = try HTTPTranslation.http1Request(fromHTTP2: original)
        let back = HTTPTranslation.http2Request(from: h1, scheme: "https", authority: h1.headers.first("host") ?? "")
        // The one cookie field moves after the others: a field's own order is kept.
        XCTAssertEqual(lines(back), [":method: POST", ":scheme: https", ":authority: d", ":path: /p",
                                     "content-type: text/plain", "x: y", "cookie: a=1; b=2"])
    }

    func testResponseRoundTrips() throws {
        let h1 = HTTPResponseHead(status: 404, headers: HTTPHeaders([("content-type", "text/plain"), ("content-length", "3"),
                                                                     ("set-cookie", "a=1"), ("set-cookie", "b=2")]))
        XCTAssertEqual(try HTTPTranslation.http1Response(fromHTTP2: HTTPTranslation.http2Response(from: h1)), h1)
        let h2 = block([(":status", "200"), ("content-length", "0"), ("etag", "\"x\"")])
        XCTAssertEqual(HTTPTranslation.http2Response(from: try HTTPTranslation.http1Response(fromHTTP2: h2)), h2)
    }

    // MARK: The one short answer, and the idempotent methods

    func testShortResponseErrorAsHTTP1AndHTTP2() {
        let r = ShortResponse.error(503, "no device", fields: HTTPHeaders([("WWW-Authenticate", "Bearer")]), retryAfter: 5, close: true)
        XCTAssertEqual(r.head.status, 503)
        XCTAssertEqual(r.head.reason, "Service Unavailable")
        XCTAssertEqual(r.body, Array("no device\n".utf8))
        XCTAssertEqual(lines(r.head.headers), ["WWW-Authenticate: Bearer", "Content-Type: text/plain; charset=utf-8",
                                               "Content-Length: 10", "Retry-After: 5", "Connection: close"])
        // HTTP/2 has no Connection field: the stream ends, not the connection.
        XCTAssertEqual(lines(HTTPTranslation.http2Response(from: r.head)),
                       [":status: 503", "www-authenticate: Bearer", "content-type: text/plain; charset=utf-8",
                        "content-length: 10", "retry-after: 5"])
        let plain = ShortResponse.error(404, "not here")
        XCTAssertEqual(lines(plain.head.headers), ["Content-Type: text/plain; charset=utf-8", "Content-Length: 9"])
    }

    func testShortResponseAnyType() {
        let r = ShortResponse(status: 200, body: "{}\n", contentType: "application/json",
                              fields: HTTPHeaders([("Cache-Control", "no-store")]), close: true)
        XCTAssertEqual(lines(r.head.headers), ["Cache-Control: no-store", "Content-Type: application/json",
                                               "Content-Length: 3", "Connection: close"])
        XCTAssertEqual(r.body, Array("{}\n".utf8))
    }

    func testIdempotentMethods() {
        for m in ["GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"] { XCTAssertTrue(HTTPMethod.isIdempotent(m), m) }
        for m in ["POST", "PATCH", "CONNECT", "get", "Put", ""] { XCTAssertFalse(HTTPMethod.isIdempotent(m), m) }
    }
}
