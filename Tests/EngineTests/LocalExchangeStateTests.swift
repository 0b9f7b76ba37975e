// LocalExchangeState without sockets: each test feeds events and checks the
// actions and states, as LocalExchange would carry them out. The last test
// feeds random event sequences and checks that nothing traps and that every
// place and connection taken is given back exactly once.
import HTTP1
import Wire
@testable import AgentKit
import XCTest

final class LocalExchangeStateTests: XCTestCase {
    typealias M = LocalExchangeState

    let getHead = Array("GET / HTTP/1.1\r\nHost: dev\r\n\r\n".utf8)

    func request(_ kind: M.Kind = .idempotent, chunked: Bool = false) -> M.Request {
        M.Request(kind: kind, chunked: chunked, head: getHead)
    }

    func head(_ status: Int, _ fields: [(String, String)] = [("Content-Length", "5")]) -> HTTPResponseHead {
        HTTPResponseHead(status: status, reason: "", versionMinor: 1, headers: HTTPHeaders(fields))
    }

    /// A machine connected on `connection` for `kind`, the request ended or not.
    func connected(_ kind: M.Kind = .idempotent, reused: Bool = false, endStream: Bool = true,
                   chunked: Bool = false) -> M {
        var m = M()
        XCTAssertEqual(m.receive(.requestHead(request(kind, chunked: chunked), endStream: endStream)), [.armTimeout, .acquireLease])
        XCTAssertEqual(m.receive(.leaseGranted), [.openLocal(reuse: true)])
        XCTAssertEqual(m.receive(.localConnected(reused: reused)), [.writeLocal(getHead)])
        return m
    }

    func streaming(_ kind: M.Kind = .idempotent, endStream: Bool = true) -> M {
        var m = connected(kind, endStream: endStream)
        XCTAssertEqual(m.receive(.responseHead(head(200))), [.cancelTimeout, .respond(head(200), endStream: false)])
        return m
    }

    // MARK: Normal requests

    func testRequestWithoutBody() {
        var m = connected()
        XCTAssertEqual(m.state, .awaitingResponse(M.Sent(connection: .fresh, bodyBytes: 0)))
        XCTAssertTrue(m.isConnected)
        let bytes = Array("HTTP/1.1 200 OK\r\n".utf8)
        XCTAssertEqual(m.receive(.localData(bytes)), [.parse(bytes)])
        XCTAssertEqual(m.receive(.responseHead(head(200))), [.cancelTimeout, .respond(head(200), endStream: false)])
        XCTAssertEqual(m.receive(.responseBody(Array("hello".utf8))), [.forward(Array("hello".utf8))])
        XCTAssertEqual(m.receive(.responseEnd(trailers: HTTPHeaders(), reusable: true)),
                       [.endResponse(resetAfter: false), .releaseLocal, .releaseLease])
        XCTAssertTrue(m.isFinished)
    }

    func testTrailersAndNotReusable() {
        var m = streaming()
        let t = HTTPHeaders([("x-checksum", "1")])
        XCTAssertEqual(m.receive(.responseEnd(trailers: t, reusable: false)),
                       [.sendTrailers(t, resetAfter: false), .closeLocal, .releaseLease])
    }

    func testHeadResponseEndsTheStreamWithItsHeaders() {
        var m = connected(.head)
        XCTAssertEqual(m.receive(.responseHead(head(200))), [.cancelTimeout, .respond(head(200), endStream: true)])
        XCTAssertEqual(m.receive(.responseEnd(trailers: HTTPHeaders(), reusable: true)), [.releaseLocal, .releaseLease])
    }

    func testRequestBodyHeldUntilConnectedThenWritten() {
        var m = M()
        _ = m.receive(.requestHead(request(.nonIdempotent, chunked: true), endStream: false))
        XCTAssertEqual(m.receive(.requestBody(Array("abc".utf8))), [])
        XCTAssertEqual(m.receive(.requestEnd(trailers: HTTPHeaders())), [])
        XCTAssertEqual(m.receive(.requestEnd(trailers: HTTPHeaders())), [], "a second end is ignored")
        XCTAssertFalse(m.isConnected)
        XCTAssertEqual(m.receive(.leaseGranted), [.openLocal(reuse: true)])
        let held = HTTP1Writer.chunk(Array("abc".utf8)) + HTTP1Writer.lastChunk()
        XCTAssertEqual(m.receive(.localConnected(reused: false)), [.writeLocal(getHead), .writeLocal(held)])
        XCTAssertEqual(m.state, .awaitingResponse(M.Sent(connection: .fresh, bodyBytes: held.count)))
    }

    func testRequestBodyAfterConnectIsWrittenAsItComes() {
        var m = connected(.nonIdempotent, endStream: false, chunked: true)
        XCTAssertEqual(m.receive(.requestBody(Array("abc".utf8))), [.writeLocal(HTTP1Writer.chunk(Array("abc".utf8)))])
        XCTAssertEqual(m.receive(.requestBody([])), [])
        let t = HTTPHeaders([("x-sum", "9")])
        XCTAssertEqual(m.receive(.requestEnd(trailers: t)), [.writeLocal(HTTP1Writer.lastChunk(trailers: t))])
        XCTAssertEqual(m.receive(.requestBody(Array("late".utf8))).first, .fail(status: 502, why: "internal: unexpected request body while awaitingResponse"),
                       "DATA after the end of the request fails the exchange, never reaches the local API")
    }

    func testContentLengthBodyIsWrittenAsIs() {
        var m = connected(.idempotent, endStream: false)
        XCTAssertEqual(m.receive(.requestBody([1, 2, 3])), [.writeLocal([1, 2, 3])])
        XCTAssertEqual(m.receive(.requestEnd(trailers: HTTPHeaders([("x", "y")]))), [], "trailers of a sized body are dropped")
    }

    func testResponseBeforeTheRequestEndedResetsAfterAndIsNotReused() {
        var m = streaming(.nonIdempotent, endStream: false)
        XCTAssertEqual(m.receive(.requestBody([1])), [.writeLocal([1])], "the body still goes to the local API")
        XCTAssertEqual(m.receive(.responseEnd(trailers: HTTPHeaders(), reusable: true)),
                       [.endResponse(resetAfter: true), .closeLocal, .releaseLease])
    }

    func testWaitingForAPlaceThenTheStreamCloses() {
        var m = M()
        _ = m.receive(.requestHead(request(), endStream: true))
        XCTAssertEqual(m.receive(.streamClosed), [.cancelTimeout])
        XCTAssertEqual(m.receive(.leaseGranted), [.releaseLease], "a place granted too late is handed back")
        XCTAssertEqual(m.receive(.localConnected(reused: false)), [.closeLocal])
    }

    // MARK: Retry on a stale kept-alive connection

    func testIdempotentRequestIsRetriedOnceOnANewConnection() {
        var m = connected(.idempotent, reused: true)
        XCTAssertEqual(m.receive(.localClosed("closed by peer")), [.openLocal(reuse: false)])
        XCTAssertEqual(m.state, .retrying(M.Held(requestEnded: true)))
        XCTAssertEqual(m.receive(.localConnected(reused: false)), [.writeLocal(getHead)])
        XCTAssertEqual(m.receive(.localClosed("closed by peer")), [.parseEOF(why: "closed by peer")], "only once")
        XCTAssertEqual(m.receive(.responseBroken("local API closed the connection: closed by peer")),
                       [.fail(status: 502, why: "local API closed the connection: closed by peer"), .cancelTimeout, .closeLocal, .releaseLease])
    }

    func testRetryKeepsTheBodyThatArrivesMeanwhile() {
        var m = connected(.idempotent, reused: true, endStream: false)
        XCTAssertEqual(m.receive(.localClosed("x")), [.openLocal(reuse: false)])
        XCTAssertEqual(m.receive(.requestBody([7])), [])
        XCTAssertEqual(m.receive(.localConnected(reused: false)), [.writeLocal(getHead), .writeLocal([7])])
    }

    func testNoRetryForANonIdempotentRequest() {
        var m = connected(.nonIdempotent, reused: true)
        XCTAssertEqual(m.receive(.localClosed("x")), [.parseEOF(why: "x")])
        var w = connected(.webSocket, reused: true, endStream: false)
        XCTAssertEqual(w.receive(.localClosed("x")), [.parseEOF(why: "x")])
    }

    func testNoRetryOnceBodyBytesWereSent() {
        var m = connected(.idempotent, reused: true, endStream: false)
        _ = m.receive(.requestBody([1]))
        XCTAssertEqual(m.receive(.localClosed("x")), [.parseEOF(why: "x")])
    }

    func testNoRetryOnceTheResponseStarted() {
        var m = connected(.idempotent, reused: true)
        _ = m.receive(.responseHead(head(200)))
        XCTAssertEqual(m.receive(.localClosed("x")), [.parseEOF(why: "x")])
        XCTAssertEqual(m.receive(.responseBroken("truncated (x)")),
                       [.warn("local response broken: truncated (x)"), .resetStream(errorCode: 2), .closeLocal, .releaseLease])
    }

    func testNoRetryOnAFreshConnection() {
        var m = connected(.idempotent, reused: false)
        XCTAssertEqual(m.receive(.localClosed("x")), [.parseEOF(why: "x")])
    }

    func testCloseDelimitedBodyEndsAtEOF() {
        var m = streaming()
        XCTAssertEqual(m.receive(.localClosed("closed by peer")), [.parseEOF(why: "closed by peer")])
        XCTAssertEqual(m.receive(.responseEnd(trailers: HTTPHeaders(), reusable: false)),
                       [.endResponse(resetAfter: false), .closeLocal, .releaseLease])
        XCTAssertEqual(m.receive(.responseBroken("local API closed the connection: closed by peer")), [])
    }

    // MARK: Failures: 502, 504

    func testLocalAPIRefusesIs502() {
        var m = M()
        _ = m.receive(.requestHead(request(), endStream: true))
        _ = m.receive(.leaseGranted)
        XCTAssertEqual(m.receive(.localFailed("connect 127.0.0.1:9: Connection refused")),
                       [.fail(status: 502, why: "local API unreachable: connect 127.0.0.1:9: Connection refused"),
                        .cancelTimeout, .closeLocal, .releaseLease])
        XCTAssertTrue(m.isFinished)
    }

    func testTimeoutBeforeTheHeadIs504() {
        for setup in [{ () -> M in var m = M(); _ = m.receive(.requestHead(self.request(), endStream: true)); return m },
                      { self.connected() }] {
            var m = setup()
            let out = m.receive(.timedOut)
            XCTAssertEqual(out.first, .fail(status: 504, why: "local API did not answer in time"))
            XCTAssertTrue(m.isFinished)
        }
        var m = streaming()
        XCTAssertEqual(m.receive(.timedOut), [], "a timer that fired as the head came is stale")
    }

    func testBrokenResponseIs502BeforeTheHeadAndResetAfter() {
        var m = connected()
        XCTAssertEqual(m.receive(.responseBroken("bad status line")),
                       [.fail(status: 502, why: "bad status line"), .cancelTimeout, .closeLocal, .releaseLease])
        var s = streaming()
        XCTAssertEqual(s.receive(.responseBroken("bad chunk")),
                       [.warn("local response broken: bad chunk"), .resetStream(errorCode: 2), .closeLocal, .releaseLease])
    }

    func testRefusedAndMalformedRequests() {
        var m = M()
        XCTAssertEqual(m.receive(.requestRefused(status: 501, why: "CONNECT is not supported")),
                       [.fail(status: 501, why: "CONNECT is not supported")])
        XCTAssertTrue(m.isFinished)
        var r = M()
        XCTAssertEqual(r.receive(.requestMalformed), [.resetStream(errorCode: 1)])
    }

    // MARK: Back-pressure

    func testStreamingPausesAndResumesTheLocalSocket() {
        var m = streaming()
        XCTAssertEqual(m.receive(.responseBody([1])), [.forward([1])])
        XCTAssertEqual(m.receive(.gatewayBacklogged), [.pauseLocal(.backPressure)])
        XCTAssertEqual(m.receive(.gatewayBacklogged), [], "paused once")
        XCTAssertEqual(m.receive(.gatewayCaughtUp), [.resumeLocal(.backPressure)])
        XCTAssertEqual(m.receive(.gatewayCaughtUp), [], "resumed once")
        var a = connected()
        XCTAssertEqual(a.receive(.gatewayBacklogged), [], "nothing is read for the stream before its head")
    }

    // MARK: WebSocket tunnel

    func testUpgradeTunnelsBothWaysWithHalfClose() {
        var m = connected(.webSocket, endStream: false)
        let h = head(101, [("Upgrade", "websocket"), ("Connection", "Upgrade")])
        XCTAssertEqual(m.receive(.responseHead(h)), [.cancelTimeout, .openTunnel(h)])
        XCTAssertEqual(m.receive(.responseEnd(trailers: HTTPHeaders(), reusable: false)), [], "the 101's own end")
        XCTAssertEqual(m.receive(.localData([1, 2])), [.forward([1, 2])])
        XCTAssertEqual(m.receive(.requestBody([3])), [.writeLocal([3])], "no chunk framing in a tunnel")
        XCTAssertEqual(m.receive(.gatewayBacklogged), [.pauseLocal(.backPressure)])
        XCTAssertEqual(m.receive(.gatewayCaughtUp), [.resumeLocal(.backPressure)])
        XCTAssertEqual(m.receive(.requestEnd(trailers: HTTPHeaders())), [.finishWritingLocal])
        XCTAssertEqual(m.receive(.requestEnd(trailers: HTTPHeaders())), [])
        XCTAssertEqual(m.receive(.localData([4])), [.forward([4])], "the local side still talks after our FIN")
        XCTAssertEqual(m.receive(.localClosed("closed by peer")), [.endResponse(resetAfter: false), .closeLocal, .releaseLease])
        XCTAssertTrue(m.isFinished)
    }

    func testUpgradeAnsweredWith2xxIs502() {
        var m = connected(.webSocket, endStream: false)
        XCTAssertEqual(m.receive(.responseHead(head(200))),
                       [.fail(status: 502, why: "the local API did not accept the WebSocket upgrade (answered 200)"),
                        .cancelTimeout, .closeLocal, .releaseLease])
        var r = connected(.webSocket, endStream: false)
        XCTAssertEqual(r.receive(.responseHead(head(403))), [.cancelTimeout, .respond(head(403), endStream: false)])
        XCTAssertEqual(r.receive(.responseEnd(trailers: HTTPHeaders(), reusable: true)).last, .releaseLease)
        XCTAssertTrue(r.isFinished)
    }

    func testUpgradeResponseIsNeverReused() {
        var r = connected(.webSocket)
        _ = r.receive(.responseHead(head(403)))
        XCTAssertEqual(r.receive(.responseEnd(trailers: HTTPHeaders(), reusable: true)),
                       [.endResponse(resetAfter: false), .closeLocal, .releaseLease])
    }

    // MARK: Stream reset by the gateway

    func testStreamResetMidRequestBody() {
        var m = connected(.nonIdempotent, endStream: false)
        _ = m.receive(.requestBody([1, 2]))
        XCTAssertEqual(m.receive(.streamClosed), [.cancelTimeout, .closeLocal, .releaseLease])
        XCTAssertEqual(m.receive(.requestBody([3])), [])
        XCTAssertEqual(m.receive(.localData([9])), [])
        XCTAssertEqual(m.receive(.timedOut), [])
    }

    func testStreamResetMidResponseBody() {
        var m = streaming()
        _ = m.receive(.responseBody([1]))
        XCTAssertEqual(m.receive(.streamClosed), [.closeLocal, .releaseLease])
        XCTAssertEqual(m.receive(.responseBody([2])), [])
        XCTAssertEqual(m.receive(.gatewayCaughtUp), [])
    }

    // MARK: Events that cannot happen

    func testUnexpectedEventsFailTheExchangeWithoutTrapping() {
        var m = connected()
        XCTAssertEqual(m.receive(.responseBody([1])),
                       [.fail(status: 502, why: "internal: unexpected response body while awaitingResponse"),
                        .cancelTimeout, .closeLocal, .releaseLease])
        var s = streaming()
        XCTAssertEqual(s.receive(.responseHead(head(200))),
                       [.warn("internal: unexpected response head while streamingResponse"), .resetStream(errorCode: 2),
                        .closeLocal, .releaseLease])
        var i = M()
        XCTAssertEqual(i.receive(.requestBody([1])),
                       [.warn("internal: unexpected request body while idle"), .resetStream(errorCode: 2)])
        var w = M()
        _ = w.receive(.requestHead(request(), endStream: true))
        XCTAssertEqual(w.receive(.localData([1])),
                       [.fail(status: 502, why: "internal: unexpected local bytes while waitingForPlace"), .cancelTimeout])
        XCTAssertEqual(w.receive(.leaseGranted), [.releaseLease])
    }

    /// Random event sequences from every state: no trap; at most one answer
    /// (status or HEADERS) per stream; every place granted and every connection
    /// opened is given back once; after finishing, only late grants and late
    /// connections produce anything (handing them back).
    func testRandomEventSequencesKeepTheBooks() {
        var seed: UInt64 = 0x2545_F491_4F6C_DD1D
        func next(_ n: Int) -> Int {
            seed = seed &* 6364136223846793005 &+ 1442695040888963407
            return Int((seed >> 33) % UInt64(n))
        }
        let h200 = head(200)
        let events: [M.Event] = [
            .requestHead(request(), endStream: true), .requestHead(request(.webSocket), endStream: false),
            .requestHead(request(.nonIdempotent, chunked: true), endStream: false), .requestMalformed,
            .requestRefused(status: 501, why: "no"), .requestBody([1]), .requestBody([]), .requestEnd(trailers: HTTPHeaders()),
            .leaseGranted, .localConnected(reused: true), .localConnected(reused: false), .localFailed("refused"),
            .localData([1]), .responseHead(h200), .responseHead(head(101)), .responseHead(head(204, [])), .responseBody([2]),
            .responseEnd(trailers: HTTPHeaders(), reusable: true), .responseEnd(trailers: HTTPHeaders([("a", "b")]), reusable: false),
            .responseBroken("bad"), .localClosed("eof"), .timedOut, .gatewayBacklogged, .gatewayCaughtUp, .streamClosed,
            .requestHead(M.Request(kind: .tcp, chunked: false, head: []), endStream: false), .localFinished,
        ]
        for round in 0..<3000 {
            var m = M()
            var places = 0, leasesAsked = 0, opens = 0, connections = 0, answers = 0
            var finishedSeen = false
            for _ in 0..<(1 + next(14)) {
                var e = events[next(events.count)]
                if round % 2 == 0, m.state == .idle { e = events[next(3)] }  // mostly well-formed starts
                if e == .leaseGranted { places += 1 }
                if case .localConnected = e { connections = 1 }
                let out = m.receive(e)
                if finishedSeen {
                    XCTAssertTrue(out.allSatisfy { $0 == .releaseLease || $0 == .closeLocal }, "after the end: \(e) gave \(out)")
                }
                for a in out {
                    switch a {
                    case .acquireLease: leasesAsked += 1
                    case .releaseLease: places -= 1
                    case .openLocal, .connectTCP: opens += 1
                    case .releaseLocal, .closeLocal, .closeLocalAfterFlush: connections = 0
                    case .fail, .respond, .openTunnel: answers += 1
                    default: break
                    }
                }
                XCTAssertLessThanOrEqual(answers, 1, "one answer per stream")
                XCTAssertLessThanOrEqual(leasesAsked, 1)
                XCTAssertTrue(places >= 0, "a place given back that was not granted")
                if m.isFinished {
                    finishedSeen = true
                    XCTAssertEqual(places, 0, "a place kept after the end (\(e))")
                    XCTAssertEqual(connections, 0, "a connection kept after the end (\(e))")
                }
            }
            _ = opens
        }
    }
}
