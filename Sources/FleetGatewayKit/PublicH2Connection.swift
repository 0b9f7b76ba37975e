// PublicH2Connection is a user's HTTP/2 connection (ALPN h2 on the TLS listener,
// prior-knowledge h2c on the plain one). Each stream is a PublicStream, the
// user side of one Exchange, exactly as an HTTP/1.1 connection is for its
// requests. WebSockets arrive as extended CONNECT (RFC 8441) and go to the
// device the same way; a CONNECT without :protocol (RFC 9113 §8.5, issue 14) is
// a TCP tunnel to the port its :authority names, on the same path. Limits: at most `public_max_streams` concurrent streams, and a user
// who resets streams faster than `resetsPerSecond` (rapid reset, CVE-2023-44487)
// gets GOAWAY(ENHANCE_YOUR_CALM) and is closed. Request bodies: see UploadWindow
// (memory) and PublicStream (timeouts, content-length).
import EventLoop
import HTTP1
import HTTP2
import TLS
import Wire

final class PublicH2Connection {
    let services: UserServices
    let connection: HTTP2Connection
    let scheme: String
    private var streams: [Int32: PublicStream] = [:]
    private var resets: [UInt64] = []
    static let resetsPerSecond = 200
    private var idleTimer: TimerID?
    /// Since when no stream has been open (for the gateway's descriptor budget).
    private(set) var idleSince: UInt64?
    /// A stream has been opened: idleness is now keep-alive (idle_timeout_ms, shorter
    /// under pressure), not a connection that never asked for anything (request_timeout_ms).
    private var hadStream = false
    /// The receive windows of the open streams, together (UploadWindow.connectionBudget).
    var windowSum = 0

    init(services: UserServices, transport: Transport, scheme: String) throws(HTTP2Error) {
        self.services = services
        self.scheme = scheme
        var settings = HTTP2Settings()
        settings.maxConcurrentStreams = UInt32(services.config.publicMaxStreams)
        settings.enableConnectProtocol = true
        // A request's header block is bounded as an HTTP/1.1 head is (431 past it).
        settings.maxHeaderListSize = UInt32(services.config.maxHeadBytes)
        settings.maxHeaderFields = 100
        settings.initialWindowSize = Int32(UploadWindow.initial)
        // Never the one that stalls: every stream stays within its own window.
        settings.connectionWindowSize = Int32(UploadWindow.connectionBudget + services.config.publicMaxStreams * UploadWindow.initial)
        let session = try HTTP2Session(role: .server, preface: .standard, settings: settings)
        connection = HTTP2Connection(transport: transport, session: session, logger: services.logger, context: LogContext())
    }

    var transport: Transport { connection.transport }

    func start(first: [UInt8]) {
        connection.onEvent = { event in self.handle(event) }
        connection.onClose = { _ in self.closed() }
        connection.start()
        armIdle()
        if !first.isEmpty { connection.feed(first) }
    }

    private func handle(_ event: HTTP2Event) {
        switch event {
        case .headers(let id, let headers, let endStream):
            if let s = streams[id] {
                if endStream { s.userEnded() }  // trailers end the request
                return
            }
            begin(id, headers, endStream: endStream)
        case .headersTooLarge(let id, _):
            guard streams[id] == nil else { return }  // trailers: the session reset the stream
            openStream(id).respondError(431, "request header block over " + String(services.config.maxHeadBytes) + " bytes or 100 fields")
        case .data(let id, let bytes):
            if let s = streams[id] { s.userData(bytes) } else { consume(id, bytes.count) }
        case .endStream(let id):
            streams[id]?.userEnded()
        case .streamClosed(let id, let code):
            guard let s = streams.removeValue(forKey: id) else { return }
            s.closed(errorCode: code)
            giveBack(s)
            if code != 0 && !s.responseComplete { countReset() }
            if streams.isEmpty { armIdle() }
        case .settings, .pingAck, .goaway:
            break
        }
    }

    /// A new stream: the connection is busy, and the stream's window joins its budget.
    private func openStream(_ id: Int32) -> PublicStream {
        services.loop.cancel(idleTimer)
        idleTimer = nil
        idleSince = nil
        hadStream = true
        let s = PublicStream(conn: self, id: id)
        streams[id] = s
        windowSum += s.window
        return s
    }

    private func begin(_ id: Int32, _ headers: HTTPHeaders, endStream: Bool) {
        let s = openStream(id)
        s.requestEnded = endStream
        // Without :method or :path (nghttp2 resets such a stream first) the :path check below answers 400.
        let head = (try? HTTPTranslation.http1Request(fromHTTP2: headers)) ?? HTTPRequestHead(method: "", target: "")
        let method = head.method, path = head.target
        let authority = head.headers.first("host") ?? ""
        s.logged = (method, path, authority.isEmpty ? "-" : authority, services.loop.now)
        // :path as an HTTP/1.1 target would be (RFC 9113 §8.3.1): origin-form, or "*" for
        // OPTIONS; a CONNECT carries none unless extended (RFC 8441: origin-form).
        if method == "CONNECT" ? (headers.first(":protocol") != nil && !path.hasPrefix("/"))
                               : !RequestTarget.isValidH2Path(method: method, path: path) {
            s.respondError(400, "invalid :path for " + method + " (origin-form, or * for OPTIONS)")
            return
        }
        // Host, when sent beside :authority, must name the same (RFC 9113 §8.3.1): one authority routes.
        if let a = headers.first(":authority"), let h = headers.first("host"),
           HostRouting.asciiLowercased(a) != HostRouting.asciiLowercased(h) {
            s.respondError(400, ":authority and host differ")
            return
        }
        guard let host = HostRouting.routingKey(authority) else {
            s.respondError(400, "the request names no valid device host ('" + authority + "')")
            return
        }
        let proto = headers.first(":protocol")
        if method == "CONNECT" && proto != nil && !WebSocketUpgrade.isWebSocketProtocol(proto!) {
            s.respondError(405, "only the websocket protocol is supported")
            return
        }
        if method == "CONNECT" && proto == nil {
            guard let target = HostRouting.connectTarget(authority) else {
                s.respondError(400, "CONNECT needs a device host and a port 1-65535 ('" + authority + "')")
                return
            }
            let ex = Exchange(client: s, request: head, authority: authority, hostname: target.host)
            s.exchange = ex
            s.isWebSocket = true  // a tunnel: its DATA are the TCP bytes, untimed
            s.isConnect = true
            ex.startConnect(port: target.port)
            if endStream { ex.userEnd() }  // END_STREAM on the HEADERS: the user's side is over already
            return
        }
        // An upload's window is what its user may park here: all of them together
        // stay within the gateway's budget (a WebSocket's bytes are not an upload).
        if !endStream && method != "CONNECT" {
            guard services.uploads.windows + s.window <= services.config.uploadBudgetBytes else {
                s.respondError(503, "the gateway holds as many uploads as it may; try again", close: false, retryAfter: true)
                return
            }
            services.uploads.windows += s.window
            s.countsAsUpload = true
        }
        let ex = Exchange(client: s, request: head, authority: authority, hostname: host)
        s.exchange = ex
        if method == "CONNECT" {
            s.isWebSocket = true
            ex.startWebSocket()
            return
        }
        // nghttp2 checks DATA against content-length (RFC 9113 §8.1.1), but only as
        // it arrives, and a device's local API takes a request as complete once it
        // has content-length bytes. So the end of a declared body goes to the device
        // only with the user's END_STREAM: a request with content-length 0 waits for
        // it whole, a longer one keeps its last bytes back (PublicStream.userData).
        let declared = headers.first("content-length").flatMap { Int($0) }
        s.declaredLength = declared
        if !endStream && declared == 0 {
            s.startsWhenEnded = true
            s.watchBody()
            return
        }
        ex.start(requestHasBody: !endStream)
        s.watchBody()
    }

    /// A stream may grow its window by `by` bytes: within this connection's budget and the gateway's.
    func mayGrowWindow(by: Int) -> Bool {
        windowSum + by <= UploadWindow.connectionBudget
            && services.uploads.growth + by <= UploadWindow.globalGrowthBudget
            && services.uploads.windows + by <= services.config.uploadBudgetBytes
    }

    func windowGrew(by: Int) {
        windowSum += by
        services.uploads.growth += by
        services.uploads.windows += by  // only uploads grow
    }

    /// A stream is gone: its window leaves the budgets.
    private func giveBack(_ s: PublicStream) {
        windowSum -= s.window
        services.uploads.growth -= s.window - UploadWindow.initial
        if s.countsAsUpload { services.uploads.windows -= s.window }
    }

    /// An upload can park no more bytes here: its window leaves the gateway's budget.
    func uploadSettled(_ s: PublicStream) {
        services.uploads.windows -= s.window
    }

    /// Rapid reset: more than `resetsPerSecond` streams cancelled by the user in a second.
    private func countReset() {
        let now = services.loop.now
        resets.append(now)
        resets.removeAll { now &- $0 > 1_000_000_000 }
        if resets.count > PublicH2Connection.resetsPerSecond {
            services.logger.warning("user " + transport.peer.description + " resets streams too fast; closing")
            connection.session.goaway(errorCode: 11)  // ENHANCE_YOUR_CALM
            connection.flush()
            transport.closeAfterFlush()
        }
    }

    /// No stream open: close after `request_timeout_ms` if none ever was (a preface,
    /// SETTINGS or PINGs are nothing to wait for), else after the (pressure-adjusted) idle timeout.
    private func armIdle() {
        services.loop.cancel(idleTimer)
        idleSince = services.loop.now
        let ms = hadStream ? services.owner.userIdleTimeoutMs : services.config.requestTimeoutMs
        idleTimer = services.loop.schedule(afterMilliseconds: ms) {
            self.idleTimer = nil
            if self.streams.isEmpty { self.goAway() }
        }
    }

    func consume(_ id: Int32, _ count: Int) {
        connection.session.consume(stream: id, count: count)
        connection.scheduleFlush()
    }

    /// Graceful stop: no new streams; close once the open ones are done.
    func goAway() {
        connection.session.goaway(errorCode: 0)
        connection.flush()
        if streams.isEmpty { transport.closeAfterFlush() }
    }

    private func closed() {
        services.loop.cancel(idleTimer)
        idleTimer = nil
        let all = streams
        streams.removeAll()
        for (_, s) in all {
            s.closed(errorCode: 8)
            giveBack(s)
        }
        services.owner.userConnectionClosed(self)
    }
}

/// One stream of a user's HTTP/2 connection: the user side of an Exchange.
///
/// Request body: the stream's window (UploadWindow) reopens only for the bytes the
/// device has taken, so what the gateway holds for it is at most its window. While
/// the gateway holds none, the user has the whole window and must use it: a body
/// that makes no progress for `request_timeout_ms` gets 408 (or, answer started,
/// RST_STREAM) and the device's stream is reset, as on HTTP/1.1.
final class PublicStream: UserSide {
    unowned let conn: PublicH2Connection
    let id: Int32
    var exchange: Exchange?
    private var ended = false
    private(set) var responseComplete = false
    /// An extended CONNECT (or a CONNECT): after 200, the stream's DATA is the tunnel's bytes.
    var isWebSocket = false
    /// A CONNECT to a TCP port: its resets are CONNECT_ERROR (RFC 9113 §8.5).
    var isConnect = false
    /// The stream is gone (`closed`): its window went back with `giveBack`.
    private var isClosed = false
    /// The receive window this stream has (UploadWindow.initial, doubled as the device keeps up).
    private(set) var window = UploadWindow.initial
    /// A request with a body, admitted within `upload_budget_bytes`.
    var countsAsUpload = false
    /// DATA bytes received and not yet acknowledged to the user (consumed).
    private var owed = 0
    /// The user's END_STREAM arrived.
    var requestEnded = false
    /// The request's content-length, and the body bytes received so far.
    var declaredLength: Int?
    private var received = 0
    /// The bytes that complete a declared body, kept until the user's END_STREAM.
    private var tail: [UInt8] = []
    /// content-length: 0 without END_STREAM: the exchange starts once the stream ends.
    var startsWhenEnded = false
    private var bodyTimer: TimerID?
    private var lastBodyProgress: UInt64 = 0
    /// The request as the access log names it, and the answer so far.
    var logged: (method: String, target: String, host: String, start: UInt64)?
    private var responseStatus = 0
    private var responseBytes = 0

    init(conn: PublicH2Connection, id: Int32) {
        self.conn = conn
        self.id = id
    }

    var services: UserServices { conn.services }
    var scheme: String { conn.scheme }
    var peerHost: String { conn.transport.peer.host }
    var tls: TLSConnection? { conn.transport.tls }
    private var session: HTTP2Session { conn.connection.session }
    var bufferedOutput: Int { session.pendingBody(stream: id) }

    /// Request DATA: goes to the exchange, except the bytes that complete a declared
    /// body, which wait for END_STREAM (nghttp2 resets the stream if more DATA comes).
    func userData(_ bytes: [UInt8]) {
        owed += bytes.count
        received += bytes.count
        lastBodyProgress = services.loop.now
        if let exchange {
            if let n = declaredLength, received >= n, !requestEnded, !isWebSocket {
                tail += bytes
            } else {
                exchange.userBody(bytes)
            }
        } else {
            ended = true
        }
        release()
    }

    /// END_STREAM (or trailers) from the user: the request is complete and valid.
    func userEnded() {
        requestEnded = true
        services.loop.cancel(bodyTimer)
        bodyTimer = nil
        guard let exchange else { return }
        if startsWhenEnded {
            startsWhenEnded = false
            exchange.start(requestHasBody: false)
            return
        }
        if !tail.isEmpty {
            let t = tail
            tail = []
            exchange.userBody(t)
        }
        exchange.userEnd()
        release()
    }

    /// Acknowledges the request bytes no longer in the gateway (taken by the device,
    /// or dropped once the exchange is over); what it still holds keeps its window
    /// closed, and a watch on the device's queue brings us back as that drains.
    private func release() {
        // A device queue's drain callback (pauseIfBacklogged, whenRequestQueue) may come
        // after the stream closed, and its connection (unowned) with it: nothing is left to give back.
        guard !isClosed else { return }
        let holding = (exchange?.requestBytesHeld ?? 0) + tail.count
        let n = owed - holding
        if n > 0 {
            let windowWasBusy = owed >= window / 2
            owed -= n
            conn.consume(id, n)
            if holding == 0 && windowWasBusy { grow() }
        }
        if holding > tail.count {
            exchange?.whenRequestQueue(isAtMost: (holding - tail.count) / 2) { self.release() }
        }
        watchBody()
        settleUpload()
    }

    /// Ends this upload's share of `upload_budget_bytes` once it can park nothing more
    /// here: the answer is out (what the user still sends is dropped), or the request
    /// ended and the device took all of it. A stream whose answer the user never reads
    /// must not hold the budget that every other user's uploads need.
    private func settleUpload() {
        guard countsAsUpload else { return }
        let parked = (exchange?.requestBytesHeld ?? 0) + tail.count
        guard ended || responseComplete || (requestEnded && parked == 0) else { return }
        countsAsUpload = false
        conn.uploadSettled(self)
    }

    /// The device took all the user sent while the user had filled half the window:
    /// the window, not the device, limits the upload. Double it, within the budgets.
    private func grow() {
        let by = min(window, UploadWindow.maximum - window)
        guard by > 0, !requestEnded, countsAsUpload, conn.mayGrowWindow(by: by) else { return }
        window += by
        conn.windowGrew(by: by)
        session.setReceiveWindow(stream: id, size: Int32(window))
        conn.connection.scheduleFlush()
    }

    /// Times the user's request body while the gateway holds none of it (the window
    /// is open: any stall is the user's). WebSockets have no such limit.
    func watchBody() {
        guard bodyTimer == nil else { return }
        guard !requestEnded, !isWebSocket, let exchange, exchange.isActive, exchange.requestBytesHeld == 0 else { return }
        lastBodyProgress = services.loop.now
        armBodyTimer(afterMilliseconds: services.config.requestTimeoutMs)
    }

    private func armBodyTimer(afterMilliseconds ms: Int) {
        bodyTimer = services.loop.schedule(afterMilliseconds: ms) {
            self.bodyTimer = nil
            self.bodyTimerFired()
        }
    }

    private func bodyTimerFired() {
        guard !requestEnded, let exchange, exchange.isActive else { return }
        if exchange.requestBytesHeld > 0 { return }  // the device's turn: release() re-arms once it took them
        let limit = UInt64(services.config.requestTimeoutMs) * 1_000_000
        let idle = services.loop.now &- lastBodyProgress
        if idle < limit {
            armBodyTimer(afterMilliseconds: Int((limit - idle) / 1_000_000) + 1)
            return
        }
        exchange.userStalled()
    }

    func pauseReading() {}  // the window stays closed by itself: release() acknowledges only what the device took

    func resumeReading() { release() }

    func writeContinue() {}  // HTTP/2 clients send the body without waiting

    func writeHead(_ head: HTTPResponseHead, noBody: Bool) {
        responseStatus = head.status
        submit(HTTPTranslation.http2Response(from: head), endStream: noBody)
        if noBody { ended = true }
    }

    func writeBody(_ bytes: [UInt8]) {
        guard !ended, !bytes.isEmpty else { return }
        responseBytes += bytes.count
        session.sendData(stream: id, bytes, endStream: false)
        conn.connection.scheduleFlush()
        // The device's window reopens as the user's stream drains (Exchange.settleCredit).
        let ex = exchange
        conn.connection.whenQueue(stream: id, isAtMost: BackPressure.lowWater) { ex?.userDrained() }
    }

    func writeEnd(trailers: HTTPHeaders) {
        responseComplete = true
        guard !ended else { return }
        ended = true
        // A response complete before its request: RST_STREAM(NO_ERROR) after it tells
        // the user to stop sending (RFC 9113 §8.1); the stream does not linger.
        if trailers.isEmpty {
            session.sendData(stream: id, [], endStream: true, resetAfter: !requestEnded)
        } else {
            session.sendTrailers(stream: id, trailers, resetAfter: !requestEnded)
        }
        conn.connection.scheduleFlush()
        settleUpload()
    }

    func respondError(_ status: Int, _ message: String, close: Bool, retryAfter: Bool, fields: HTTPHeaders) {
        services.logger.info("answered " + String(status) + ": " + message)
        let r = ShortResponse.error(status, message, fields: fields, retryAfter: retryAfter ? Exchange.retryAfterSeconds : nil)
        let isHEAD = exchange?.request.method == "HEAD"
        responseStatus = status
        responseBytes = isHEAD ? 0 : r.body.count
        submit(HTTPTranslation.http2Response(from: r.head), endStream: isHEAD)
        if !isHEAD { session.sendData(stream: id, r.body, endStream: true, resetAfter: !requestEnded) }
        ended = true
        responseComplete = true
        conn.connection.scheduleFlush()
        settleUpload()
    }

    func abort(_ why: String) {
        services.logger.warning("resetting user stream: " + why)
        session.resetStream(id, errorCode: isConnect ? 0xa : 2)
        ended = true
        conn.connection.scheduleFlush()
        settleUpload()
    }

    /// The device took the WebSocket: 200 (RFC 8441 §5), then bytes both ways.
    func switchProtocols(accept: String, fields: HTTPHeaders) {
        var h = HTTPHeaders()
        h.add(":status", "200")
        for (n, v) in fields { h.add(n, v) }
        submit(h, endStream: false)
    }

    /// The device's port answered the CONNECT: 200 (no END_STREAM), then DATA both ways.
    /// The access line is the CONNECT's answer; the tunnel gets its own when it ends.
    func connectEstablished() {
        var h = HTTPHeaders()
        h.add(":status", "200")
        submit(h, endStream: false)
        responseStatus = 200
        record(aborted: false)
    }

    /// The device ended its side of the CONNECT tunnel: END_STREAM to the user, whose
    /// DATA still flow (the stream is half-closed; the exchange is not over).
    func tunnelOutputFinished() {
        guard !ended else { return }
        ended = true
        session.sendData(stream: id, [], endStream: true)
        conn.connection.scheduleFlush()
    }

    /// The device ended its side of the WebSocket (or both sides of a CONNECT tunnel ended): end ours.
    func tunnelEnded() {
        responseComplete = true
        guard !ended else { return }
        ended = true
        session.sendData(stream: id, [], endStream: true)
        conn.connection.scheduleFlush()
    }

    /// The access log line and the metrics of this stream's request, once.
    private func record(aborted: Bool) {
        guard let r = logged else { return }
        logged = nil
        services.recorder.requestDone(AccessLog.Request(client: conn.transport.peer.description, host: r.host, method: r.method, target: r.target, start: r.start),
                            status: responseStatus, bytes: responseBytes, aborted: aborted, exchange: exchange)
    }

    private func submit(_ h: HTTPHeaders, endStream: Bool) {
        do throws(HTTP2Error) {
            try session.submitResponse(stream: id, h, endStream: endStream)
        } catch {
            session.resetStream(id, errorCode: 2)
        }
        conn.connection.scheduleFlush()
    }

    /// The stream is gone (done, or reset by the user).
    func closed(errorCode: UInt32) {
        isClosed = true
        record(aborted: !responseComplete)
        if !responseComplete { exchange?.userGone() }
        services.loop.cancel(bodyTimer)
        bodyTimer = nil
        if owed > 0 { conn.consume(id, owed) }
        owed = 0
        exchange = nil
    }
}
