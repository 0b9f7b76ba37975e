// When the agent reuses a kept-alive connection to the local API (issue 12,
// findings 2 and 13). The next request on a local connection may be another
// user's, so the connection goes back to the pool only after a response that
// ended cleanly with nothing pending: never after 101, a body to HEAD / 204 /
// 304, bytes after the response, or bytes or EOF that arrived while it was idle;
// never after HEAD, nor after a 204/304 declaring a body (its body may come late).
// The agent runs on a real loop over loopback with `local_max_connections` 1;
// the test plays the gateway (the engine's client role) and the local API (by
// hand, so it decides exactly which bytes are in which socket when).
import CLibc
import EventLoop
import HTTP1
import HTTP2
@testable import AgentKit
import XCTest

final class LocalReuseTests: XCTestCase {
    let clock = ManualClock()
    var loop: EventLoop!
    var gw: AgentLoopTests.FakeGateway!
    var api: Int32 = -1
    var agent: Agent!
    /// Local connections the agent opened, in order, and what the test read on each.
    var locals: [Int32] = []
    var received: [Int32: [UInt8]] = [:]

    override func setUpWithError() throws {
        loop = EventLoop(clock: clock.clock)
        gw = AgentLoopTests.FakeGateway(loop: loop, listener: try Socket.listen(HostPort(host: "127.0.0.1", port: 0)))
        api = try Socket.listen(HostPort(host: "127.0.0.1", port: 0))
        var c = AgentConfig()
        c.gateway = HostPort(host: "127.0.0.1", port: gw.port)
        c.local = HostPort(host: "127.0.0.1", port: Socket.localPort(api))
        c.plaintext = true
        c.connections = 1
        c.localMaxConnections = 1
        agent = try Agent(config: c, loop: loop, logger: Logger(program: "agent-test", level: .error))
        agent.start()
        spin("the connection") { agent.connectedCount == 1 }
    }

    override func tearDown() {
        for fd in locals { Socket.close(fd) }
        Socket.close(api)
        gw.close()
    }

    func spin(_ what: String, rounds: Int = 400, file: StaticString = #filePath, line: UInt = #line,
              until done: () -> Bool) {
        for _ in 0..<rounds {
            if done() { return }
            loop.runOnce(maxWaitMilliseconds: 5)
        }
        XCTFail("gave up waiting for " + what, file: file, line: line)
    }

    /// Sends a request without body from the gateway; does not run the loop.
    func request(_ method: String, _ path: String) throws -> Int32 {
        let c = gw.connections[0]
        let s = try c.session.submitRequest(HTTPHeaders([(":method", method), (":scheme", "http"),
                                                         (":authority", "dev"), (":path", path)]), endStream: true)
        c.flush()
        return s
    }

    /// Runs the loop until a complete request head reached the local API; returns
    /// the connection it came on.
    func localRequest(file: StaticString = #filePath, line: UInt = #line) -> Int32? {
        var found: Int32?
        var buf = [UInt8](repeating: 0, count: 4096)
        spin("a request at the local API", file: file, line: line) {
            while let (fd, _) = (try? Socket.accept(api)) ?? nil { locals.append(fd) }
            for fd in locals {
                if case .data(let n) = buf.withUnsafeMutableBytes({ Socket.read(fd, into: $0) }) {
                    received[fd, default: []] += buf[0..<n]
                }
                let text = received[fd] ?? []
                if let end = text.indices.first(where: { text[$0...].starts(with: Array("\r\n\r\n".utf8)) }) {
                    received[fd] = Array(text[(end + 4)...])
                    found = fd
                    return true
                }
            }
            return false
        }
        return found
    }

    func write(_ fd: Int32, _ text: String) {
        let bytes = Array(text.utf8)
        let n = (try? bytes.withUnsafeBytes { Socket.write(fd, $0) }.get()) ?? -1
        XCTAssertEqual(n, bytes.count, "the local API's write")
    }

    /// The gateway's view of a stream once it closed: status, body, reset code.
    func answer(_ stream: Int32, file: StaticString = #filePath, line: UInt = #line) -> (status: String?, body: String, code: UInt32?) {
        var code: UInt32?
        spin("the answer to stream " + String(stream), file: file, line: line) {
            for case .streamClosed(let s, let c) in gw.events where s == stream { code = c }
            return code != nil
        }
        var status: String?
        var body: [UInt8] = []
        for ev in gw.events {
            switch ev {
            case .headers(let s, let h, _) where s == stream && status == nil: status = h.first(":status")
            case .data(let s, let b) where s == stream: body += b
            default: break
            }
        }
        return (status, String(decoding: body, as: UTF8.self), code)
    }

    let honest = "HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nhonest"
    /// What a broken local API sends beyond its answer: it looks like a response.
    let leftover = "HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nLEAKED"

    /// Request A (`method`) gets `reply` from the local API in one write; the
    /// user of A gets `status`; then request B must reach the local API on a
    /// new connection and get the honest answer.
    func checkNotReused(_ method: String, _ reply: String, status: String, file: StaticString = #filePath, line: UInt = #line) throws {
        let a = try request(method, "/a")
        guard let first = localRequest(file: file, line: line) else { return }
        write(first, reply)
        XCTAssertEqual(answer(a, file: file, line: line).status, status, "answer to A", file: file, line: line)
        let b = try request("GET", "/b")
        guard let second = localRequest(file: file, line: line) else { return }
        XCTAssertNotEqual(second, first, "B must not reuse A's local connection", file: file, line: line)
        write(second, honest)
        let got = answer(b, file: file, line: line)
        XCTAssertEqual(got.status, "200", file: file, line: line)
        XCTAssertEqual(got.body, "honest", file: file, line: line)
    }

    func testCleanResponseKeepsTheConnection() throws {
        let a = try request("GET", "/a")
        guard let first = localRequest() else { return }
        write(first, "HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\na")
        XCTAssertEqual(answer(a).body, "a")
        let n = try request("GET", "/n")
        XCTAssertEqual(localRequest(), first, "a clean response leaves the connection reusable")
        write(first, "HTTP/1.1 204 No Content\r\n\r\n")
        XCTAssertEqual(answer(n).status, "204")
        let b = try request("GET", "/b")
        XCTAssertEqual(localRequest(), first, "a clean 204 too")
        write(first, "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </x>\r\n\r\n" + honest)
        XCTAssertEqual(answer(b).body, "honest", "interim responses are skipped")
        let c = try request("GET", "/c")
        XCTAssertEqual(localRequest(), first)
        write(first, "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n")
        XCTAssertEqual(answer(c).body, "ok")
    }

    func testFramingFieldsInTrailersAreNotPassedOn() throws {
        let a = try request("GET", "/a")
        guard let first = localRequest() else { return }
        write(first, "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n"
              + "X-Sum: 1\r\nContent-Length: 9\r\nTransfer-Encoding: gzip\r\nKeep-Alive: 5\r\nConnection: x-hop\r\nX-Hop: 1\r\n\r\n")
        let got = answer(a)
        XCTAssertEqual(got.body, "ok")
        XCTAssertEqual(got.code, 0, "the stream ends cleanly, not reset")
        let trailers = gw.events.compactMap { ev -> HTTPHeaders? in
            if case .headers(let s, let h, true) = ev, s == a, h.first(":status") == nil { return h }
            return nil
        }
        XCTAssertEqual(trailers.first.map { Array($0).map { $0.name } }, ["x-sum"])
        let b = try request("GET", "/b")
        XCTAssertEqual(localRequest(), first, "still reusable")
        write(first, honest)
        XCTAssertEqual(answer(b).body, "honest")
    }

    func testSwitchingProtocolsToAPlainGETIs502AndNeverReused() throws {
        try checkNotReused("GET", "HTTP/1.1 101 Switching Protocols\r\nUpgrade: x\r\nConnection: Upgrade\r\n\r\n" + leftover,
                           status: "502")
    }

    func testBodyToHEADIsNotReused() throws {
        try checkNotReused("HEAD", "HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nLEAKED", status: "200")
    }

    /// Review of issue 12: a framework writes the head of its HEAD answer, then
    /// the body in a second write() a few ms later; every look at the socket
    /// before the next request may find nothing. So no reuse after HEAD at all.
    func testCleanHEADAnswerIsNotReused() throws {
        let h = try request("HEAD", "/h")
        guard let first = localRequest() else { return }
        write(first, "HTTP/1.1 200 OK\r\nContent-Length: 7\r\n\r\n")
        XCTAssertEqual(answer(h).status, "200")
        let b = try request("GET", "/b")
        guard let second = localRequest() else { return }
        XCTAssertNotEqual(second, first, "B must not reuse the HEAD's local connection")
        write(first, "<html>\n")  // the late body: nobody reads it as B's answer
        write(second, honest)
        let got = answer(b)
        XCTAssertEqual(got.status, "200")
        XCTAssertEqual(got.body, "honest")
    }

    func testDeclaredBodyOf204And304IsNotWaitedForNorReused() throws {
        try checkNotReused("GET", "HTTP/1.1 204 No Content\r\nContent-Length: 7\r\n\r\n", status: "204")
        try checkNotReused("GET", "HTTP/1.1 304 Not Modified\r\nTransfer-Encoding: chunked\r\n\r\n", status: "304")
    }

    /// Review of issue 12: what follows a complete answer is not parsed, so
    /// junk there (a HEAD body) does not turn the answer into a 502.
    func testJunkAfterTheAnswerStillGivesTheAnswer() throws {
        try checkNotReused("HEAD", "HTTP/1.1 200 OK\r\nContent-Length: 7\r\n\r\n<html>\n", status: "200")
        try checkNotReused("GET", "HTTP/1.1 204 No Content\r\n\r\n<html>\n", status: "204")
        try checkNotReused("GET", "HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\na\u{0}\r\n\r\n", status: "200")
    }

    func testBodyAfter204And304IsNotReused() throws {
        try checkNotReused("GET", "HTTP/1.1 204 No Content\r\n\r\n" + leftover, status: "204")
        try checkNotReused("GET", "HTTP/1.1 304 Not Modified\r\nContent-Length: 6\r\n\r\nLEAKED", status: "304")
    }

    func testBytesAfterACompleteResponseAreNotReused() throws {
        try checkNotReused("GET", "HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\na" + leftover, status: "200")
        try checkNotReused("GET", "HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\na\r\n", status: "200")
    }

    func testTransferCodingOtherThanChunkedIs502() throws {
        // RFC 9112 §6.3: gzip not followed by chunked is close-delimited; the user
        // would get gzip bytes that nothing names any more (HTTP/2 has no TE).
        try checkNotReused("GET", "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n\u{1f}\u{8b}data", status: "502")
        try checkNotReused("GET", "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n", status: "502")
        try checkNotReused("GET", "HTTP/1.0 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n", status: "502")
    }

    func testAmbiguousFramingIs502AndNotReused() throws {
        try checkNotReused("GET", "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n",
                           status: "502")
        try checkNotReused("GET", "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nok", status: "502")
        try checkNotReused("GET", "HTTP/1.1 200 OK\r\nContent-Length: +2\r\n\r\nok", status: "502")
        try checkNotReused("GET", "HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok", status: "200")
    }

    /// A clean answer leaves the connection idle; then, before the agent's loop
    /// turns, the gateway sends B and the local API writes to (or closes) the
    /// idle connection. epoll reports the gateway first (it became ready first),
    /// so the agent picks the connection before it ever reads those bytes: only
    /// a look at the socket when the pool lends it out can tell.
    func idleThenBeforeTheLoopTurns(_ method: String, _ act: (Int32) -> Void, file: StaticString = #filePath, line: UInt = #line) throws {
        let a = try request("GET", "/a")
        guard let first = localRequest(file: file, line: line) else { return }
        write(first, "HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\na")
        XCTAssertEqual(answer(a, file: file, line: line).body, "a", file: file, line: line)
        for _ in 0..<5 { loop.runOnce(maxWaitMilliseconds: 0) }
        let b = try request(method, "/b")
        act(first)
        guard let second = localRequest(file: file, line: line) else { return }
        XCTAssertNotEqual(second, first, "B must not reuse a connection with unread bytes or EOF", file: file, line: line)
        write(second, honest)
        let got = answer(b, file: file, line: line)
        XCTAssertEqual(got.status, "200", file: file, line: line)
        XCTAssertEqual(got.body, "honest", file: file, line: line)
    }

    func testBytesThatArrivedWhileIdleAreNotTakenForTheNextResponse() throws {
        try idleThenBeforeTheLoopTurns("GET") { write($0, leftover) }
    }

    func testEOFThatArrivedWhileIdleSendsTheNextRequestOnANewConnection() throws {
        // A POST is never retried once sent: it must not be sent on a dead connection.
        try idleThenBeforeTheLoopTurns("POST") { fd in _ = shutdown(fd, Int32(SHUT_WR)) }
    }
}
