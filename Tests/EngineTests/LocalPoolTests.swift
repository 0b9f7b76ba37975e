// How LocalPool finds the local API (issue 18): the address is resolved off the
// loop, once, and again after a failed connection or a reload; a name that does
// not resolve is a 502 naming it, and the loop serves other streams while a
// lookup is pending. The lookups here are a fake that answers when the test says.
import CLibc
import EventLoop
import HTTP1
import HTTP2
import Wire
@testable import AgentKit
import XCTest

final class LocalPoolTests: XCTestCase {
    let clock = ManualClock()
    var loop: EventLoop!
    /// Lookups asked for, answered by the test.
    var lookups: [(HostPort, (Result<[SocketAddress], SocketError>) -> Void)] = []

    override func setUp() {
        loop = EventLoop(clock: clock.clock)
    }

    func spin(_ what: String, rounds: Int = 400, file: StaticString = #filePath, line: UInt = #line, until done: () -> Bool) {
        for _ in 0..<rounds {
            if done() { return }
            loop.runOnce(maxWaitMilliseconds: 5)
        }
        XCTFail("gave up waiting for " + what, file: file, line: line)
    }

    func fakeResolver(_ endpoint: HostPort) -> LocalPool.Resolve {
        { _, ep, done in self.lookups.append((ep, done)) }
    }

    func loopback(_ port: Int) -> [SocketAddress] {
        (try? Socket.resolve(HostPort(host: "127.0.0.1", port: port))) ?? []
    }

    func connect(_ pool: LocalPool, file: StaticString = #filePath, line: UInt = #line) -> Result<Transport, SocketError>? {
        var got: Result<Transport, SocketError>?
        _ = pool.connect { got = $0 }
        XCTAssertNil(got, "never inside the call", file: file, line: line)
        spin("the connection", file: file, line: line) { got != nil || !lookups.isEmpty }
        return got
    }

    func testTheAddressIsResolvedOnceAndAgainAfterAFailureOrAReload() throws {
        let api = try Socket.listen(HostPort(host: "127.0.0.1", port: 0))
        let port = Socket.localPort(api)
        let pool = LocalPool(loop: loop, endpoint: HostPort(host: "api.local", port: port))
        var asked = 0
        pool.resolve = { _, _, done in
            asked += 1
            self.loop.execute { done(.success(self.loopback(port))) }
        }
        var results: [Result<Transport, SocketError>] = []
        for _ in 0..<2 {
            _ = pool.connect { results.append($0) }
            spin("a connection") { results.count == 1 }
            guard case .success(let t) = results.removeFirst() else { return XCTFail("no connection") }
            t.close()
        }
        XCTAssertEqual(asked, 1, "resolved once for two connections")

        Socket.close(api)  // the local API goes away: connecting fails, the address is looked up again
        _ = pool.connect { results.append($0) }
        spin("the failure") { results.count == 1 }
        guard case .failure(let e) = results.removeFirst() else { return XCTFail("connected to a closed port") }
        XCTAssertEqual(e.errno, ECONNREFUSED, e.description)
        _ = pool.connect { results.append($0) }
        spin("the second failure") { results.count == 1 }
        XCTAssertEqual(asked, 2, "resolved again after a failed connection")

        pool.forgetAddress()  // a reload
        _ = pool.connect { results.append($0) }
        spin("the third failure") { results.count == 2 }
        XCTAssertEqual(asked, 3)
    }

    func testALookupServesEveryConnectionWaitingForItAndAFailureFailsThemAll() {
        let pool = LocalPool(loop: loop, endpoint: HostPort(host: "nosuch.invalid", port: 80))
        pool.resolve = fakeResolver(pool.endpoint)
        var results: [Result<Transport, SocketError>] = []
        _ = pool.connect { results.append($0) }
        _ = pool.connect { results.append($0) }
        let cancelled = pool.connect { _ in XCTFail("a cancelled dial called back") }
        cancelled.cancel()
        XCTAssertEqual(lookups.count, 1, "one lookup at a time")
        // The loop goes on meanwhile: a timer fires.
        var ticked = false
        _ = loop.schedule(afterMilliseconds: 10) { ticked = true }
        clock.advance(milliseconds: 10)
        spin("the timer") { ticked }
        XCTAssertTrue(results.isEmpty)
        lookups[0].1(.failure(SocketError("resolve nosuch.invalid (Name or service not known)", errno: EHOSTUNREACH)))
        XCTAssertEqual(results.count, 2)
        for r in results {
            guard case .failure(let e) = r else { return XCTFail("connected without an address") }
            XCTAssertTrue(e.description.hasPrefix("resolve nosuch.invalid"), e.description)
        }
        _ = pool.connect { results.append($0) }
        XCTAssertEqual(lookups.count, 2, "a failed lookup is not kept: the next connection tries again")
    }

    /// The agent end to end: while the local API's name is being looked up, the
    /// same connection answers another stream and a PING; then the lookup fails
    /// and the waiting request gets a 502 naming the host.
    func testAnUnresolvableLocalAPIIs502AndTheLoopServesMeanwhile() throws {
        let gw = AgentLoopTests.FakeGateway(loop: loop, listener: try Socket.listen(HostPort(host: "127.0.0.1", port: 0)))
        defer { gw.close() }
        var c = AgentConfig()
        c.gateway = HostPort(host: "127.0.0.1", port: gw.port)
        c.local = HostPort(host: "nosuch.invalid", port: 8080)
        c.plaintext = true
        c.connections = 1
        let agent = try Agent(config: c, loop: loop, logger: Logger(program: "agent-test", level: .error))
        agent.pool.resolve = fakeResolver(c.local)
        agent.start()
        spin("the connection") { agent.connectedCount == 1 }
        let conn = gw.connections[0]
        let waiting = try conn.session.submitRequest(HTTPHeaders([(":method", "GET"), (":scheme", "http"),
                                                                  (":authority", "dev"), (":path", "/")]), endStream: true)
        conn.flush()
        spin("the lookup") { lookups.count == 1 }
        XCTAssertEqual(lookups[0].0.host, "nosuch.invalid")

        let other = try conn.session.submitRequest(HTTPHeaders([(":method", "CONNECT"), (":protocol", "h3"), (":scheme", "http"),
                                                                (":authority", "dev"), (":path", "/")]), endStream: false)
        conn.session.ping()
        conn.flush()
        func status(_ s: Int32) -> String? {
            for case .headers(let id, let h, _) in gw.events where id == s { return h.first(":status") }
            return nil
        }
        spin("the other stream's answer and the PING ACK") {
            status(other) != nil && gw.events.contains { if case .pingAck = $0 { return true } else { return false } }
        }
        XCTAssertEqual(status(other), "501", "\(gw.events)")
        XCTAssertNil(status(waiting), "still waiting for the address")

        lookups[0].1(.failure(SocketError("resolve nosuch.invalid (Name or service not known)", errno: EHOSTUNREACH)))
        spin("the 502") { status(waiting) != nil }
        XCTAssertEqual(status(waiting), "502")
        var body: [UInt8] = []
        spin("the 502's body") {
            body = []
            for case .data(let id, let b) in gw.events where id == waiting { body += b }
            return gw.events.contains { if case .streamClosed(let id, _) = $0 { return id == waiting } else { return false } }
        }
        XCTAssertTrue(String(decoding: body, as: UTF8.self).hasPrefix("local API unreachable: resolve nosuch.invalid"),
                      String(decoding: body, as: UTF8.self))
    }
}
