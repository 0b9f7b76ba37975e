// Response-parser tests: status lines, response framing (HEAD, 1xx, 101,
// 204, 304, chunked, length, close-delimited + EOF), truncation, the
// HEAD-expectation queue, and when the connection may carry the next request
// (`isReusable`), each under all input splits.

import XCTest
@testable import HTTP1

typealias HTTP1ResponseEvent = HTTP1Event<HTTPResponseHead>

func http1RunResponse(_ chunks: [[UInt8]], heads: [Bool] = [], upgrades: [Bool] = [], eof: Bool = false,
                      limits: HTTP1Limits = HTTP1Limits()) -> HTTP1Outcome<HTTPResponseHead> {
    var parser = HTTP1ResponseParser(limits: limits)
    for h in heads { parser.expectResponse(toHEAD: h) }
    for u in upgrades { parser.expectResponse(toHEAD: false, upgrade: u) }
    var events: [HTTP1ResponseEvent] = []
    do {
        for c in chunks { events += try parser.feed(c) }
        if eof { events += try parser.feedEOF() }
    } catch {
        return HTTP1Outcome(events: http1Merge(events), error: error)
    }
    return HTTP1Outcome(events: http1Merge(events), error: nil)
}

final class HTTP1ResponseParserTests: XCTestCase {
    func response(_ text: String, heads: [Bool] = [], eof: Bool = false,
                  file: StaticString = #filePath, line: UInt = #line) -> HTTP1Outcome<HTTPResponseHead> {
        http1CheckSplits(http1Bytes(text), file: file, line: line) { http1RunResponse($0, heads: heads, eof: eof) }
    }

    func head(_ status: Int, _ reason: String, _ minor: Int = 1, _ fields: [(String, String)] = []) -> HTTP1ResponseEvent {
        .head(HTTPResponseHead(status: status, reason: reason, versionMinor: minor, headers: HTTPHeaders(fields)))
    }

    let end = HTTP1ResponseEvent.end(trailers: HTTPHeaders())

    func testContentLengthResponse() {
        let out = response("HTTP/1.1 200 OK\r\nContent-Length: 5\r\nServer: x\r\n\r\nhello")
        XCTAssertNil(out.error)
        XCTAssertEqual(out.events, [head(200, "OK", 1, [("Content-Length", "5"), ("Server", "x")]),
                                    .body(http1Bytes("hello")), end])
    }

    func testChunkedResponseWithTrailers() {
        let out = response("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nwiki\r\n0\r\nT: 1\r\n\r\n")
        XCTAssertEqual(out.events, [head(200, "OK", 1, [("Transfer-Encoding", "chunked")]),
                                    .body(http1Bytes("wiki")), .end(trailers: HTTPHeaders([("T", "1")]))])
    }

    func testCloseDelimited() throws {
        let out = response("HTTP/1.0 200 OK\r\nX: y\r\n\r\nall of it\r\n\r\nHTTP/1.1 200 OK\r\n", eof: true)
        XCTAssertNil(out.error)
        XCTAssertEqual(out.events, [head(200, "OK", 0, [("X", "y")]),
                                    .body(http1Bytes("all of it\r\n\r\nHTTP/1.1 200 OK\r\n")), end])
        var p = HTTP1ResponseParser()
        _ = try p.feed(http1Bytes("HTTP/1.1 200 OK\r\n\r\nab"))
        XCTAssertEqual(p.framing, .untilClose)
        XCTAssertTrue(p.inMessage)
        XCTAssertEqual(try p.feedEOF(), [end])
        XCTAssertFalse(p.inMessage)
        XCTAssertEqual(try p.feedEOF(), [])
        // Empty close-delimited body.
        XCTAssertEqual(response("HTTP/1.1 200 OK\r\n\r\n", eof: true).events, [head(200, "OK"), end])
    }

    func testTransferEncodingFraming() throws {
        var p = HTTP1ResponseParser()
        _ = try p.feed(http1Bytes("HTTP/1.1 200 OK\r\nTransfer-Encoding: Chunked\r\n\r\n"))
        XCTAssertEqual(p.framing, .chunked)
        // Only a sole chunked can be passed on: any other coding would reach the
        // user as bytes in a coding nothing names (HTTP/2 has no Transfer-Encoding);
        // TE in HTTP/1.0 is faulty framing (RFC 9112 §6.1). All 502.
        for te in ["gzip", "gzip, chunked", "chunked, gzip", "chunked, chunked", "chunked\r\nTransfer-Encoding: chunked",
                   "identity", "", ","] {
            XCTAssertEqual(response("HTTP/1.1 200 OK\r\nTransfer-Encoding: \(te)\r\n\r\nabc", eof: true).error?.status, 502, te)
        }
        XCTAssertEqual(response("HTTP/1.0 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n").error?.status, 502)
        XCTAssertEqual(response("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n").error?.status, 502)
        // No body anyway: the coding does not matter.
        XCTAssertNil(response("HTTP/1.1 204 No Content\r\nTransfer-Encoding: gzip\r\n\r\n").error)
    }

    func testInvalidContentLength() {
        for v in ["1, 2", "-1", "x", "", "99999999999999999999"] {
            XCTAssertEqual(response("HTTP/1.1 200 OK\r\nContent-Length: \(v)\r\n\r\n").error?.status, 502, v)
        }
        XCTAssertEqual(response("HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab").error?.status, 502)
        // Repeated equal values too (issue 12, finding 12): 502, as a user's request gets 400.
        XCTAssertEqual(response("HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 2\r\n\r\nab").error?.status, 502)
        XCTAssertEqual(response("HTTP/1.1 200 OK\r\nContent-Length: 2, 2\r\n\r\nab").error?.status, 502)
    }

    func testNoBodyStatuses() {
        let text = "HTTP/1.1 204 No Content\r\nContent-Length: 10\r\n\r\n"
            + "HTTP/1.1 304 Not Modified\r\nTransfer-Encoding: chunked\r\n\r\n"
            + "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
        let out = response(text)
        XCTAssertNil(out.error)
        XCTAssertEqual(out.events, [
            head(204, "No Content", 1, [("Content-Length", "10")]), end,
            head(304, "Not Modified", 1, [("Transfer-Encoding", "chunked")]), end,
            head(200, "OK", 1, [("Content-Length", "2")]), .body(http1Bytes("ok")), end,
        ])
    }

    func testHEADExpectationQueue() {
        let text = "HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n"
            + "HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nabc"
            + "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
        let out = response(text, heads: [true, false, true])
        XCTAssertNil(out.error)
        XCTAssertEqual(out.events, [
            head(200, "OK", 1, [("Content-Length", "100")]), end,
            head(200, "OK", 1, [("Content-Length", "3")]), .body(http1Bytes("abc")), end,
            head(200, "OK", 1, [("Transfer-Encoding", "chunked")]), end,
        ])
        // expectResponse called just before each response works the same way.
        var p = HTTP1ResponseParser()
        p.expectResponse(toHEAD: true)
        XCTAssertEqual(try? p.feed(http1Bytes("HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\n")).count, 2)
        p.expectResponse(toHEAD: false)
        XCTAssertEqual(try? p.feed(http1Bytes("HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nx")).count, 3)
        XCTAssertEqual(p.framing, .contentLength(1))
    }

    func testInterimResponsesAreSkipped() {
        let text = "HTTP/1.1 100 Continue\r\n\r\n"
            + "HTTP/1.1 103 Early Hints\r\nLink: </s.css>; rel=preload\r\n\r\n"
            + "HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nz"
        let out = response(text, heads: [true])
        XCTAssertEqual(out.events, [head(200, "OK", 1, [("Content-Length", "1")]), end])
        XCTAssertEqual(response("HTTP/1.1 100 Continue\r\nBad Field: x\r\n\r\n").error?.status, 502)
    }

    func testSwitchingProtocols() throws {
        let text = "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n\u{81}\u{05}hello"
        var p = HTTP1ResponseParser()
        p.expectResponse(toHEAD: false, upgrade: true)
        let events = try p.feed(http1Bytes(text))
        XCTAssertEqual(events, [head(101, "Switching Protocols", 1, [("Upgrade", "websocket"), ("Connection", "Upgrade")]), end])
        XCTAssertEqual(p.framing, .none)
        XCTAssertFalse(p.inMessage)
        XCTAssertEqual(try p.feed(http1Bytes("HTTP/1.1 200 OK\r\n\r\n")), [])  // not interpreted
        XCTAssertEqual(p.takeUnparsed(), http1Bytes("\u{81}\u{05}helloHTTP/1.1 200 OK\r\n\r\n"))
        XCTAssertEqual(try p.feedEOF(), [])
        XCTAssertFalse(p.isReusable)
        let out = http1CheckSplits(http1Bytes(text)) { http1RunResponse($0, upgrades: [true]) }
        XCTAssertEqual(out.events.count, 2)
    }

    func testSwitchingProtocolsNobodyAskedForIs502() {
        // RFC 9110 §15.2.2: a server switches only to a protocol the client asked
        // for. What follows a 101 to a plain GET is not HTTP: never a response.
        let text = "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 101 Switching Protocols\r\nUpgrade: x\r\nConnection: Upgrade\r\n\r\n"
            + "HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nLEAKED"
        XCTAssertEqual(response(text, heads: [false]).error, .badResponse("101 Switching Protocols to a request without Upgrade"))
        XCTAssertEqual(response(text, heads: [true]).error?.status, 502)
        XCTAssertEqual(response(text).error?.status, 502, "no request queued: no upgrade asked either")
        XCTAssertEqual(response(text, heads: [false]).events, [])
    }

    /// `isReusable` after `text` (one response expected, to HEAD when `head`),
    /// the same for every split of the input in two and byte by byte.
    func reusable(_ text: String, head: Bool = false, expected: Bool = true, eof: Bool = false,
                  file: StaticString = #filePath, line: UInt = #line) -> Bool? {
        let bytes = http1Bytes(text)
        var verdicts = Set<Bool>()
        var cuts = (0...bytes.count).map { [Array(bytes[..<$0]), Array(bytes[$0...])] }
        cuts.append(bytes.map { [$0] })
        for pieces in cuts {
            var p = HTTP1ResponseParser()
            if expected { p.expectResponse(toHEAD: head) }
            do {
                for piece in pieces { _ = try p.feed(piece) }
                if eof { _ = try p.feedEOF() }
            } catch {
                XCTAssertFalse(p.isReusable, "after an error", file: file, line: line)
                verdicts.insert(false)
                continue
            }
            verdicts.insert(p.isReusable)
        }
        XCTAssertEqual(verdicts.count, 1, "the verdict depends on the split", file: file, line: line)
        return verdicts.first
    }

    func testReusableOnlyAfterACleanEndWithNothingBeyond() {
        let ok = "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
        XCTAssertEqual(reusable(ok), true)
        XCTAssertEqual(reusable("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\nT: 1\r\n\r\n"), true)
        XCTAssertEqual(reusable("HTTP/1.1 204 No Content\r\n\r\n"), true)
        XCTAssertEqual(reusable("HTTP/1.1 204 No Content\r\nContent-Length: 0\r\n\r\n"), true)
        XCTAssertEqual(reusable("HTTP/1.1 304 Not Modified\r\nETag: \"x\"\r\n\r\n"), true)
        XCTAssertEqual(reusable("HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </s>\r\n\r\n" + ok), true)
        // Not yet, or no more.
        XCTAssertEqual(reusable(""), false)
        XCTAssertEqual(reusable("HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nok"), false)
        XCTAssertEqual(reusable(ok, eof: true), false, "EOF")
        XCTAssertEqual(reusable(ok, expected: false), false, "a response nobody asked for")
        XCTAssertEqual(reusable("HTTP/1.1 200 OK\r\nConnection: keep-alive, close\r\nContent-Length: 2\r\n\r\nok"), false)
        XCTAssertEqual(reusable("HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok"), false)
        XCTAssertEqual(reusable("HTTP/1.1 200 OK\r\n\r\nuntil close", eof: true), false)
        // A body the server may still write a moment later (review of issue 12):
        // never reuse after HEAD, nor after a 204/304 that declared a body.
        XCTAssertEqual(reusable("HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\n", head: true), false)
        XCTAssertEqual(reusable("HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", head: true), false)
        XCTAssertEqual(reusable("HTTP/1.1 404 Not Found\r\n\r\n", head: true), false)
        XCTAssertEqual(reusable("HTTP/1.1 304 Not Modified\r\nContent-Length: 9\r\n\r\n"), false)
        XCTAssertEqual(reusable("HTTP/1.1 204 No Content\r\nContent-Length: 1\r\n\r\n"), false)
        XCTAssertEqual(reusable("HTTP/1.1 204 No Content\r\nTransfer-Encoding: chunked\r\n\r\n"), false)
        XCTAssertEqual(reusable("HTTP/1.1 304 Not Modified\r\nTransfer-Encoding: chunked\r\n\r\n"), false)
        // Bytes beyond the response: a body to HEAD, 204 or 304, anything after the end.
        XCTAssertEqual(reusable("HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nLEAKED", head: true), false)
        XCTAssertEqual(reusable("HTTP/1.1 204 No Content\r\n\r\nLEAKED"), false)
        XCTAssertEqual(reusable("HTTP/1.1 304 Not Modified\r\nContent-Length: 6\r\n\r\nLEAKED"), false)
        XCTAssertEqual(reusable(ok + "x"), false)
        XCTAssertEqual(reusable(ok + "\r\n"), false)
        XCTAssertEqual(reusable(ok + "HTTP/1.1 100 Continue\r\n\r\n"), false)
        XCTAssertEqual(reusable(ok + "HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nLEAKED"), false)
        XCTAssertEqual(reusable("HTTP/1.1 101 Switching Protocols\r\nUpgrade: x\r\n\r\n"), false)
        // A later byte takes the verdict back; the next expected response gives it again.
        var p = HTTP1ResponseParser()
        p.expectResponse(toHEAD: false)
        _ = try? p.feed(http1Bytes(ok))
        XCTAssertTrue(p.isReusable)
        _ = try? p.feed([0x48])
        XCTAssertFalse(p.isReusable)
        var q = HTTP1ResponseParser()
        q.expectResponse(toHEAD: false)
        _ = try? q.feed(http1Bytes(ok))
        q.expectResponse(toHEAD: false)
        _ = try? q.feed(http1Bytes("HTTP/1.1 204 No Content\r\n\r\n"))
        XCTAssertTrue(q.isReusable)
    }

    /// Review of issue 12: bytes after a solicited final response are not parsed
    /// (no 502 for a response already framed); the connection is not reusable.
    func testBytesBeyondTheAnswerAreDroppedNotParsed() throws {
        let html = "<html>\n"
        var out = response("HTTP/1.1 200 OK\r\nContent-Length: 7\r\n\r\n" + html, heads: [true], eof: true)
        XCTAssertNil(out.error)
        XCTAssertEqual(out.events, [head(200, "OK", 1, [("Content-Length", "7")]), end])
        XCTAssertEqual(reusable("HTTP/1.1 200 OK\r\nContent-Length: 7\r\n\r\n" + html, head: true), false)
        out = response("HTTP/1.1 204 No Content\r\n\r\n" + html, heads: [false], eof: true)
        XCTAssertNil(out.error)
        XCTAssertEqual(out.events, [head(204, "No Content"), end])
        out = response("HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nz\u{0}junk\r\n\r\n",
                       heads: [false], eof: true)
        XCTAssertNil(out.error, "interim responses first, then junk after the final one")
        XCTAssertEqual(out.events, [head(200, "OK", 1, [("Content-Length", "1")]), .body(http1Bytes("z")), end])
        // Later feeds are dropped too, until another response is expected... and
        // once dropping started, for good (the owner closes the connection).
        var p = HTTP1ResponseParser()
        p.expectResponse(toHEAD: true)
        XCTAssertEqual(try p.feed(http1Bytes("HTTP/1.1 200 OK\r\n\r\n")).count, 2)
        XCTAssertEqual(try p.feed(http1Bytes(html)), [])
        p.expectResponse(toHEAD: false)
        XCTAssertEqual(try p.feed(http1Bytes("HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")), [])
        XCTAssertFalse(p.isReusable)
        XCTAssertEqual(try p.feedEOF(), [])
        // Responses expected back to back are still all parsed.
        out = response("HTTP/1.1 204 No Content\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nz", heads: [false, false])
        XCTAssertEqual(out.events, [head(204, "No Content"), end,
                                    head(200, "OK", 1, [("Content-Length", "1")]), .body(http1Bytes("z")), end])
    }

    func testStatusLines() {
        XCTAssertEqual(response("HTTP/1.1 200\r\n\r\n", eof: true).events, [head(200, ""), end])
        XCTAssertEqual(response("HTTP/1.1 200 \r\n\r\n", eof: true).events, [head(200, ""), end])
        XCTAssertEqual(response("HTTP/1.1 404 Not  \tFound \r\nContent-Length: 0\r\n\r\n").events,
                       [head(404, "Not  \tFound ", 1, [("Content-Length", "0")]), end])
        XCTAssertEqual(response("HTTP/1.1 599 \u{e9}\r\nContent-Length: 0\r\n\r\n").events.first,
                       head(599, "\u{e9}", 1, [("Content-Length", "0")]))
        let bad = ["HTTP/1.1 20 OK", "HTTP/1.1 2000 OK", "HTTP/1.1 099 Low", "HTTP/1.1  200 OK", "HTTP/1.1\t200 OK",
                   "HTTP/1.2 200 OK", "HTTP/2 200 OK", "http/1.1 200 OK", "HTTP/1.1 200\tOK", "HTTP/1.1 20x OK",
                   "HTTP/1.1 200 O\0K", "ICY 200 OK", " HTTP/1.1 200 OK", "HTTP/1.1 200 O\u{7F}K"]
        for line in bad {
            let out = response(line + "\r\nContent-Length: 0\r\n\r\n")
            XCTAssertEqual(out.error?.status, 502, line.debugDescription)
        }
    }

    func testMalformedResponseHeads() {
        for text in ["HTTP/1.1 200 OK\nContent-Length: 0\r\n\r\n", "HTTP/1.1 200 OK\r\nX: a\rb\r\n\r\n",
                     "HTTP/1.1 200 OK\r\nX : a\r\n\r\n", "HTTP/1.1 200 OK\r\nX: a\r\n folded\r\n\r\n",
                     "HTTP/1.1 200 OK\r\nX: \0\r\n\r\n", "HTTP/1.1 200 OK\r\nX{}: a\r\n\r\n"] {
            XCTAssertEqual(response(text).error?.status, 502, text.debugDescription)
        }
        let limits = HTTP1Limits(maxHeadBytes: 40)
        let big = "HTTP/1.1 200 OK\r\nX: " + String(repeating: "a", count: 40) + "\r\n\r\n"
        XCTAssertEqual(http1RunResponse([http1Bytes(big)], limits: limits).error, .headersTooLarge)
    }

    func testTruncation() {
        XCTAssertEqual(response("HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nabc", eof: true).error,
                       .badResponse("truncated"))
        XCTAssertEqual(response("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nab", eof: true).error,
                       .badResponse("truncated"))
        XCTAssertEqual(response("HTTP/1.1 200 OK\r\nContent-Le", eof: true).error, .badResponse("truncated"))
        XCTAssertEqual(response("HTTP/1.1 100 Continue\r\n\r\n", eof: true).error, nil)
        XCTAssertEqual(response("", eof: true).events, [])
        XCTAssertEqual(response("HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nx", eof: true).error, nil)
    }

    func testLargeCloseDelimitedBodyIsStreamed() throws {
        var p = HTTP1ResponseParser()
        _ = try p.feed(http1Bytes("HTTP/1.1 200 OK\r\n\r\n"))
        let piece = [UInt8](repeating: 1, count: 64 * 1024)
        var total = 0
        for _ in 0..<160 {
            let events = try p.feed(piece)
            XCTAssertEqual(events.count, 1)
            if case .body(let b)? = events.first { total += b.count }
        }
        XCTAssertEqual(total, 160 * 64 * 1024)
        XCTAssertEqual(try p.feedEOF(), [end])
    }
}
