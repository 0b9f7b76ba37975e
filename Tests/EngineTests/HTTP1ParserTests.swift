// Request-parser tests: request line, fields, Host rules, Content-Length and
// Transfer-Encoding smuggling vectors, limits (431), streaming, pipelining.
// Every input goes through http1CheckSplits (HTTP1SplitTests.swift): parsed
// whole, byte by byte, split at every position and in random pieces.

import XCTest
@testable import HTTP1

// MARK: - request parser

final class HTTP1ParserTests: XCTestCase {
    func assertRequestError(_ text: String, _ expected: HTTP1Error, limits: HTTP1Limits = HTTP1Limits(),
                            file: StaticString = #filePath, line: UInt = #line) {
        let out = http1Request(text, limits: limits, file: file, line: line)
        XCTAssertEqual(out.error?.status, expected.status, "\(String(describing: out.error))", file: file, line: line)
        if case .badRequest = expected {} else {
            XCTAssertEqual(out.error, expected, file: file, line: line)
        }
    }

    func testSimpleGet() throws {
        let out = http1Request("GET /a?b=c HTTP/1.1\r\nHost: example.com\r\nAccept: */*\r\n\r\n")
        XCTAssertNil(out.error)
        XCTAssertEqual(out.events, [
            http1Head("GET", "/a?b=c", 1, [("Host", "example.com"), ("Accept", "*/*")]),
            http1NoTrailers,
        ])
        var p = HTTP1RequestParser()
        XCTAssertFalse(p.inMessage)
        let ev = try p.feed(http1Bytes("GET / HTTP/1.1\r\nHost: h\r\n\r\n"))
        XCTAssertEqual(ev.count, 2)
        XCTAssertEqual(p.framing, .none)
        XCTAssertFalse(p.inMessage)
        XCTAssertEqual(p.takeUnparsed(), [])
    }

    func testHeaderCaseOrderAndWhitespace() {
        let out = http1Request("GET / HTTP/1.1\r\nhOsT: h\r\nX-A:  \t one two \t\r\nx-a:2\r\nEmpty:\r\nUtf: caf\u{e9}\r\nTab: a\tb\r\n\r\n")
        XCTAssertNil(out.error)
        guard case .head(let head)? = out.events.first else { return XCTFail("no head") }
        XCTAssertEqual(Array(head.headers.map { $0.name }), ["hOsT", "X-A", "x-a", "Empty", "Utf", "Tab"])
        XCTAssertEqual(head.headers.values("x-A"), ["one two", "2"])
        XCTAssertEqual(head.headers.first("empty"), "")
        XCTAssertEqual(head.headers.first("UTF"), "caf\u{e9}")
        XCTAssertEqual(head.headers.first("tab"), "a\tb")
        // obs-text that is not valid UTF-8 is decoded with replacement characters.
        var p = HTTP1RequestParser()
        let ev = try? p.feed(http1Bytes("GET / HTTP/1.1\r\nHost: h\r\nX: a") + [0xFF] + http1Bytes("b\r\n\r\n"))
        guard case .head(let h2)? = ev?.first else { return XCTFail("no head") }
        XCTAssertEqual(h2.headers.first("x"), "a\u{FFFD}b")
    }

    func testHTTP10WithoutHost() {
        let out = http1Request("GET / HTTP/1.0\r\n\r\n")
        XCTAssertEqual(out.events, [http1Head("GET", "/", 0, []), http1NoTrailers])
    }

    func testContentLengthBody() {
        let out = http1Request("POST /u HTTP/1.1\r\nHost: h\r\nContent-Length: 11\r\n\r\nhello world")
        XCTAssertEqual(out.events, [
            http1Head("POST", "/u", 1, [("Host", "h"), ("Content-Length", "11")]),
            .body(http1Bytes("hello world")),
            http1NoTrailers,
        ])
        XCTAssertNil(out.error)
    }

    func testBodyIsStreamedAndStateTracked() throws {
        var p = HTTP1RequestParser()
        var ev = try p.feed(http1Bytes("PUT / HTTP/1.1\r\nHost: h\r\nContent-Length: 10\r\n\r\n0123"))
        XCTAssertEqual(ev.count, 2)
        XCTAssertEqual(ev.last, .body(http1Bytes("0123")))
        XCTAssertTrue(p.inMessage)
        XCTAssertEqual(p.framing, .contentLength(10))
        ev = try p.feed(http1Bytes("456"))
        XCTAssertEqual(ev, [.body(http1Bytes("456"))])
        ev = try p.feed(http1Bytes("789GET"))
        XCTAssertEqual(ev, [.body(http1Bytes("789")), http1NoTrailers])
        XCTAssertFalse(p.inMessage)
        XCTAssertEqual(p.takeUnparsed(), http1Bytes("GET"))
    }

    func testZeroContentLength() {
        let out = http1Request("POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 0\r\n\r\n")
        XCTAssertEqual(out.events.count, 2)
        XCTAssertNil(out.error)
    }

    func testPipelining() {
        let text = "GET /1 HTTP/1.1\r\nHost: h\r\n\r\n"
            + "POST /2 HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\n\r\nabc"
            + "POST /3 HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nxy\r\n0\r\nT: v\r\n\r\n"
            + "\r\nDELETE /4 HTTP/1.0\r\n\r\n"
        let out = http1Request(text)
        XCTAssertNil(out.error)
        XCTAssertEqual(out.events, [
            http1Head("GET", "/1", 1, [("Host", "h")]), http1NoTrailers,
            http1Head("POST", "/2", 1, [("Host", "h"), ("Content-Length", "3")]),
            .body(http1Bytes("abc")), http1NoTrailers,
            http1Head("POST", "/3", 1, [("Host", "h"), ("Transfer-Encoding", "chunked")]),
            .body(http1Bytes("xy")), .end(trailers: HTTPHeaders([("T", "v")])),
            http1Head("DELETE", "/4", 0, []), http1NoTrailers,
        ])
    }

    func testLeadingEmptyLinesSkipped() {
        let out = http1Request("\r\n\r\nGET / HTTP/1.1\r\nHost: h\r\n\r\n")
        XCTAssertNil(out.error)
        XCTAssertEqual(out.events.count, 2)
        assertRequestError("\nGET / HTTP/1.1\r\nHost: h\r\n\r\n", .badRequest(""))
    }

    func testRequestLineErrors() {
        let bad = [
            "GET  / HTTP/1.1", "GET /  HTTP/1.1", "GET / HTTP/1.1 ", " GET / HTTP/1.1",
            "GET\t/ HTTP/1.1", "GET /\tHTTP/1.1", "GET / HTTP/1.2", "GET / HTTP/2.0",
            "GET / http/1.1", "GET / HTTP/1", "GET / HTTP/1.10", "GET /", "GET", "G(T / HTTP/1.1",
            "GET /a\u{7F}b HTTP/1.1", "GET / HTTP/1.1\0", "/ HTTP/1.1",
        ]
        for line in bad {
            assertRequestError(line + "\r\nHost: h\r\n\r\n", .badRequest(""))
        }
        assertRequestError("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", .badRequest(""))
        // Control byte in the target.
        var p = HTTP1RequestParser()
        XCTAssertThrowsError(try p.feed(http1Bytes("GET /a") + [0x01] + http1Bytes(" HTTP/1.1\r\n")))
    }

    func testAcceptedTargets() {
        for target in ["*", "http://h/x?y#z", "h:443", "/%20%ff"] {
            let out = http1Request("OPTIONS \(target) HTTP/1.1\r\nHost: h\r\n\r\n")
            XCTAssertEqual(out.events.first, http1Head("OPTIONS", target, 1, [("Host", "h")]))
        }
    }

    func testHostRules() {
        assertRequestError("GET / HTTP/1.1\r\nAccept: x\r\n\r\n", .badRequest(""))
        assertRequestError("GET / HTTP/1.1\r\nHost: a\r\nhost: a\r\n\r\n", .badRequest(""))
        assertRequestError("GET / HTTP/1.0\r\nHost: a\r\nHOST: b\r\n\r\n", .badRequest(""))
        XCTAssertNil(http1Request("GET / HTTP/1.1\r\nHost:\r\n\r\n").error)
    }

    func testContentLengthSmuggling() {
        let base = "POST / HTTP/1.1\r\nHost: h\r\n"
        assertRequestError(base + "Content-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n", .badRequest(""))
        assertRequestError(base + "Transfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n", .badRequest(""))
        assertRequestError(base + "Content-Length: 3\r\nContent-Length: 4\r\n\r\nabcd", .badRequest(""))
        assertRequestError(base + "Content-Length: 1, 2\r\n\r\nab", .badRequest(""))
        for v in ["+5", "-1", "5a", "0x5", "", "5,", ",5", "5 5", "1.0", "4611686018427387905", "99999999999999999999999"] {
            assertRequestError(base + "Content-Length: \(v)\r\n\r\n", .badRequest(""))
        }
        // Identical values (as a list or the field twice) are refused, not folded: a
        // folded request went on with both and the next hop answered 502 (issue 12, 12).
        for dup in ["Content-Length: 3, 3\r\n", "Content-Length: 3\r\nContent-Length: 3\r\n",
                    "Content-Length: 3\r\nContent-Length: 003\r\n", "Content-Length: 3,\r\n"] {
            assertRequestError(base + dup + "\r\nabc", .badRequest(""))
        }
        let ok = http1Request(base + "Content-Length: 003\r\n\r\nabc")
        XCTAssertNil(ok.error)
        XCTAssertEqual(ok.events.count, 3)
        var p = HTTP1RequestParser()
        XCTAssertNoThrow(try p.feed(http1Bytes(base + "Content-Length: 4611686018427387904\r\n\r\n")))
        XCTAssertEqual(p.framing, .contentLength(1 << 62))
    }

    func testTransferEncodingRules() {
        let base = "POST / HTTP/1.1\r\nHost: h\r\n"
        // RFC 9112 §6.3: chunked not final (or applied twice, §7) is 400 and close;
        // a coding we do not decode before a final chunked is 501.
        for v in ["chunked, identity", "identity", "gzip", "chunked, chunked", "chunked;q=1", "xchunked", "chunked, gzip"] {
            assertRequestError(base + "Transfer-Encoding: \(v)\r\n\r\n", .badRequest(""))
        }
        assertRequestError(base + "Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n", .badRequest(""))
        for v in ["gzip, chunked", "deflate,chunked"] {
            assertRequestError(base + "Transfer-Encoding: \(v)\r\n\r\n", .unsupportedTransferEncoding)
        }
        assertRequestError(base + "Transfer-Encoding: \r\n\r\n", .badRequest(""))
        assertRequestError("POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", .badRequest(""))
        let ok = http1Request(base + "transfer-encoding: CHUNKED\r\n\r\n0\r\n\r\n")
        XCTAssertNil(ok.error)
        XCTAssertEqual(ok.events.count, 2)
    }

    func testFieldLineErrors() {
        let base = "GET / HTTP/1.1\r\nHost: h\r\n"
        let bad = [
            "X: a\rb\r\n",            // bare CR in value
            "X: a\r\r\n",             // CR CR LF
            "X: a\n",                 // bare LF line end
            "X: a\r\n\n",             // bare LF ending the head
            "X: a\r\n b\r\n",         // obs-fold (SP)
            "X: a\r\n\tb\r\n",        // obs-fold (HTAB)
            "X : a\r\n",              // space before colon
            "X\t: a\r\n",             // tab before colon
            "X: a\0b\r\n",            // NUL in value
            "X: a\u{7F}\r\n",         // DEL in value
            "X: a\u{1B}b\r\n",        // ESC in value
            "X@Y: a\r\n",             // invalid name char
            "X(Y): a\r\n",
            "\u{e9}: a\r\n",          // non-ASCII name
            ": a\r\n",                // empty name
            "NoColon\r\n",
            "X\0: a\r\n",
        ]
        for field in bad {
            assertRequestError(base + field + "\r\n", .badRequest(""))
        }
        assertRequestError("GET / HTTP/1.1\r\n Host: h\r\n\r\n", .badRequest(""))
        assertRequestError("GET / HTTP/1.1\nHost: h\r\n\r\n", .badRequest(""))
        assertRequestError("GET / HTTP/1.1\rHost: h\r\n\r\n", .badRequest(""))
    }

    func testErrorReasons() {
        let base = "GET / HTTP/1.1\r\nHost: h\r\n"
        XCTAssertEqual(http1Request(base + "X: a\rb\r\n\r\n").error, .badRequest("bare CR"))
        XCTAssertEqual(http1Request(base + "X: a\n\r\n").error, .badRequest("bare LF"))
        XCTAssertEqual(http1Request(base + "X: a\r\n b\r\n\r\n").error,
                       .badRequest("obs-fold or leading whitespace in field line"))
        XCTAssertEqual(http1Request(base + "X : a\r\n\r\n").error, .badRequest("whitespace before colon"))
        XCTAssertEqual(http1Request(base + "X: a\0\r\n\r\n").error, .badRequest("invalid character in field value"))
        XCTAssertEqual(http1Request(base + "X/: a\r\n\r\n").error, .badRequest("invalid character in field name"))
        XCTAssertEqual(http1Request("GET / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n1\rx").error,
                       .badRequest("bare CR"))
    }

    func testHeadTooLarge() throws {
        let limits = HTTP1Limits(maxHeadBytes: 64, maxHeaders: 4)
        // Exactly at the limit is fine.
        let head = "GET / HTTP/1.1\r\nHost: h\r\nX: " + String(repeating: "a", count: 32) + "\r\n\r\n"
        XCTAssertEqual(head.utf8.count, 64)
        XCTAssertNil(http1Request(head, limits: limits).error)
        let over = "GET / HTTP/1.1\r\nHost: h\r\nX: " + String(repeating: "a", count: 33) + "\r\n\r\n"
        XCTAssertEqual(http1Request(over, limits: limits).error, .headersTooLarge)
        // Detected as soon as the limit is crossed, without waiting for the end.
        var p = HTTP1RequestParser(limits: limits)
        XCTAssertNoThrow(try p.feed(Array(repeating: 0x61, count: 64)))
        XCTAssertThrowsError(try p.feed([0x61])) { XCTAssertEqual($0 as? HTTP1Error, .headersTooLarge) }
        // Poisoned afterwards.
        XCTAssertThrowsError(try p.feed(http1Bytes("\r\n"))) { XCTAssertEqual($0 as? HTTP1Error, .headersTooLarge) }
        var big = HTTP1RequestParser()
        XCTAssertThrowsError(try big.feed(Array(repeating: 0x61, count: 20000))) {
            XCTAssertEqual(($0 as? HTTP1Error)?.status, 431)
        }
    }

    func testTooManyHeaders() {
        let limits = HTTP1Limits(maxHeaders: 3)
        XCTAssertNil(http1Request("GET / HTTP/1.1\r\nHost: h\r\nA: 1\r\nB: 2\r\n\r\n", limits: limits).error)
        XCTAssertEqual(http1Request("GET / HTTP/1.1\r\nHost: h\r\nA: 1\r\nB: 2\r\nC: 3\r\n\r\n", limits: limits).error,
                       .headersTooLarge)
        var many = "GET / HTTP/1.1\r\nHost: h\r\n"
        for i in 0..<100 { many += "X-\(i): v\r\n" }
        XCTAssertEqual(http1Request(many + "\r\n").error, .headersTooLarge)
    }

    func testLargeBodyIsStreamed() throws {
        let size = 10 * 1024 * 1024
        let piece = 64 * 1024
        var p = HTTP1RequestParser()
        let head = try p.feed(http1Bytes("POST /big HTTP/1.1\r\nHost: h\r\nContent-Length: \(size)\r\n\r\n"))
        XCTAssertEqual(head.count, 1)
        var total = 0
        var sawEnd = false
        var chunk = [UInt8](repeating: 0, count: piece)
        for n in 0..<(size / piece) {
            chunk[0] = UInt8(n & 0xFF)
            let events = try p.feed(chunk)
            var got = 0
            for e in events {
                switch e {
                case .body(let b):
                    XCTAssertLessThanOrEqual(b.count, piece)
                    XCTAssertEqual(b.first, UInt8(n & 0xFF))
                    got += b.count
                case .end: sawEnd = true
                case .head: XCTFail("unexpected head")
                }
            }
            XCTAssertEqual(got, piece)  // emitted right away, nothing held back
            total += got
        }
        XCTAssertTrue(sawEnd)
        XCTAssertEqual(total, size)
        XCTAssertFalse(p.inMessage)
    }

    func testLargeChunkedBodyIsStreamed() throws {
        var p = HTTP1RequestParser()
        _ = try p.feed(http1Bytes("POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n"))
        let data = [UInt8](repeating: 7, count: 1 << 20)
        let encoded = HTTP1Writer.chunk(data) + HTTP1Writer.chunk(data) + HTTP1Writer.lastChunk()
        var total = 0
        var i = 0
        var ends = 0
        while i < encoded.count {
            let n = min(50_000, encoded.count - i)
            for e in try p.feed(Array(encoded[i..<(i + n)])) {
                if case .body(let b) = e { total += b.count; XCTAssertLessThanOrEqual(b.count, 50_000) }
                if case .end = e { ends += 1 }
            }
            i += n
        }
        XCTAssertEqual(total, 2 << 20)
        XCTAssertEqual(ends, 1)
    }

    func testTakeUnparsedAndEOF() throws {
        var p = HTTP1RequestParser()
        let ev = try p.feed(http1Bytes("GET /ws HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\nGET /x HT"))
        XCTAssertEqual(ev.count, 2)
        XCTAssertEqual(p.takeUnparsed(), http1Bytes("GET /x HT"))
        XCTAssertEqual(p.takeUnparsed(), [])
        XCTAssertEqual(try p.feedEOF().count, 0)

        var q = HTTP1RequestParser()
        _ = try q.feed(http1Bytes("GET / HTTP/1.1\r\nHo"))
        XCTAssertThrowsError(try q.feedEOF()) { XCTAssertEqual($0 as? HTTP1Error, .badRequest("truncated")) }
        XCTAssertEqual(http1Request("POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\n\r\nab", eof: true).error,
                       .badRequest("truncated"))
        XCTAssertNil(http1Request("GET / HTTP/1.1\r\nHost: h\r\n\r\n\r\n", eof: true).error)
    }

    func testStaticFraming() throws {
        let head = HTTPRequestHead(method: "POST", target: "/", headers: HTTPHeaders([("Host", "h"), ("Content-Length", "4")]))
        XCTAssertEqual(try HTTP1RequestParser.framing(of: head), .contentLength(4))
        XCTAssertThrowsError(try HTTP1RequestParser.framing(of: HTTPRequestHead(method: "GET", target: "/")))
        let resp = HTTPResponseHead(status: 200, headers: HTTPHeaders([("Content-Length", "4")]))
        XCTAssertEqual(try HTTP1ResponseParser.framing(of: resp, toHEAD: false), .contentLength(4))
        XCTAssertEqual(try HTTP1ResponseParser.framing(of: resp, toHEAD: true), .none)
    }

    func testErrorMapping() {
        XCTAssertEqual(HTTP1Error.badRequest("x").status, 400)
        XCTAssertEqual(HTTP1Error.headersTooLarge.status, 431)
        XCTAssertEqual(HTTP1Error.badResponse("x").status, 502)
        XCTAssertEqual(HTTP1Error.unsupportedTransferEncoding.status, 501)
        XCTAssertEqual(HTTP1Error.badRequest("bare LF").description, "bad request: bare LF")
        XCTAssertFalse(HTTP1Error.headersTooLarge.description.isEmpty)
    }
}
