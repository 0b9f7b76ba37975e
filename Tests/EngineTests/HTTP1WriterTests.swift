// HTTP1Writer: byte-exact output, round trips through the parsers, chunk
// framing, and that no string can inject a line into a written head.

import XCTest
@testable import HTTP1

final class HTTP1WriterTests: XCTestCase {
    func testRequestHeadBytes() {
        let head = HTTPRequestHead(method: "GET", target: "/x?y", headers: HTTPHeaders([("Host", "h"), ("X-A", "1")]))
        XCTAssertEqual(String(decoding: HTTP1Writer.requestHead(head), as: UTF8.self),
                       "GET /x?y HTTP/1.1\r\nHost: h\r\nX-A: 1\r\n\r\n")
        let old = HTTPRequestHead(method: "HEAD", target: "/", versionMinor: 0)
        XCTAssertEqual(String(decoding: HTTP1Writer.requestHead(old), as: UTF8.self), "HEAD / HTTP/1.0\r\n\r\n")
    }

    func testResponseHeadBytes() {
        let head = HTTPResponseHead(status: 404, headers: HTTPHeaders([("Content-Length", "0")]))
        XCTAssertEqual(head.reason, "Not Found")
        XCTAssertEqual(String(decoding: HTTP1Writer.responseHead(head), as: UTF8.self),
                       "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n")
        let empty = HTTPResponseHead(status: 299, reason: "", versionMinor: 0)
        XCTAssertEqual(String(decoding: HTTP1Writer.responseHead(empty), as: UTF8.self), "HTTP/1.0 299 \r\n\r\n")
    }

    func testRequestRoundTrip() throws {
        let head = HTTPRequestHead(method: "PATCH", target: "/api/v1/items/7?x=%20", versionMinor: 1,
                                   headers: HTTPHeaders([("Host", "device.local:8080"), ("content-length", "4"),
                                                         ("X-Unicode", "gr\u{fc}\u{df}e"), ("Empty", "")]))
        let bytes = HTTP1Writer.requestHead(head) + http1Bytes("data")
        let out = http1CheckSplits(bytes) { http1RunRequest($0) }
        XCTAssertEqual(out.events, [.head(head), .body(http1Bytes("data")), .end(trailers: HTTPHeaders())])
    }

    func testResponseRoundTrip() throws {
        for head in [HTTPResponseHead(status: 200, headers: HTTPHeaders([("Content-Length", "0"), ("Server", "agent")])),
                     HTTPResponseHead(status: 503, reason: "Busy \u{e9}", versionMinor: 0,
                                      headers: HTTPHeaders([("Content-Length", "0")]))] {
            var p = HTTP1ResponseParser()
            let events = try p.feed(HTTP1Writer.responseHead(head))
            XCTAssertEqual(events, [.head(head), .end(trailers: HTTPHeaders())])
        }
    }

    func testChunks() {
        XCTAssertEqual(HTTP1Writer.chunk([]), [])
        XCTAssertEqual(String(decoding: HTTP1Writer.chunk(http1Bytes("hello")), as: UTF8.self), "5\r\nhello\r\n")
        let big = HTTP1Writer.chunk([UInt8](repeating: 0x61, count: 0x1af))
        XCTAssertEqual(Array(big.prefix(5)), http1Bytes("1af\r\n"))
        XCTAssertEqual(big.count, 5 + 0x1af + 2)
        XCTAssertEqual(String(decoding: HTTP1Writer.lastChunk(), as: UTF8.self), "0\r\n\r\n")
        XCTAssertEqual(String(decoding: HTTP1Writer.lastChunk(trailers: HTTPHeaders([("A", "b")])), as: UTF8.self),
                       "0\r\nA: b\r\n\r\n")
    }

    func testNoInjection() throws {
        let head = HTTPRequestHead(method: "GET", target: "/a\r\nX: 1",
                                   headers: HTTPHeaders([("Host", "h\r\n\r\nGET /evil HTTP/1.1"), ("Y", "a\0b\nc")]))
        let bytes = HTTP1Writer.requestHead(head)
        XCTAssertEqual(bytes.filter { $0 == 0x0A }.count, 4)  // request line, 2 fields, end
        XCTAssertFalse(bytes.contains(0))
        var p = HTTP1RequestParser()
        XCTAssertThrowsError(try p.feed(bytes))  // target with SP is rejected, never split
        let resp = HTTP1Writer.responseHead(HTTPResponseHead(status: 200, reason: "OK\r\nSet-Cookie: x"))
        XCTAssertEqual(resp.filter { $0 == 0x0A }.count, 2)
    }

    func testReasonPhrases() {
        XCTAssertEqual(HTTP1Writer.reasonPhrase(200), "OK")
        XCTAssertEqual(HTTP1Writer.reasonPhrase(101), "Switching Protocols")
        XCTAssertEqual(HTTP1Writer.reasonPhrase(431), "Request Header Fields Too Large")
        XCTAssertEqual(HTTP1Writer.reasonPhrase(502), "Bad Gateway")
        XCTAssertEqual(HTTP1Writer.reasonPhrase(799), "Unknown")
        for e in [HTTP1Error.badRequest("x"), .headersTooLarge, .badResponse("y"), .unsupportedTransferEncoding] {
            XCTAssertNotEqual(HTTP1Writer.reasonPhrase(e.status), "Unknown")
        }
    }
}
