// LocalExchangeState for a CONNECT to a local TCP port (issue 14), without
// sockets: connect or 502, 200 once connected, bytes both ways, a half-close
// carried each way, a socket error as RST_STREAM(CONNECT_ERROR), a reset by
// the gateway closing the socket; and never a pool place taken or given back.
import HTTP1
import Wire
@testable import AgentKit
import XCTest

final class TCPTunnelStateTests: XCTestCase {
    typealias M = LocalExchangeState

    let tcp = M.Request(kind: .tcp, chunked: false, head: [])
    let ok = M.Action.respond(HTTPResponseHead(status: 200, reason: ""), endStream: false)

    /// A machine whose CONNECT reached the local port.
    func open(endStream: Bool = false) -> M {
        var m = M()
        XCTAssertEqual(m.receive(.requestHead(tcp, endStream: endStream)), [.armTimeout, .connectTCP], "no pool place")
        XCTAssertEqual(m.receive(.localConnected(reused: false)), [.cancelTimeout, ok] + (endStream ? [.finishWritingLocal] : []))
        return m
    }

    func testBytesBothWaysThenHalfCloseFromTheGatewayFirst() {
        var m = open()
        XCTAssertEqual(m.state, .tunnel(M.Tunnel(gatewayEnded: false)))
        XCTAssertTrue(m.isConnected)
        XCTAssertEqual(m.receive(.requestBody([1, 2])), [.writeLocal([1, 2])])
        XCTAssertEqual(m.receive(.localData([3])), [.forward([3])])
        XCTAssertEqual(m.receive(.requestEnd(trailers: HTTPHeaders())), [.finishWritingLocal], "END_STREAM: SHUT_WR")
        XCTAssertEqual(m.receive(.localData([4])), [.forward([4])], "the port keeps talking after our FIN")
        XCTAssertEqual(m.receive(.localFinished), [.endResponse(resetAfter: false)], "its FIN: END_STREAM")
        XCTAssertEqual(m.receive(.localFinished), [])
        XCTAssertFalse(m.isFinished)
        XCTAssertEqual(m.receive(.streamClosed), [.closeLocalAfterFlush], "both ways done: close after the last bytes")
        XCTAssertTrue(m.isFinished)
        XCTAssertEqual(m.receive(.localClosed("closed by peer")), [])
    }

    func testHalfCloseFromTheLocalPortFirst() {
        var m = open()
        XCTAssertEqual(m.receive(.localFinished), [.endResponse(resetAfter: false)])
        XCTAssertEqual(m.receive(.requestBody([5])), [.writeLocal([5])], "the gateway's bytes keep flowing")
        XCTAssertEqual(m.receive(.requestEnd(trailers: HTTPHeaders())), [.finishWritingLocal])
        // The socket may report its end before the stream closes: nothing is reset.
        XCTAssertEqual(m.receive(.localClosed("closed by peer")), [.closeLocal])
        XCTAssertTrue(m.isFinished)
        XCTAssertEqual(m.receive(.streamClosed), [])
    }

    func testBytesBeforeTheConnectionAreHeldThenWritten() {
        var m = M()
        _ = m.receive(.requestHead(tcp, endStream: false))
        XCTAssertEqual(m.receive(.requestBody([1])), [])
        XCTAssertEqual(m.receive(.requestBody([2])), [])
        XCTAssertEqual(m.receive(.requestEnd(trailers: HTTPHeaders())), [])
        XCTAssertEqual(m.receive(.localConnected(reused: false)), [.cancelTimeout, ok, .writeLocal([1, 2]), .finishWritingLocal])
        XCTAssertEqual(m.state, .tunnel(M.Tunnel(gatewayEnded: true)))
    }

    func testConnectEndedStreamHalfClosesAtOnce() {
        let m = open(endStream: true)
        XCTAssertEqual(m.state, .tunnel(M.Tunnel(gatewayEnded: true)))
    }

    func testRefusedPortIs502WithoutAPlace() {
        var m = M()
        _ = m.receive(.requestHead(tcp, endStream: false))
        XCTAssertEqual(m.receive(.localFailed("connect 127.0.0.1:22: Connection refused")),
                       [.fail(status: 502, why: "local port unreachable: connect 127.0.0.1:22: Connection refused"),
                        .cancelTimeout, .closeLocal])
        XCTAssertTrue(m.isFinished)
    }

    func testConnectTimeoutIs502() {
        var m = M()
        _ = m.receive(.requestHead(tcp, endStream: false))
        XCTAssertEqual(m.receive(.timedOut), [.fail(status: 502, why: "local port did not accept the connection in time"),
                                              .cancelTimeout, .closeLocal])
        XCTAssertEqual(m.receive(.localConnected(reused: false)), [.closeLocal], "a late connection is closed")
    }

    func testIdleTunnelIsNotTimedOut() {
        var m = open()
        XCTAssertEqual(m.receive(.timedOut), [], "the timer ended with the 200")
        XCTAssertFalse(m.isFinished)
    }

    func testLocalErrorResetsWithConnectError() {
        var m = open()
        XCTAssertEqual(m.receive(.localClosed("read: Connection reset by peer")),
                       [.warn("local TCP connection failed: read: Connection reset by peer"), .resetStream(errorCode: 0xa), .closeLocal])
        XCTAssertTrue(m.isFinished)
        // After its FIN, a reset (writing to a port that closed) is an error too.
        var h = open()
        _ = h.receive(.localFinished)
        XCTAssertEqual(h.receive(.localClosed("write: Broken pipe")).dropFirst(), [.resetStream(errorCode: 0xa), .closeLocal])
    }

    func testResetByTheGatewayClosesTheSocket() {
        var m = open()
        XCTAssertEqual(m.receive(.streamClosed), [.closeLocal])
        var h = open()
        _ = h.receive(.requestEnd(trailers: HTTPHeaders()))
        XCTAssertEqual(h.receive(.streamClosed), [.closeLocal], "closed with our side still open: a reset, no flush")
    }

    func testBackPressurePausesTheSocket() {
        var m = open()
        XCTAssertEqual(m.receive(.gatewayBacklogged), [.pauseLocal(.backPressure)])
        XCTAssertEqual(m.receive(.gatewayBacklogged), [])
        XCTAssertEqual(m.receive(.gatewayCaughtUp), [.resumeLocal(.backPressure)])
    }

    func testLocalFinishedOutsideATCPTunnelIsUnexpected() {
        var m = M()
        _ = m.receive(.requestHead(M.Request(kind: .webSocket, chunked: false, head: []), endStream: false))
        XCTAssertEqual(m.receive(.localFinished).first, .fail(status: 502, why: "internal: unexpected local end of data while waitingForPlace"))
    }
}
