// The agent's CONNECT to a local TCP port (issue 14) on a real loop over
// loopback: the test plays the gateway (the engine's HTTP/2 client role) and
// the local TCP service (a listener it reads and writes by hand). 200 once the
// port accepted; bytes both ways; a half-close each way; HTTP/2 flow control
// bounds what the agent reads from the port; 403 / 400 / 502 refusals; resets
// either way; no timeout on an idle tunnel; a reload changes tcp_ports for
// new streams only.
import CLibc
import EventLoop
import HTTP1
import HTTP2
@testable import AgentKit
import Wire
import XCTest

final class TCPTunnelTests: XCTestCase {
    let clock = ManualClock()
    var loop: EventLoop!
    var gw: AgentLoopTests.FakeGateway!
    var service: Int32 = -1
    var agent: Agent!
    var local: Int32 = -1

    override func setUpWithError() throws {
        loop = EventLoop(clock: clock.clock)
        gw = AgentLoopTests.FakeGateway(loop: loop, listener: try Socket.listen(HostPort(host: "127.0.0.1", port: 0)))
        service = try Socket.listen(HostPort(host: "127.0.0.1", port: 0))
        var c = AgentConfig()
        c.gateway = HostPort(host: "127.0.0.1", port: gw.port)
        c.plaintext = true
        c.connections = 1
        c.tcpPorts = [1, Socket.localPort(service)]
        agent = try Agent(config: c, loop: loop, logger: Logger(program: "agent-test", level: .error))
        agent.start()
        spin("the connection") { agent.connectedCount == 1 && !gw.connections.isEmpty }
    }

    override func tearDown() {
        if local >= 0 { Socket.close(local) }
        Socket.close(service)
        gw.close()
    }

    func spin(_ what: String, rounds: Int = 2000, file: StaticString = #filePath, line: UInt = #line, until done: () -> Bool) {
        for _ in 0..<rounds {
            if done() { return }
            loop.runOnce(maxWaitMilliseconds: 5)
        }
        XCTFail("gave up waiting for " + what, file: file, line: line)
    }

    var gwc: HTTP2Connection { gw.connections[gw.connections.count - 1] }

    func connect(_ authority: String) throws -> Int32 {
        let s = try gwc.session.submitRequest(HTTPHeaders([(":method", "CONNECT"), (":authority", authority)]), endStream: false)
        gwc.flush()
        return s
    }

    /// The status the agent answered on `stream`, and whether its HEADERS ended the stream.
    /// (Stream ids repeat on a new connection: `since` skips the earlier events.)
    func status(_ stream: Int32, since: Int = 0, file: StaticString = #filePath, line: UInt = #line) -> (String?, Bool) {
        var found: (String?, Bool) = (nil, false)
        spin("the answer on stream " + String(stream), file: file, line: line) {
            for case .headers(let s, let h, let end) in gw.events[since...] where s == stream { found = (h.first(":status"), end) }
            return found.0 != nil
        }
        return found
    }

    /// Opens a tunnel to the service: the 200 and the accepted connection.
    func openTunnel() throws -> Int32 {
        let s = try connect("127.0.0.1:" + String(Socket.localPort(service)))
        spin("the connection at the service") {
            if local < 0, let (fd, _) = (try? Socket.accept(service)) ?? nil { local = fd }
            return local >= 0
        }
        let (st, end) = status(s)
        XCTAssertEqual(st, "200")
        XCTAssertFalse(end)
        return s
    }

    func gatewayBytes(_ stream: Int32) -> [UInt8] {
        var out: [UInt8] = []
        for case .data(let s, let b) in gw.events where s == stream { out += b }
        return out
    }

    func ended(_ stream: Int32) -> Bool {
        gw.events.contains { if case .endStream(let s) = $0 { return s == stream }; return false }
    }

    func closedCode(_ stream: Int32) -> UInt32? {
        for case .streamClosed(let s, let c) in gw.events where s == stream { return c }
        return nil
    }

    /// Reads what the service has received until `count` bytes or EOF.
    func serviceRead(_ count: Int, _ what: String, file: StaticString = #filePath, line: UInt = #line) -> (bytes: [UInt8], eof: Bool) {
        var got: [UInt8] = []
        var eof = false
        var buf = [UInt8](repeating: 0, count: 65536)
        spin(what, file: file, line: line) {
            while got.count < count && !eof {
                switch buf.withUnsafeMutableBytes({ Socket.read(local, into: $0) }) {
                case .data(let n): got += buf[0..<n]
                case .eof: eof = true
                default: return false
                }
            }
            return true
        }
        return (got, eof)
    }

    func serviceWrite(_ bytes: [UInt8]) {
        let n = (try? bytes.withUnsafeBytes { Socket.write(local, $0) }.get()) ?? -1
        XCTAssertEqual(n, bytes.count)
    }

    func testBytesBothWaysAndHalfCloseEachWay() throws {
        let s = try openTunnel()
        gwc.session.sendData(stream: s, Array("hello".utf8), endStream: false)
        gwc.flush()
        XCTAssertEqual(serviceRead(5, "hello at the service").bytes, Array("hello".utf8))
        serviceWrite(Array("world".utf8))
        spin("world at the gateway") { gatewayBytes(s) == Array("world".utf8) }
        // The gateway's END_STREAM: the service reads EOF and still answers.
        gwc.session.sendData(stream: s, Array("bye".utf8), endStream: true)
        gwc.flush()
        let r = serviceRead(100, "bye and EOF at the service")
        XCTAssertEqual(r.bytes, Array("bye".utf8))
        XCTAssertTrue(r.eof)
        serviceWrite(Array("late".utf8))
        spin("the late answer") { gatewayBytes(s) == Array("worldlate".utf8) }
        XCTAssertFalse(ended(s))
        // The service's FIN: END_STREAM, the stream closes cleanly, the agent lets go.
        _ = shutdown(local, Int32(SHUT_WR))
        spin("the END_STREAM and the clean close") { ended(s) && closedCode(s) == 0 && agent.dialers[0].activeStreams == 0 }
    }

    func testServiceHalfClosesFirstAndTheGatewayKeepsSending() throws {
        let s = try openTunnel()
        serviceWrite(Array("banner".utf8))
        _ = shutdown(local, Int32(SHUT_WR))
        spin("the banner and END_STREAM") { gatewayBytes(s) == Array("banner".utf8) && ended(s) }
        gwc.session.sendData(stream: s, Array("still".utf8), endStream: false)
        gwc.flush()
        XCTAssertEqual(serviceRead(5, "the gateway's bytes after the service's FIN").bytes, Array("still".utf8))
        gwc.session.sendData(stream: s, [], endStream: true)
        gwc.flush()
        XCTAssertTrue(serviceRead(1, "EOF").eof)
        spin("the clean close") { closedCode(s) == 0 && agent.dialers[0].activeStreams == 0 }
    }

    /// The agent reads the port only as fast as the gateway's window opens: with
    /// nothing consumed it takes about one stream window, then the service's
    /// writes block; consuming lets the rest through, in order.
    func testFlowControlIsTheOnlyBuffer() throws {
        let s = try openTunnel()
        var sent: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 65536)
        var blocked = false
        spin("the service's writes to block") {
            for i in 0..<chunk.count { chunk[i] = UInt8(truncatingIfNeeded: sent.count + i) }
            switch chunk.withUnsafeBytes({ Socket.write(local, $0) }) {
            case .success(let n) where n > 0: sent += chunk[0..<n]
            default: blocked = true
            }
            return blocked && sent.count > 2 << 20
        }
        for _ in 0..<50 { loop.runOnce(maxWaitMilliseconds: 2) }
        let before = gatewayBytes(s).count
        XCTAssertLessThanOrEqual(before, (1 << 20) + 256 * 1024, "about one stream window (1 MiB), not all of \(sent.count)")
        spin("all the bytes, with the gateway consuming") {
            let got = gatewayBytes(s).count
            gwc.session.consume(stream: s, count: got - consumed)
            consumed = got
            gwc.flush()
            return got == sent.count
        }
        XCTAssertTrue(gatewayBytes(s) == sent, "the same bytes in the same order")
    }
    private var consumed = 0

    /// Closed both ways while the agent is paused (the gateway's END_STREAM went
    /// out as SHUT_WR, then the service wrote more than the window and its FIN):
    /// the bytes still in the kernel are read to the end once the window opens.
    func testHangUpWhilePausedLosesNothing() throws {
        let s = try openTunnel()
        gwc.session.sendData(stream: s, [], endStream: true)
        gwc.flush()
        XCTAssertTrue(serviceRead(1, "EOF at the service").eof)
        // More than the stream window, less than the socket buffers hold: the rest
        // and the FIN reach the agent's kernel while it is paused.
        var sent: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 65536)
        let total = (1 << 20) + (384 << 10)
        spin("the service's writes") {
            for i in 0..<chunk.count { chunk[i] = UInt8(truncatingIfNeeded: (sent.count + i) / 7) }
            let want = min(chunk.count, total - sent.count)
            if case .success(let n) = chunk.withUnsafeBytes({ Socket.write(local, UnsafeRawBufferPointer(rebasing: $0[0..<want])) }), n > 0 {
                sent += chunk[0..<n]
            }
            return sent.count == total
        }
        _ = shutdown(local, Int32(SHUT_WR))
        for _ in 0..<50 { loop.runOnce(maxWaitMilliseconds: 2) }
        XCTAssertNil(closedCode(s), "not reset while paused")
        spin("all the bytes and END_STREAM, with the gateway consuming") {
            let got = gatewayBytes(s).count
            gwc.session.consume(stream: s, count: got - consumed)
            consumed = got
            gwc.flush()
            return got == sent.count && ended(s)
        }
        XCTAssertTrue(gatewayBytes(s) == sent, "the same bytes in the same order")
        spin("the clean close") { closedCode(s) == 0 }
    }

    /// Minutes without a byte: neither local_timeout_ms nor connect_timeout_ms ends
    /// the tunnel, and the idle PINGs (answered) keep the connection.
    func testIdleTunnelIsNotTimedOut() throws {
        let s = try openTunnel()
        let limit = max(agent.config.localTimeoutMs, agent.config.connectTimeoutMs)
        for _ in 0..<(3 * limit / 2_000) {
            clock.advance(milliseconds: 2_000)
            for _ in 0..<4 { loop.runOnce(maxWaitMilliseconds: 1) }
        }
        XCTAssertNil(closedCode(s))
        XCTAssertEqual(agent.connectedCount, 1)
        serviceWrite(Array("awake".utf8))
        spin("bytes after the idle time") { gatewayBytes(s) == Array("awake".utf8) }
    }

    func testRefusals() throws {
        let unlisted = try connect("127.0.0.1:2")
        XCTAssertEqual(status(unlisted).0, "403")
        spin("END_STREAM, then the stream reset without error") { ended(unlisted) && closedCode(unlisted) == 0 }
        let other = try connect("10.0.0.1:" + String(Socket.localPort(service)))
        XCTAssertEqual(status(other).0, "400")
        let noPort = try connect("localhost")
        XCTAssertEqual(status(noPort).0, "400")
        // Port 1 is listed; nothing listens there.
        let closed = try connect("localhost:1")
        XCTAssertEqual(status(closed).0, "502")
        XCTAssertTrue(gatewayBytes(closed).isEmpty, "no body")
        spin("the streams to end") { agent.dialers[0].activeStreams == 0 }
    }

    func testResetByTheGatewayClosesTheLocalSocket() throws {
        let s = try openTunnel()
        gwc.session.resetStream(s, errorCode: 8)
        gwc.flush()
        XCTAssertTrue(serviceRead(1, "the local socket closed").eof)
        spin("the stream gone at the agent") { agent.dialers[0].activeStreams == 0 }
    }

    func testLocalResetIsConnectError() throws {
        let s = try openTunnel()
        var l = linger(l_onoff: 1, l_linger: 0)
        _ = setsockopt(local, SOL_SOCKET, SO_LINGER, &l, socklen_t(MemoryLayout<linger>.size))
        Socket.close(local)  // RST
        local = -1
        spin("RST_STREAM(CONNECT_ERROR)") { closedCode(s) == 0xa }
    }

    func testReloadChangesThePortsForNewStreamsOnly() throws {
        let s = try openTunnel()
        var newConfig = agent.config
        newConfig.tcpPorts = [1]
        var result: String?? = .none
        agent.reload(newConfig) { result = .some($0) }
        spin("the reload") { result != nil && gw.connections.count == 2 }
        spin("the new connection") { agent.connectedCount == 1 && gw.connections[1].session.isAlive }
        let mark = gw.events.count
        let refused = try connect("127.0.0.1:" + String(Socket.localPort(service)))
        XCTAssertEqual(status(refused, since: mark).0, "403", "the new list on the new connection")
        // The running tunnel on the old, draining connection goes on.
        let old = gw.connections[0]
        old.session.sendData(stream: s, Array("ping".utf8), endStream: false)
        old.flush()
        XCTAssertEqual(serviceRead(4, "bytes through the old tunnel").bytes, Array("ping".utf8))
        serviceWrite(Array("pong".utf8))
        spin("the answer through the old tunnel") { gatewayBytes(s) == Array("pong".utf8) }  // the 403 had no DATA
    }
}
