// RequestTarget: the four request-target forms of RFC 9112 §3.2, per method
// (issue 12, finding 10: `GET httpx/a://dev2.example/zzz` was routed to dev2,
// `HTTP://` was not recognised, `GET x` reached the device).
import XCTest
@testable import HTTP1

final class RequestTargetTests: XCTestCase {
    func testOriginForm() {
        XCTAssertEqual(RequestTarget.classify(method: "GET", target: "/"), .origin("/"))
        XCTAssertEqual(RequestTarget.classify(method: "GET", target: "/a/b?c=d/e?f"), .origin("/a/b?c=d/e?f"))
        XCTAssertEqual(RequestTarget.classify(method: "OPTIONS", target: "/x"), .origin("/x"))
        XCTAssertEqual(RequestTarget.classify(method: "GET", target: "//dev2.example/x"), .origin("//dev2.example/x"))
        for bad in ["/a#frag", "/\u{e9}", "/a b"] {
            XCTAssertNil(RequestTarget.classify(method: "GET", target: bad), bad)
        }
    }

    func testAbsoluteFormIsHttpOrHttpsAnyCase() {
        XCTAssertEqual(RequestTarget.classify(method: "GET", target: "http://dev1.example:80/x?y"),
                       .absolute(scheme: "http", authority: "dev1.example:80", path: "/x?y"))
        XCTAssertEqual(RequestTarget.classify(method: "GET", target: "HTTP://dev2.example/x"),
                       .absolute(scheme: "http", authority: "dev2.example", path: "/x"))
        XCTAssertEqual(RequestTarget.classify(method: "POST", target: "hTtPs://dev2.example"),
                       .absolute(scheme: "https", authority: "dev2.example", path: "/"))
        XCTAssertEqual(RequestTarget.classify(method: "GET", target: "http://dev2.example?q"),
                       .absolute(scheme: "http", authority: "dev2.example", path: "/?q"))
        XCTAssertEqual(RequestTarget.classify(method: "OPTIONS", target: "http://[::1]:8080/"),
                       .absolute(scheme: "http", authority: "[::1]:8080", path: "/"))
        XCTAssertEqual(RequestTarget.classify(method: "GET", target: "http://dev2.example/x")?.authority, "dev2.example")
        XCTAssertEqual(RequestTarget.classify(method: "GET", target: "http://dev2.example/x")?.path, "/x")
    }

    func testEverythingElseIsNoForm() {
        for bad in ["httpx/a://dev2.example/zzz", "x", "dev2.example:80", "ftp://dev2.example/", "httpx://dev2.example/",
                    "http:/dev2.example/", "http:dev2.example", "http://", "http:///x", "http://user@dev2.example/",
                    "http://:80/", "http://dev2.example:8x/", "http://dev2.example:123456/", "http://dev2.example#f",
                    "http://[::1/", "http://[]/", "http://dev 2/", "*", "http://dev2.example/a#b", "?x", ""] {
            XCTAssertNil(RequestTarget.classify(method: "GET", target: bad), bad)
        }
    }

    func testAuthorityFormOnlyForConnectAndAsteriskOnlyForOptions() {
        XCTAssertEqual(RequestTarget.classify(method: "CONNECT", target: "dev1.example:443"), .authority("dev1.example:443"))
        XCTAssertEqual(RequestTarget.classify(method: "CONNECT", target: "[::1]:443"), .authority("[::1]:443"))
        for bad in ["dev1.example", "dev1.example:", "/x", "http://dev1.example/", "*", "a@b:1"] {
            XCTAssertNil(RequestTarget.classify(method: "CONNECT", target: bad), bad)
        }
        XCTAssertEqual(RequestTarget.classify(method: "OPTIONS", target: "*"), .asterisk)
        XCTAssertEqual(RequestTarget.classify(method: "OPTIONS", target: "*")?.path, "*")
        XCTAssertNil(RequestTarget.classify(method: "GET", target: "*"))
        XCTAssertNil(RequestTarget.classify(method: "OPTIONS", target: "*/x"))
        XCTAssertNil(RequestTarget.classify(method: "options", target: "*"))  // methods are case-sensitive
    }

    func testHTTP2Path() {
        XCTAssertTrue(RequestTarget.isValidH2Path(method: "GET", path: "/x"))
        XCTAssertTrue(RequestTarget.isValidH2Path(method: "OPTIONS", path: "*"))
        for (m, p) in [("GET", "*"), ("GET", "x"), ("GET", ""), ("GET", "http://dev2.example/x"), ("OPTIONS", "**")] {
            XCTAssertFalse(RequestTarget.isValidH2Path(method: m, path: p), m + " " + p)
        }
    }
}
