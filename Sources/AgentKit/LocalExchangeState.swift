// LocalExchangeState is the life of one forwarded stream without any I/O: the
// LocalExchange feeds it events (the gateway's request head, body and end; the
// pool's answers; the parsed local response; the local socket closing; the
// timeout; back-pressure) and carries out the actions it returns (write to the
// local API, HEADERS/DATA/RST_STREAM to the gateway, pause or resume reading the
// local socket for a reason, arm or cancel the timeout, give the connection back
// to the pool or close it, answer with an error status).
//
//   idle ─▶ waitingForPlace ─▶ connecting ─▶ sendingRequest ─▶ awaitingResponse
//                                 retrying ◀──────┴──────────────────┤ (kept-alive connection
//                                     └──▶ sendingRequest / awaiting │  closed, see below)
//          streamingResponse ◀── response head ──────────────────────┤
//          tunnel ◀── 101 to a WebSocket upgrade ────────────────────┘
//   any ─▶ finished (response ended, error answered, stream closed)
//
// A CONNECT to a local TCP port (RFC 9113 §8.5, kind `.tcp`) takes no place at
// the pool and writes no HTTP: idle ─▶ connecting ─▶ tunnel (200 once the port
// accepted; 502 when it refused or connect_timeout_ms passed). Its tunnel ends
// one direction at a time: the gateway's END_STREAM half-closes the socket, the
// socket's FIN becomes END_STREAM; when both are done and the stream closed, the
// socket is closed after its last bytes. A socket error resets the stream with
// CONNECT_ERROR; a reset by the gateway closes the socket.
//
// Rules, as before the machine existed:
//  - before the response started a failure is an answer with a status (502
//    unreachable or broken, 504 no head in time); after it, RST_STREAM;
//  - a kept-alive connection that closes before answering is retried once on a
//    new one, only for an idempotent request of which no body byte was written;
//  - the connection goes back to the pool only after a response the parser calls
//    reusable, the whole request written, and no upgrade asked;
//  - an event that cannot happen in the current state (the session, pool and
//    parser never produce it) never traps: once finished it is ignored, otherwise
//    the exchange fails as above and the local connection is closed.
import HTTP1
import Wire

struct LocalExchangeState {
    /// The request, as far as forwarding cares.
    enum Kind: Equatable {
        /// Safe to send twice (RFC 9110 §9.2.2): GET, OPTIONS, TRACE, PUT, DELETE.
        case idempotent
        /// HEAD: idempotent, and its response has no body.
        case head
        /// Not to be repeated (POST, PATCH, ...).
        case nonIdempotent
        /// An extended CONNECT for a WebSocket (RFC 8441), sent as an HTTP/1.1 upgrade.
        case webSocket
        /// A CONNECT to a local TCP port (RFC 9113 §8.5): bytes only, outside the pool.
        case tcp

        var mayRepeat: Bool { self == .idempotent || self == .head }
    }

    struct Request: Equatable {
        var kind: Kind
        /// The body is sent with chunked transfer coding (no Content-Length, body to come).
        var chunked: Bool
        /// The HTTP/1.1 request head, written on each connection tried.
        var head: [UInt8]
    }

    enum Connection: Equatable {
        /// Taken from the pool's idle connections.
        case keptAlive
        case fresh
    }

    /// Request bytes held until a connection is open.
    struct Held: Equatable {
        var body: [UInt8] = []
        var requestEnded: Bool
    }

    /// The request on the current connection, before any response head.
    struct Sent: Equatable {
        var connection: Connection
        /// Body bytes written (chunk framing included): a retry needs none.
        var bodyBytes: Int
    }

    struct Streaming: Equatable {
        var requestEnded: Bool
        /// The response head said there is no body: its HEADERS ended the stream.
        var headEndedStream: Bool
        var paused: ReadPause = []
    }

    struct Tunnel: Equatable {
        /// The gateway's side ended; the local socket was half-closed.
        var gatewayEnded: Bool
        var paused: ReadPause = []
        /// TCP: the local socket's FIN arrived and went on as END_STREAM.
        var localEnded = false
    }

    enum State: Equatable {
        /// Before the stream's request head.
        case idle
        /// Waiting for one of the pool's places at the local API.
        case waitingForPlace(Held)
        /// Holding a place; a kept-alive connection is taken or a new one opened.
        case connecting(Held)
        /// A kept-alive connection closed before answering: a new one is opened, once.
        case retrying(Held)
        /// Connected, the head written; the body still comes from the gateway.
        case sendingRequest(Sent)
        /// The whole request written (or queued); no response head yet.
        case awaitingResponse(Sent)
        /// The response head went to the gateway; its body follows.
        case streamingResponse(Streaming)
        /// After the local API's 101: bytes pass through both ways.
        case tunnel(Tunnel)
        case finished
    }

    enum Event: Equatable {
        /// The stream's HEADERS, translated; `endStream`: no body follows.
        case requestHead(Request, endStream: Bool)
        /// HEADERS without `:method` or `:path`.
        case requestMalformed
        /// A request the agent does not forward (a CONNECT that is not a WebSocket).
        case requestRefused(status: Int, why: String)
        case requestBody([UInt8])
        /// END_STREAM, or trailers.
        case requestEnd(trailers: HTTPHeaders)
        /// The pool has a place at the local API for this request.
        case leaseGranted
        case localConnected(reused: Bool)
        /// No connection: the name does not resolve, or connecting failed.
        case localFailed(String)
        /// Bytes read from the local socket.
        case localData([UInt8])
        /// TCP tunnel: the local socket's end of data (FIN); it still takes bytes.
        case localFinished
        case responseHead(HTTPResponseHead)
        case responseBody([UInt8])
        /// `reusable`: the parser's verdict, and nothing of the request left unwritten.
        case responseEnd(trailers: HTTPHeaders, reusable: Bool)
        /// The local response is invalid (or the connection ended in the middle of it).
        case responseBroken(String)
        /// The local socket closed (or failed), with why.
        case localClosed(String)
        case timedOut
        /// The stream's queue toward the gateway is over its share.
        case gatewayBacklogged
        /// The stream's queue drained to its low mark.
        case gatewayCaughtUp
        /// The stream ended on the gateway's side (done, or RST_STREAM).
        case streamClosed
    }

    enum Action: Equatable {
        case armTimeout
        case cancelTimeout
        /// Ask the pool for a place; it answers with `.leaseGranted`.
        case acquireLease
        case releaseLease
        /// Take a kept-alive connection (`reuse`) or open a new one, with a fresh
        /// response parser; answered by `.localConnected` or `.localFailed`.
        case openLocal(reuse: Bool)
        /// Connect to the CONNECT's local TCP port; answered like `.openLocal`.
        case connectTCP
        case writeLocal([UInt8])
        /// Half-close toward the local API (FIN after the queued bytes).
        case finishWritingLocal
        /// Feed the response parser; its events come back as `.response…`.
        case parse([UInt8])
        /// Tell the parser the connection ended; its events come back, then
        /// `.responseBroken` if the response did not end.
        case parseEOF(why: String)
        case pauseLocal(ReadPause)
        case resumeLocal(ReadPause)
        /// Back to the pool's idle connections.
        case releaseLocal
        /// Close the local connection (or stop the one being opened).
        case closeLocal
        /// Close the local connection once its queued bytes are written (TCP tunnel done).
        case closeLocalAfterFlush
        /// HEADERS to the gateway, translated from the local API's head.
        case respond(HTTPResponseHead, endStream: Bool)
        /// HEADERS 200 for the accepted WebSocket (RFC 8441); then the parser's
        /// unparsed bytes come back as `.localData`.
        case openTunnel(HTTPResponseHead)
        /// DATA to the gateway, pausing the local socket if the stream backs up.
        case forward([UInt8])
        /// An empty DATA with END_STREAM.
        case endResponse(resetAfter: Bool)
        case sendTrailers(HTTPHeaders, resetAfter: Bool)
        case resetStream(errorCode: UInt32)
        /// Log `why` and answer the gateway with `status` and `why` as a text body.
        case fail(status: Int, why: String)
        case warn(String)
    }

    private(set) var state = State.idle
    private(set) var request = Request(kind: .nonIdempotent, chunked: false, head: [])

    var isFinished: Bool {
        if case .finished = state { return true }
        return false
    }

    private var isIdle: Bool {
        if case .idle = state { return true }
        return false
    }

    /// Request bytes go to a connection now (not held), so acknowledging them to
    /// the gateway follows that socket's queue.
    var isConnected: Bool {
        switch state {
        case .sendingRequest, .awaitingResponse, .streamingResponse, .tunnel: return true
        default: return false
        }
    }

    @inline(never)  // one copy, not inlined into LocalExchange.handle (2 KB less in the Embedded agent)
    mutating func receive(_ event: Event) -> [Action] {
        switch event {
        case .requestHead(let r, let endStream):
            guard isIdle else { return unexpected(event) }
            request = r
            if r.kind == .tcp {
                state = .connecting(Held(requestEnded: endStream))
                return [.armTimeout, .connectTCP]
            }
            state = .waitingForPlace(Held(requestEnded: endStream))
            return [.armTimeout, .acquireLease]
        case .requestMalformed:
            guard isIdle else { return unexpected(event) }
            state = .finished
            return [.resetStream(errorCode: 1)]
        case .requestRefused(let status, let why):
            guard isIdle else { return unexpected(event) }
            state = .finished
            return [.fail(status: status, why: why)]
        case .requestBody(let bytes):
            return requestBody(bytes, event)
        case .requestEnd(let trailers):
            return requestEnd(trailers, event)
        case .leaseGranted:
            guard case .waitingForPlace(let held) = state else {
                return [.releaseLease]  // the exchange ended while it waited (or a grant nobody asked for)
            }
            state = .connecting(held)
            return [.openLocal(reuse: true)]
        case .localConnected(let reused):
            switch state {
            case .connecting(let held) where request.kind == .tcp:
                return openTCP(held)
            case .connecting(let held), .retrying(let held):
                let sent = Sent(connection: reused ? .keptAlive : .fresh, bodyBytes: held.body.count)
                state = held.requestEnded ? .awaitingResponse(sent) : .sendingRequest(sent)
                return held.body.isEmpty ? [.writeLocal(request.head)] : [.writeLocal(request.head), .writeLocal(held.body)]
            case .finished:
                return [.closeLocal]
            case .idle, .waitingForPlace:
                return unexpected(event) + [.closeLocal]  // a connection nobody asked for
            default:
                return unexpected(event)
            }
        case .localFailed(let why):
            switch state {
            case .connecting, .retrying: return fail(502, (request.kind == .tcp ? "local port unreachable: " : "local API unreachable: ") + why)
            case .finished: return []
            default: return unexpected(event)
            }
        case .localData(let bytes):
            switch state {
            case .sendingRequest, .awaitingResponse, .streamingResponse: return [.parse(bytes)]
            case .tunnel: return bytes.isEmpty ? [] : [.forward(bytes)]
            case .finished: return []
            default: return unexpected(event)
            }
        case .localFinished:
            switch state {
            case .tunnel(var t) where request.kind == .tcp:
                guard !t.localEnded else { return [] }
                t.localEnded = true
                state = .tunnel(t)
                return [.endResponse(resetAfter: false)]  // the gateway's bytes keep flowing
            case .finished: return []
            default: return unexpected(event)
            }
        case .responseHead(let head):
            return responseHead(head, event)
        case .responseBody(let bytes):
            switch state {
            case .streamingResponse: return [.forward(bytes)]
            case .finished: return []
            default: return unexpected(event)
            }
        case .responseEnd(let trailers, let reusable):
            return responseEnd(trailers, reusable: reusable, event)
        case .responseBroken(let why):
            switch state {
            case .sendingRequest, .awaitingResponse: return fail(502, why)
            case .streamingResponse: return fail(502, "local response broken: " + why)
            case .finished: return []
            default: return unexpected(event)
            }
        case .localClosed(let why):
            return localClosed(why, event)
        case .timedOut:
            switch state {
            case .connecting where request.kind == .tcp:
                return fail(502, "local port did not accept the connection in time")
            case .waitingForPlace, .connecting, .retrying, .sendingRequest, .awaitingResponse:
                return fail(504, "local API did not answer in time")
            default:
                return []  // the timer ends with the response head: a late one is stale
            }
        case .gatewayBacklogged:
            return setPaused(true)
        case .gatewayCaughtUp:
            return setPaused(false)
        case .streamClosed:
            if case .tunnel(let t) = state, t.gatewayEnded && t.localEnded {
                state = .finished  // both directions ended cleanly: the gateway's last bytes still go out
                return [.closeLocalAfterFlush]
            }
            return finish(release: false)
        }
    }

    /// The local TCP port accepted: 200, then what the gateway sent meanwhile.
    private mutating func openTCP(_ held: Held) -> [Action] {
        state = .tunnel(Tunnel(gatewayEnded: held.requestEnded))
        var out: [Action] = [.cancelTimeout, .respond(HTTPResponseHead(status: 200, reason: ""), endStream: false)]
        if !held.body.isEmpty { out.append(.writeLocal(held.body)) }
        if held.requestEnded { out.append(.finishWritingLocal) }
        return out
    }

    // MARK: Request from the gateway

    private func encoded(_ bytes: [UInt8]) -> [UInt8] {
        request.chunked ? HTTP1Writer.chunk(bytes) : bytes
    }

    private mutating func requestBody(_ bytes: [UInt8], _ event: Event) -> [Action] {
        switch state {
        case .waitingForPlace(var h), .connecting(var h), .retrying(var h):
            guard !h.requestEnded else { return unexpected(event) }
            if !bytes.isEmpty { h.body += encoded(bytes) }
            replaceHeld(h)
            return []
        case .sendingRequest(var s):
            guard !bytes.isEmpty else { return [] }
            let out = encoded(bytes)
            s.bodyBytes += out.count
            state = .sendingRequest(s)
            return [.writeLocal(out)]
        case .streamingResponse(let st):
            guard !st.requestEnded else { return unexpected(event) }
            return bytes.isEmpty ? [] : [.writeLocal(encoded(bytes))]
        case .tunnel(let t):
            guard !t.gatewayEnded else { return unexpected(event) }
            return bytes.isEmpty ? [] : [.writeLocal(bytes)]
        case .finished:
            return []
        case .idle, .awaitingResponse:
            return unexpected(event)  // no request yet, or DATA after its end
        }
    }

    private mutating func requestEnd(_ trailers: HTTPHeaders, _ event: Event) -> [Action] {
        switch state {
        case .waitingForPlace(var h), .connecting(var h), .retrying(var h):
            guard !h.requestEnded else { return [] }
            h.requestEnded = true
            if request.chunked { h.body += HTTP1Writer.lastChunk(trailers: trailers) }
            replaceHeld(h)
            return []
        case .sendingRequest(var s):
            guard request.chunked else {
                state = .awaitingResponse(s)
                return []
            }
            let last = HTTP1Writer.lastChunk(trailers: trailers)
            s.bodyBytes += last.count
            state = .awaitingResponse(s)
            return [.writeLocal(last)]
        case .streamingResponse(var st):
            guard !st.requestEnded else { return [] }
            st.requestEnded = true
            state = .streamingResponse(st)
            return request.chunked ? [.writeLocal(HTTP1Writer.lastChunk(trailers: trailers))] : []
        case .tunnel(var t):
            guard !t.gatewayEnded else { return [] }
            t.gatewayEnded = true
            state = .tunnel(t)
            return [.finishWritingLocal]  // the gateway's side of the WebSocket is done
        case .awaitingResponse, .finished:
            return []
        case .idle:
            return unexpected(event)
        }
    }

    /// Puts `h` back into whichever waiting state holds it.
    private mutating func replaceHeld(_ h: Held) {
        switch state {
        case .waitingForPlace: state = .waitingForPlace(h)
        case .connecting: state = .connecting(h)
        case .retrying: state = .retrying(h)
        default: break
        }
    }

    // MARK: Response from the local API

    private mutating func responseHead(_ head: HTTPResponseHead, _ event: Event) -> [Action] {
        let requestEnded: Bool
        switch state {
        case .sendingRequest: requestEnded = false
        case .awaitingResponse: requestEnded = true
        case .finished: return []
        default: return unexpected(event)
        }
        if request.kind == .webSocket && head.status == 101 {
            state = .tunnel(Tunnel(gatewayEnded: requestEnded))
            return [.cancelTimeout, .openTunnel(head)]
        }
        if request.kind == .webSocket && head.status < 300 {
            // A 2xx to an extended CONNECT means "tunnel open" (RFC 8441); a local
            // API that ignored the upgrade must not look like that.
            return fail(502, "the local API did not accept the WebSocket upgrade (answered " + String(head.status) + ")")
        }
        // The framing of this head, not of whatever the parser has read since.
        let framing = (try? HTTP1ResponseParser.framing(of: head, toHEAD: request.kind == .head)) ?? .untilClose
        let ends = framing == .none
        state = .streamingResponse(Streaming(requestEnded: requestEnded, headEndedStream: ends))
        // local_timeout_ms bounds the time to answer, not a long download.
        return [.cancelTimeout, .respond(head, endStream: ends)]
    }

    private mutating func responseEnd(_ trailers: HTTPHeaders, reusable: Bool, _ event: Event) -> [Action] {
        switch state {
        case .streamingResponse(let st):
            // A response complete before its request: the gateway is asked to stop
            // sending the rest, without error, once the response is out (RFC 9113 §8.1).
            let resetAfter = !st.requestEnded
            var out: [Action]
            if st.headEndedStream {
                out = resetAfter ? [.resetStream(errorCode: 0)] : []
            } else if trailers.isEmpty {
                out = [.endResponse(resetAfter: resetAfter)]
            } else {
                out = [.sendTrailers(trailers, resetAfter: resetAfter)]
            }
            // The parser's verdict covers every byte fed so far; the request must also
            // be all written (a server that answered early may take the rest of the
            // body for the next request).
            return out + finish(release: reusable && st.requestEnded && request.kind != .webSocket)
        case .tunnel, .finished:
            return []  // after a 101 the parser ends its message: the tunnel goes on
        default:
            return unexpected(event)
        }
    }

    private mutating func localClosed(_ why: String, _ event: Event) -> [Action] {
        switch state {
        case .sendingRequest(let s), .awaitingResponse(let s):
            if s.connection == .keptAlive && s.bodyBytes == 0 && request.kind.mayRepeat {
                // A kept-alive connection the local server had closed: try once on a new
                // one. Only a request safe to repeat: the server may have read this one
                // before it closed (it crashed, or restarted), and a POST must not run twice.
                let ended: Bool
                if case .awaitingResponse = state { ended = true } else { ended = false }
                state = .retrying(Held(requestEnded: ended))
                return [.openLocal(reuse: false)]
            }
            return [.parseEOF(why: why)]
        case .streamingResponse:
            return [.parseEOF(why: why)]
        case .tunnel(let t) where request.kind == .tcp:
            if t.localEnded && t.gatewayEnded { return finish(release: false) }  // both ways done
            // Reset, or an error: the bytes in between are lost, and the gateway must know.
            return fail(502, "local TCP connection failed: " + why)
        case .tunnel:
            // The local side of the WebSocket is gone: end the stream cleanly.
            return [.endResponse(resetAfter: false)] + finish(release: false)
        case .connecting, .retrying:
            return fail(502, "local API unreachable: " + why)
        case .finished:
            return []
        case .idle, .waitingForPlace:
            return unexpected(event)
        }
    }

    private mutating func setPaused(_ pause: Bool) -> [Action] {
        switch state {
        case .streamingResponse(var st):
            guard st.paused.contains(.backPressure) != pause else { return [] }
            if pause { st.paused.insert(.backPressure) } else { st.paused.remove(.backPressure) }
            state = .streamingResponse(st)
        case .tunnel(var t):
            guard t.paused.contains(.backPressure) != pause else { return [] }
            if pause { t.paused.insert(.backPressure) } else { t.paused.remove(.backPressure) }
            state = .tunnel(t)
        default:
            return []  // no local socket is being read for this stream
        }
        return [pause ? .pauseLocal(.backPressure) : .resumeLocal(.backPressure)]
    }

    // MARK: Ending

    /// Ends the exchange on an error: an answer with `status` while none has
    /// started, RST_STREAM after; the local connection is closed.
    private mutating func fail(_ status: Int, _ why: String) -> [Action] {
        switch state {
        case .finished:
            return []
        case .idle:
            state = .finished
            return [.warn(why), .resetStream(errorCode: 2)]
        case .streamingResponse, .tunnel:
            // CONNECT_ERROR for a TCP tunnel (RFC 9113 §8.5), INTERNAL_ERROR otherwise.
            return [.warn(why), .resetStream(errorCode: request.kind == .tcp ? 0xa : 2)] + finish(release: false)
        default:
            return [.fail(status: status, why: why)] + finish(release: false)
        }
    }

    private mutating func unexpected(_ event: Event) -> [Action] {
        fail(502, "internal: unexpected " + LocalExchangeState.name(of: event) + " while " + LocalExchangeState.name(of: state))
    }

    /// Cancels the timer, hands back or closes the connection and the pool place,
    /// as far as the current state holds them.
    private mutating func finish(release: Bool) -> [Action] {
        var out: [Action] = []
        let lease: [Action] = request.kind == .tcp ? [] : [.releaseLease]  // a TCP tunnel holds no place
        switch state {
        case .idle, .finished:
            break
        case .waitingForPlace:
            out = [.cancelTimeout]  // the place, granted later, is handed back then
        case .connecting, .retrying, .sendingRequest, .awaitingResponse:
            out = [.cancelTimeout, release ? .releaseLocal : .closeLocal] + lease
        case .streamingResponse, .tunnel:
            out = [release ? .releaseLocal : .closeLocal] + lease
        }
        state = .finished
        return out
    }

    static func name(of state: State) -> String {
        switch state {
        case .idle: return "idle"
        case .waitingForPlace: return "waitingForPlace"
        case .connecting: return "connecting"
        case .retrying: return "retrying"
        case .sendingRequest: return "sendingRequest"
        case .awaitingResponse: return "awaitingResponse"
        case .streamingResponse: return "streamingResponse"
        case .tunnel: return "tunnel"
        case .finished: return "finished"
        }
    }

    static func name(of event: Event) -> String {
        switch event {
        case .requestHead: return "request head"
        case .requestMalformed: return "malformed request"
        case .requestRefused: return "refused request"
        case .requestBody: return "request body"
        case .requestEnd: return "request end"
        case .leaseGranted: return "place at the local API"
        case .localConnected: return "local connection"
        case .localFailed: return "local connection failure"
        case .localData: return "local bytes"
        case .localFinished: return "local end of data"
        case .responseHead: return "response head"
        case .responseBody: return "response body"
        case .responseEnd: return "response end"
        case .responseBroken: return "broken response"
        case .localClosed: return "local close"
        case .timedOut: return "timeout"
        case .gatewayBacklogged: return "back-pressure"
        case .gatewayCaughtUp: return "resume"
        case .streamClosed: return "stream close"
        }
    }
}
