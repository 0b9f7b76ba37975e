// EnrollmentClient: one EST exchange (RFC 7030) as the agent speaks it, without
// I/O: `request` gives the bytes of one HTTP/1.1 request (Connection: close),
// `receive`/`peerClosed`/`timedOut` take what came back and, once the answer is
// complete, give an Outcome. The driver (Enrollment) owns the socket, the TLS
// connection (ALPN http/1.1, so the gateway's device listener answers EST and
// never reverses it) and the timer.
//
//   200  certs-only PKCS#7, base64 -> .certificates (DER, as listed)
//   202  Retry-After (delta-seconds, bounded)  -> .retry
//   4xx/5xx                              -> .refused (status and the body's first line)
//   anything else (garbage, too big, cut, slow) -> .failed
import HTTP1
import TLS

public struct EnrollmentClient {
    public enum Outcome: Equatable {
        case certificates([[UInt8]])
        /// 202: ask again after this many seconds (already bounded).
        case retry(afterSeconds: Int)
        /// The server said no: its status and why (one line, at most 200 bytes).
        case refused(status: Int, reason: String)
        /// Not an EST answer: why.
        case failed(String)
    }

    /// A larger answer is refused (a chain of a few certificates is ~4 KiB).
    public static let maxResponseBytes = 32 * 1024
    static let tooLarge = "answer larger than 32768 bytes"
    /// Retry-After is kept within these bounds (seconds).
    public static let retryBounds = 10...3600

    /// The request, complete.
    public let request: [UInt8]
    private var parser = HTTP1ResponseParser()
    private var status = 0
    private var retryAfter: String?
    private var body: [UInt8] = []
    private var received = 0
    private var outcome: Outcome?

    /// GET /cacerts: the CA chain. `authority`: the Host field (host or host:port).
    public static func cacerts(authority: String) -> EnrollmentClient {
        EnrollmentClient(head: "GET /.well-known/est/cacerts", authority: authority, fields: "", body: nil)
    }

    /// POST /simpleenroll with a PKCS#10 (DER), authorized by Basic USER:TOKEN.
    public static func simpleenroll(request csr: [UInt8], user: String, token: String, authority: String) -> EnrollmentClient {
        EnrollmentClient(head: "POST /.well-known/est/simpleenroll", authority: authority,
                         fields: "Authorization: Basic " + String(decoding: base64Line(Array((user + ":" + token).utf8)), as: UTF8.self) + "\r\n",
                         body: csr)
    }

    /// POST /simplereenroll with a PKCS#10 (DER); the TLS client certificate authorizes it.
    public static func simplereenroll(request csr: [UInt8], authority: String) -> EnrollmentClient {
        EnrollmentClient(head: "POST /.well-known/est/simplereenroll", authority: authority, fields: "", body: csr)
    }

    init(head: String, authority: String, fields: String, body csr: [UInt8]?) {
        var text = head + " HTTP/1.1\r\nHost: " + authority + "\r\nUser-Agent: device-agent\r\nConnection: close\r\n" + fields
        var body: [UInt8] = []
        if let csr {
            body = ESTBody.encode(csr)
            text += "Content-Type: application/pkcs10\r\nContent-Transfer-Encoding: base64\r\nContent-Length: " + String(body.count) + "\r\n"
        }
        request = Array((text + "\r\n").utf8) + body
        parser.expectResponse(toHEAD: false)
    }

    /// Bytes from the server; an Outcome once the answer is complete (or wrong).
    public mutating func receive(_ bytes: [UInt8]) -> Outcome? {
        guard outcome == nil else { return outcome }
        received += bytes.count
        guard received <= EnrollmentClient.maxResponseBytes + 16_384 else { return finish(.failed(EnrollmentClient.tooLarge)) }
        do throws(HTTP1Error) {
            return take(try parser.feed(bytes))
        } catch {
            return finish(.failed("not an HTTP answer: " + error.description))
        }
    }

    /// The server closed the connection.
    public mutating func peerClosed() -> Outcome {
        if let outcome { return outcome }
        do throws(HTTP1Error) {
            if let o = take(try parser.feedEOF()) { return o }
        } catch {
            return finish(.failed("answer cut short (" + error.description + ")"))
        }
        return finish(.failed(status == 0 ? "closed without an answer" : "answer cut short"))
    }

    /// The answer did not come in time.
    public mutating func timedOut(afterMs ms: Int) -> Outcome {
        if let outcome { return outcome }
        return finish(.failed("no complete answer within " + String(ms) + " ms"))
    }

    private mutating func take(_ events: [HTTP1Event<HTTPResponseHead>]) -> Outcome? {
        for e in events {
            switch e {
            case .head(let h):
                status = h.status
                retryAfter = h.headers.first("Retry-After")
            case .body(let b):
                guard body.count + b.count <= EnrollmentClient.maxResponseBytes else { return finish(.failed(EnrollmentClient.tooLarge)) }
                body += b
            case .end:
                return finish(decide())
            }
        }
        return nil
    }

    private mutating func finish(_ o: Outcome) -> Outcome {
        outcome = o
        return o
    }

    private func decide() -> Outcome {
        switch status {
        case 200:
            guard let der = try? ESTBody.decode(body, limit: EnrollmentClient.maxResponseBytes),
                  let certs = try? PKCS7Certificates.decode(der: der) else {
                return .failed("200 without certificates (not a base64 certs-only PKCS#7)")
            }
            return .certificates(certs)
        case 202:
            return .retry(afterSeconds: EnrollmentClient.retrySeconds(retryAfter))
        case 100..<200, 201, 203..<400:
            return .failed("unexpected status " + String(status))
        default:
            return .refused(status: status, reason: EnrollmentClient.firstLine(body))
        }
    }

    /// Retry-After as delta-seconds within `retryBounds`; an HTTP-date or nothing: 60.
    static func retrySeconds(_ field: String?) -> Int {
        guard let field, let n = Int(field) else { return 60 }
        return min(max(n, retryBounds.lowerBound), retryBounds.upperBound)
    }

    static func firstLine(_ body: [UInt8]) -> String {
        var line: [UInt8] = []
        for b in body {
            if b == 0x0A || b == 0x0D || line.count == 200 { break }
            line.append(b >= 0x20 && b < 0x7F ? b : 0x3F)
        }
        return String(decoding: line, as: UTF8.self)
    }

    /// Base64 in one line (Basic credentials).
    static func base64Line(_ bytes: [UInt8]) -> [UInt8] {
        ESTBody.encode(bytes).filter { $0 != 0x0D && $0 != 0x0A }
    }
}
