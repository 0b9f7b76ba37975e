// Chunked transfer coding (RFC 9112 §7.1) through the request parser: sizes,
// extensions, trailers, and every malformed-chunk smuggling vector, each
// checked under all input splits (helpers in HTTP1ParserTests.swift).

import XCTest
@testable import HTTP1

final class HTTP1ChunkedTests: XCTestCase {
    let prefix = "POST /c HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n"

    func chunked(_ body: String, limits: HTTP1Limits = HTTP1Limits(), eof: Bool = false,
                 file: StaticString = #filePath, line: UInt = #line) -> HTTP1Outcome<HTTPRequestHead> {
        http1Request(prefix + body, limits: limits, eof: eof, file: file, line: line)
    }

    func bodyAndTrailers(_ out: HTTP1Outcome<HTTPRequestHead>) -> (String, HTTPHeaders)? {
        guard out.error == nil, out.events.count >= 2 else { return nil }
        var body: [UInt8] = []
        var trailers: HTTPHeaders? = nil
        for e in out.events.dropFirst() {
            switch e {
            case .body(let b): body += b
            case .end(let t): trailers = t
            case .head: return nil
            }
        }
        guard let t = trailers else { return nil }
        return (String(decoding: body, as: UTF8.self), t)
    }

    func assertChunkError(_ body: String, _ expected: HTTP1Error = .badRequest(""),
                          limits: HTTP1Limits = HTTP1Limits(),
                          file: StaticString = #filePath, line: UInt = #line) {
        let out = chunked(body, limits: limits, file: file, line: line)
        XCTAssertNotNil(out.error, "accepted: \(body.debugDescription)", file: file, line: line)
        XCTAssertEqual(out.error?.status, expected.status, file: file, line: line)
    }

    func testBasicChunks() {
        let out = chunked("5\r\nhello\r\n1\r\n \r\n5\r\nworld\r\n0\r\n\r\n")
        let r = bodyAndTrailers(out)
        XCTAssertEqual(r?.0, "hello world")
        XCTAssertEqual(r?.1.count, 0)
    }

    func testHexSizesAndLeadingZeros() {
        let data = String(repeating: "z", count: 26)
        let r = bodyAndTrailers(chunked("1A\r\n\(data)\r\n001a\r\n\(data)\r\n000\r\n\r\n"))
        XCTAssertEqual(r?.0, data + data)
    }

    func testExtensionsAreIgnored() {
        let body = "3;a=b\r\nabc\r\n2 ; name ; x = \"q \\\" ;v\"\r\nde\r\n1;tok=t-1.x\r\nf\r\n0;last\r\n\r\n"
        XCTAssertEqual(bodyAndTrailers(chunked(body))?.0, "abcdef")
    }

    func testInvalidExtensions() {
        for ext in [";", ";=v", ";a=", ";a=\"unterminated", ";a b", ";a=b c", "; a=\"x\"y", ";a=\u{1}"] {
            assertChunkError("1\(ext)\r\nx\r\n0\r\n\r\n")
        }
    }

    func testTrailers() {
        let r = bodyAndTrailers(chunked("3\r\nabc\r\n0\r\nChecksum: 123\r\nX-Trace:  a b \r\n\r\n"))
        XCTAssertEqual(r?.0, "abc")
        XCTAssertEqual(r?.1, HTTPHeaders([("Checksum", "123"), ("X-Trace", "a b")]))
    }

    func testTrailerValidation() {
        assertChunkError("0\r\nBad Name: x\r\n\r\n")
        assertChunkError("0\r\nX: a\0\r\n\r\n")
        assertChunkError("0\r\nX: a\r\n b\r\n\r\n")
        assertChunkError("0\r\nX: a\n\r\n")
        let limits = HTTP1Limits(maxHeadBytes: 64, maxHeaders: 2)
        assertChunkError("0\r\nA: 1\r\nB: 2\r\nC: 3\r\n\r\n", .headersTooLarge, limits: limits)
        assertChunkError("0\r\nA: " + String(repeating: "x", count: 70) + "\r\n\r\n", .headersTooLarge, limits: limits)
        XCTAssertNotNil(bodyAndTrailers(chunked("0\r\nA: 1\r\nB: 2\r\n\r\n", limits: limits)))
    }

    func testInvalidChunkSizes() {
        for size in ["0x10", "-1", "1 1", "", " 1", "1 ", "1\t", "g", "+1", "1_0", "\u{e9}",
                     "4000000000000001", "ffffffffffffffffff", "10000000000000000000000"] {
            assertChunkError("\(size)\r\n" + String(repeating: "a", count: 16) + "\r\n0\r\n\r\n")
        }
        // 2^62 itself is accepted as a size (the data just never arrives here).
        var p = HTTP1RequestParser()
        XCTAssertNoThrow(try p.feed(http1Bytes(prefix + "4000000000000000\r\nabc")))
    }

    func testChunkDataMustEndWithCRLF() {
        assertChunkError("3\r\nabcd\r\n0\r\n\r\n")
        assertChunkError("3\r\nabc\n0\r\n\r\n")
        assertChunkError("3\r\nabc\r0\r\n\r\n")
        assertChunkError("3\r\nabc0\r\n\r\n")
        assertChunkError("3\r\nab\r\n\r\n0\r\n\r\n")
        assertChunkError("3\r\nabcXY0\r\n\r\n")    // two junk bytes instead of CRLF
        assertChunkError("3\r\nabc\n\r0\r\n\r\n")  // LF CR
    }

    func testBareLineEndsInChunkLines() {
        assertChunkError("3\nabc\r\n0\r\n\r\n")
        assertChunkError("3\rabc\r\n0\r\n\r\n")
        assertChunkError("3\r\nabc\r\n0\n\r\n")
        assertChunkError("3\r\nabc\r\n0\r\n\n")
    }

    func testChunkLineLimit() {
        let limits = HTTP1Limits(maxChunkLineBytes: 10)
        XCTAssertNotNil(bodyAndTrailers(chunked("1;aaaaaaaa\r\nx\r\n0\r\n\r\n", limits: limits)))
        assertChunkError("1;aaaaaaaaa\r\nx\r\n0\r\n\r\n", limits: limits)
        // Detected before the line ends.
        var p = HTTP1RequestParser(limits: limits)
        XCTAssertNoThrow(try p.feed(http1Bytes(prefix + "0000000000")))
        XCTAssertThrowsError(try p.feed(http1Bytes("0")))
    }

    func testTruncatedChunkedBody() {
        XCTAssertEqual(chunked("5\r\nhel", eof: true).error, .badRequest("truncated"))
        XCTAssertEqual(chunked("0\r\nT: 1\r\n", eof: true).error, .badRequest("truncated"))
        XCTAssertNil(chunked("0\r\n\r\n", eof: true).error)
    }

    func testWriterOutputParses() throws {
        var p = HTTP1RequestParser()
        var stream = http1Bytes(prefix)
        stream += HTTP1Writer.chunk(http1Bytes("abc")) + HTTP1Writer.chunk([]) + HTTP1Writer.chunk(Array(repeating: 0x41, count: 300))
        stream += HTTP1Writer.lastChunk(trailers: HTTPHeaders([("Digest", "x=1")]))
        let out = http1CheckSplits(stream) { http1RunRequest($0) }
        XCTAssertNil(out.error)
        XCTAssertEqual(out.events.count, 3)
        XCTAssertEqual(out.events[1], .body(http1Bytes("abc") + Array(repeating: 0x41, count: 300)))
        XCTAssertEqual(out.events[2], .end(trailers: HTTPHeaders([("Digest", "x=1")])))
        _ = try p.feed(stream)
        XCTAssertFalse(p.inMessage)
        XCTAssertEqual(p.framing, .chunked)
    }
}
