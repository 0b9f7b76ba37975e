// HTTP1ServerStateMachine without sockets: the life of a user's HTTP/1.1
// connection as events in and actions out (PublicConnectionState.swift).
@testable import FleetGatewayKit
import HTTP1
import Wire
import XCTest

final class HTTP1ServerStateMachineTests: XCTestCase {
    typealias M = HTTP1ServerStateMachine

    private func head(_ method: String = "GET", _ target: String = "/", minor: Int = 1,
                      _ fields: [(String, String)] = []) -> HTTPRequestHead {
        HTTPRequestHead(method: method, target: target, versionMinor: minor,
                        headers: HTTPHeaders([("Host", "dev1.example")] + fields))
    }

    private func post(_ fields: [(String, String)] = []) -> HTTPRequestHead {
        head("POST", "/up", [("Content-Length", "10")] + fields)
    }

    private let webSocketFields = [("Upgrade", "websocket"), ("Connection", "Upgrade"),
                                   ("Sec-WebSocket-Version", "13"), ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ==")]

    /// A machine whose first request (`h`) has begun, its head timer gone.
    private func begun(_ h: HTTPRequestHead) -> M {
        var m = M()
        _ = m.start(now: 0)
        _ = m.bytesReceived()
        _ = m.requestHead(h)
        return m
    }

    func testKeepAliveRequestThenIdleThenTheNextRequest() {
        var m = M()
        XCTAssertEqual(m.start(now: 7), [.armTimer(.head)])
        XCTAssertEqual(m.idleSince, 7, "a connection that sent nothing yet counts as idle")
        XCTAssertEqual(m.bytesReceived(), .parse([]), "the head timer counts from the connection's start")
        XCTAssertNil(m.idleSince)
        XCTAssertEqual(m.requestHead(head()), .begin(.exchange(requestHasBody: false), [.cancelTimer]))
        XCTAssertEqual(m.requestEnd(), [.endRequestBody])
        XCTAssertEqual(m.responseHead(hasContentLength: true, noBody: false), .write(.contentLength, .keepAlive))
        XCTAssertEqual(m.responseBody(), .raw)
        XCTAssertEqual(m.responseEnd(now: 50), [.armTimer(.idle), .processQueued])
        XCTAssertEqual(m.state, .idle(since: 50))
        XCTAssertEqual(m.idleSince, 50)
        // The next request's first byte: its head must now arrive in time.
        XCTAssertEqual(m.bytesReceived(), .parse([.armTimer(.head)]))
        XCTAssertEqual(m.requestHead(head("GET", "/2")), .begin(.exchange(requestHasBody: false), [.cancelTimer]))
        XCTAssertEqual(m.responseHead(hasContentLength: false, noBody: false), .write(.chunked, .keepAlive))
        XCTAssertEqual(m.responseBody(), .chunked)
        XCTAssertEqual(m.requestEnd(), [.endRequestBody])
        XCTAssertEqual(m.responseEnd(now: 60), [.armTimer(.idle), .processQueued])
    }

    func testRequestAnsweredBeforeItsEndWasParsed() {
        // A refusal given as the request began (access denied, say): the parser's
        // `.end` for that request comes after, and changes nothing.
        var m = begun(head())
        XCTAssertEqual(m.responseEnd(now: 1), [.armTimer(.idle), .processQueued])
        XCTAssertEqual(m.requestEnd(), [])
        XCTAssertEqual(m.state, .idle(since: 1))
        // A request answered before its body arrived cannot keep the connection.
        var early = begun(post())
        XCTAssertEqual(early.responseEnd(now: 1), [.cancelTimer, .closeAfterFlush])
    }

    func testPipelinedRequestWaitsUntilTheResponseIsDone() {
        var m = begun(head())
        // The second head is parsed from the same read: it waits, and reading stops.
        XCTAssertEqual(m.requestHead(head("GET", "/2")), .wait([.pauseReading(.pipelined)]))
        XCTAssertEqual(m.requestHead(head("GET", "/2")), .wait([]), "paused once, not once per look")
        XCTAssertEqual(m.paused, .pipelined)
        XCTAssertEqual(m.requestEnd(), [.endRequestBody])
        _ = m.responseHead(hasContentLength: true, noBody: false)
        // The finished response ends every pause the request had, in one transition.
        XCTAssertEqual(m.responseEnd(now: 1), [.resumeReading(.pipelined), .armTimer(.idle), .processQueued])
        XCTAssertEqual(m.paused, [])
        XCTAssertEqual(m.requestHead(head("GET", "/2")), .begin(.exchange(requestHasBody: false), [.cancelTimer]))
    }

    func testFinishedResponseResumesBackPressureAndPipeliningTogether() {
        var m = begun(post())
        XCTAssertEqual(m.exchangePaused(), [.pauseReading(.backPressure), .cancelTimer])
        XCTAssertEqual(m.requestEnd(), [.endRequestBody])
        XCTAssertEqual(m.requestHead(head("GET", "/2")), .wait([.pauseReading(.pipelined)]))
        _ = m.responseHead(hasContentLength: true, noBody: false)
        XCTAssertEqual(m.responseEnd(now: 1), [.resumeReading([.backPressure, .pipelined]), .armTimer(.idle), .processQueued])
        XCTAssertEqual(m.exchangeResumed(), [], "a late resume from the finished exchange changes nothing")
    }

    func testExpectContinue() {
        var m = M()
        _ = m.start(now: 0)
        _ = m.bytesReceived()
        // No body timer while the user waits for our 100 Continue.
        XCTAssertEqual(m.requestHead(post([("Expect", "100-continue")])), .begin(.exchange(requestHasBody: true), [.cancelTimer]))
        XCTAssertEqual(m.continueRequested(), [.writeContinue, .armTimer(.body)])
        XCTAssertEqual(m.bytesReceived(), .parse([.armTimer(.body)]), "some body came: its timer starts again")
        XCTAssertEqual(m.requestEnd(), [.cancelTimer, .endRequestBody])
        XCTAssertEqual(m.continueRequested(), [.writeContinue], "harmless once the body is in")
        _ = m.responseHead(hasContentLength: true, noBody: false)
        XCTAssertEqual(m.continueRequested(), [], "never after the response began")
        // HTTP/1.0 has no 100 Continue: the body timer runs at once.
        var old = begun(head("POST", "/", minor: 0, [("Content-Length", "1"), ("Expect", "100-continue")]))
        XCTAssertEqual(old.timer, .body)
        // Back-pressure while waiting: the continue does not start the timer.
        var held = begun(post([("Expect", "100-continue")]))
        XCTAssertEqual(held.exchangePaused(), [.pauseReading(.backPressure)])
        XCTAssertEqual(held.continueRequested(), [.writeContinue])
        XCTAssertEqual(held.exchangeResumed(), [.resumeReading(.backPressure), .armTimer(.body)])
        _ = old.requestEnd()
    }

    func testBodyTimerWaitsWhileBackPressureHolds() {
        var m = M()
        _ = m.start(now: 0)
        XCTAssertEqual(m.requestHead(post()), .begin(.exchange(requestHasBody: true), [.armTimer(.body)]))
        XCTAssertEqual(m.exchangePaused(), [.pauseReading(.backPressure), .cancelTimer])
        XCTAssertEqual(m.bytesReceived(), .parse([]), "bytes of a read in flight do not restart a timer that waits")
        XCTAssertEqual(m.timerFired(.body, transportOpen: true, timeoutMs: 100), [], "a cancelled timer that fires anyway")
        XCTAssertEqual(m.exchangePaused(), [])
        XCTAssertEqual(m.exchangeResumed(), [.resumeReading(.backPressure), .armTimer(.body)])
        // The user stalls with the gateway ready: 408, the exchange dropped, then close.
        XCTAssertEqual(m.timerFired(.body, transportOpen: true, timeoutMs: 100),
                       [.dropExchange, .respond(status: 408, message: "the request body stalled: nothing for 100 ms")])
        XCTAssertEqual(m.state, .rejecting)
        XCTAssertFalse(m.keepsAlive)
        XCTAssertEqual(m.responseEnd(now: 1), [.closeAfterFlush])
        XCTAssertEqual(m.state, .closing)
        // Once the answer started, a stall cuts the connection.
        var answering = begun(post())
        _ = answering.responseHead(hasContentLength: false, noBody: false)
        XCTAssertEqual(answering.timerFired(.body, transportOpen: true, timeoutMs: 5),
                       [.abort("the request body stalled: nothing for 5 ms")])
    }

    func testWebSocketUpgradeThenTunnel() {
        var m = M()
        _ = m.start(now: 0)
        XCTAssertEqual(m.requestHead(head("GET", "/ws", webSocketFields)), .begin(.webSocket, [.pauseReading(.upgrading), .cancelTimer]))
        XCTAssertEqual(m.requestEnd(), [], "the stream carries the WebSocket later: not ended")
        XCTAssertFalse(m.keepsAlive)
        XCTAssertEqual(m.bytesReceived(), .parse([]))
        XCTAssertEqual(m.switchedProtocols(), [.writeSwitchingProtocols, .resumeReading(.upgrading)])
        XCTAssertEqual(m.state, .tunnel)
        XCTAssertEqual(m.bytesReceived(), .tunnel)
        XCTAssertEqual(m.responseBody(), .raw)
        XCTAssertEqual(m.exchangePaused(), [.pauseReading(.backPressure)], "back-pressure, no body timer")
        XCTAssertEqual(m.exchangeResumed(), [.resumeReading(.backPressure)])
        XCTAssertEqual(m.peerFinished(requestQueued: false), [.endRequestBody])
        XCTAssertEqual(m.tunnelEnded(), [.closeAfterFlush])
        XCTAssertEqual(m.bytesReceived(), .drop)
    }

    /// The user's end of data before the device's 101: once the tunnel opens, its
    /// user side is ended at once (Transport paused reading for `.peerFinished` for
    /// good, so no later event would say it), never left half-open for ever.
    func testUserEndBeforeTheUpgradeIsAnsweredEndsTheTunnel() {
        var m = M()
        _ = m.start(now: 0)
        _ = m.requestHead(head("GET", "/ws", webSocketFields))
        XCTAssertEqual(m.peerFinished(requestQueued: false), [.checkEndOfInput])
        XCTAssertEqual(m.switchedProtocols(), [.writeSwitchingProtocols, .resumeReading(.upgrading), .endRequestBody])
        XCTAssertEqual(m.state, .tunnel)
        XCTAssertEqual(m.tunnelEnded(), [.closeAfterFlush])
    }

    func testUpgradeRequestWithABodyIsAnOrdinaryRequest() {
        var m = M()
        _ = m.start(now: 0)
        XCTAssertEqual(m.requestHead(head("GET", "/ws", webSocketFields + [("Content-Length", "3")])),
                       .begin(.exchange(requestHasBody: true), [.armTimer(.body)]))
    }

    func testWebSocketRefusals() {
        // Another request before the device answered the upgrade.
        var early = begun(head("GET", "/ws", webSocketFields))
        XCTAssertEqual(early.requestHead(head()), .stop([.abort("data after a WebSocket upgrade request, before the answer")]))
        // The device refuses (an ordinary response): the connection ends with it.
        var refused = begun(head("GET", "/ws", webSocketFields))
        XCTAssertEqual(refused.responseHead(hasContentLength: true, noBody: false), .write(.contentLength, .close))
        XCTAssertEqual(refused.responseEnd(now: 1), [.closeAfterFlush])
        // A handshake we cannot take: 426 and close.
        var bad = M()
        _ = bad.start(now: 0)
        XCTAssertEqual(bad.requestHead(head("GET", "/ws", [("Upgrade", "websocket"), ("Connection", "Upgrade"),
                                                            ("Sec-WebSocket-Version", "8"), ("Sec-WebSocket-Key", "short")])),
                       .begin(.refuseUpgrade, [.cancelTimer]))
        XCTAssertFalse(bad.keepsAlive)
        XCTAssertEqual(bad.responseEnd(now: 1), [.closeAfterFlush])
    }

    func testHalfCloseWhileTheResponseIsWritten() {
        var m = begun(head())
        _ = m.requestEnd()
        XCTAssertEqual(m.responseHead(hasContentLength: true, noBody: false), .write(.contentLength, .keepAlive))
        // The user's FIN: answer, then close.
        XCTAssertEqual(m.peerFinished(requestQueued: false), [.checkEndOfInput])
        XCTAssertEqual(m.finishing, .peerFinished)
        XCTAssertEqual(m.responseBody(), .raw)
        XCTAssertEqual(m.responseEnd(now: 1), [.closeAfterFlush])
        // FIN while idle closes at once; with a parsed request waiting, that one is answered first.
        var idle = begun(head())
        _ = idle.requestEnd()
        _ = idle.responseEnd(now: 1)
        XCTAssertEqual(idle.peerFinished(requestQueued: false), [.checkEndOfInput, .cancelTimer, .closeAfterFlush])
        var queued = begun(head())
        _ = queued.requestHead(head("GET", "/2"))
        _ = queued.requestEnd()
        _ = queued.responseEnd(now: 1)
        XCTAssertEqual(queued.peerFinished(requestQueued: true), [.checkEndOfInput])
        _ = queued.requestHead(head("GET", "/2"))
        XCTAssertFalse(queued.keepsAlive, "the last request")
    }

    func testResponsesWithoutBody() {
        var h = begun(head("HEAD", "/"))
        XCTAssertTrue(h.isHEAD)
        XCTAssertEqual(h.responseHead(hasContentLength: false, noBody: true), .write(.none, .keepAlive))
        XCTAssertEqual(h.responseBody(), .discard)
        _ = h.requestEnd()
        XCTAssertEqual(h.responseEnd(now: 1), [.armTimer(.idle), .processQueued])
        for _ in [204, 304] {
            var m = begun(head())
            _ = m.requestEnd()
            XCTAssertEqual(m.responseHead(hasContentLength: false, noBody: true), .write(.none, .keepAlive))
            XCTAssertEqual(m.responseBody(), .discard)
            XCTAssertEqual(m.responseEnd(now: 1), [.armTimer(.idle), .processQueued])
        }
        // HTTP/1.0 without a length: the close ends the body.
        var old = begun(head("GET", "/", minor: 0, [("Connection", "keep-alive")]))
        XCTAssertTrue(old.keepsAlive)
        _ = old.requestEnd()
        XCTAssertEqual(old.responseHead(hasContentLength: false, noBody: false), .write(.closeDelimited, .close))
        XCTAssertEqual(old.responseEnd(now: 1), [.closeAfterFlush])
    }

    func testConnectionClose() {
        var m = begun(head("GET", "/", [("Connection", "close")]))
        _ = m.requestEnd()
        XCTAssertEqual(m.responseHead(hasContentLength: true, noBody: false), .write(.contentLength, .close))
        XCTAssertEqual(m.responseEnd(now: 1), [.closeAfterFlush])
        XCTAssertEqual(m.bytesReceived(), .drop)
        let old = begun(head("GET", "/", minor: 0))
        XCTAssertFalse(old.keepsAlive, "HTTP/1.0 closes unless asked otherwise")
        // An answer before the request body was read cannot keep the connection.
        var early = begun(post())
        XCTAssertEqual(early.responseHead(hasContentLength: true, noBody: false), .write(.contentLength, .close))
        XCTAssertEqual(early.responseEnd(now: 1), [.cancelTimer, .closeAfterFlush])
        // An error answer with `close` (respondError) ends it too.
        var error = begun(head())
        error.closeAfterResponse()
        XCTAssertEqual(error.responseEnd(now: 1), [.closeAfterFlush])
    }

    func testDrainOnShutdown() {
        var idle = begun(head())
        _ = idle.requestEnd()
        _ = idle.responseEnd(now: 1)
        XCTAssertEqual(idle.shutdown(requestQueued: false), [.cancelTimer, .closeAfterFlush])
        var fresh = M()
        _ = fresh.start(now: 0)
        XCTAssertEqual(fresh.shutdown(requestQueued: false), [.cancelTimer, .closeAfterFlush])
        // Busy: the response in progress is the last, and says so.
        var busy = begun(head())
        XCTAssertEqual(busy.shutdown(requestQueued: false), [])
        XCTAssertEqual(busy.finishing, .shutdown)
        XCTAssertEqual(busy.responseHead(hasContentLength: true, noBody: false), .write(.contentLength, .close))
        _ = busy.requestEnd()
        XCTAssertEqual(busy.responseEnd(now: 1), [.closeAfterFlush])
        // A pipelined request already parsed is still answered, as the last.
        var queued = begun(head())
        _ = queued.requestEnd()
        _ = queued.responseEnd(now: 1)
        XCTAssertEqual(queued.shutdown(requestQueued: true), [])
        _ = queued.requestHead(head("GET", "/2"))
        XCTAssertFalse(queued.keepsAlive)
        // A WebSocket runs on until one side ends it.
        var ws = begun(head("GET", "/ws", webSocketFields))
        _ = ws.switchedProtocols()
        XCTAssertEqual(ws.shutdown(requestQueued: false), [])
        XCTAssertEqual(ws.state, .tunnel)
    }

    func testIdleTimeout() {
        var m = begun(head())
        _ = m.requestEnd()
        _ = m.responseEnd(now: 1)
        XCTAssertEqual(m.timerFired(.head, transportOpen: true, timeoutMs: 1), [], "not the timer that runs")
        XCTAssertEqual(m.timerFired(.idle, transportOpen: true, timeoutMs: 1), [.closeNow])
        XCTAssertEqual(m.state, .closing)
    }

    func testSlowHeadTimeout() {
        var m = M()
        _ = m.start(now: 0)
        _ = m.bytesReceived()
        _ = m.bytesReceived()
        XCTAssertEqual(m.timer, .head, "slowloris: bytes of a head do not restart its timer")
        XCTAssertEqual(m.timerFired(.head, transportOpen: true, timeoutMs: 1),
                       [.respond(status: 408, message: "the request head did not arrive in time")])
        XCTAssertEqual(m.state, .rejecting)
        XCTAssertFalse(m.keepsAlive)
        XCTAssertFalse(m.isHEAD)
        XCTAssertEqual(m.bytesReceived(), .drop)
        XCTAssertEqual(m.responseEnd(now: 1), [.closeAfterFlush])
        // A TLS handshake that never finished is closed without an answer.
        var tls = M()
        _ = tls.start(now: 0)
        XCTAssertEqual(tls.timerFired(.head, transportOpen: false, timeoutMs: 1), [.closeNow])
    }

    func testMalformedRequest() {
        var m = M()
        _ = m.start(now: 0)
        _ = m.bytesReceived()
        XCTAssertEqual(m.malformed(.headersTooLarge), [.cancelTimer, .respond(status: 431, message: "request header fields too large")])
        XCTAssertEqual(m.responseEnd(now: 1), [.closeAfterFlush])
        // In the middle of a request: cut.
        var busy = begun(post())
        XCTAssertEqual(busy.malformed(.badRequest("x")), [.abort("malformed request: bad request: x")])
    }

    func testIllegalEventsCloseWithAReason() {
        var m = M()
        _ = m.start(now: 0)
        XCTAssertEqual(m.responseHead(hasContentLength: true, noBody: false), .abort("a response head with no request waiting for it"))
        XCTAssertEqual(m.responseBody(), .abort("response body with no request waiting for it"))
        XCTAssertEqual(m.switchedProtocols(), [.cancelTimer, .abort("101 Switching Protocols with no upgrade asked for")])
        XCTAssertEqual(m.state, .closing)
        var r = begun(head())
        XCTAssertEqual(r.responseBody(), .abort("response body before its head"))
        _ = r.responseHead(hasContentLength: true, noBody: false)
        XCTAssertEqual(r.responseHead(hasContentLength: true, noBody: false), .abort("a second response head for one request"))
        XCTAssertEqual(r.tunnelEnded(), [.abort("a WebSocket ended that never began")])
        var t = begun(head("GET", "/ws", webSocketFields))
        _ = t.switchedProtocols()
        XCTAssertEqual(t.requestEnd(), [.abort("an HTTP request inside a WebSocket")])
        // Once closing, every event is ignored.
        XCTAssertEqual(m.bytesReceived(), .drop)
        XCTAssertEqual(m.requestHead(head()), .stop([]))
        XCTAssertEqual(m.responseHead(hasContentLength: true, noBody: false), .ignore)
        XCTAssertEqual(m.responseBody(), .discard)
        XCTAssertEqual(m.responseEnd(now: 1), [])
        XCTAssertEqual(m.timerFired(.idle, transportOpen: true, timeoutMs: 1), [])
        XCTAssertEqual(m.peerFinished(requestQueued: false), [])
        XCTAssertEqual(m.shutdown(requestQueued: false), [])
        XCTAssertEqual(m.closed(), [])
    }

    /// Any event in any order: never a crash, the timer always the state's, and
    /// every pause one the machine knows how to end.
    func testRandomEventsKeepTheInvariants() {
        var seed: UInt64 = 0x9E37_79B9_7F4A_7C15
        func next(_ n: Int) -> Int {
            seed = seed &* 6364136223846793005 &+ 1442695040888963407
            return Int((seed >> 33) % UInt64(n))
        }
        let heads = [head(), post(), post([("Expect", "100-continue")]), head("HEAD", "/"),
                     head("GET", "/ws", webSocketFields), head("GET", "/", [("Connection", "close")])]
        for _ in 0..<200 {
            var m = M()
            _ = m.start(now: 0)
            for step in 0..<60 {
                switch next(16) {
                case 0: _ = m.bytesReceived()
                case 1: _ = m.requestHead(heads[next(heads.count)])
                case 2: _ = m.requestEnd()
                case 3: _ = m.malformed(.badRequest("x"))
                case 4: _ = m.peerFinished(requestQueued: next(2) == 0)
                case 5: _ = m.shutdown(requestQueued: next(2) == 0)
                case 6: _ = m.exchangePaused()
                case 7: _ = m.exchangeResumed()
                case 8: _ = m.continueRequested()
                case 9: _ = m.responseHead(hasContentLength: next(2) == 0, noBody: next(2) == 0)
                case 10: _ = m.responseBody()
                case 11: _ = m.responseEnd(now: UInt64(step))
                case 12: _ = m.switchedProtocols()
                case 13: _ = m.tunnelEnded()
                case 14: _ = m.timerFired([M.TimerKind.head, .idle, .body][next(3)], transportOpen: next(2) == 0, timeoutMs: 1)
                default: _ = m.closed()
                }
                switch m.state {
                case .readingHead: XCTAssertEqual(m.timer, .head)
                case .idle: XCTAssertEqual(m.timer, .idle)
                case .request(let r):
                    XCTAssertEqual(m.timer, r.body == .arriving && !m.paused.contains(.backPressure) ? .body : nil)
                case .upgrading, .tunnel, .rejecting, .closing: XCTAssertNil(m.timer)
                }
                XCTAssertTrue(m.paused.isSubset(of: [.backPressure, .pipelined, .upgrading]))
            }
        }
    }
}
