// PublicConnection is one user's HTTP/1.1 connection to the public listener. It
// parses requests (strictly: see HTTP1RequestParser), runs them one at a time
// through an Exchange, and writes the responses back in order. While a request
// is in flight, a pipelined one waits in the parser's output and the socket is
// not read, so a pipelining client cannot make the gateway buffer for it.
//
// What happens when is decided by HTTP1ServerStateMachine: this class feeds it
// events and carries out its actions (reading paused or resumed for a reason, the
// one timer armed on the loop, exchanges started, bytes written, the connection
// closed).
//
// Time limits: a complete request head within `request_timeout_ms` (counted from
// the connection's start, which includes the TLS handshake, or from the first
// byte of a later request), some of the request body every `request_timeout_ms`
// while it arrives (unless the gateway itself paused reading it), and at most
// `idle_timeout_ms` of keep-alive idleness. A tunnel (WebSocket, CONNECT) has none:
// once open it lasts until either side ends it or the connection fails.
//
// CONNECT host:port (issue 14): the device named as by Host, the port required
// (an IPv6 or IPv4 literal names no device: 400); `200 Connection established`
// once the device's port answered, then raw bytes both ways.
import EventLoop
import HTTP1
import TLS
import Wire

final class PublicConnection: UserSide {
    typealias Machine = HTTP1ServerStateMachine

    let services: UserServices
    let transport: Transport
    let scheme: String
    private var parser: HTTP1RequestParser
    private var queued: [HTTP1Event<HTTPRequestHead>] = []
    private var current: Exchange?
    private var machine = Machine()
    private var timer: TimerID?
    /// The request being answered, for the access log and the metrics.
    private var logged: (method: String, target: String, host: String, start: UInt64)?
    private var responseStatus = 0
    private var responseBytes = 0
    /// A response head held back until the first body bytes, so that a small
    /// response leaves in one send (and one TCP segment), not two; written at the
    /// end of this loop turn at the latest.
    private var pendingHead: [UInt8] = []
    /// Since when no request has been in progress (for the gateway's descriptor budget).
    var idleSince: UInt64? { machine.idleSince }

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
        perform(machine.exchangePaused())
    }

    func resumeReading() {
        perform(machine.exchangeResumed())
    }

    /// `first`: bytes already read by the protocol sniffer, parsed before anything else.
    func start(first: [UInt8] = []) {
        transport.onData = { bytes in self.receive(Array(bytes)) }
        transport.onDrained = { self.current?.userDrained() }
        transport.onPeerFinished = { self.peerFinished() }
        transport.onClose = { _ in self.closed() }
        perform(machine.start(now: services.loop.now))
        if !first.isEmpty { receive(first) }
    }

    // MARK: Requests in

    private func receive(_ bytes: [UInt8]) {
        switch machine.bytesReceived() {
        case .drop:
            return
        case .tunnel:
            current?.userBody(bytes)
        case .parse(let actions):
            perform(actions)
            do throws(HTTP1Error) {
                queued += try parser.feed(bytes)
            } catch {
                rejectMalformed(error)
                return
            }
            process()
        }
    }

    private func peerFinished() {
        perform(machine.peerFinished(requestQueued: !queued.isEmpty))
    }

    private func rejectMalformed(_ error: HTTP1Error) {
        queued.removeAll()
        perform(machine.malformed(error))
    }

    /// Feeds queued parser events to the current exchange, starting the next one when
    /// the previous response is complete.
    private func process() {
        while !queued.isEmpty && !machine.isClosing {
            switch queued[0] {
            case .head(let head):
                switch machine.requestHead(head) {
                case .wait(let actions), .stop(let actions):
                    perform(actions)
                    return
                case .begin(let start, let actions):
                    queued.removeFirst()
                    perform(actions)
                    begin(head, start)
                }
            case .body(let bytes):
                queued.removeFirst()
                current?.userBody(bytes)
            case .end:
                queued.removeFirst()
                perform(machine.requestEnd())
            }
        }
    }

    private func begin(_ received: HTTPRequestHead, _ start: Machine.Start) {
        // One authority routes the request and names it in the log: the target's in
        // absolute-form (the Host field is then ignored, RFC 9112 §3.2.2), else Host.
        let form = RequestTarget.classify(method: received.method, target: received.target)
        let authority = form?.authority ?? received.headers.first("host") ?? ""
        var head = received
        if let path = form?.path { head.target = path }
        logged = (head.method, received.target, authority.isEmpty ? "-" : authority, services.loop.now)
        responseStatus = 0
        responseBytes = 0
        guard let form else {
            respondError(400, "invalid request target for " + head.method + " (RFC 9112 §3.2)", close: true, retryAfter: false)
            return
        }
        if head.method == "CONNECT" {
            beginConnect(head, authority: authority)
            return
        }
        if case .absolute = form { head.headers.replace("Host", authority) }
        guard let host = HostRouting.routingKey(authority) else {
            respondError(400, "the request names no valid device host ('" + authority + "')", close: true, retryAfter: false)
            return
        }
        guard start != .refuseUpgrade else {
            upgradeRequired()
            return
        }
        let ex = Exchange(client: self, request: head, authority: authority, hostname: host)
        current = ex
        if case .exchange(let hasBody) = start {
            ex.start(requestHasBody: hasBody)
        } else {
            ex.startWebSocket()
        }
    }

    /// CONNECT dev1.devices.example.com:22: a tunnel to that port of the device.
    private func beginConnect(_ head: HTTPRequestHead, authority: String) {
        guard let (host, port) = HostRouting.connectTarget(authority) else {
            respondError(400, "CONNECT needs a device host and a port 1-65535 ('" + authority + "')", close: true, retryAfter: false)
            return
        }
        let framing: BodyFraming? = try? HTTP1RequestParser.framing(of: head)
        guard framing == BodyFraming.none else {
            respondError(400, "a CONNECT request has no body", close: true, retryAfter: false)
            return
        }
        let ex = Exchange(client: self, request: head, authority: authority, hostname: host)
        current = ex
        ex.startConnect(port: port)
    }

    // MARK: Responses out (called by Exchange)

    /// `100 Continue` for a user who asked for it, once a device took the request.
    func writeContinue() {
        perform(machine.continueRequested())
    }

    /// A WebSocket handshake we cannot take (RFC 6455 §4.2.2): 426 with the version we speak.
    private func upgradeRequired() {
        let r = ShortResponse.error(426, "WebSocket handshake needs Sec-WebSocket-Version: 13 and a 16-byte key",
                                    fields: HTTPHeaders([("Sec-WebSocket-Version", "13")]), close: true)
        responseStatus = 426
        transport.write(HTTP1Writer.responseHead(r.head) + r.body)
        completeResponse()
    }

    /// The device accepted the WebSocket: 101, then bytes both ways.
    func switchProtocols(accept: String, fields: HTTPHeaders) {
        let actions = machine.switchedProtocols()
        guard actions.contains(.writeSwitchingProtocols) else {
            perform(actions)
            return
        }
        var h = HTTPHeaders()
        h.add("Upgrade", "websocket")
        h.add("Connection", "Upgrade")
        h.add("Sec-WebSocket-Accept", accept)
        for (n, v) in fields { h.add(n, v) }
        transport.write(HTTP1Writer.responseHead(HTTPResponseHead(status: 101, versionMinor: 1, headers: h)))
        responseStatus = 101
        // Bytes that came with the upgrade request first: the actions may end the user's side.
        let early = parser.takeUnparsed()
        if !early.isEmpty { current?.userBody(early) }
        perform(actions)
    }

    /// The device's port answered the CONNECT: 200, then bytes both ways. The access
    /// line is the CONNECT's answer; the tunnel gets its own line when it ends (Exchange).
    func connectEstablished() {
        let actions = machine.connectEstablished()
        guard actions.contains(.writeConnectEstablished) else {
            perform(actions)
            return
        }
        transport.write(Array("HTTP/1.1 200 Connection established\r\n\r\n".utf8))
        responseStatus = 200
        record(aborted: false)
        let early = parser.takeUnparsed()
        if !early.isEmpty { current?.userBody(early) }
        perform(actions)
    }

    /// The device ended its side of the CONNECT tunnel: FIN (close_notify) to the user, who may go on sending.
    func tunnelOutputFinished() {
        perform(machine.tunnelOutputFinished())
    }

    /// The device ended its side of the WebSocket (or both sides of a CONNECT tunnel ended).
    func tunnelEnded() {
        current = nil
        perform(machine.tunnelEnded())
    }

    func writeHead(_ head: HTTPResponseHead, noBody: Bool) {
        switch machine.responseHead(hasContentLength: head.headers.contains("content-length"), noBody: noBody) {
        case .ignore:
            return
        case .abort(let why):
            abort(why)
        case .write(let framing, let persistence):
            var h = head
            if framing == .chunked { h.headers.add("Transfer-Encoding", "chunked") }
            if persistence == .close { h.headers.add("Connection", "close") }
            h.reason = HTTP1Writer.reasonPhrase(h.status)
            responseStatus = h.status
            flushHead()
            pendingHead = HTTP1Writer.responseHead(h)
            transport.loop.execute { self.flushHead() }
        }
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
        guard !bytes.isEmpty else { return }
        switch machine.responseBody() {
        case .discard:
            return
        case .abort(let why):
            abort(why)
        case .raw:
            responseBytes += bytes.count
            writeAfterHead(bytes)
        case .chunked:
            responseBytes += bytes.count
            writeAfterHead(HTTP1Writer.chunk(bytes))
        }
    }

    func writeEnd(trailers: HTTPHeaders) {
        if chunkedResponse { writeAfterHead(HTTP1Writer.lastChunk(trailers: trailers)) }
        flushHead()
        completeResponse()
    }

    private func completeResponse() {
        record(aborted: false)
        current = nil
        perform(machine.responseEnd(now: services.loop.now))
    }

    // MARK: What respondError reads and sets, in the machine

    private var requestDone: Bool { machine.requestComplete }
    private var isHEAD: Bool { machine.isHEAD }
    /// Set to false: the response in progress is the connection's last.
    private var keepAlive: Bool {
        get { machine.keepsAlive }
        set { if !newValue { machine.closeAfterResponse() } }
    }
    /// The response in progress is chunked; an error answer (framed by its
    /// Content-Length, written whole) sets it to false, which changes nothing here.
    private var chunkedResponse: Bool {
        get { machine.responseBody() == .chunked }
        set {}
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
        perform(machine.closed())
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

    // MARK: Carrying out the machine's actions

    private func perform(_ actions: [Machine.Action]) {
        for action in actions {
            switch action {
            case .pauseReading(let why):
                transport.pauseReading(why)
            case .resumeReading(let why):
                transport.resumeReading(why)
            case .armTimer(let kind):
                arm(kind)
            case .cancelTimer:
                services.loop.cancel(timer)
                timer = nil
            case .endRequestBody:
                current?.userEnd()
            case .dropExchange:
                current?.userGone()  // the device stops working on it
                current = nil
            case .processQueued:
                transport.loop.execute { self.process() }
            case .checkEndOfInput:
                do throws(HTTP1Error) {
                    queued += try parser.feedEOF()
                } catch {
                    abort("the request ended before it was complete")
                    return
                }
            case .writeContinue:
                transport.write(Array("HTTP/1.1 100 Continue\r\n\r\n".utf8))
            case .writeSwitchingProtocols, .writeConnectEstablished:
                break  // written by switchProtocols, connectEstablished
            case .finishWriting:
                transport.finishWriting()
            case .respond(let status, let message):
                respondError(status, message, close: true, retryAfter: false)
            case .closeAfterFlush:
                current = nil
                transport.closeAfterFlush()
            case .closeNow:
                transport.close()
            case .abort(let why):
                abort(why)
                return
            }
        }
    }

    // MARK: Time limits and shutdown

    /// The head and idle timers, and the body timer: the user must send some of the
    /// request body within `request_timeout_ms` of the head or of the last piece
    /// (slowloris on bodies): a device that streams its answer while it reads would
    /// otherwise hold the stream for as long as the user likes.
    private func arm(_ kind: Machine.TimerKind) {
        services.loop.cancel(timer)
        let ms = kind == .idle ? services.owner.userIdleTimeoutMs : services.config.requestTimeoutMs
        timer = services.loop.schedule(afterMilliseconds: ms) {
            self.timer = nil
            self.perform(self.machine.timerFired(kind, transportOpen: self.transport.state == .open,
                                                 timeoutMs: self.services.config.requestTimeoutMs))
        }
    }

    private func closed() {
        record(aborted: true)
        perform(machine.closed())
        services.loop.cancel(timer)
        timer = nil
        current?.userGone()
        current = nil
        queued.removeAll()
        services.owner.userConnectionClosed(self)
    }

    /// Graceful stop: close now when idle, else after the response in progress.
    func goAway() {
        perform(machine.shutdown(requestQueued: !queued.isEmpty))
    }
}
