// The operator's side of the gateway, on its own listener (loopback by default,
// never the public one):
//   GET  /devices                  every connected device: name, hostname, health
//                                  and since when, last check latency, connections
//   GET  /devices/NAME             one device (also its certificate: serial, notAfter,
//                                  days left, last renewal: CertificateExpiry)
//   POST /devices/NAME/disconnect  close its connections (it will re-dial)
//   GET  /enrollments              EST enrollments waiting for approval or decided
//   POST /enrollments/NAME/approve|deny   (enroll_approval = manual)
//   GET  /metrics                  Prometheus text format
//   GET  /                         a small HTML status page
// One request per connection: answers carry Connection: close. Web pages are kept
// out: a request with an Origin (a browser's cross-site request) is refused, and
// so is a Host that is not an IP address literal or localhost (DNS rebinding:
// `dead.beef` is a name, not an address). With `admin_token` (required when the
// listener is not on loopback) every request needs `Authorization: Bearer TOKEN`,
// else 401.
import FleetAccess
import FleetPKI
import CLibc
import EventLoop
import HTTP1
import Wire

final class AdminServer {
    /// What the admin API shows: every part of the gateway it reads, and nothing it could change.
    struct Views {
        let directory: GatewayDirectory
        let health: HealthChecker
        let queue: GatewayQueue
        let ledger: AccessLedger
        let metrics: Metrics
    }

    private let loop: EventLoop
    private let logger: Logger
    private let settings: CurrentConfig
    private let views: Views
    /// Users' connections open now (the Gateway's ConnectionBudget).
    var userConnections: () -> Int = { 0 }
    /// EST (`pki_dir`): its counters and the enrollments waiting for approval; nil without.
    var est: () -> ESTService? = { nil }
    /// Seconds until the CRL in use expires (nil without a CRL).
    var crlExpirySeconds: () -> Int64? = { nil }
    private var listener: Int32 = -1
    /// Listening off loopback: without a token nothing is answered, whatever a
    /// reload did to the configuration (fail closed).
    private var needsToken = false

    init(loop: EventLoop, logger: Logger, settings: CurrentConfig, views: Views) {
        self.loop = loop
        self.logger = logger
        self.settings = settings
        self.views = views
    }

    var port: Int { listener >= 0 ? Socket.localPort(listener) : 0 }

    func start(_ endpoint: HostPort) throws(SocketError) {
        listener = try Socket.listen(endpoint, backlog: 64)
        needsToken = !Loopback.isLoopback(endpoint.host)
        loop.register(fd: listener) { _ in self.accept() }
    }

    func stop() {
        guard listener >= 0 else { return }
        loop.unregister(fd: listener)
        Socket.close(listener)
        listener = -1
    }

    private func accept() {
        for _ in 0..<16 {
            let accepted: (fd: Int32, peer: SocketAddress)?
            do throws(SocketError) { accepted = try Socket.accept(listener) } catch {
                // Out of descriptors: the listener stays readable, so stop watching it for a
                // moment instead of spinning on it (as the gateway's listeners do).
                logger.warning("admin accept: " + error.description + "; pausing accepts for 500 ms")
                let fd = listener
                loop.modify(fd: fd, readable: false, writable: false)
                loop.schedule(afterMilliseconds: 500) {
                    if self.listener == fd { self.loop.modify(fd: fd, readable: true, writable: false) }
                }
                return
            }
            guard let next = accepted else { return }
            let t = Transport(loop: loop, fd: next.fd, peer: next.peer, tls: nil, connecting: false)
            var parser = HTTP1RequestParser(limits: HTTP1Limits(maxHeadBytes: 8192))
            var head: HTTPRequestHead?
            let deadline = loop.schedule(afterMilliseconds: 10_000) { t.close() }
            t.onData = { bytes in
                do throws(HTTP1Error) {
                    for ev in try parser.feed(Array(bytes)) {
                        switch ev {
                        case .head(let h): head = h
                        case .body: break
                        case .end:
                            t.onData = nil
                            self.loop.cancel(deadline)
                            if let h = head { self.answer(h, on: t) }
                            return
                        }
                    }
                } catch {
                    self.loop.cancel(deadline)
                    self.respond(t, error.status, "text/plain", error.description + "\n")
                }
            }
            t.onClose = { _ in self.loop.cancel(deadline) }
            t.start()
        }
    }

    /// Only tools, not web pages: no Origin, and a Host that names an address.
    private func refusal(_ req: HTTPRequestHead) -> String? {
        if req.headers.first("origin") != nil { return "cross-origin requests are refused" }
        if AddressLiteral.isAddressHost(req.headers.first("host") ?? "") { return nil }
        return "the admin API answers only to an address or localhost as Host"
    }

    private func answer(_ req: HTTPRequestHead, on t: Transport) {
        if let why = refusal(req) {
            return respond(t, 403, "text/plain", why + "\n")
        }
        if needsToken && settings.value.adminToken == nil {
            return respond(t, 401, "text/plain", "this admin listener is not on loopback and admin_token is not set\n",
                           extra: [("WWW-Authenticate", "Bearer realm=\"fleet-gateway-admin\"")])
        }
        if let token = settings.value.adminToken, !AdminServer.authorized(req.headers, token: token) {
            return respond(t, 401, "text/plain", "the admin API wants Authorization: Bearer TOKEN (admin_token)\n",
                           extra: [("WWW-Authenticate", "Bearer realm=\"fleet-gateway-admin\"")])
        }
        let path = String(req.target.split(separator: "?", maxSplits: 1).first ?? "")
        let parts = path.split(separator: "/").map(String.init)
        switch (req.method, parts.count, parts.first) {
        case ("GET", 0, _):
            respond(t, 200, "text/html; charset=utf-8", statusPage())
        case ("GET", 1, "metrics"):
            respond(t, 200, "text/plain; version=0.0.4", metrics())
        case ("GET", 1, "devices"):
            respond(t, 200, "application/json", JSON.array(devices().map(deviceJSON)) + "\n")
        case ("GET", 2, "devices"):
            guard let d = device(named: parts[1]) else {
                return respond(t, 404, "application/json", JSON.object([("error", JSON.string("no device named " + parts[1]))]) + "\n")
            }
            respond(t, 200, "application/json", deviceJSON(d) + "\n")
        case ("POST", 3, "devices") where parts[2] == "disconnect":
            guard let d = device(named: parts[1]) else {
                return respond(t, 404, "application/json", JSON.object([("error", JSON.string("no device named " + parts[1]))]) + "\n")
            }
            logger.notice("admin: disconnecting " + d.name + " (" + String(d.connections.count) + " connections)")
            for c in d.connections { c.close() }
            respond(t, 200, "application/json", JSON.object([("disconnected", String(d.connections.count))]) + "\n")
        case ("GET", 1, "enrollments"):
            guard let est = est() else { return respond(t, 404, "text/plain", "EST is off (pki_dir)\n") }
            respond(t, 200, "application/json", est.approvals.json() + "\n")
        case ("POST", 3, "enrollments") where parts[2] == "approve" || parts[2] == "deny":
            guard let est = est() else { return respond(t, 404, "text/plain", "EST is off (pki_dir)\n") }
            let (status, text) = parts[2] == "approve" ? est.approve(parts[1]) : est.deny(parts[1])
            respond(t, status, "application/json", JSON.object([(status == 200 ? "result" : "error", JSON.string(text))]) + "\n")
        case (_, 1, "metrics"), (_, 1, "devices"), (_, 2, "devices"), (_, 0, _), (_, 1, "enrollments"), (_, 3, "enrollments"):
            respond(t, 405, "text/plain", "method not allowed\n")
        default:
            respond(t, 404, "text/plain", "not found\n")
        }
    }

    /// One `Authorization: Bearer TOKEN` field whose token is `token`, compared in
    /// time that depends on the expected token's length only.
    static func authorized(_ headers: HTTPHeaders, token: String) -> Bool {
        let fields = headers.values("authorization")
        guard fields.count == 1 else { return false }
        let v = fields[0].utf8
        guard v.count > 7, PKI.asciiLowercased(String(decoding: v.prefix(7), as: UTF8.self)) == "bearer " else { return false }
        let presented = Array(v.dropFirst(7).drop(while: { $0 == 0x20 }))
        return constantTimeEqual(presented, Array(token.utf8))
    }

    static func constantTimeEqual(_ presented: [UInt8], _ expected: [UInt8]) -> Bool {
        var diff: UInt8 = presented.count == expected.count ? 0 : 1
        for i in 0..<expected.count {
            diff |= expected[i] ^ (i < presented.count ? presented[i] : 0)
        }
        return diff == 0
    }

    private func respond(_ t: Transport, _ status: Int, _ type: String, _ body: String, extra: [(String, String)] = []) {
        let r = ShortResponse(status: status, body: body, contentType: type,
                              fields: HTTPHeaders([("Cache-Control", "no-store")] + extra), close: true)
        t.write(HTTP1Writer.responseHead(r.head))
        t.write(r.body)
        t.closeAfterFlush()
    }

    // MARK: Views

    struct DeviceView {
        let name: String
        let hostname: String
        let health: DeviceHealth?
        let connections: [DeviceConnection]
    }

    /// Every connected device, by hostname.
    func devices() -> [DeviceView] {
        views.directory.devices.sorted { ($0.hostname, $0.name) < ($1.hostname, $1.name) }.map(view)
    }

    /// The device named `name` (its certificate's CN), if it is connected.
    private func device(named name: String) -> DeviceView? {
        views.directory.connections(device: name).first.map { view($0.identity) }
    }

    private func view(_ d: DeviceIdentity) -> DeviceView {
        DeviceView(name: d.name, hostname: d.hostname, health: views.health.devices[d.hostname],
                   connections: views.directory.connections(of: d))
    }

    /// Monotonic nanoseconds to Unix seconds.
    private func wallClock(_ mono: UInt64) -> Int {
        Int(rh_wall_seconds()) - Int((loop.now &- mono) / 1_000_000_000)
    }

    private func deviceJSON(_ d: DeviceView) -> String {
        let conns = d.connections.map { c in
            JSON.object([("id", String(c.id)), ("remote", JSON.string(c.transport.peer.description)),
                         ("connected_since", String(wallClock(c.connectedAt))),
                         ("streams_in_flight", String(c.inFlight)),
                         ("max_concurrent_streams", String(c.session.remoteMaxConcurrentStreams)),
                         ("bytes_in", String(c.transport.bytesIn)), ("bytes_out", String(c.transport.bytesOut))])
        }
        let h = d.health
        let cert = CertificateExpiry.json(CertificateExpiry.newest(d.connections.compactMap(\.certificate)), now: Int64(rh_wall_seconds()))
        return JSON.object([
            ("name", JSON.string(d.name)), ("hostname", JSON.string(d.hostname)),
            ("health", JSON.string(h?.state.rawValue ?? HealthState.unknown.rawValue)),
            ("health_since", h.map { String(wallClock($0.since)) } ?? "null"),
            ("last_check_latency_ms", h?.lastLatencyMs.map { String($0) } ?? "null"),
            ("online_since", String(wallClock(d.connections.map(\.connectedAt).min() ?? loop.now))),
            ("queued_requests", String(views.queue.count(hostname: d.hostname))),
            ("connections", JSON.array(conns)),
            ("last_access", views.ledger.last(device: d.name).map { a in
                JSON.object([("user", a.user.isEmpty ? "null" : JSON.string(a.user)), ("at", String(a.at)), ("status", String(a.status))])
            } ?? "null"),
        ] + cert)
    }

    func metrics() -> String {
        let m = views.metrics
        let devs = devices()
        var p = PrometheusText()
        p.family("rhttp_devices_connected", "gauge", "Devices with at least one reversed connection.")
        p.sample("rhttp_devices_connected", [], Double(devs.count))
        p.family("rhttp_devices_healthy", "gauge", "Connected devices by health state.")
        for state in [HealthState.up, .down, .unknown] {
            p.sample("rhttp_devices_healthy", [("state", state.rawValue)],
                     Double(devs.filter { ($0.health?.state ?? .unknown) == state }.count))
        }
        let conns = devs.flatMap(\.connections)
        p.family("rhttp_device_connections", "gauge", "Open reversed connections.")
        p.sample("rhttp_device_connections", [], Double(conns.count))
        p.family("rhttp_device_connections_accepted_total", "counter", "Reversed connections accepted (dials and re-dials).")
        p.sample("rhttp_device_connections_accepted_total", [], Double(m.deviceConnectionsAccepted))
        p.family("rhttp_device_connections_refused_total", "counter", "Device connections refused (TLS, identity, handshake).")
        p.sample("rhttp_device_connections_refused_total", [], Double(m.deviceConnectionsRefused))
        p.family("rhttp_user_connections", "gauge", "Users' connections open (against max_user_connections).")
        p.sample("rhttp_user_connections", [], Double(userConnections()))
        p.family("rhttp_user_connections_refused_total", "counter", "Users' connections refused at accept (connection caps).")
        p.sample("rhttp_user_connections_refused_total", [], Double(m.userConnectionsRefused))
        p.family("rhttp_streams_in_flight", "gauge", "Requests in flight on reversed connections.")
        p.sample("rhttp_streams_in_flight", [], Double(conns.reduce(0) { $0 + $1.inFlight }))
        p.family("rhttp_requests_queued", "gauge", "Requests waiting for a device connection.")
        p.sample("rhttp_requests_queued", [], Double(views.queue.count))
        p.family("rhttp_requests_total", "counter", "Users' requests answered, by status class.")
        for (cls, n) in m.requestsByClass.sorted(by: { $0.key < $1.key }) { p.sample("rhttp_requests_total", [("code", cls)], Double(n)) }
        p.family("rhttp_request_duration_seconds", "histogram", "Time from a request's head to the end of its response.")
        for (i, bound) in Metrics.latencyBuckets.enumerated() {
            p.sample("rhttp_request_duration_seconds_bucket", [("le", String(bound))], Double(m.latencyCounts[i]))
        }
        p.sample("rhttp_request_duration_seconds_bucket", [("le", "+Inf")], Double(m.latencyCount))
        p.sample("rhttp_request_duration_seconds_sum", [], m.latencySum)
        p.sample("rhttp_request_duration_seconds_count", [], Double(m.latencyCount))
        p.family("rhttp_health_checks_total", "counter", "Health checks by result.")
        for (result, n) in views.health.results.sorted(by: { $0.key < $1.key }) {
            p.sample("rhttp_health_checks_total", [("result", result)], Double(n))
        }
        p.family("rhttp_device_bytes_total", "counter", "Bytes on reversed connections (TLS included).")
        p.sample("rhttp_device_bytes_total", [("direction", "in")], Double(m.closedBytesIn + conns.reduce(0) { $0 + $1.transport.bytesIn }))
        p.sample("rhttp_device_bytes_total", [("direction", "out")], Double(m.closedBytesOut + conns.reduce(0) { $0 + $1.transport.bytesOut }))
        m.exportAccess(&p)
        CertificateExpiry.export(&p, notAfters: devs.compactMap { CertificateExpiry.newest($0.connections.compactMap(\.certificate))?.notAfter },
                                 now: Int64(rh_wall_seconds()))
        m.exportTunnels(&p)
        est()?.export(&p)
        if let left = crlExpirySeconds() {
            p.family("rhttp_crl_expiry_seconds", "gauge", "Seconds until the CRL in use (crl) passes its nextUpdate.")
            p.sample("rhttp_crl_expiry_seconds", [], Double(left))
        }
        return p.text
    }

    private func statusPage() -> String {
        var rows = ""
        for d in devices() {
            let state = d.health?.state.rawValue ?? "unknown"
            rows += "<tr><td>" + html(d.name) + "</td><td>" + html(d.hostname) + "</td><td class=\"" + state + "\">" + state
                + "</td><td>" + String(d.connections.count) + "</td><td>" + String(d.connections.reduce(0) { $0 + $1.inFlight })
                + "</td><td>" + (d.health?.lastLatencyMs.map { String($0) + " ms" } ?? "–") + "</td></tr>\n"
        }
        return """
        <!doctype html>
        <html><head><meta charset="utf-8"><title>fleet-gateway</title>
        <style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}td,th{padding:.3em .8em;border-bottom:1px solid #ddd;text-align:left}
        .up{color:#070}.down{color:#b00}.unknown{color:#777}</style></head>
        <body><h1>fleet-gateway</h1><p>\(devices().count) devices connected.</p>
        <table><tr><th>device</th><th>hostname</th><th>health</th><th>connections</th><th>in flight</th><th>last check</th></tr>
        \(rows)</table><p><a href="/devices">devices (JSON)</a> · <a href="/metrics">metrics</a></p></body></html>

        """
    }

    private func html(_ s: String) -> String {
        var out = ""
        for c in s {
            switch c {
            case "<": out += "&lt;"
            case ">": out += "&gt;"
            case "&": out += "&amp;"
            case "\"": out += "&quot;"
            default: out.append(c)
            }
        }
        return out
    }
}
