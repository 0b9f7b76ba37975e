// HTTP1ServerStateMachine is the life of one HTTP/1.1 user connection
// (PublicConnection) as a value: events in (bytes arrived, a request head or end
// parsed, the response's head, body and end written, the Exchange pausing or
// resuming, a timer fired, the peer's end of data, shutdown), actions out (pause
// or resume reading for a reason, arm or cancel the timer, start an exchange,
// answer an error, close). It does no I/O and holds no objects: PublicConnection
// carries the actions out, and the tests drive it without sockets.
//
//   readingHead ─head─▶ request ─response end─▶ idle ─first byte─▶ readingHead
//     │    ▲              │  │  └─(Connection: close, body unread)──▶ closing
//     │    └─(pipelined)──┘  └─WebSocket, CONNECT─▶ upgrading ─101, 200─▶ tunnel ─end─▶ closing
//     └─head timeout, malformed, body stalled─▶ rejecting ─answered─▶ closing
//
// A CONNECT (a TCP tunnel to a device's port) takes the WebSocket's path: nothing
// is parsed or read while the device decides; its 200 opens the tunnel, any other
// answer ends the connection. In the tunnel each side ends on its own (half-close):
// the user's end of data ends the device stream's request side, the device's end
// shuts our write side (`finishWriting`: FIN, on TLS close_notify first) while the
// user's bytes still flow; the Exchange ends the tunnel once both have ended.
// One timer, chosen by the state: `head` (a request head within request_timeout_ms
// of the connection's start or of the request's first byte), `idle` (keep-alive),
// `body` (some request body every request_timeout_ms while it arrives and the
// gateway itself is not holding it back). Reading is paused for the machine's own
// reasons (`.pipelined`, `.upgrading`, and `.backPressure` for the Exchange), and
// each is resumed by the transition that ends it; `.peerFinished` is Transport's.
// An event a state does not expect gets a defined answer (ignored while closing,
// else the connection is aborted with a reason), never a crash.
import HTTP1
import Wire

struct HTTP1ServerStateMachine {
    enum TimerKind: Equatable { case head, idle, body }

    enum Persistence: Equatable { case keepAlive, close }

    enum RequestBody: Equatable {
        /// None, or all of it arrived.
        case complete
        /// `Expect: 100-continue`: the user may wait for our `100 Continue` before sending it.
        case awaitingContinue
        /// Arriving: some of it must come every request_timeout_ms.
        case arriving
    }

    /// How a response body is framed on the wire.
    enum ResponseFraming: Equatable {
        case contentLength
        case chunked
        /// An HTTP/1.0 request's answer without Content-Length: the close ends it.
        case closeDelimited
        /// HEAD, 204, 304: a head only.
        case none
    }

    enum Response: Equatable {
        case notStarted
        case started(ResponseFraming)
    }

    struct Request: Equatable {
        var body: RequestBody
        var response: Response
        var persistence: Persistence
        let isHEAD: Bool
        let versionMinor: Int

        /// The response head starts: its framing, and whether the connection stays.
        mutating func startResponse(hasContentLength: Bool, noBody: Bool) -> ResponseHeadDecision {
            guard response == .notStarted else { return .abort("a second response head for one request") }
            var framing = ResponseFraming.contentLength
            if noBody {
                framing = .none
            } else if !hasContentLength {
                framing = versionMinor == 1 ? .chunked : .closeDelimited
            }
            // A response that ends before its request body was read cannot keep the
            // connection: the rest of that body would be read as a new request.
            if framing == .closeDelimited || body != .complete { persistence = .close }
            response = .started(framing)
            return .write(framing, persistence)
        }

        var bodyWrite: BodyWrite {
            switch response {
            case .notStarted: return .abort("response body before its head")
            case .started(.none): return .discard
            case .started(.chunked): return .chunked
            case .started: return .raw
            }
        }

        /// The connection can take the next request once this one is answered.
        var keepsConnection: Bool {
            persistence == .keepAlive && body == .complete && response != .started(.closeDelimited)
        }
    }

    enum State: Equatable {
        /// Waiting for a request head to complete; `idleSince` until its first byte
        /// (set at the connection's start: the head timer counts from there).
        case readingHead(idleSince: UInt64?)
        /// Keep-alive: a response is done, no byte of the next request yet.
        case idle(since: UInt64)
        /// A request is being answered.
        case request(Request)
        /// A WebSocket upgrade or a CONNECT was asked for: nothing more is parsed as HTTP,
        /// nothing is read until the device answers (101 or 200, or an ordinary response
        /// that ends the connection).
        case upgrading(Request)
        /// After 101 Switching Protocols (or a CONNECT's 200): bytes pass both ways.
        case tunnel
        /// An error answer with no exchange behind it (408, a malformed request) is being
        /// written; the connection closes after it.
        case rejecting
        /// Nothing more is read, started or timed.
        case closing
    }

    /// Why no further request is taken once the one in progress is answered.
    enum Finish: Equatable { case peerFinished, shutdown }

    /// How a request that begins is started.
    enum Start: Equatable {
        case exchange(requestHasBody: Bool)
        case webSocket
        /// A CONNECT: a TCP tunnel to the device's port.
        case connect
        /// A WebSocket handshake we cannot take: 426 (RFC 6455 §4.2.2).
        case refuseUpgrade
    }

    enum Action: Equatable {
        case pauseReading(ReadPause)
        case resumeReading(ReadPause)
        /// Arms `kind`, replacing the timer that runs.
        case armTimer(TimerKind)
        case cancelTimer
        /// The user's request body is complete: tell the exchange.
        case endRequestBody
        /// The exchange is given up: the device stops working on it.
        case dropExchange
        /// Requests that waited (pipelined) are parsed on the next loop turn.
        case processQueued
        /// The parser must not hold a request the peer's end of data cut short.
        case checkEndOfInput
        case writeContinue
        /// The caller writes the 101 it was about to.
        case writeSwitchingProtocols
        /// The caller writes the CONNECT's 200 it was about to.
        case writeConnectEstablished
        /// Half-close towards the user: the device sent all it will (FIN; on TLS close_notify first).
        case finishWriting
        /// Answer `status` with `message` and close (an answer no exchange gives).
        case respond(status: Int, message: String)
        case closeAfterFlush
        case closeNow
        case abort(String)
    }

    enum HeadDecision: Equatable {
        /// The request begins: carry out `actions`, then start it (last: starting may call back).
        case begin(Start, [Action])
        /// Pipelined: the head stays queued until the response in progress is done.
        case wait([Action])
        /// No more requests are parsed here: carry out `actions` (none while closing).
        case stop([Action])
    }

    enum BytesDecision: Equatable {
        case drop
        /// WebSocket bytes for the exchange.
        case tunnel
        /// HTTP: carry out `actions`, then parse.
        case parse([Action])
    }

    enum ResponseHeadDecision: Equatable {
        /// Write the head framed so; `.close` adds `Connection: close`.
        case write(ResponseFraming, Persistence)
        case ignore
        case abort(String)
    }

    enum BodyWrite: Equatable {
        case raw, chunked, discard
        case abort(String)
    }

    /// Before `start`: nothing counted yet.
    private(set) var state = State.readingHead(idleSince: nil)
    /// The timer that runs (what the last timer action left).
    private(set) var timer: TimerKind?
    /// The reasons this machine paused reading for.
    private(set) var paused: ReadPause = []
    private(set) var finishing: Finish?
    /// The tunnel's write side towards the user is shut (the device ended its side).
    private(set) var tunnelOutputEnded = false

    // MARK: Queries

    /// Since when nothing has been asked of the connection (for the descriptor budget).
    var idleSince: UInt64? {
        switch state {
        case .readingHead(let since): return since
        case .idle(let since): return since
        default: return nil
        }
    }

    /// No request body is still to come (none, or all of it arrived).
    var requestComplete: Bool {
        switch state {
        case .request(let r), .upgrading(let r): return r.body == .complete
        default: return true
        }
    }

    /// The response in progress leaves the connection open for the next request.
    var keepsAlive: Bool {
        switch state {
        case .request(let r), .upgrading(let r): return r.persistence == .keepAlive
        case .readingHead, .idle: return finishing == nil
        case .tunnel, .rejecting, .closing: return false
        }
    }

    var isHEAD: Bool {
        if case .request(let r) = state { return r.isHEAD }
        return false
    }

    var isClosing: Bool { state == .closing }

    // MARK: Events

    /// The connection starts: the head timer counts from here (TLS handshake included).
    mutating func start(now: UInt64) -> [Action] {
        state = .readingHead(idleSince: now)
        var actions: [Action] = []
        retime(&actions)
        return actions
    }

    mutating func bytesReceived() -> BytesDecision {
        var actions: [Action] = []
        switch state {
        case .closing, .rejecting:
            return .drop
        case .tunnel:
            return .tunnel
        case .idle, .readingHead:
            state = .readingHead(idleSince: nil)  // a request has begun: its head must arrive in time
            retime(&actions)
        case .request:
            if timer == .body { retime(&actions, restart: true) }  // the user is not stalled
        case .upgrading:
            break
        }
        return .parse(actions)
    }

    mutating func requestHead(_ head: HTTPRequestHead) -> HeadDecision {
        switch state {
        case .closing, .rejecting:
            return .stop([])
        case .upgrading:
            return .stop([.abort("data after a WebSocket upgrade request, before the answer")])
        case .tunnel:
            return .stop([.abort("an HTTP request inside a WebSocket")])
        case .request:
            // Pipelined: stop reading until the current response is done.
            return .wait(pause(.pipelined))
        case .idle, .readingHead:
            break
        }
        let hasBody = ((try? HTTP1RequestParser.framing(of: head)) ?? .none) != .none
        let keepAlive = finishing == nil && (head.versionMinor == 1 ? !head.headers.containsToken("connection", "close")
                                                                    : head.headers.containsToken("connection", "keep-alive"))
        var request = Request(body: hasBody ? .arriving : .complete, response: .notStarted,
                              persistence: keepAlive ? .keepAlive : .close,
                              isHEAD: head.method == "HEAD", versionMinor: head.versionMinor)
        var actions: [Action] = []
        let start: Start
        if head.method == "CONNECT" {
            // No more HTTP on this connection: a tunnel, or an answer and the close.
            request.persistence = .close
            state = .upgrading(request)
            actions += pause(.upgrading)
            start = .connect
        } else if WebSocketUpgrade.isRequest(head) && !WebSocketUpgrade.hasValidHandshake(head) {
            request.body = .complete
            request.persistence = .close
            state = .request(request)
            start = .refuseUpgrade
        } else if WebSocketUpgrade.isRequest(head) && !hasBody {
            // Nothing more is HTTP until the device has answered the upgrade.
            request.persistence = .close
            state = .upgrading(request)
            actions += pause(.upgrading)
            start = .webSocket
        } else {
            if hasBody && head.versionMinor == 1 && head.headers.containsToken("expect", "100-continue") {
                request.body = .awaitingContinue
            }
            state = .request(request)
            start = .exchange(requestHasBody: hasBody)
        }
        retime(&actions)
        return .begin(start, actions)
    }

    /// The parser returned a request's end.
    mutating func requestEnd() -> [Action] {
        switch state {
        case .request(var r):
            r.body = .complete
            state = .request(r)
            var actions: [Action] = []
            retime(&actions)
            return actions + [.endRequestBody]
        case .upgrading, .closing, .rejecting:
            // An upgrade request's HTTP part ends here, but its stream carries the
            // WebSocket's bytes later: it is not ended.
            return []
        case .idle, .readingHead:
            return []  // the end of a request answered already (a refusal as it began)
        case .tunnel:
            return [.abort("an HTTP request inside a WebSocket")]
        }
    }

    /// The parser found the user's bytes malformed.
    mutating func malformed(_ error: HTTP1Error) -> [Action] {
        switch state {
        case .idle, .readingHead:
            state = .rejecting
            var actions: [Action] = []
            retime(&actions)
            return actions + [.respond(status: error.status, message: error.description)]
        case .request, .upgrading, .tunnel:
            return [.abort("malformed request: " + error.description)]
        case .rejecting, .closing:
            return []
        }
    }

    /// The user's end of data (FIN or close_notify); Transport paused reading for it.
    /// `requestQueued`: a parsed request waits to be started.
    mutating func peerFinished(requestQueued: Bool) -> [Action] {
        switch state {
        case .tunnel:
            return [.endRequestBody]  // the user's side of the WebSocket is done
        case .closing, .rejecting:
            return []
        case .idle, .readingHead:
            finishing = .peerFinished
            // HTTP/1.1 half-close: the user sent everything; a queued request is still answered.
            return requestQueued ? [.checkEndOfInput] : [.checkEndOfInput] + close(with: .closeAfterFlush)
        case .request, .upgrading:
            finishing = .peerFinished
            closeAfterResponse()
            return [.checkEndOfInput]
        }
    }

    /// Graceful stop (SIGTERM): close now when idle, else after the response in progress.
    mutating func shutdown(requestQueued: Bool) -> [Action] {
        finishing = finishing ?? .shutdown
        switch state {
        case .idle, .readingHead:
            return requestQueued ? [] : close(with: .closeAfterFlush)
        case .request, .upgrading:
            closeAfterResponse()
            return []
        case .tunnel, .rejecting, .closing:
            return []
        }
    }

    /// The Exchange stops taking the body (back-pressure, or queued): the user is not
    /// the one who is slow, so the body timer waits too.
    mutating func exchangePaused() -> [Action] {
        guard state != .closing else { return [] }
        var actions = pause(.backPressure)
        retime(&actions)
        return actions
    }

    mutating func exchangeResumed() -> [Action] {
        guard paused.contains(.backPressure) else { return [] }
        paused.remove(.backPressure)
        var actions: [Action] = [.resumeReading(.backPressure)]
        retime(&actions)
        return actions
    }

    /// A device took a request that asked for `100 Continue`.
    mutating func continueRequested() -> [Action] {
        guard case .request(var r) = state, r.response == .notStarted else { return [] }
        if r.body == .awaitingContinue { r.body = .arriving }
        state = .request(r)
        var actions: [Action] = [.writeContinue]
        retime(&actions)
        return actions
    }

    /// A response head is written: how it is framed, and whether it keeps the connection.
    mutating func responseHead(hasContentLength: Bool, noBody: Bool) -> ResponseHeadDecision {
        switch state {
        case .request(var r):
            defer { state = .request(r) }
            return r.startResponse(hasContentLength: hasContentLength, noBody: noBody)
        case .upgrading(var r):
            defer { state = .upgrading(r) }
            return r.startResponse(hasContentLength: hasContentLength, noBody: noBody)
        case .closing:
            return .ignore
        case .idle, .readingHead, .tunnel, .rejecting:
            return .abort("a response head with no request waiting for it")
        }
    }

    /// How the next piece of response body goes out.
    func responseBody() -> BodyWrite {
        switch state {
        case .request(let r), .upgrading(let r): return r.bodyWrite
        case .tunnel: return .raw
        case .closing: return .discard
        case .idle, .readingHead, .rejecting: return .abort("response body with no request waiting for it")
        }
    }

    /// The response in progress is complete (or an error answer was written whole).
    /// `now`: the loop clock, for the keep-alive idle time.
    mutating func responseEnd(now: UInt64) -> [Action] {
        switch state {
        case .request(let r), .upgrading(let r):
            guard r.keepsConnection else { return close(with: .closeAfterFlush) }
            // The next request, or the end: reading resumes for every reason this request had.
            state = .idle(since: now)
            var actions: [Action] = []
            if !paused.isEmpty { actions.append(.resumeReading(paused)) }
            paused = []
            retime(&actions)
            return actions + [.processQueued]
        case .tunnel, .rejecting:
            return close(with: .closeAfterFlush)
        case .closing:
            return []
        case .idle, .readingHead:
            return close(with: .abort("a response with no request waiting for it"))
        }
    }

    /// The response in progress is the connection's last (respondError with `close`).
    mutating func closeAfterResponse() {
        if case .request(var r) = state {
            r.persistence = .close
            state = .request(r)
        }
    }

    /// The device accepted the WebSocket.
    mutating func switchedProtocols() -> [Action] {
        openTunnel(.writeSwitchingProtocols, else: "101 Switching Protocols with no upgrade asked for")
    }

    /// The device accepted the CONNECT (its local port answered).
    mutating func connectEstablished() -> [Action] {
        openTunnel(.writeConnectEstablished, else: "a CONNECT answered that was never asked for")
    }

    private mutating func openTunnel(_ write: Action, else unexpected: String) -> [Action] {
        switch state {
        case .upgrading(let r) where r.response == .notStarted:
            state = .tunnel
            var actions: [Action] = [write]
            retime(&actions)
            paused.remove(.upgrading)
            actions.append(.resumeReading(.upgrading))
            // The user's end of data came before the 101 (read while a pipelined
            // upgrade waited): Transport reads no more, so say it now, or the tunnel's
            // user side would stay open for ever.
            if finishing == .peerFinished { actions.append(.endRequestBody) }
            return actions
        case .closing:
            return []
        default:
            return close(with: .abort(unexpected))
        }
    }

    /// The device ended its side of a CONNECT tunnel; the user's may go on.
    mutating func tunnelOutputFinished() -> [Action] {
        switch state {
        case .tunnel:
            guard !tunnelOutputEnded else { return [] }
            tunnelOutputEnded = true
            return [.finishWriting]
        case .closing: return []
        default: return close(with: .abort("a tunnel half-closed that never began"))
        }
    }

    /// The device ended its side of the WebSocket.
    mutating func tunnelEnded() -> [Action] {
        switch state {
        case .tunnel: return close(with: .closeAfterFlush)
        case .closing: return []
        default: return close(with: .abort("a WebSocket ended that never began"))
        }
    }

    /// `kind` fired. `transportOpen`: the TLS handshake is done; `timeoutMs`: request_timeout_ms, for the message.
    mutating func timerFired(_ kind: TimerKind, transportOpen: Bool, timeoutMs: Int) -> [Action] {
        guard kind == timer else { return [] }  // replaced or cancelled meanwhile
        timer = nil
        var actions: [Action] = []
        switch state {
        case .idle:
            return close(with: .closeNow)  // keep-alive idleness
        case .readingHead:
            guard transportOpen else { return close(with: .closeNow) }  // a TLS handshake that never finished
            state = .rejecting
            return [.respond(status: 408, message: "the request head did not arrive in time")]
        case .request(let r) where r.body == .arriving:
            let why = "the request body stalled: nothing for " + String(timeoutMs) + " ms"
            guard r.response == .notStarted else {
                return [.abort(why)]  // the answer already started: cut it, never let it look complete
            }
            state = .rejecting
            retime(&actions)
            return actions + [.dropExchange, .respond(status: 408, message: why)]
        default:
            return []
        }
    }

    /// The connection was aborted (closed now, output dropped) or is gone.
    mutating func closed() -> [Action] {
        guard state != .closing else { return [] }
        state = .closing
        var actions: [Action] = []
        retime(&actions)
        return actions
    }

    // MARK: Helpers

    private func wantedTimer() -> TimerKind? {
        switch state {
        case .readingHead: return .head
        case .idle: return .idle
        case .request(let r): return r.body == .arriving && !paused.contains(.backPressure) ? .body : nil
        case .upgrading, .tunnel, .rejecting, .closing: return nil
        }
    }

    /// Brings the timer in line with the state; `restart`: arm it again even if it runs.
    private mutating func retime(_ actions: inout [Action], restart: Bool = false) {
        let want = wantedTimer()
        guard want != timer || (restart && want != nil) else { return }
        timer = want
        actions.append(want.map { .armTimer($0) } ?? .cancelTimer)
    }

    private mutating func pause(_ why: ReadPause) -> [Action] {
        guard !paused.contains(why) else { return [] }
        paused.insert(why)
        return [.pauseReading(why)]
    }

    /// Ends in `closing`, timer cancelled, with `last` (a close) carried out last.
    private mutating func close(with last: Action) -> [Action] {
        state = .closing
        var actions: [Action] = []
        retime(&actions)
        return actions + [last]
    }
}
