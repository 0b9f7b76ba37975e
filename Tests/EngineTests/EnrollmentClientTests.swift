// The agent's EST engine without sockets: EnrollmentClient's request bytes and
// its reading of 200/202/401/400/garbage/too big/cut/slow answers; the renewal
// schedule (CertificateRenewal) on a ManualClock; AtomicFile.
import Foundation
@testable import AgentKit
import ConfigFormat
import EventLoop
@testable import TLS
import XCTest

final class EnrollmentClientTests: XCTestCase {
    /// A certs-only PKCS#7 (DER) of a leaf and its CA, by the openssl command line.
    private func chainPKCS7() throws -> (pki: TestPKI, der: [UInt8]) {
        let pki = try TestPKI.make(leaves: ["dev1.example"])
        let p = Process()
        p.executableURL = URL(fileURLWithPath: "/usr/bin/openssl")
        p.arguments = ["crl2pkcs7", "-nocrl", "-certfile", pki.cert("dev1.example"), "-certfile", pki.caCert,
                       "-outform", "DER", "-out", pki.dir + "/chain.p7"]
        try p.run()
        p.waitUntilExit()
        return (pki, Array(try Data(contentsOf: URL(fileURLWithPath: pki.dir + "/chain.p7"))))
    }

    private func answer(_ status: String, _ fields: [String] = [], body: [UInt8] = []) -> [UInt8] {
        var head = "HTTP/1.1 " + status + "\r\n"
        for f in fields { head += f + "\r\n" }
        head += "Content-Length: " + String(body.count) + "\r\n\r\n"
        return Array(head.utf8) + body
    }

    func testRequests() {
        let get = String(decoding: EnrollmentClient.cacerts(authority: "gw.example:8443").request, as: UTF8.self)
        XCTAssertTrue(get.hasPrefix("GET /.well-known/est/cacerts HTTP/1.1\r\nHost: gw.example:8443\r\n"), get)
        XCTAssertTrue(get.hasSuffix("\r\n\r\n"))
        XCTAssertFalse(get.contains("Content-Length"))
        let csr: [UInt8] = Array(0..<200)
        let post = EnrollmentClient.simpleenroll(request: csr, user: "dev1.example", token: "rhe_secret", authority: "gw").request
        let text = String(decoding: post, as: UTF8.self)
        XCTAssertTrue(text.hasPrefix("POST /.well-known/est/simpleenroll HTTP/1.1\r\n"))
        let basic = Data("dev1.example:rhe_secret".utf8).base64EncodedString()
        XCTAssertTrue(text.contains("\r\nAuthorization: Basic " + basic + "\r\n"), text)
        XCTAssertTrue(text.contains("\r\nContent-Type: application/pkcs10\r\n"))
        let parts = text.components(separatedBy: "\r\n\r\n")
        XCTAssertEqual(parts.count, 2)
        XCTAssertTrue(parts[0].contains("Content-Length: " + String(parts[1].utf8.count)))
        XCTAssertEqual(try ESTBody.decode(Array(parts[1].utf8)), csr)
        let re = String(decoding: EnrollmentClient.simplereenroll(request: csr, authority: "gw").request, as: UTF8.self)
        XCTAssertTrue(re.hasPrefix("POST /.well-known/est/simplereenroll HTTP/1.1\r\n"))
        XCTAssertFalse(re.contains("Authorization"))
    }

    func test200GivesTheCertificatesEvenByteByByte() throws {
        let (_, der) = try chainPKCS7()
        let bytes = answer("200 OK", ["Content-Type: application/pkcs7-mime; smime-type=certs-only", "Content-Transfer-Encoding: base64"],
                           body: ESTBody.encode(der))
        var c = EnrollmentClient.cacerts(authority: "gw")
        var outcome: EnrollmentClient.Outcome?
        for b in bytes where outcome == nil { outcome = c.receive([b]) }
        guard case .certificates(let certs)? = outcome else { return XCTFail(String(describing: outcome)) }
        XCTAssertEqual(certs.count, 2)
        XCTAssertEqual(c.peerClosed(), outcome, "the outcome stays")
    }

    func test202RetryAfterIsBounded() {
        for (field, want) in [("Retry-After: 60", 60), ("Retry-After: 1", 10), ("Retry-After: 999999", 3600),
                              ("Retry-After: Wed, 21 Oct 2015 07:28:00 GMT", 60)] {
            var c = EnrollmentClient.simpleenroll(request: [1], user: "a", token: "b", authority: "gw")
            XCTAssertEqual(c.receive(answer("202 Accepted", [field])), .retry(afterSeconds: want), field)
        }
        var c = EnrollmentClient.cacerts(authority: "gw")
        XCTAssertEqual(c.receive(answer("202 Accepted")), .retry(afterSeconds: 60))
    }

    func testRefusals() {
        var c = EnrollmentClient.simpleenroll(request: [1], user: "a", token: "b", authority: "gw")
        XCTAssertEqual(c.receive(answer("401 Unauthorized", ["WWW-Authenticate: Basic realm=\"EST\""], body: Array("the token is used\nmore".utf8))),
                       .refused(status: 401, reason: "the token is used"))
        var d = EnrollmentClient.cacerts(authority: "gw")
        XCTAssertEqual(d.receive(answer("400 Bad Request", body: [0x62, 0xFF, 0x01])), .refused(status: 400, reason: "b??"))
        var e = EnrollmentClient.cacerts(authority: "gw")
        XCTAssertEqual(e.receive(answer("204 No Content")), .failed("unexpected status 204"))
    }

    func testGarbageTooBigCutAndSlow() {
        var g = EnrollmentClient.cacerts(authority: "gw")
        guard case .failed(let why)? = g.receive(Array("SSH-2.0-OpenSSH\r\n\r\n".utf8)) else { return XCTFail() }
        XCTAssertTrue(why.hasPrefix("not an HTTP answer"), why)
        var notPKCS7 = EnrollmentClient.cacerts(authority: "gw")
        guard case .failed(let w2)? = notPKCS7.receive(answer("200 OK", body: Array("aGVsbG8=".utf8))) else { return XCTFail() }
        XCTAssertTrue(w2.hasPrefix("200 without certificates"), w2)
        var big = EnrollmentClient.cacerts(authority: "gw")
        XCTAssertEqual(big.receive(answer("200 OK", body: [UInt8](repeating: 0x41, count: EnrollmentClient.maxResponseBytes + 1))),
                       .failed("answer larger than 32768 bytes"))
        var chunkedBig = EnrollmentClient.cacerts(authority: "gw")
        var o: EnrollmentClient.Outcome? = chunkedBig.receive(Array("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n".utf8))
        var rounds = 0
        while o == nil && rounds < 100 {
            rounds += 1
            o = chunkedBig.receive(Array("1000\r\n".utf8) + [UInt8](repeating: 0x41, count: 4096) + Array("\r\n".utf8))
        }
        XCTAssertEqual(o, .failed("answer larger than 32768 bytes"))
        var cut = EnrollmentClient.cacerts(authority: "gw")
        XCTAssertNil(cut.receive(Array("HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nabc".utf8)))
        guard case .failed(let w3) = cut.peerClosed() else { return XCTFail() }
        XCTAssertTrue(w3.hasPrefix("answer cut short"), w3)
        var nothing = EnrollmentClient.cacerts(authority: "gw")
        XCTAssertEqual(nothing.peerClosed(), .failed("closed without an answer"))
        var slow = EnrollmentClient.cacerts(authority: "gw")
        XCTAssertNil(slow.receive(Array("HTTP/1.1 200 OK\r\n".utf8)))
        XCTAssertEqual(slow.timedOut(afterMs: 30_000), .failed("no complete answer within 30000 ms"))
    }

    func testCertificateChainDropsTheSelfSignedRoot() throws {
        let (pki, der) = try chainPKCS7()
        let certs = try PKCS7Certificates.decode(der: der)
        let pem = try CertificateChain.pem(leaf: certs[0], cas: [certs[1]])
        XCTAssertEqual(String(decoding: pem, as: UTF8.self), try String(contentsOfFile: pki.cert("dev1.example"), encoding: .utf8))
        // A leaf is not self-signed: kept.
        XCTAssertEqual(try CertificateChain.pem(leaf: certs[0], cas: [certs[0]]).count, pem.count * 2)
        XCTAssertThrowsError(try CertificateChain.pem(leaf: [1, 2, 3], cas: []))
    }

    func testAtomicFileWritesWithItsModeAndReplaces() throws {
        let dir = NSTemporaryDirectory() + "rh-atomic-" + UUID().uuidString
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        let path = dir + "/device.key"
        XCTAssertFalse(AtomicFile.exists(path))
        try AtomicFile.write(path, Array("one".utf8), mode: 0o600)
        XCTAssertEqual(AtomicFile.read(path), Array("one".utf8))
        let attrs = try FileManager.default.attributesOfItem(atPath: path)
        XCTAssertEqual((attrs[.posixPermissions] as? NSNumber)?.intValue, 0o600)
        try AtomicFile.write(path, Array("two".utf8), mode: 0o600)
        XCTAssertEqual(AtomicFile.read(path), Array("two".utf8))
        XCTAssertFalse(AtomicFile.exists(path + ".tmp"))
        XCTAssertNil(AtomicFile.read(path, limit: 2))
        XCTAssertThrowsError(try AtomicFile.write(dir + "/missing/x", [1], mode: 0o600))
        XCTAssertEqual(AtomicFile.directory(of: "/a/b/c"), "/a/b")
        XCTAssertEqual(AtomicFile.directory(of: "c"), ".")
    }

    // MARK: Renewal schedule

    func testRenewalRunsAtAboutTwoThirdsAndBacksOffOnFailure() throws {
        let (pki, _) = try chainPKCS7()
        let info = try CertificateInfo(pem: Array(try Data(contentsOf: URL(fileURLWithPath: pki.cert("dev1.example")))))
        let clock = ManualClock()
        let loop = EventLoop(clock: clock.clock)
        let wallStart = info.notBefore
        let wall = { wallStart + Int64(clock.nanoseconds / 1_000_000_000) - 1 }
        var attempts: [Int64] = []
        var results: [String?] = ["gateway says no", "gateway says no", nil]
        var renewedCount = 0
        var current = info
        let r = CertificateRenewal(loop: loop, logger: Logger(program: "test", level: .error), device: "dev1.example", seed: 42,
                                   wallClock: wall, certificate: { current }, attempt: { _, done in
            attempts.append(wall())
            done(results.removeFirst())
        }, renewed: {
            renewedCount += 1
            current = CertificateInfo(commonName: info.commonName, notBefore: wall(), notAfter: wall() + 3 * 86_400)
        })
        let at = r.renewalTime(info)
        let life = info.notAfter - info.notBefore
        XCTAssertLessThanOrEqual(abs(at - (info.notBefore + life * 667 / 1000)), life / 20, "two thirds, ±5 %")
        XCTAssertEqual(r.renewalTime(info), at, "the jitter is drawn once per certificate")
        r.start()
        // Step the clock a minute at a time; nothing before the time, then an attempt.
        var steps = 0
        while attempts.isEmpty && steps < 3 * 24 * 60 {
            steps += 1
            clock.advance(milliseconds: 60_000)
            loop.fireDueTimers()
        }
        XCTAssertEqual(attempts.count, 1)
        XCTAssertGreaterThanOrEqual(attempts[0], at)
        XCTAssertLessThan(attempts[0], at + 61)
        // Failures: retried within the backoff's cap (5 min), twice, then a success.
        steps = 0
        while renewedCount == 0 && steps < 100 {
            steps += 1
            clock.advance(milliseconds: 10_000)
            loop.fireDueTimers()
        }
        XCTAssertEqual(attempts.count, 3)
        XCTAssertEqual(renewedCount, 1)
        XCTAssertEqual(r.renewals, 1)
        XCTAssertLessThan(attempts[2] - attempts[0], 700)
        // The renewed certificate is renewed at two thirds of its own life.
        let next = r.renewalTime(current)
        XCTAssertLessThanOrEqual(abs(next - (current.notBefore + 2 * 86_400)), 3 * 86_400 / 20)
        results = [nil]
        steps = 0
        while renewedCount == 1 && steps < 5 * 24 * 60 {
            steps += 1
            clock.advance(milliseconds: 60_000)
            loop.fireDueTimers()
        }
        XCTAssertEqual(attempts.count, 4)
        XCTAssertGreaterThanOrEqual(attempts[3], next)
        XCTAssertLessThan(attempts[3], next + 61)
        r.stop()
        clock.advance(milliseconds: 100 * 86_400_000)
        loop.fireDueTimers()
        XCTAssertEqual(attempts.count, 4, "nothing after stop")
    }

    func testRenewalJitterSpreadsAFleet() throws {
        let info = try CertificateInfo(pem: Array(try Data(contentsOf: URL(fileURLWithPath: try chainPKCS7().pki.cert("dev1.example")))))
        let loop = EventLoop(clock: ManualClock().clock)
        var times = Set<Int64>()
        for seed in 1...50 {
            let r = CertificateRenewal(loop: loop, logger: Logger(program: "test", level: .error), device: "d", seed: UInt64(seed) &* 0x9E37_79B9,
                                       wallClock: { 0 }, certificate: { info }, attempt: { $1(nil) }, renewed: {})
            times.insert(r.renewalTime(info))
        }
        XCTAssertGreaterThan(times.count, 40, "50 agents do not renew in the same second")
        XCTAssertEqual(CertificateRenewal.delayMs(until: 100, now: 40), 60_000)
        XCTAssertEqual(CertificateRenewal.delayMs(until: 100, now: 200), 0)
        XCTAssertEqual(CertificateRenewal.delayMs(until: 1_000_000, now: 0), CertificateRenewal.recheckMs)
    }

    func testConfigKeys() throws {
        func config(_ pairs: [(String, String)]) throws -> AgentConfig {
            var s = Settings()
            try ConfigFile.parse(Array(pairs.map { $0.0 + " = " + $0.1 + "\n" }.joined().utf8), name: "test", into: &s)
            return try AgentConfig(s)
        }
        let base = [("gateway", "gw:8443"), ("ca", "/x/ca.crt"), ("cert", "/nonexistent/dev.crt"), ("key", "/nonexistent/dev.key")]
        let plain = try config(base)
        XCTAssertFalse(plain.renew)
        XCTAssertFalse(plain.needsEnrollment)
        let enrolling = try config(base + [("enroll_token_file", "/x/token"), ("name", "dev1.example")])
        XCTAssertTrue(enrolling.renew)
        XCTAssertTrue(enrolling.needsEnrollment)
        XCTAssertEqual(enrolling.estTLSConfiguration(withCertificate: false).alpn, ["http/1.1"])
        XCTAssertNil(enrolling.estTLSConfiguration(withCertificate: false).certificateFile)
        XCTAssertEqual(enrolling.estTLSConfiguration(withCertificate: true).certificateFile, "/nonexistent/dev.crt")
        XCTAssertFalse(try config(base + [("enroll_token", "rhe_x"), ("name", "d"), ("renew", "false")]).renew)
        XCTAssertThrowsError(try config(base + [("enroll_token", "rhe_x")]), "a name is required")
        XCTAssertThrowsError(try config(base + [("enroll_token", "rhe_x"), ("enroll_token_file", "/t"), ("name", "d")]))
    }
}
