// EnrollmentClient: one EST exchange (RFC 7030) as the agent speaks it, without
// I/O: `request` gives the bytes of one HTTP/1.1 request (Connection: close),
// `receive`/`peerClosed`/`timedOut` take what came back and, once the answer is
// complete, give an Outcome. The driver (Enrollment) owns the socket, the TLS
// connection (ALPN http/1.1, so the gateway's device listener answers EST and
// never reverses it) and the timer.
//
//   200  certs-only PKCS#7, base64 -> .certificates (PEM: /cacerts' chain without
//        a self-signed root; /simpleenroll's first certificate, the issued one)
//   202  Retry-After (delta-seconds, bounded)  -> .retry
//   4xx/5xx                              -> .refused (status and the body's first line)
//   anything else (garbage, too big, cut, slow) -> .failed
import HTTP1
import TLS

/// A class: the exchange holds it by reference (a struct of this size costs the
/// Embedded agent its value-witness copies).
public final class EnrollmentClient {
    public enum Outcome: Equatable {
        /// PEM: the chain (/cacerts, may be empty) or the issued certificate.
        case certificates(pem: [UInt8], count: Int)
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
    /// A /cacerts exchange (its answer leaves out a self-signed root).
    private let caCerts: Bool

    /// GET /cacerts: the CA chain (a self-signed root is left out).
    public static func cacerts(authority: String) -> EnrollmentClient {
        EnrollmentClient(path: "cacerts", authority: authority, fields: "", body: nil)
    }

    /// POST /simpleenroll with a PKCS#10 (DER), authorized by Basic USER:TOKEN
    /// (no token: the claim certificate shown in TLS authorizes it).
    public static func simpleenroll(request csr: [UInt8], user: String, token: String?, authority: String) -> EnrollmentClient {
        EnrollmentClient(path: "simpleenroll", authority: authority,
                         fields: token.map { "Authorization: Basic " + base64Encode(Array((user + ":" + $0).utf8)) + "\r\n" } ?? "",
                         body: csr)
    }

    /// POST /simplereenroll with a PKCS#10 (DER); the TLS client certificate authorizes it.
    public static func simplereenroll(request csr: [UInt8], authority: String) -> EnrollmentClient {
        EnrollmentClient(path: "simplereenroll", authority: authority, fields: "", body: csr)
    }

    /// The body is base64 in one line (RFC 7030 allows any line length).
    @inline(never)
    init(path: String, authority: String, fields: String, body csr: [UInt8]?) {
        caCerts = csr == nil
        let body = csr.map(base64Encode) ?? ""
        let length = caCerts ? "" : "Content-Type: application/pkcs10\r\nContent-Transfer-Encoding: base64\r\nContent-Length: " + String(body.utf8.count) + "\r\n"
        var r: [UInt8] = []
        for part in [caCerts ? "GET" : "POST", " /.well-known/est/", path, " HTTP/1.1\r\nHost: ", authority,
                     "\r\nUser-Agent: device-agent\r\nConnection: close\r\n", fields, length, "\r\n", body] {
            r += part.utf8
        }
        request = r
        parser.expectResponse(toHEAD: false)
    }

    /// Bytes from the server; an Outcome once the answer is complete (or wrong).
    public func receive(_ bytes: [UInt8]) -> Outcome? {
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
    public func peerClosed() -> Outcome {
        if let outcome { return outcome }
        do throws(HTTP1Error) {
            if let o = take(try parser.feedEOF()) { return o }
        } catch {
            return finish(.failed("answer cut short (" + error.description + ")"))
        }
        return finish(.failed(status == 0 ? "closed without an answer" : "answer cut short"))
    }

    /// The answer did not come in time.
    public func timedOut(afterMs ms: Int) -> Outcome {
        if let outcome { return outcome }
        return finish(.failed("no complete answer within " + String(ms) + " ms"))
    }

    private func take(_ events: [HTTP1Event<HTTPResponseHead>]) -> Outcome? {
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

    private func finish(_ o: Outcome) -> Outcome {
        outcome = o
        return o
    }

    private func decide() -> Outcome {
        switch status {
        case 200:
            guard let der = try? ESTBody.decode(body, limit: EnrollmentClient.maxResponseBytes),
                  let certs = PKCS7Certificates.pem(der: der, max: caCerts ? 16 : 1, dropSelfSigned: caCerts), caCerts || certs.count > 0 else {
                return .failed("200 without certificates (not a base64 certs-only PKCS#7)")
            }
            return .certificates(pem: certs.pem, count: certs.count)
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
        // Digits only, by hand: Int(String) costs the Embedded agent 1.8 KB.
        guard let field, !field.isEmpty else { return 60 }
        var n = 0
        for c in field.utf8 {
            guard c >= 0x30 && c <= 0x39 else { return 60 }
            n = min(n * 10 + Int(c - 0x30), retryBounds.upperBound)
        }
        return max(n, retryBounds.lowerBound)
    }

    static func firstLine(_ body: [UInt8]) -> String {
        var line: [UInt8] = []
        for b in body {
            if b == 0x0A || b == 0x0D || line.count == 200 { break }
            line.append(b >= 0x20 && b < 0x7F ? b : 0x3F)
        }
        return String(decoding: line, as: UTF8.self)
    }
}
