// HTTPHeaders: ordered storage, case-insensitive look-ups, edits and the
// hop-by-hop filter a proxy applies before forwarding.

import XCTest
@testable import HTTP1

final class HTTP1HeadersTests: XCTestCase {
    func testOrderedCaseInsensitiveAccess() {
        var h = HTTPHeaders([("Content-Type", "text/plain"), ("Set-Cookie", "a=1")])
        h.add("set-cookie", "b=2")
        XCTAssertEqual(h.count, 3)
        XCTAssertFalse(h.isEmpty)
        XCTAssertEqual(h.first("CONTENT-TYPE"), "text/plain")
        XCTAssertNil(h.first("Content-Typ"))
        XCTAssertNil(h.first("Content-Type-X"))
        XCTAssertEqual(h.values("Set-Cookie"), ["a=1", "b=2"])
        XCTAssertEqual(h.values("missing"), [])
        XCTAssertTrue(h.contains("set-COOKIE"))
        XCTAssertFalse(h.contains("cookie"))
        XCTAssertEqual(h.count("SET-COOKIE"), 2)
        XCTAssertEqual(h.map { $0.name }, ["Content-Type", "Set-Cookie", "set-cookie"])
        XCTAssertEqual(h[2].value, "b=2")
    }

    func testRemoveAndReplace() {
        var h = HTTPHeaders([("A", "1"), ("b", "2"), ("a", "3"), ("C", "4")])
        h.remove("a")
        XCTAssertEqual(h, HTTPHeaders([("b", "2"), ("C", "4")]))
        h.replace("B", "9")
        XCTAssertEqual(h, HTTPHeaders([("C", "4"), ("B", "9")]))
        h.remove("nothing")
        XCTAssertEqual(h.count, 2)
        XCTAssertNotEqual(h, HTTPHeaders([("c", "4"), ("B", "9")]))
        XCTAssertEqual(HTTPHeaders(), HTTPHeaders([]))
    }

    func testContainsToken() {
        let h = HTTPHeaders([("Connection", "keep-alive , Upgrade"), ("connection", "")])
        XCTAssertTrue(h.containsToken("connection", "upgrade"))
        XCTAssertTrue(h.containsToken("Connection", "Keep-Alive"))
        XCTAssertFalse(h.containsToken("Connection", "close"))
    }

    func testRemoveHopByHop() {
        var h = HTTPHeaders([
            ("Host", "h"), ("Connection", "X-Custom, close"), ("Keep-Alive", "timeout=5"),
            ("Proxy-Connection", "keep-alive"), ("TE", "trailers"), ("Transfer-Encoding", "chunked"),
            ("Upgrade", "websocket"), ("x-custom", "1"), ("connection", " , x-other"), ("X-Other", "2"),
            ("Trailer", "Digest"), ("Content-Length", "3"), ("Proxy-Authorization", "p"), ("Accept", "*/*"),
        ])
        h.removeHopByHop()
        XCTAssertEqual(h, HTTPHeaders([
            ("Host", "h"), ("Trailer", "Digest"), ("Content-Length", "3"),
            ("Proxy-Authorization", "p"), ("Accept", "*/*"),
        ]))
        var plain = HTTPHeaders([("A", "1")])
        plain.removeHopByHop()
        XCTAssertEqual(plain, HTTPHeaders([("A", "1")]))
    }
}
