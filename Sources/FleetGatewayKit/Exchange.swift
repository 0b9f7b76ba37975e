// Exchange is one user request on its way to a device and back: the only object
// that knows both the public connection and the device connection. It owns the
// response timeout and the error answer (503 no device, 502 bad or broken
// response, 504 no response in time), and the back-pressure between the two
// sides (see Wire/BackPressure.swift).
//
// A CONNECT (issue 14) is an Exchange too: authorized with its port, carried to the
// device as `CONNECT 127.0.0.1:PORT`, and once the device answers 200 a tunnel on
// the WebSocket's path (same back-pressure, no response timeouts). Each side ends
// on its own: the user's end goes to the device as END_STREAM, the device's
// END_STREAM half-closes the user's connection (`tunnelOutputFinished`); the tunnel
// is over when both have ended, or at a reset either way.
import EventLoop
import FleetAccess
import HTTP1
import TLS
import Wire

/// The user's end of an Exchange: an HTTP/1.1 connection (PublicConnection) or
/// one stream of a user's HTTP/2 connection (PublicStream).
protocol UserSide: AnyObject {
    /// What the user's connection was given: loop, settings, logger, access control, queue.
    var services: UserServices { get }
    var scheme: String { get }
    var peerHost: String { get }
    /// The user's TLS connection (a user certificate may say who they are); nil on plain HTTP.
    var tls: TLSConnection? { get }
    /// Response bytes written but not yet taken by the user (back-pressure).
    var bufferedOutput: Int { get }
    /// Stop / resume taking request body from the user.
    func pauseReading()
    func resumeReading()
    func writeContinue()
    func writeHead(_ head: HTTPResponseHead, noBody: Bool)
    func writeBody(_ bytes: [UInt8])
    func writeEnd(trailers: HTTPHeaders)
    func respondError(_ status: Int, _ message: String, close: Bool, retryAfter: Bool, fields: HTTPHeaders)
    func abort(_ why: String)
    func switchProtocols(accept: String, fields: HTTPHeaders)
    func tunnelEnded()
    /// The device accepted the CONNECT: 200 to the user, then bytes both ways.
    func connectEstablished()
    /// The device ended its side of a CONNECT tunnel: half-close towards the user.
    func tunnelOutputFinished()
}

extension UserSide {
    func respondError(_ status: Int, _ message: String) { respondError(status, message, close: false, retryAfter: false) }
    func respondError(_ status: Int, _ message: String, retryAfter: Bool) {
        respondError(status, message, close: false, retryAfter: retryAfter)
    }
    func respondError(_ status: Int, _ message: String, close: Bool, retryAfter: Bool) {
        respondError(status, message, close: close, retryAfter: retryAfter, fields: HTTPHeaders())
    }
}

final class Exchange: DeviceStreamHandler, QueuedRequest {
    /// queued: no connection could take it yet (RequestQueue); waiting: sent, no answer yet.
    private enum Phase { case queued, waiting, streaming, done }

    let client: UserSide
    private let services: UserServices
    let request: HTTPRequestHead
    /// The request's authority: the absolute-form target's, else the Host field (RFC 9112 §3.2.2).
    let authority: String
    let hostname: String
    private var device: DeviceConnection?
    private var stream: Int32 = 0
    private var phase = Phase.queued
    private var requestHasBody = false
    /// Request body that arrived while queued, and whether it is complete.
    private var held: [UInt8] = []
    private var heldEnd = false
    private var retries = 0
    /// Some request body went to a device: the request can no longer be repeated.
    private var sentBody = false
    let startedAt: UInt64
    private(set) var status = 0
    private(set) var bytesOut = 0
    /// The response timeout while waiting; while streaming, the response body's idle timeout.
    private var timer: TimerID?
    /// When the device last sent response body, or last had its window reopened.
    private var lastResponseProgress: UInt64 = 0
    private var requestEnded = false
    /// Response bytes received from the device but not yet acknowledged to it.
    private var credit = FlowCredit()
    private var isHEAD: Bool { request.method == "HEAD" }
    /// A WebSocket: extended CONNECT to the device, 101 to the user.
    private var webSocket = false
    /// Who the user is (AccessControl), and what was decided; nil until decided.
    private(set) var access: AccessControl.Outcome?
    /// The device the request names (its canonical name, as the policy and the metrics see it).
    let deviceKey: String
    /// Request body bytes from the user.
    private(set) var bytesIn = 0
    /// A CONNECT to this TCP port of the device (RFC 9113 §8.5); nil for HTTP and WebSockets.
    private(set) var connectPort: Int?
    /// The device answered the CONNECT with 200: bytes flow.
    private var tunnelOpen = false
    /// The device sent END_STREAM on the tunnel.
    private var deviceEnded = false
    /// How an open tunnel ended (metrics, log); nil: both sides ended, or never opened.
    private var tunnelResult: String?
    private var tunnelRecorded = false

    init(client: UserSide, request: HTTPRequestHead, authority: String, hostname: String) {
        self.client = client
        self.request = request
        self.authority = authority
        self.hostname = hostname
        let services = client.services
        self.services = services
        deviceKey = services.config.hostnameTemplate.deviceName(for: hostname) ?? hostname
        startedAt = services.loop.now
    }

    var isQueued: Bool { phase == .queued }
    /// Not answered, failed or given up yet.
    var isActive: Bool { phase != .done }

    /// Request body bytes from the user that no device has taken yet: held while
    /// queued, or in the device stream's queue. None once the exchange is over.
    var requestBytesHeld: Int {
        guard phase != .done else { return 0 }
        return held.count + (device?.session.pendingBody(stream: stream) ?? 0)
    }

    /// Runs `callback` once the device stream's queue of request body is at most `mark` bytes.
    func whenRequestQueue(isAtMost mark: Int, _ callback: @escaping () -> Void) {
        guard phase != .done, let device else { return }
        device.connection.whenQueue(stream: stream, isAtMost: mark, callback)
    }
    var deviceName: String? { device?.identity.name }
    var connectionID: Int? { device?.id }

    /// Routes the request to a connection of the device that serves `hostname`; when
    /// none can take it now, it waits in the gateway's RequestQueue.
    func start(requestHasBody: Bool) {
        self.requestHasBody = requestHasBody
        authorizeThenRoute()
    }

    /// Access control first (AccessControl): a denied request is answered here and
    /// never reaches a device or its queue. Body bytes that arrive meanwhile are held.
    private func authorizeThenRoute() {
        let g = services
        // A WebSocket is a GET to the policy, whether it came as an HTTP/1.1 upgrade or an extended
        // CONNECT; a CONNECT to a TCP port is a CONNECT with no path and its port (ports= rules).
        let request = AccessRequest(principal: nil, device: deviceKey,
                                    method: connectPort != nil ? "CONNECT" : webSocket ? "GET" : self.request.method,
                                    path: connectPort != nil ? "" : self.request.target,
                                    source: ForwardedFields.clientAddress(self.request.headers, peer: client.peerHost,
                                                                          trusted: g.config.trustedProxies),
                                    port: connectPort)
        g.access.authorize(request, fields: self.request.headers, tls: client.tls) { outcome in
            guard self.phase == .queued else { return }
            self.access = outcome
            g.recorder.recordAccess(outcome, device: request.device)
            switch outcome {
            case .allow:
                self.route()
            case .deny(let status, let why, _):
                self.finish()
                self.status = status
                var fields = HTTPHeaders()
                if status == 401 {
                    fields.add("WWW-Authenticate", "Basic realm=\"fleet-gateway\", charset=\"UTF-8\"")
                    fields.add("WWW-Authenticate", "Bearer realm=\"fleet-gateway\"")
                } else if status == 429 {
                    fields.add("Retry-After", String(AccessControl.penaltySeconds))
                }
                self.client.respondError(status, status == 401 ? "authentication required" : why,
                                         close: false, retryAfter: false, fields: fields)
                g.logger.info("access denied (" + String(status) + "): " + why, LogContext(device: request.device))
            }
        }
    }

    /// Asks the queue where the request goes, and does that.
    private func route() { carryOut(services.queue.route(self, hostname: hostname)) }

    /// Carries out the queue's decision: send now, wait (queued) so long, or answer.
    private func carryOut(_ decision: GatewayQueue.Decision) {
        switch decision {
        case .dispatch(let dev):
            // Refused: the queue never answers that with another dispatch.
            if !dispatch(to: dev) { carryOut(services.queue.streamRefused(self, hostname: hostname)) }
        case .wait(let ms):
            timer = services.loop.schedule(afterMilliseconds: ms) {
                self.timer = nil
                guard self.phase == .queued else { return }
                self.carryOut(self.services.queue.waitEnded(self, hostname: self.hostname, waitedMs: ms))
            }
        case .reject(let status, let why, let retryAfter):
            reject(status, why, retryAfter: retryAfter)
        }
    }

    /// Sends the request on `dev`; false when the connection refused the stream.
    func dispatch(to dev: DeviceConnection) -> Bool {
        guard phase == .queued else { return true }
        if webSocket && !dev.session.remoteEnablesConnectProtocol {
            reject(501, "device " + dev.identity.name + " does not accept WebSockets (no SETTINGS_ENABLE_CONNECT_PROTOCOL)",
                   retryAfter: false)
            return true
        }
        let tunnel = webSocket || connectPort != nil
        let endNow = !tunnel && (!requestHasBody || (heldEnd && held.isEmpty))
        let headers = connectPort.map(connectHeaders) ?? (webSocket ? webSocketHeaders() : deviceHeaders())
        guard let s = dev.submit(self, headers: headers, endStream: endNow) else { return false }
        services.loop.cancel(timer)  // a wait in the queue is over
        device = dev
        stream = s
        phase = .waiting
        requestEnded = endNow
        if !held.isEmpty {
            sentBody = true
            let body = held
            held = []
            requestEnded = heldEnd
            dev.sendBody(stream: s, body, endStream: heldEnd)
            client.resumeReading()
        } else if tunnel && heldEnd {
            // The user ended its side while queued (an HTTP/2 CONNECT may send END_STREAM
            // at once): the device must see that half-close too, or its port waits forever.
            requestEnded = true
            dev.sendBody(stream: s, [], endStream: true)
        }
        // The gateway answers `Expect: 100-continue` itself once a device took the
        // request (interim responses from the device are not relayed).
        if requestHasBody && !heldEnd && request.versionMinor == 1 && request.headers.containsToken("expect", "100-continue") {
            client.writeContinue()
        }
        timer = services.loop.schedule(afterMilliseconds: answerTimeoutMs) {
            self.timer = nil
            self.timedOut()
        }
        return true
    }

    /// Answered before any device took it (the queue's decision, or no WebSocket support).
    func reject(_ status: Int, _ why: String, retryAfter: Bool) {
        guard phase == .queued else { return }
        finish()
        self.status = status
        client.respondError(status, why, retryAfter: retryAfter)
    }

    /// A connection freed up while the request waited in the queue.
    func dispatchFromQueue(to connection: DeviceConnection) -> Bool { dispatch(to: connection) }

    /// An HTTP/1.1 WebSocket upgrade, carried to the device as an extended CONNECT
    /// (RFC 8441) when the device accepts those.
    func startWebSocket() {
        webSocket = true
        requestHasBody = true  // the stream carries the WebSocket's bytes
        authorizeThenRoute()
    }

    /// A CONNECT to `port` of the device (issue 14): the user's bytes go there once it answers 200.
    func startConnect(port: Int) {
        connectPort = port
        requestHasBody = true  // the stream carries the tunnel's bytes
        authorizeThenRoute()
    }

    /// How long the device has to answer: a CONNECT within request_timeout_ms (its
    /// agent answers once its local port did), anything else within response_timeout_ms.
    private var answerTimeoutMs: Int { connectPort == nil ? services.config.responseTimeoutMs : services.config.requestTimeoutMs }

    /// The CONNECT for the device: its own loopback and the port (RFC 9113 §8.5: no
    /// :scheme, no :path), with the client's address and the user the gateway found.
    private func connectHeaders(port: Int) -> HTTPHeaders {
        var h = HTTPHeaders()
        h.add(":method", "CONNECT")
        h.add(":authority", "127.0.0.1:" + String(port))
        h.add("x-forwarded-for", ForwardedFields.clientAddress(request.headers, peer: client.peerHost,
                                                               trusted: services.config.trustedProxies))
        if let p = access?.principal { h.add("x-forwarded-user", p.displayName) }
        return h
    }

    /// The extended CONNECT (RFC 8441) for a WebSocket: the request's fields
    /// without the per-hop handshake key.
    private func webSocketHeaders() -> HTTPHeaders {
        var h = HTTPHeaders()
        h.add(":method", "CONNECT")
        h.add(":protocol", "websocket")
        for (n, v) in deviceHeaders() where n != ":method" && n != "sec-websocket-key" { h.add(n, v) }
        return h
    }

    /// The request as HTTP/2 headers for the device (HTTPTranslation: `authority` as
    /// :authority, `request.target`, origin-form or "*", as :path), without Expect (the
    /// gateway answers it), with the client's address, scheme and host set by us
    /// (ForwardedFields). The gateway is the edge: what a user claims there is not passed on.
    private func deviceHeaders() -> HTTPHeaders {
        var h = HTTPTranslation.http2Request(from: request, scheme: client.scheme, authority: authority)
        h.remove("expect")
        // One pass: client-address fields (ForwardedFields) and access fields (AccessControl) dropped.
        let access = services.access
        var forwarded = ForwardedFields.forDevice(h, peer: client.peerHost, scheme: client.scheme, authority: authority,
                                                  trusted: services.config.trustedProxies, drop: access.dropsForDevice)
        if let p = self.access?.principal { forwarded.add("x-forwarded-user", p.displayName) }
        return forwarded
    }

    /// A response's (or trailers') fields as the user gets them: Set-Cookie made
    /// host-only unless `cookie_domain = keep`.
    private func userFields(_ fields: HTTPHeaders) -> HTTPHeaders {
        services.config.keepCookieDomain ? fields : ForwardedFields.hostOnlyCookies(fields)
    }

    // MARK: From the user

    func userBody(_ bytes: [UInt8]) {
        guard phase != .done, !bytes.isEmpty else { return }
        bytesIn += bytes.count
        guard let device else {
            // Queued: keep what arrived, and stop reading until a device takes it.
            held += bytes
            client.pauseReading()
            return
        }
        sentBody = true
        device.sendBody(stream: stream, bytes, endStream: false)
        let client = self.client
        if device.pauseIfBacklogged(stream: stream, resume: { client.resumeReading() }) {
            client.pauseReading()
        }
    }

    func userEnd() {
        guard phase != .done, !requestEnded else { return }
        guard let device else {
            heldEnd = true
            return
        }
        requestEnded = true
        device.sendBody(stream: stream, [], endStream: true)
        if deviceEnded { endTunnel() }  // both sides of the CONNECT tunnel are done
    }

    /// The user's body made no progress for request_timeout_ms while the gateway was
    /// ready for it (an HTTP/2 stream; PublicConnection times HTTP/1.1 itself): 408,
    /// or a reset once the answer started, and the device's stream is reset.
    func userStalled() {
        guard phase != .done else { return }
        let answering = phase == .streaming
        finish()
        device?.cancel(stream: stream)
        let why = "the request body stalled: nothing for " + String(services.config.requestTimeoutMs) + " ms"
        if answering {
            client.abort(why)
        } else {
            status = 408
            client.respondError(408, why)
        }
    }

    /// The user went away: stop the device's work on this request.
    func userGone() {
        guard phase != .done else { return }
        if tunnelOpen { tunnelResult = "user_reset" }
        finish()
        // A tunnel's user connection failed: CONNECT_ERROR (RFC 9113 §8.5).
        device?.cancel(stream: stream, errorCode: tunnelOpen ? 0xa : 8)
    }

    /// The user's socket queue shrank: give the device its window back.
    func userDrained() { settleCredit() }

    private func settleCredit() {
        guard let device else { return }
        let n = credit.release(queued: client.bufferedOutput, finished: phase == .done)
        if n > 0 {
            device.consume(stream: stream, count: n)
            lastResponseProgress = services.loop.now  // the device may send again: its clock starts now
        }
    }

    // MARK: From the device

    func deviceHeaders(_ headers: HTTPHeaders, endStream: Bool) {
        switch phase {
        case .done, .queued:
            return
        case .streaming:
            if tunnelOpen {  // a tunnel has no trailers: only their END_STREAM counts
                if endStream { deviceEnd() }
                return
            }
            responseComplete(trailers: headers)  // trailers end the stream
            return
        case .waiting:
            break
        }
        guard let response = try? HTTPTranslation.http1Response(fromHTTP2: headers) else {
            device?.cancel(stream: stream)
            fail(502, "device sent an invalid response")
            return
        }
        if response.status < 200 { return }  // interim: skip
        let status = response.status
        services.loop.cancel(timer)
        timer = nil
        if let port = connectPort {
            connectAnswered(status, port: port, endStream: endStream)
            return
        }
        phase = .streaming
        self.status = status
        if webSocket && status == 200 {
            let key = request.headers.first("sec-websocket-key") ?? ""
            let accept = base64Encode(sha1(Array((key + WebSocketUpgrade.guid).utf8)))
            var fields = HTTPHeaders()
            for name in WebSocketUpgrade.endToEndFields {
                if let v = headers.first(name) { fields.add(name, v) }
            }
            client.switchProtocols(accept: accept, fields: fields)
            if endStream { deviceEnd() }
            return
        }
        let noBody = isHEAD || status == 204 || status == 304
        client.writeHead(HTTPResponseHead(status: status, versionMinor: 1, headers: userFields(response.headers)), noBody: noBody)
        if endStream {
            responseComplete(trailers: HTTPHeaders())
        } else {
            lastResponseProgress = services.loop.now
            armResponseIdle(afterMilliseconds: services.config.responseTimeoutMs)
        }
    }

    /// The device's answer to a CONNECT: a 2xx opens the tunnel (200 to the user); a
    /// refusal is passed on as 403 (not in its tcp_ports), 502 (its port refused or
    /// failed), 503 or 504; anything else is the device's failure: 502.
    private func connectAnswered(_ status: Int, port: Int, endStream: Bool) {
        if status < 300 {
            phase = .streaming
            self.status = 200
            tunnelOpen = true
            services.recorder.metrics.tunnelOpened()
            client.connectEstablished()
            if endStream { deviceEnd() }
            return
        }
        if !endStream { device?.cancel(stream: stream) }
        let passed = [403, 502, 503, 504].contains(status) ? status : 502
        let what = "device " + deviceKey + (status == 403 ? " refuses connections to its port " : " could not connect to its port ")
        fail(passed, what + String(port) + " (it answered " + String(status) + ")")
    }

    /// A device that stops in the middle of a response body is cut after
    /// response_timeout_ms without a byte, counted only while its window is open:
    /// a user who does not read holds the device back (back-pressure, no limit).
    private func armResponseIdle(afterMilliseconds ms: Int) {
        timer = services.loop.schedule(afterMilliseconds: ms) {
            self.timer = nil
            self.responseIdleCheck()
        }
    }

    private func responseIdleCheck() {
        guard phase == .streaming, !webSocket else { return }
        let limit = UInt64(services.config.responseTimeoutMs) * 1_000_000
        let idle = services.loop.now &- lastResponseProgress
        if credit.owed > 0 || idle < limit {
            armResponseIdle(afterMilliseconds: credit.owed > 0 ? services.config.responseTimeoutMs : Int((limit - idle) / 1_000_000) + 1)
            return
        }
        finish()
        device?.cancel(stream: stream)
        client.abort("device " + hostname + " sent nothing of its response body for " + String(services.config.responseTimeoutMs) + " ms")
    }

    func deviceBody(_ bytes: [UInt8]) {
        lastResponseProgress = services.loop.now
        credit.received(bytes.count)
        bytesOut += bytes.count
        if phase == .streaming { client.writeBody(bytes) }
        settleCredit()
    }

    func deviceEnd() {
        guard phase == .streaming else { return }
        if tunnelOpen {
            deviceEnded = true
            if requestEnded {
                endTunnel()
            } else {
                client.tunnelOutputFinished()  // the user's side goes on
            }
            return
        }
        // Only a 200 opened the tunnel (switchProtocols); a refusal of the upgrade is an
        // ordinary response, complete here (the user's side stays open: not an end of it).
        if webSocket && status == 200 && !requestEnded {
            finish()
            device?.cancel(stream: stream, errorCode: 0)
            client.tunnelEnded()
            return
        }
        responseComplete(trailers: HTTPHeaders())
    }

    private func responseComplete(trailers: HTTPHeaders) {
        let requestStillOpen = !requestEnded
        finish()
        client.writeEnd(trailers: userFields(trailers))
        // A response complete before its request: stop sending the rest (the user's
        // connection closes after this response, see PublicConnection.writeHead).
        if requestStillOpen { device?.cancel(stream: stream) }
    }

    func deviceStreamClosed(errorCode: UInt32, connectionLost: Bool) {
        switch phase {
        case .done, .queued:
            return
        case .waiting:
            // Not answered yet. REFUSED_STREAM means the device did not process it
            // (RFC 9113 §8.7); a lost connection leaves that unknown, so only requests
            // that are safe to repeat and sent whole in their HEADERS go again.
            let refused = errorCode == RetryRule.refusedStream
            if RetryRule.mayRetry(method: request.method, hasBody: requestHasBody, bodySent: sentBody || !held.isEmpty,
                                  webSocket: webSocket || connectPort != nil,
                                  errorCode: errorCode, connectionLost: connectionLost, retries: retries) {
                retries += 1
                services.loop.cancel(timer)
                timer = nil
                device = nil
                heldEnd = requestEnded  // an empty body that already ended ends again on the retry
                phase = .queued
                services.logger.info("retrying " + request.method + " " + request.target + " for " + hostname
                                    + (refused ? " (refused by the device)" : " (its connection was lost)"))
                route()
                return
            }
            fail(502, connectionLost ? "the device's connection was lost before it answered"
                 : errorCode == 1 ? "the device's stream ended with PROTOCOL_ERROR (an invalid response, or a request the device found invalid)"
                 : "device closed the stream without answering (error " + String(errorCode) + ")")
        case .streaming:
            // Too late for a status: the user must see a broken response, not a short one.
            if tunnelOpen { tunnelResult = connectionLost ? "device_lost" : "device_reset" }
            finish()
            client.abort("device reset the response (error " + String(errorCode) + ")")
        }
    }

    private func timedOut() {
        guard phase == .waiting else { return }
        device?.cancel(stream: stream)
        fail(504, "device " + hostname + " did not answer within " + String(answerTimeoutMs) + " ms")
    }

    private func fail(_ status: Int, _ why: String) {
        finish()
        self.status = status
        client.respondError(status, why)
    }

    private func finish() {
        let wasQueued = phase == .queued
        phase = .done
        if wasQueued { services.queue.remove(self, hostname: hostname) }
        settleCredit()
        services.loop.cancel(timer)
        timer = nil
        // The status of a refusal is set right after: the tunnel is recorded on the next turn.
        // The user's address is read now: an HTTP/2 stream's connection may be gone by then.
        if connectPort != nil && !tunnelRecorded {
            tunnelRecorded = true
            let peer = client.peerHost
            services.loop.execute { self.recordTunnel(peer: peer) }
        }
    }

    /// Both sides of the tunnel ended: it is over, and so is the user's connection (or stream).
    private func endTunnel() {
        finish()
        client.tunnelEnded()
    }

    private func recordTunnel(peer: String) {
        guard let port = connectPort else { return }
        let result = tunnelResult ?? (tunnelOpen ? "closed" : status == 0 ? "499" : String(status))
        let t = AccessLog.Tunnel(client: peer, device: deviceName ?? deviceKey, port: port,
                                 bytesUp: bytesIn, bytesDown: bytesOut, start: startedAt)
        services.recorder.tunnelDone(t, result: result, wasOpen: tunnelOpen, exchange: self)
    }
}

extension Exchange {
    /// The Retry-After (seconds) of an answer that asks the user to try again (503).
    static let retryAfterSeconds = 5
}
