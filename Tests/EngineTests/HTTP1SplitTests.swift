// Split-invariance helpers shared by the HTTP1*Tests files, and tests of the
// helpers themselves. Every input is parsed whole, one byte at a time, split
// at every position, and in pseudo-random pieces; all runs must produce the
// same events (consecutive .body events merged) or the same error.

import XCTest
@testable import HTTP1

struct HTTP1Outcome<Head: Equatable>: Equatable {
    var events: [HTTP1Event<Head>]
    var error: HTTP1Error?
}

func http1Bytes(_ s: String) -> [UInt8] { Array(s.utf8) }

/// Merges consecutive .body events and drops empty ones.
func http1Merge<H>(_ events: [HTTP1Event<H>]) -> [HTTP1Event<H>] {
    var out: [HTTP1Event<H>] = []
    for e in events {
        if case .body(let b) = e {
            if b.isEmpty { continue }
            if case .body(let prev)? = out.last {
                out[out.count - 1] = .body(prev + b)
                continue
            }
        }
        out.append(e)
    }
    return out
}

/// The ways `bytes` is cut into pieces by the split-invariance checks.
func http1Splits(_ bytes: [UInt8], everySplit: Bool = true) -> [[[UInt8]]] {
    var result: [[[UInt8]]] = [[bytes], bytes.map { [$0] }]
    if everySplit && bytes.count <= 4096 {
        for k in 0...bytes.count {
            result.append([Array(bytes[0..<k]), Array(bytes[k...])])
        }
    }
    var seed: UInt64 = 0x9E37_79B9_7F4A_7C15
    for _ in 0..<8 {
        var pieces: [[UInt8]] = []
        var i = 0
        while i < bytes.count {
            seed = seed &* 6364136223846793005 &+ 1442695040888963407
            let n = min(bytes.count - i, Int(seed >> 59) + 1)  // 1...32
            pieces.append(Array(bytes[i..<(i + n)]))
            i += n
        }
        result.append(pieces)
    }
    return result
}

func http1RunRequest(_ chunks: [[UInt8]], limits: HTTP1Limits = HTTP1Limits(),
                     eof: Bool = false) -> HTTP1Outcome<HTTPRequestHead> {
    var parser = HTTP1RequestParser(limits: limits)
    var events: [HTTP1Event<HTTPRequestHead>] = []
    do {
        for c in chunks { events += try parser.feed(c) }
        if eof { events += try parser.feedEOF() }
    } catch {
        return HTTP1Outcome(events: http1Merge(events), error: error)
    }
    return HTTP1Outcome(events: http1Merge(events), error: nil)
}

/// Parses `bytes` in every split and checks all runs agree; returns the
/// whole-input outcome. On error only the error is compared (events returned
/// by earlier feeds legitimately differ).
func http1CheckSplits<H: Equatable>(_ bytes: [UInt8], everySplit: Bool = true,
                                    file: StaticString = #filePath, line: UInt = #line,
                                    _ run: ([[UInt8]]) -> HTTP1Outcome<H>) -> HTTP1Outcome<H> {
    let whole = run([bytes])
    for pieces in http1Splits(bytes, everySplit: everySplit).dropFirst() {
        let other = run(pieces)
        if whole.error != nil || other.error != nil {
            XCTAssertEqual(other.error, whole.error, "pieces: \(pieces.map { $0.count })", file: file, line: line)
        } else {
            XCTAssertEqual(other.events, whole.events, "pieces: \(pieces.map { $0.count })", file: file, line: line)
        }
    }
    return whole
}

func http1Request(_ text: String, limits: HTTP1Limits = HTTP1Limits(), eof: Bool = false,
                  file: StaticString = #filePath, line: UInt = #line) -> HTTP1Outcome<HTTPRequestHead> {
    http1CheckSplits(http1Bytes(text), file: file, line: line) { http1RunRequest($0, limits: limits, eof: eof) }
}

func http1Head(_ method: String, _ target: String, _ minor: Int = 1,
               _ fields: [(String, String)]) -> HTTP1Event<HTTPRequestHead> {
    .head(HTTPRequestHead(method: method, target: target, versionMinor: minor, headers: HTTPHeaders(fields)))
}

let http1NoTrailers = HTTP1Event<HTTPRequestHead>.end(trailers: HTTPHeaders())

final class HTTP1SplitTests: XCTestCase {
    func testMergeJoinsConsecutiveBodies() {
        let events: [HTTP1Event<HTTPRequestHead>] = [
            http1Head("GET", "/", 1, []), .body([1]), .body([]), .body([2, 3]), http1NoTrailers, .body([4]),
        ]
        XCTAssertEqual(http1Merge(events), [http1Head("GET", "/", 1, []), .body([1, 2, 3]), http1NoTrailers, .body([4])])
    }

    func testSplitsCoverInput() {
        let bytes = http1Bytes("abcdefghij")
        for pieces in http1Splits(bytes) {
            XCTAssertEqual(pieces.flatMap { $0 }, bytes)
        }
        XCTAssertEqual(http1Splits(bytes).count, 2 + 11 + 8)
    }

    /// A long mixed pipelined stream (length, chunked, no body, HTTP/1.0),
    /// cut into random pieces, parses to the same events every time.
    func testLongPipelinedStreamInRandomPieces() {
        var text = ""
        var expected: [HTTP1Event<HTTPRequestHead>] = []
        for i in 0..<50 {
            switch i % 3 {
            case 0:
                text += "GET /\(i) HTTP/1.1\r\nHost: h\r\n\r\n"
                expected += [http1Head("GET", "/\(i)", 1, [("Host", "h")]), http1NoTrailers]
            case 1:
                let body = String(repeating: "b", count: i)
                text += "PUT /\(i) HTTP/1.1\r\nHost: h\r\nContent-Length: \(i)\r\n\r\n" + body
                expected += [http1Head("PUT", "/\(i)", 1, [("Host", "h"), ("Content-Length", "\(i)")]),
                             .body(http1Bytes(body)), http1NoTrailers]
            default:
                text += "POST /\(i) HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n"
                    + "3;x=y\r\nabc\r\n\(String(i, radix: 16))\r\n" + String(repeating: "c", count: i) + "\r\n0\r\nT: \(i)\r\n\r\n"
                expected += [http1Head("POST", "/\(i)", 1, [("Host", "h"), ("Transfer-Encoding", "chunked")]),
                             .body(http1Bytes("abc" + String(repeating: "c", count: i))),
                             .end(trailers: HTTPHeaders([("T", "\(i)")]))]
            }
        }
        let out = http1CheckSplits(http1Bytes(text), everySplit: false) { http1RunRequest($0) }
        XCTAssertNil(out.error)
        XCTAssertEqual(out.events, expected)
    }
}
