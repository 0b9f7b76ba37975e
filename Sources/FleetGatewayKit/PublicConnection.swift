// PublicConnection is one user's HTTP/1.1 connection to the public listener. It
// parses requests (strictly: see HTTP1RequestParser), runs them one at a time
// through an Exchange, and writes the responses back in order. While a request
// is in flight, a pipelined one waits in the parser's output and the socket is
// not read, so a pipelining client cannot make the gateway buffer for it.
//
// Time limits: a complete request head within `request_timeout_ms` (counted from
// the connection's start, which includes the TLS handshake, or from the first
// byte of a later request), some of the request body every `request_timeout_ms`
// while it arrives (unless the gateway itself paused reading it), and at most
// `idle_timeout_ms` of keep-alive idleness.
import EventLoop
import HTTP1
import TLS
import Wire

final class PublicConnection: UserSide {
    let services: UserServices
    let transport: Transport
    let scheme: String
    private var parser: HTTP1RequestParser
    private var queued: [HTTP1Event<HTTPRequestHead>] = []
    private var current: Exchange?
    private var requestDone = true
    private var responseDone = true
    private var keepAlive = true
    private var isHEAD = false
    private var chunkedResponse = false
    private var closeDelimited = false
    private var noResponseBody = false
    private var closing = false
    private var goingAway = false
    private var timer: TimerID?
    /// Waiting for a request's first byte (idle) rather than for the rest of its head.
    private var idle = false
    /// A WebSocket upgrade was asked for: nothing more is parsed as HTTP.
    private var upgrading = false
    /// After 101 Switching Protocols: bytes pass through both ways.
    private var tunnel = false
    /// The body timer runs (a request body is arriving and must keep arriving).
    private var bodyTimerArmed = false
    private var bodyPaused = false
    /// The user asked for `100 Continue` and waits for it before sending the body.
    private var awaitingContinue = false
    /// The request being answered, for the access log and the metrics.
    private var logged: (method: String, target: String, host: String, start: UInt64)?
    private var responseStatus = 0
    private var responseBytes = 0
    /// A response head held back until the first body bytes, so that a small
    /// response leaves in one send (and one TCP segment), not two; written at the
    /// end of this loop turn at the latest.
    private var pendingHead: [UInt8] = []
    /// Since when no request has been in progress (for the gateway's descriptor budget).
    private(set) var idleSince: UInt64?

    init(services: UserServices, transport: Transport, scheme: String) {
        self.services = services
        self.transport = transport
        self.scheme = scheme
        parser = HTTP1RequestParser(limits: HTTP1Limits(maxHeadBytes: services.config.maxHeadBytes))
    }

    var peerHost: String { transport.peer.host }
    var tls: TLSConnection? { transport.tls }
    var bufferedOutput: Int { transport.bufferedOutput }
    /// The Exchange stops taking the body (back-pressure, or queued): the user is not
    /// the one who is slow, so the body timer waits too.
    func pauseReading() {
        transport.pauseReading(.backPressure)
        bodyPaused = true
        if bodyTimerArmed { disarmBody() }
    }

    func resumeReading() {
        transport.resumeReading(.backPressure)
        bodyPaused = false
        if !requestDone && current != nil && !upgrading && !tunnel && !awaitingContinue { armBody() }
    }

    /// `first`: bytes already read by the protocol sniffer, parsed before anything else.
    func start(first: [UInt8] = []) {
        transport.onData = { bytes in self.receive(Array(bytes)) }
        transport.onDrained = { self.current?.userDrained() }
        transport.onPeerFinished = { self.peerFinished() }
        transport.onClose = { _ in self.closed() }
        idleSince = services.loop.now
        arm(idle: false)
        if !first.isEmpty { receive(first) }
    }

    // MARK: Requests in

    private func receive(_ bytes: [UInt8]) {
        guard !closing else { return }
        if tunnel {
            current?.userBody(bytes)
            return
        }
        idleSince = nil
        if idle { arm(idle: false) }  // a request has begun: its head must arrive in time
        if bodyTimerArmed { armBody() }  // some of the body came: the user is not stalled
        do throws(HTTP1Error) {
            queued += try parser.feed(bytes)
        } catch {
            rejectMalformed(error)
            return
        }
        process()
    }

    private func peerFinished() {
        if tunnel {
            current?.userEnd()  // the user's side of the WebSocket is done
            return
        }
        // HTTP/1.1 half-close: the user sent everything; answer, then close.
        keepAlive = false
        goingAway = true
        do throws(HTTP1Error) {
            queued += try parser.feedEOF()
        } catch {
            abort("the request ended before it was complete")
            return
        }
        if current == nil && responseDone && queued.isEmpty {
            transport.closeAfterFlush()
        } else {
            process()
        }
    }

    private func rejectMalformed(_ error: HTTP1Error) {
        queued.removeAll()
        if current == nil || responseDone {
            requestDone = true
            respondError(error.status, error.description, close: true, retryAfter: false)
        } else {
            abort("malformed request: " + error.description)
        }
    }

    /// Feeds queued parser events to the current exchange, starting the next one when
    /// the previous response is complete.
    private func process() {
        while !queued.isEmpty && !closing {
            switch queued[0] {
            case .head(let head):
                if upgrading {
                    abort("data after a WebSocket upgrade request, before the answer")
                    return
                }
                guard current == nil && responseDone else {
                    // Pipelined: stop reading until the current response is done.
                    transport.pauseReading(.pipelined)
                    return
                }
                queued.removeFirst()
                begin(head)
            case .body(let bytes):
                queued.removeFirst()
                current?.userBody(bytes)
            case .end:
                queued.removeFirst()
                requestDone = true
                if bodyTimerArmed { disarmBody() }
                // An upgrade request's HTTP part ends here, but its stream carries the
                // WebSocket's bytes later: do not end it.
                if !upgrading { current?.userEnd() }
                if responseDone { current = nil }
            }
        }
    }

    private func begin(_ received: HTTPRequestHead) {
        services.loop.cancel(timer)
        timer = nil
        idleSince = nil
        // One authority routes the request and names it in the log: the target's in
        // absolute-form (the Host field is then ignored, RFC 9112 §3.2.2), else Host.
        let form = RequestTarget.classify(method: received.method, target: received.target)
        let authority = form?.authority ?? received.headers.first("host") ?? ""
        var head = received
        if let path = form?.path { head.target = path }
        logged = (head.method, received.target, authority.isEmpty ? "-" : authority, services.loop.now)
        responseStatus = 0
        responseBytes = 0
        let hasBody = ((try? HTTP1RequestParser.framing(of: head)) ?? .none) != .none
        requestDone = !hasBody
        responseDone = false
        isHEAD = head.method == "HEAD"
        keepAlive = !goingAway && (head.versionMinor == 1 ? !head.headers.containsToken("connection", "close")
                                                          : head.headers.containsToken("connection", "keep-alive"))
        guard let form else {
            respondError(400, "invalid request target for " + head.method + " (RFC 9112 §3.2)", close: true, retryAfter: false)
            return
        }
        if head.method == "CONNECT" {
            respondError(405, "CONNECT is not supported", close: true, retryAfter: false)
            return
        }
        if case .absolute = form { head.headers.replace("Host", authority) }
        guard let host = HostRouting.routingKey(authority) else {
            respondError(400, "the request names no valid device host ('" + authority + "')", close: true, retryAfter: false)
            return
        }
        let ex = Exchange(client: self, request: head, authority: authority, hostname: host)
        current = ex
        awaitingContinue = hasBody && head.versionMinor == 1 && head.headers.containsToken("expect", "100-continue")
        bodyPaused = false
        if hasBody && !awaitingContinue && !WebSocketUpgrade.isRequest(head) { armBody() }
        if WebSocketUpgrade.isRequest(head) && !WebSocketUpgrade.hasValidHandshake(head) {
            current = nil
            requestDone = true
            upgradeRequired()
            return
        }
        if WebSocketUpgrade.isRequest(head) && !hasBody {
            // Nothing more is HTTP until the device has answered the upgrade.
            upgrading = true
            keepAlive = false
            transport.pauseReading(.upgrading)
            ex.startWebSocket()
            return
        }
        ex.start(requestHasBody: hasBody)
    }

    // MARK: Responses out (called by Exchange)

    /// `100 Continue` for a user who asked for it, once a device took the request.
    func writeContinue() {
        transport.write(Array("HTTP/1.1 100 Continue\r\n\r\n".utf8))
        awaitingContinue = false
        if !requestDone && !bodyPaused { armBody() }
    }

    /// A WebSocket handshake we cannot take (RFC 6455 §4.2.2): 426 with the version we speak.
    private func upgradeRequired() {
        let r = ShortResponse.error(426, "WebSocket handshake needs Sec-WebSocket-Version: 13 and a 16-byte key",
                                    fields: HTTPHeaders([("Sec-WebSocket-Version", "13")]), close: true)
        keepAlive = false
        responseStatus = 426
        transport.write(HTTP1Writer.responseHead(r.head) + r.body)
        completeResponse()
    }

    /// The device accepted the WebSocket: 101, then bytes both ways.
    func switchProtocols(accept: String, fields: HTTPHeaders) {
        var h = HTTPHeaders()
        h.add("Upgrade", "websocket")
        h.add("Connection", "Upgrade")
        h.add("Sec-WebSocket-Accept", accept)
        for (n, v) in fields { h.add(n, v) }
        transport.write(HTTP1Writer.responseHead(HTTPResponseHead(status: 101, versionMinor: 1, headers: h)))
        tunnel = true
        upgrading = false
        responseStatus = 101
        chunkedResponse = false
        noResponseBody = false
        services.loop.cancel(timer)
        timer = nil
        transport.resumeReading(.upgrading)
        let early = parser.takeUnparsed()
        if !early.isEmpty { current?.userBody(early) }
    }

    /// The device ended its side of the WebSocket.
    func tunnelEnded() {
        closing = true
        current = nil
        transport.closeAfterFlush()
    }

    func writeHead(_ head: HTTPResponseHead, noBody: Bool) {
        var h = head
        noResponseBody = noBody
        chunkedResponse = false
        closeDelimited = false
        if !noBody && !h.headers.contains("content-length") {
            if current?.request.versionMinor == 1 {
                chunkedResponse = true
                h.headers.add("Transfer-Encoding", "chunked")
            } else {
                closeDelimited = true
                keepAlive = false
            }
        }
        // A response that ends before its request body was read cannot keep the
        // connection: the rest of that body would be read as a new request.
        if !requestDone { keepAlive = false }
        if !keepAlive { h.headers.add("Connection", "close") }
        h.reason = HTTP1Writer.reasonPhrase(h.status)
        responseStatus = h.status
        flushHead()
        pendingHead = HTTP1Writer.responseHead(h)
        transport.loop.execute { self.flushHead() }
    }

    private func flushHead() {
        guard !pendingHead.isEmpty else { return }
        let head = pendingHead
        pendingHead = []
        transport.write(head)
    }

    /// Writes `bytes`, after the held-back head and in the same send when there is one.
    private func writeAfterHead(_ bytes: [UInt8]) {
        if pendingHead.isEmpty {
            transport.write(bytes)
        } else {
            pendingHead += bytes
            flushHead()
        }
    }

    func writeBody(_ bytes: [UInt8]) {
        guard !noResponseBody, !bytes.isEmpty else { return }
        responseBytes += bytes.count
        writeAfterHead(chunkedResponse ? HTTP1Writer.chunk(bytes) : bytes)
    }

    func writeEnd(trailers: HTTPHeaders) {
        if chunkedResponse { writeAfterHead(HTTP1Writer.lastChunk(trailers: trailers)) }
        flushHead()
        completeResponse()
    }

    private func completeResponse() {
        responseDone = true
        record(aborted: false)
        if !keepAlive || closeDelimited || !requestDone {
            closing = true
            current = nil
            transport.closeAfterFlush()
            return
        }
        current = nil
        transport.resumeReading([.backPressure, .pipelined, .peerFinished])  // the next request, or the end
        arm(idle: true)
        transport.loop.execute { self.process() }
    }

    /// A complete error response with a short text body (none for HEAD).
    func respondError(_ status: Int, _ message: String, close: Bool, retryAfter: Bool, fields: HTTPHeaders) {
        services.logger.info("answered " + String(status) + ": " + message)
        if close || !requestDone { keepAlive = false }
        let r = ShortResponse.error(status, message, fields: fields, retryAfter: retryAfter ? Exchange.retryAfterSeconds : nil,
                                    close: !keepAlive)
        flushHead()
        var out = HTTP1Writer.responseHead(r.head)
        if !isHEAD { out += r.body }
        transport.write(out)
        responseStatus = status
        responseBytes = isHEAD ? 0 : r.body.count
        if close { queued.removeAll() }
        chunkedResponse = false
        completeResponse()
    }

    /// Ends the connection abruptly: the user sees a broken response, never a truncated one as complete.
    func abort(_ why: String) {
        services.logger.warning("aborting user connection: " + why)
        record(aborted: true)
        flushHead()
        closing = true
        current?.userGone()
        current = nil
        transport.close()
    }

    /// One access log line and the metrics for the request just answered (or cut).
    private func record(aborted: Bool) {
        guard let r = logged else { return }
        logged = nil
        services.recorder.requestDone(AccessLog.Request(client: transport.peer.description, host: r.host, method: r.method, target: r.target, start: r.start),
                            status: responseStatus, bytes: responseBytes, aborted: aborted, exchange: current)
    }

    // MARK: Time limits and shutdown

    private func arm(idle waitingForFirstByte: Bool) {
        services.loop.cancel(timer)
        idle = waitingForFirstByte
        if waitingForFirstByte { idleSince = services.loop.now }
        let ms = waitingForFirstByte ? services.owner.userIdleTimeoutMs : services.config.requestTimeoutMs
        timer = services.loop.schedule(afterMilliseconds: ms) {
            self.timer = nil
            self.timedOut()
        }
    }

    /// The user must send some of the request body within `request_timeout_ms` of the
    /// head or of the last piece (slowloris on bodies): a device that streams its
    /// answer while it reads would otherwise hold the stream for as long as the user likes.
    private func armBody() {
        services.loop.cancel(timer)
        bodyTimerArmed = true
        timer = services.loop.schedule(afterMilliseconds: services.config.requestTimeoutMs) {
            self.timer = nil
            self.bodyTimerArmed = false
            self.bodyStalled()
        }
    }

    private func disarmBody() {
        services.loop.cancel(timer)
        timer = nil
        bodyTimerArmed = false
    }

    private func bodyStalled() {
        guard !closing, !requestDone, let ex = current else { return }
        let why = "the request body stalled: nothing for " + String(services.config.requestTimeoutMs) + " ms"
        if responseStatus == 0 {
            ex.userGone()  // the device stops working on it
            current = nil
            respondError(408, why, close: true, retryAfter: false)
        } else {
            abort(why)  // the answer already started: cut it, never let it look complete
        }
    }

    private func timedOut() {
        guard !closing, current == nil else { return }
        if idle || transport.state != .open {
            transport.close()  // idle keep-alive, or a TLS handshake that never finished
        } else {
            requestDone = true
            respondError(408, "the request head did not arrive in time", close: true, retryAfter: false)
        }
    }

    private func closed() {
        record(aborted: true)
        closing = true
        services.loop.cancel(timer)
        timer = nil
        current?.userGone()
        current = nil
        queued.removeAll()
        services.owner.userConnectionClosed(self)
    }

    /// Graceful stop: close now when idle, else after the response in progress.
    func goAway() {
        goingAway = true
        keepAlive = false
        if current == nil && responseDone && queued.isEmpty { transport.closeAfterFlush() }
    }
}
