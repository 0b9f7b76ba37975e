// CONNECT to a device's TCP port (issue 14) without sockets: the HTTP/1.1
// connection's machine through a tunnel and its two half-closes, the authority's
// parsing, and AccessControl deciding a request with a port.
import EventLoop
import FleetAccess
@testable import FleetGatewayKit
import HTTP1
import ConfigFormat
import Wire
import XCTest

final class ConnectTunnelTests: XCTestCase {
    typealias M = HTTP1ServerStateMachine

    private func connect(_ target: String = "dev1.devices.example.com:22") -> HTTPRequestHead {
        HTTPRequestHead(method: "CONNECT", target: target, versionMinor: 1, headers: HTTPHeaders([("Host", target)]))
    }

    private func begun() -> M {
        var m = M()
        _ = m.start(now: 0)
        _ = m.bytesReceived()
        _ = m.requestHead(connect())
        return m
    }

    // MARK: HTTP1ServerStateMachine

    func testConnectWaitsForTheDeviceWithoutTimersThenTunnels() {
        var m = M()
        _ = m.start(now: 0)
        XCTAssertEqual(m.bytesReceived(), .parse([]))
        XCTAssertEqual(m.requestHead(connect()), .begin(.connect, [.pauseReading(.upgrading), .cancelTimer]),
                       "nothing is read or parsed until the device answers; the Exchange times the answer")
        XCTAssertEqual(m.requestEnd(), [], "the stream carries the tunnel's bytes later: not ended")
        XCTAssertFalse(m.keepsAlive, "no more HTTP on this connection")
        XCTAssertNil(m.timer)
        XCTAssertEqual(m.connectEstablished(), [.writeConnectEstablished, .resumeReading(.upgrading)])
        XCTAssertEqual(m.state, .tunnel)
        XCTAssertEqual(m.bytesReceived(), .tunnel)
        XCTAssertEqual(m.responseBody(), .raw)
        XCTAssertNil(m.timer, "an open tunnel has no request or idle timeout")
        XCTAssertEqual(m.timerFired(.idle, transportOpen: true, timeoutMs: 1), [])
        XCTAssertEqual(m.timerFired(.head, transportOpen: true, timeoutMs: 1), [])
        XCTAssertEqual(m.idleSince, nil, "never counted idle for the descriptor budget")
        XCTAssertEqual(m.exchangePaused(), [.pauseReading(.backPressure)], "back-pressure, no body timer")
        XCTAssertEqual(m.exchangeResumed(), [.resumeReading(.backPressure)])
    }

    func testDeviceEndsFirstThenTheUser() {
        var m = begun()
        _ = m.connectEstablished()
        XCTAssertEqual(m.tunnelOutputFinished(), [.finishWriting], "FIN (close_notify) towards the user")
        XCTAssertEqual(m.tunnelOutputFinished(), [], "once")
        XCTAssertEqual(m.bytesReceived(), .tunnel, "the user's bytes still flow")
        XCTAssertEqual(m.peerFinished(requestQueued: false), [.endRequestBody])
        XCTAssertEqual(m.tunnelEnded(), [.closeAfterFlush], "both sides ended")
        XCTAssertEqual(m.bytesReceived(), .drop)
    }

    func testUserEndsFirstThenTheDevice() {
        var m = begun()
        _ = m.connectEstablished()
        XCTAssertEqual(m.peerFinished(requestQueued: false), [.endRequestBody], "END_STREAM towards the device")
        XCTAssertEqual(m.responseBody(), .raw, "the device's bytes still flow")
        XCTAssertEqual(m.tunnelEnded(), [.closeAfterFlush])
    }

    func testUserEndBeforeTheDeviceAnsweredEndsItsSideOnceOpen() {
        var m = begun()
        XCTAssertEqual(m.peerFinished(requestQueued: false), [.checkEndOfInput])
        XCTAssertEqual(m.connectEstablished(), [.writeConnectEstablished, .resumeReading(.upgrading), .endRequestBody])
    }

    func testRefusalIsAnAnswerThatEndsTheConnection() {
        var m = begun()
        XCTAssertEqual(m.responseHead(hasContentLength: true, noBody: false), .write(.contentLength, .close))
        XCTAssertEqual(m.responseEnd(now: 1), [.closeAfterFlush])
    }

    func testShutdownLetsAnOpenTunnelRun() {
        var m = begun()
        _ = m.connectEstablished()
        XCTAssertEqual(m.shutdown(requestQueued: false), [])
        XCTAssertEqual(m.state, .tunnel)
        // Before the answer too: the CONNECT is answered, then the connection ends or tunnels.
        var waiting = begun()
        XCTAssertEqual(waiting.shutdown(requestQueued: false), [])
    }

    func testUnexpectedTunnelEventsAbortWithAReason() {
        var fresh = M()
        _ = fresh.start(now: 0)
        XCTAssertEqual(fresh.connectEstablished(), [.cancelTimer, .abort("a CONNECT answered that was never asked for")])
        var plain = M()
        _ = plain.start(now: 0)
        XCTAssertEqual(plain.tunnelOutputFinished(), [.cancelTimer, .abort("a tunnel half-closed that never began")])
        var data = begun()
        XCTAssertEqual(data.requestHead(connect()), .stop([.abort("data after a WebSocket upgrade request, before the answer")]),
                       "another request before the answer")
        var twice = begun()
        _ = twice.connectEstablished()
        XCTAssertEqual(twice.connectEstablished(), [.abort("a CONNECT answered that was never asked for")])
    }

    func testTheParserKeepsWhatFollowsACONNECTForTheTunnel() throws {
        var p = HTTP1RequestParser()
        let events = try p.feed(Array("CONNECT dev1:22 HTTP/1.1\r\nHost: dev1:22\r\n\r\nSSH-2.0-x\r\nGET / HTTP/1.1\r\n".utf8))
        XCTAssertEqual(events.count, 2, "the CONNECT's head and end, nothing parsed from the tunnel's bytes")
        XCTAssertTrue(p.holdsTunnelBytes)
        XCTAssertEqual(try p.feed(Array("more".utf8)).count, 0)
        XCTAssertEqual(try p.feedEOF().count, 0)
        XCTAssertEqual(p.takeUnparsed(), Array("SSH-2.0-x\r\nGET / HTTP/1.1\r\nmore".utf8))
    }

    // MARK: The authority

    func testConnectTargetNeedsADeviceHostAndAPort() {
        XCTAssertTrue(HostRouting.connectTarget("Dev1.Devices.Example.com:22")! == ("dev1.devices.example.com", 22))
        XCTAssertTrue(HostRouting.connectTarget("dev1:65535")! == ("dev1", 65535))
        XCTAssertTrue(HostRouting.connectTarget("dev1.example.:1")! == ("dev1.example", 1))
        for bad in ["dev1", "dev1:", "dev1:0", "dev1:65536", "dev1:123456", "dev1:+22", "dev1:2 2", ":22",
                    "[::1]:22", "[fe80::1]:22", "127.0.0.1:22", "10.1.2.3:80", "dev 1:22", "*.example:22"] {
            XCTAssertNil(HostRouting.connectTarget(bad), bad)
        }
    }

    // MARK: AccessControl with a port

    private var dir = ""

    override func setUp() {
        dir = NSTemporaryDirectory() + "connect-" + String(UInt64.random(in: 0...UInt64.max), radix: 16)
        try? FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
    }

    override func tearDown() { try? FileManager.default.removeItem(atPath: dir) }

    private func control(policy: String?) throws -> AccessControl {
        var text = "plaintext_devices = true\n"
        if let policy {
            let path = dir + "/policy"
            FileManager.default.createFile(atPath: path, contents: Data(policy.utf8))
            text += "access_policy = " + path + "\n"
        }
        var s = Settings()
        try ConfigFile.parse(Array(text.utf8), name: "gw.conf", into: &s)
        return AccessControl(config: try GatewayConfig(s), clock: ManualClock().clock, logger: Logger(program: "test", level: .error))
    }

    private func decide(_ ac: AccessControl, device: String = "dev1", port: Int?) -> AccessControl.Outcome {
        var result: AccessControl.Outcome?
        let method = port == nil ? "GET" : "CONNECT"
        ac.authorize(AccessRequest(principal: nil, device: device, method: method, path: port == nil ? "/" : "", source: "192.0.2.1",
                                   port: port), fields: HTTPHeaders(), tls: nil) { result = $0 }
        return result!
    }

    func testAPortRequestNeedsAPortsRule() throws {
        let ac = try control(policy: "allow anyone dev1\nallow anyone dev2 ports=22\ndeny anyone dev2 ports=5900\n")
        XCTAssertNil(decide(ac, port: nil).status, "HTTP to dev1 is allowed")
        XCTAssertNotNil(decide(ac, port: 22).status, "an allow without ports= does not open TCP ports")
        XCTAssertNil(decide(ac, device: "dev2", port: 22).status)
        XCTAssertNotNil(decide(ac, device: "dev2", port: 23).status)
        XCTAssertNotNil(decide(ac, device: "dev2", port: 5900).status)
        XCTAssertNotNil(decide(ac, device: "dev2", port: nil).status, "a ports= rule does not open HTTP")
    }

    func testWithoutAPolicyAPortRequestIsAllowedAsAnyRequest() throws {
        // No policy: the gateway runs only on loopback or with `public_access = open` (GatewayConfig).
        let ac = try control(policy: nil)
        XCTAssertEqual(decide(ac, port: 22), .allow(nil))
    }
}
