// ESTConnection: a connection to the device listener that negotiated http/1.1 (or
// no ALPN) instead of h2: an EST client, with or without a certificate. It is
// never a reversed connection and reaches nothing but ESTService. A stranger's
// bytes are bounded: a head of at most `maxHeadBytes`, a body of at most
// ESTBody.defaultLimit (413 beyond), each request within request_timeout_ms of the
// connection's start or of the previous answer (else closed), at most
// `maxRequests` requests, one at a time, then Connection: close.
import EventLoop
import FleetPKI
import HTTP1
import TLS
import Wire

final class ESTConnection {
    static let maxHeadBytes = 8_192
    static let maxRequests = 4

    let id: Int
    let transport: Transport
    private let service: ESTService
    private let client: ESTClient
    private let timeoutMs: Int
    private var parser = HTTP1RequestParser(limits: HTTP1Limits(maxHeadBytes: ESTConnection.maxHeadBytes, maxHeaders: 32))
    private var head: HTTPRequestHead?
    private var body: [UInt8] = []
    private var answered = 0
    private var deadline: TimerID?
    private var done = false
    /// The last answer is written: nothing more is read or answered.
    private var closing = false
    /// Called once, when the connection has closed.
    var onClose: (() -> Void)?

    init(id: Int, transport: Transport, service: ESTService, timeoutMs: Int) {
        self.id = id
        self.transport = transport
        self.service = service
        self.timeoutMs = timeoutMs
        let tls = transport.tls
        client = ESTClient(address: transport.peer.description, certificateDER: tls?.peerCertificateDER,
                           commonName: tls?.peerCommonName,
                           isUserCertificate: tls?.peerHasOrganizationalUnit(PKI.userMarker) ?? false,
                           isClaimCertificate: tls?.peerHasOrganizationalUnit(PKI.claimMarker) ?? false)
    }

    func start() {
        armTimer()
        transport.onData = { bytes in self.receive(Array(bytes)) }
        transport.onClose = { _ in self.finish() }
    }

    private func armTimer() {
        transport.loop.cancel(deadline)
        deadline = transport.loop.schedule(afterMilliseconds: timeoutMs) {
            self.deadline = nil
            self.transport.close(.unresponsive(milliseconds: self.timeoutMs))
        }
    }

    private func finish() {
        guard !done else { return }
        done = true
        transport.loop.cancel(deadline)
        deadline = nil
        transport.onData = nil
        let callback = onClose
        onClose = nil
        callback?()
    }

    private func receive(_ bytes: [UInt8]) {
        guard !done, !closing else { return }
        let events: [HTTP1Event<HTTPRequestHead>]
        do throws(HTTP1Error) {
            events = try parser.feed(bytes)
        } catch {
            return answer(.error(error.status, error.description), close: true)
        }
        for ev in events {
            guard !done, !closing, transport.state != .closed else { return }
            switch ev {
            case .head(let h):
                head = h
                body = []
                if case .contentLength(let n) = parser.framing, n > ESTBody.defaultLimit {
                    return tooLarge()
                }
            case .body(let piece):
                guard body.count + piece.count <= ESTBody.defaultLimit else { return tooLarge() }
                body += piece
            case .end:
                guard let h = head else { continue }
                head = nil
                let path = String(h.target.split(separator: "?", maxSplits: 1, omittingEmptySubsequences: false).first ?? "")
                let req = ESTRequest(method: h.method, path: path, contentType: h.headers.first("content-type"),
                                     authorization: h.headers.values("authorization"), body: body)
                body = []
                let wantsClose = h.versionMinor == 0 || (h.headers.first("connection").map { PKI.asciiLowercased($0).contains("close") } ?? false)
                // After a CONNECT the parser keeps every later byte unparsed (a tunnel's):
                // EST has none, so the answer is the last, or a stranger's bytes pile up.
                answer(service.handle(req, client: client), close: wantsClose || parser.holdsTunnelBytes)
            }
        }
    }

    private func tooLarge() {
        service.countTooLarge(path: head?.target ?? "")
        answer(.error(413, "EST body larger than " + String(ESTBody.defaultLimit) + " bytes"), close: true)
    }

    private func answer(_ response: ShortResponse, close: Bool) {
        answered += 1
        let last = close || answered >= ESTConnection.maxRequests
        var r = response
        if last { r.head.headers.add("Connection", "close") }
        transport.write(HTTP1Writer.responseHead(r.head))
        transport.write(r.body)
        if last {
            closing = true
            transport.onData = nil
            transport.loop.cancel(deadline)
            deadline = nil
            transport.closeAfterFlush()
        } else {
            armTimer()
        }
    }
}
