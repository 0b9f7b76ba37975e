// The agent engine on a real event loop over loopback sockets, with time from a
// ManualClock: backoff, PING timeout and re-dial, and the SIGTERM drain, without
// sleeping. The "gateway" here is the engine's own HTTP/2 client role.
import EventLoop
import HTTP1
import HTTP2
@testable import AgentKit
@testable import Wire
import XCTest

final class AgentLoopTests: XCTestCase {
    /// A minimal gateway: accepts reversed connections and can send requests on them.
    final class FakeGateway {
        let loop: EventLoop
        let listener: Int32
        var connections: [HTTP2Connection] = []
        var events: [HTTP2Event] = []

        init(loop: EventLoop, listener: Int32) {
            self.loop = loop
            self.listener = listener
            loop.register(fd: listener) { _ in self.accept() }
        }

        var port: Int { Socket.localPort(listener) }

        func accept() {
            while let (fd, peer) = (try? Socket.accept(listener)) ?? nil {
                let t = Transport(loop: loop, fd: fd, peer: peer, tls: nil, connecting: false)
                let session = try! HTTP2Session(role: .client, preface: .reversed)
                let c = HTTP2Connection(transport: t, session: session, logger: Logger(program: "fake-gateway", level: .error),
                                        context: LogContext())
                c.onEvent = { self.events.append($0) }
                connections.append(c)
                c.start()
                t.start()
            }
        }

        func close() {
            for c in connections { c.transport.close() }
            loop.unregister(fd: listener)
            Socket.close(listener)
        }
    }

    let clock = ManualClock()
    var loop: EventLoop!

    override func setUp() {
        loop = EventLoop(clock: clock.clock)
    }

    /// Runs the loop (real I/O, manual time) until `done`, at most `rounds` turns.
    func spin(_ what: String, rounds: Int = 400, until done: () -> Bool) {
        for _ in 0..<rounds {
            if done() { return }
            loop.runOnce(maxWaitMilliseconds: 5)
        }
        XCTFail("gave up waiting for " + what)
    }

    func makeAgent(gatewayPort: Int, localPort: Int = 9, connections: Int = 1, idlePingMs: Int = 4000) throws -> Agent {
        var c = AgentConfig()
        c.gateway = HostPort(host: "127.0.0.1", port: gatewayPort)
        c.local = HostPort(host: "127.0.0.1", port: localPort)
        c.plaintext = true
        c.connections = connections
        c.idlePingMs = idlePingMs
        return try Agent(config: c, loop: loop, logger: Logger(program: "agent-test", level: .error))
    }

    func testFailedDialsWaitForTheBackoffOnTheClock() throws {
        // A port nobody listens on: every dial is refused at once.
        let closed = try Socket.listen(HostPort(host: "127.0.0.1", port: 0))
        let port = Socket.localPort(closed)
        Socket.close(closed)
        let agent = try makeAgent(gatewayPort: port)
        agent.start()
        let d = agent.dialers[0]
        XCTAssertEqual(d.dialCount, 1)
        // Without time passing, no amount of loop turns dials again: no busy loop.
        for _ in 0..<50 { loop.runOnce(maxWaitMilliseconds: 1) }
        XCTAssertEqual(d.dialCount, 1)
        // Each ceiling (0.5 s, 1 s, 2 s, 4 s ...) brings exactly one more dial at most.
        var ceiling: UInt64 = 500
        for expected in 2...7 {
            clock.advance(milliseconds: ceiling)
            loop.fireDueTimers()
            for _ in 0..<5 { loop.runOnce(maxWaitMilliseconds: 1) }
            XCTAssertEqual(d.dialCount, expected, "after advancing \(ceiling) ms")
            ceiling = min(ceiling * 2, 30_000)
        }
        var done = false
        agent.stop { done = true }
        XCTAssertTrue(done)
    }

    /// An idle connection gives back the storage its HTTP/2 output took (the
    /// ByteQueue keeps at least 4 KiB once used): per idle device connection this is
    /// memory the gateway holds thousands of times.
    func testIdleConnectionGivesBackItsFrameBuffer() throws {
        let gw = FakeGateway(loop: loop, listener: try Socket.listen(HostPort(host: "127.0.0.1", port: 0)))
        defer { gw.close() }
        let agent = try makeAgent(gatewayPort: gw.port, idlePingMs: 60_000)
        agent.start()
        spin("the first connection") { agent.connectedCount == 1 }
        let c = gw.connections[0]
        c.enableLiveness(intervalMs: 4000)
        c.session.ping()
        c.flush()
        // Small storage is given back after each write (ByteQueue.transientLimit).
        XCTAssertEqual(c.frameBufferCapacity, 0, "the PING's frame buffer is given back once written")
        spin("the PING's answer") { c.liveness?.awaitingAck == false && c.transport.bytesIn > 0 }
        // Quiet ticks (a quarter interval each): the idle release runs.
        for _ in 0..<3 {
            clock.advance(milliseconds: 1000)
            loop.fireDueTimers()
            loop.runOnce(maxWaitMilliseconds: 1)
        }
        XCTAssertEqual(c.transport.bufferedOutput, 0)
        XCTAssertEqual(c.frameBufferCapacity, 0, "an idle connection keeps no frame buffer")
        var stopped = false
        agent.stop { stopped = true }
        spin("the agent to stop") { stopped }
    }

    func testPingTimeoutClosesAndRedials() throws {
        let gw = FakeGateway(loop: loop, listener: try Socket.listen(HostPort(host: "127.0.0.1", port: 0)))
        defer { gw.close() }
        let agent = try makeAgent(gatewayPort: gw.port, idlePingMs: 4000)
        agent.start()
        spin("the first connection") { agent.connectedCount == 1 }
        XCTAssertEqual(gw.connections.count, 1)
        // The gateway freezes: it stops reading, so no PING is ever answered.
        gw.connections[0].transport.pauseReading(.backPressure)
        // Silence, in quarter-interval ticks: PING after 4 s, given up 4 s later; the
        // last bytes (a SETTINGS ACK) may arrive up to a tick late.
        var silentMs = 0
        while agent.connectedCount == 1 && silentMs < 20_000 {
            clock.advance(milliseconds: 1000)
            silentMs += 1000
            loop.fireDueTimers()
            loop.runOnce(maxWaitMilliseconds: 1)
        }
        XCTAssertEqual(agent.connectedCount, 0)
        XCTAssertGreaterThanOrEqual(silentMs, 8000, "not before PING + its timeout")
        XCTAssertLessThanOrEqual(silentMs, 10_000, "within 2 intervals and a tick")
        // Backoff: the first re-dial comes within the first ceiling (500 ms).
        clock.advance(milliseconds: 500)
        spin("a second connection") { gw.connections.count == 2 && agent.connectedCount == 1 }
    }

    func testStopDrainsTheStreamInFlightThenCloses() throws {
        let gw = FakeGateway(loop: loop, listener: try Socket.listen(HostPort(host: "127.0.0.1", port: 0)))
        defer { gw.close() }
        // The local API: a listener the test answers by hand.
        let api = try Socket.listen(HostPort(host: "127.0.0.1", port: 0))
        defer { Socket.close(api) }
        let agent = try makeAgent(gatewayPort: gw.port, localPort: Socket.localPort(api))
        agent.start()
        spin("the connection") { agent.connectedCount == 1 }
        let c = gw.connections[0]
        let stream = try c.session.submitRequest(HTTPHeaders([(":method", "GET"), (":scheme", "http"),
                                                              (":authority", "dev"), (":path", "/slow")]), endStream: true)
        c.flush()
        var local: Int32 = -1
        spin("the request at the local API") {
            if local < 0, let (fd, _) = (try? Socket.accept(api)) ?? nil { local = fd }
            return local >= 0
        }
        defer { Socket.close(local) }
        var stopped = false
        agent.stop { stopped = true }
        spin("the GOAWAY at the gateway") { c.session.receivedGoaway }
        for _ in 0..<20 { loop.runOnce(maxWaitMilliseconds: 1) }
        XCTAssertFalse(stopped, "the agent waits for the stream in flight")
        // The local API answers now; the response crosses, then the agent closes.
        let answer = Array("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok".utf8)
        _ = answer.withUnsafeBytes { Socket.write(local, $0) }
        spin("the drain to finish, the response at the gateway") {
            stopped && gw.events.contains { if case .streamClosed(let s, _) = $0 { return s == stream }; return false }
        }
        XCTAssertTrue(gw.events.contains { if case .headers(let s, let h, _) = $0 { return s == stream && h.first(":status") == "200" }; return false })
        XCTAssertTrue(gw.events.contains { if case .data(let s, let b) = $0 { return s == stream && b == Array("ok".utf8) }; return false })
    }

    /// A request head over the agent's limits (200 fields; it allows 128) is answered
    /// 431 by the agent itself, and the connection serves the next request.
    func testRequestHeadOverTheLimitsGets431() throws {
        let gw = FakeGateway(loop: loop, listener: try Socket.listen(HostPort(host: "127.0.0.1", port: 0)))
        defer { gw.close() }
        let api = try Socket.listen(HostPort(host: "127.0.0.1", port: 0))
        defer { Socket.close(api) }
        let agent = try makeAgent(gatewayPort: gw.port, localPort: Socket.localPort(api))
        agent.start()
        spin("the connection") { agent.connectedCount == 1 && !gw.connections.isEmpty }
        let c = gw.connections[0]
        var big = HTTPHeaders([(":method", "GET"), (":scheme", "http"), (":authority", "dev"), (":path", "/big")])
        for i in 0..<200 { big.add("x-f" + String(i), "v") }
        let s1 = try c.session.submitRequest(big, endStream: true)
        c.flush()
        spin("the 431") {
            gw.events.contains { if case .headers(let s, let h, _) = $0 { return s == s1 && h.first(":status") == "431" }; return false }
        }
        let s2 = try c.session.submitRequest(HTTPHeaders([(":method", "GET"), (":scheme", "http"),
                                                          (":authority", "dev"), (":path", "/ok")]), endStream: true)
        c.flush()
        var local: Int32 = -1
        spin("the next request at the local API") {
            if local < 0, let (fd, _) = (try? Socket.accept(api)) ?? nil { local = fd }
            return local >= 0
        }
        defer { Socket.close(local) }
        let answer = Array("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok".utf8)
        _ = answer.withUnsafeBytes { Socket.write(local, $0) }
        spin("the 200") {
            gw.events.contains { if case .headers(let s, let h, _) = $0 { return s == s2 && h.first(":status") == "200" }; return false }
        }
        var stopped = false
        agent.stop { stopped = true }
        spin("the agent to stop") { stopped }
    }

    func testReloadRollsEachConnectionAndDrainsTheOldOne() throws {
        let gw = FakeGateway(loop: loop, listener: try Socket.listen(HostPort(host: "127.0.0.1", port: 0)))
        defer { gw.close() }
        let agent = try makeAgent(gatewayPort: gw.port, connections: 1)
        agent.start()
        spin("the first connection") { agent.connectedCount == 1 }
        var newConfig = agent.config
        newConfig.connections = 2
        var result: String?? = .none
        agent.reload(newConfig) { result = .some($0) }
        spin("the reload") { result != nil }
        XCTAssertEqual(result!, nil)
        XCTAssertEqual(agent.config.connections, 2)
        spin("two new connections up, the old one drained") {
            agent.connectedCount == 2 && gw.connections.count == 3 && gw.connections[0].session.receivedGoaway
        }
    }

    func testReloadThatCannotConnectKeepsTheRunningConnections() throws {
        let gw = FakeGateway(loop: loop, listener: try Socket.listen(HostPort(host: "127.0.0.1", port: 0)))
        defer { gw.close() }
        let agent = try makeAgent(gatewayPort: gw.port, connections: 1)
        agent.start()
        spin("the first connection") { agent.connectedCount == 1 }
        let closed = try Socket.listen(HostPort(host: "127.0.0.1", port: 0))
        var newConfig = agent.config
        newConfig.gateway = HostPort(host: "127.0.0.1", port: Socket.localPort(closed))
        Socket.close(closed)
        var result: String?? = .none
        agent.reload(newConfig) { result = .some($0) }
        for _ in 0..<5 { loop.runOnce(maxWaitMilliseconds: 1) }
        XCTAssertNil(result, "the reload waits up to connect_timeout_ms for the new connection")
        clock.advance(milliseconds: UInt64(newConfig.connectTimeoutMs))
        spin("the reload to give up") { result != nil }
        XCTAssertNotNil(result!)
        XCTAssertTrue(result!!.contains("keeping the running connections"), result!!)
        XCTAssertEqual(agent.connectedCount, 1)
        XCTAssertFalse(gw.connections[0].session.receivedGoaway, "the running connection is untouched")
        XCTAssertEqual(agent.config.gateway.port, gw.port)
    }
}
