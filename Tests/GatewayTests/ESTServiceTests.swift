// ESTService without sockets (issue 17): a parsed request and the client's TLS
// identity in, the answer out, against a real PKI directory and token file.
import Bytes
import ConfigFormat
import EventLoop
import FleetAccess
@testable import FleetGatewayKit
@testable import FleetPKI
import HTTP1
import TLS
import XCTest

final class ESTServiceTests: XCTestCase {
    private var dir = ""
    private var clock: Int64 = 1_800_000_000

    private func service(_ extra: String = "") throws -> ESTService {
        if dir.isEmpty {
            dir = try makeTempDir()
            try PKI.initialize(directory: dir, gatewayName: "gw.example", issuingCA: true)
        }
        var s = Settings()
        try ConfigFile.parse(Array(("pki_dir = " + dir + "\ncert = " + dir + "/gateway.crt\nkey = " + dir + "/gateway.key\n" + extra).utf8),
                             name: "gw.conf", into: &s)
        let config = try GatewayConfig(s)
        XCTAssertEqual(config.caFile, dir + "/ca.crt")
        return ESTService(settings: CurrentConfig(config), logger: Logger(program: "test", level: .error),
                          reserved: ReservedNames(config: config), now: { [unowned self] in self.clock })
    }

    private func token(_ binding: String, lifetime: Int64 = 3600) throws -> String {
        try EnrollmentTokens.create(directory: dir, binding: binding, lifetime: lifetime, now: clock)
    }

    private func csr(_ cn: String, key: EnrollmentKey? = nil) throws -> (body: [UInt8], key: EnrollmentKey) {
        let k = try key ?? EnrollmentKey()
        return (ESTBody.encode(try k.certificateRequest(commonName: cn)), k)
    }

    private func post(_ est: ESTService, _ op: String, _ body: [UInt8], token: String? = nil, user: String = "dev",
                      client: ESTClient = ESTClient(address: "192.0.2.1:1234"), type: String = "application/pkcs10") -> ShortResponse {
        let auth = token.map { ["Basic " + Base64.encode(Array((user + ":" + $0).utf8), urlSafe: false)] } ?? []
        return est.handle(ESTRequest(method: "POST", path: ESTService.prefix + op, contentType: type, authorization: auth, body: body),
                          client: client)
    }

    private func text(_ r: ShortResponse) -> String { String(decoding: r.body, as: UTF8.self) }

    /// The one certificate of an EST answer, DER.
    private func issued(_ r: ShortResponse, file: StaticString = #filePath, line: UInt = #line) throws -> [UInt8] {
        XCTAssertEqual(r.head.status, 200, text(r), file: file, line: line)
        XCTAssertEqual(r.head.headers.first("content-type"), PKCS7CertsOnly.contentType, file: file, line: line)
        XCTAssertEqual(r.head.headers.first("content-transfer-encoding"), "base64", file: file, line: line)
        let certs = try PKCS7CertsOnly.decode(estBody: r.body)
        XCTAssertEqual(certs.count, 1, file: file, line: line)
        return certs[0]
    }

    func testCACertsIsTheChain() throws {
        let est = try service()
        let r = est.handle(ESTRequest(method: "GET", path: ESTService.prefix + "cacerts"), client: ESTClient(address: "x"))
        XCTAssertEqual(r.head.status, 200)
        XCTAssertEqual(r.head.headers.first("content-type"), "application/pkcs7-mime")
        XCTAssertEqual(try PKCS7CertsOnly.decode(estBody: r.body), try PKI.certificatesDER(pem: PKI.readFile(dir + "/ca.crt")))
        XCTAssertEqual(est.handle(ESTRequest(method: "POST", path: ESTService.prefix + "cacerts"), client: ESTClient(address: "x")).head.status, 405)
        XCTAssertEqual(est.handle(ESTRequest(method: "GET", path: "/devices"), client: ESTClient(address: "x")).head.status, 404)
        XCTAssertEqual(est.handle(ESTRequest(method: "GET", path: ESTService.prefix + "label/cacerts"), client: ESTClient(address: "x")).head.status, 404)
    }

    func testEnrollmentWithATokenWorksOnce() throws {
        let est = try service("device_cert_days = 7\n")
        let secret = try token("dev1.example")
        let (body, key) = try csr("dev1.example")
        let none = post(est, "simpleenroll", body)
        XCTAssertEqual(none.head.status, 401)
        XCTAssertTrue(none.head.headers.first("www-authenticate")?.hasPrefix("Basic realm=") == true)
        XCTAssertEqual(post(est, "simpleenroll", body, token: "rhe_" + String(repeating: "A", count: 43)).head.status, 401)
        XCTAssertEqual(post(est, "simpleenroll", body, token: secret, type: "application/x-www-form-urlencoded").head.status, 415)
        XCTAssertEqual(post(est, "simpleenroll", Array("bm90IGEgcmVxdWVzdA==".utf8), token: secret).head.status, 400)

        let der = try issued(post(est, "simpleenroll", body, token: secret))
        // The certificate's subject is the request's, and its key the request's.
        XCTAssertThrowsError(try CertificateRequest(estBody: body).checkReenrollment(currentCertificateDER: der)) { e in
            XCTAssertEqual(e as? ESTError, .keyReused)
        }
        let info = try CertificateInfo(pem: Array(("-----BEGIN CERTIFICATE-----\n" + Base64.encode(der, urlSafe: false)
                                                    + "\n-----END CERTIFICATE-----\n").utf8))
        XCTAssertEqual(info.commonName, "dev1.example")
        XCTAssertLessThanOrEqual(abs(info.notAfter - info.notBefore - 7 * 86_400), 600)
        XCTAssertTrue(text(dir + "/issued.txt").contains("dev1.example"))

        let again = post(est, "simpleenroll", try csr("dev1.example").body, token: secret)
        XCTAssertEqual(again.head.status, 401)
        XCTAssertTrue(text(again).contains("already used"), text(again))
        _ = key
        XCTAssertEqual(est.counts["simpleenroll ok"], 1)
        XCTAssertEqual(est.counts["simpleenroll unauthorized"], 3)
        XCTAssertEqual(est.counts["simpleenroll bad_request"], 2)
    }

    func testNamesTheTokenOrTheGatewayDoesNotAllowAre403() throws {
        let est = try service("allow_devices = dev*,lab-*\n")
        let exact = try token("dev1.example")
        XCTAssertEqual(post(est, "simpleenroll", try csr("dev2.example").body, token: exact).head.status, 403)
        let glob = try token("lab-*,gw.*")
        XCTAssertEqual(post(est, "simpleenroll", try csr("dev1.example").body, token: glob).head.status, 403)
        // The gateway's own name, and a name outside allow_devices: refused as a device would be.
        XCTAssertEqual(post(est, "simpleenroll", try csr("gw.example").body, token: glob).head.status, 403)
        XCTAssertEqual(post(est, "simpleenroll", try csr("not a name").body, token: glob).head.status, 400)
        // Nothing was used up: both tokens still enroll their names; the CN is lower-cased.
        XCTAssertEqual(post(est, "simpleenroll", try csr("dev1.example").body, token: exact).head.status, 200)
        let r = post(est, "simpleenroll", try csr("LAB-7").body, token: glob)
        let info = try CertificateInfo(pem: Array(("-----BEGIN CERTIFICATE-----\n" + Base64.encode(try issued(r), urlSafe: false)
                                                    + "\n-----END CERTIFICATE-----\n").utf8))
        XCTAssertEqual(info.commonName, "lab-7")
        // A live certificate's name is not taken with another token.
        XCTAssertEqual(post(est, "simpleenroll", try csr("lab-7").body, token: try token("lab-*")).head.status, 409)
    }

    /// A device whose answer was lost asks again with the same token: the same name and
    /// key get the same certificate; another key, another name, or after the token's
    /// expiry, 401 as a used token.
    func testARetryWithTheSameKeyGetsTheSameCertificate() throws {
        let est = try service("allow_devices = dev*\n")
        let secret = try token("dev*", lifetime: 600)
        let (body, key) = try csr("dev1.example")
        let first = try issued(post(est, "simpleenroll", body, token: secret))
        // The same request again, and a new request (new signature) for the same key.
        XCTAssertEqual(try issued(post(est, "simpleenroll", body, token: secret)), first)
        XCTAssertEqual(try issued(post(est, "simpleenroll", try csr("dev1.example", key: key).body, token: secret)), first)
        XCTAssertEqual(est.counts["simpleenroll ok"], 3)
        XCTAssertEqual(try String(decoding: PKI.readFile(dir + "/issued.txt"), as: UTF8.self)
            .split(separator: "\n").filter { $0.hasSuffix("dev1.example") }.count, 1, "signed once")
        // Another key, or another name the token would have allowed: the token is used.
        let otherKey = post(est, "simpleenroll", try csr("dev1.example").body, token: secret)
        XCTAssertEqual(otherKey.head.status, 401)
        XCTAssertTrue(text(otherKey).contains("already used"), text(otherKey))
        XCTAssertEqual(post(est, "simpleenroll", try csr("dev2.example", key: key).body, token: secret).head.status, 401)
        // Without the token, or with another one: no replay either.
        XCTAssertEqual(post(est, "simpleenroll", body).head.status, 401)
        XCTAssertEqual(post(est, "simpleenroll", body, token: try token("dev*")).head.status, 409)
        // Once the token has expired, nothing is sent again.
        clock += 600
        XCTAssertEqual(post(est, "simpleenroll", body, token: secret).head.status, 401)
    }

    func testARevokedCertificateIsNotSentAgain() throws {
        let est = try service()
        let secret = try token("dev1.example")
        let (body, _) = try csr("dev1.example")
        _ = try issued(post(est, "simpleenroll", body, token: secret))
        try PKI.revoke(directory: dir, name: "dev1.example")
        XCTAssertEqual(post(est, "simpleenroll", body, token: secret).head.status, 401)
    }

    /// One enrollment parses DIR/enroll-tokens at most once; a file changed by
    /// `pki enroll-token` is read again.
    func testTheTokenFileIsParsedOncePerChange() throws {
        let est = try service()
        let a = try token("dev1.example"), b = try token("dev2.example")
        _ = try issued(post(est, "simpleenroll", try csr("dev1.example").body, token: a))
        XCTAssertEqual(est.tokenCache.parses, 1)
        _ = try issued(post(est, "simpleenroll", try csr("dev2.example").body, token: b))
        XCTAssertEqual(est.tokenCache.parses, 1, "the gateway's own write is remembered")
        let c = try token("dev3.example")
        _ = try issued(post(est, "simpleenroll", try csr("dev3.example").body, token: c))
        XCTAssertEqual(est.tokenCache.parses, 2)
        XCTAssertEqual(try EnrollmentTokens.load(path: EnrollmentTokens.path(directory: dir)).entries.filter { $0.used != nil }.count, 3)
    }

    func testIssuedReplaysAreBounded() {
        var r = IssuedReplays(capacity: 2)
        func entry(_ n: String, expires: Int64 = 100) -> IssuedReplays.Entry {
            IssuedReplays.Entry(name: n, keyFingerprint: [1], serial: n, certificateDER: [2], expires: expires)
        }
        r.record(tokenHash: [1], entry("a"), now: 0)
        r.record(tokenHash: [2], entry("b", expires: 10), now: 0)
        r.record(tokenHash: [3], entry("c"), now: 20)  // b has expired: it goes, a stays
        XCTAssertNotNil(r.replay(tokenHash: [1], name: "a", keyFingerprint: [1], now: 20))
        XCTAssertNil(r.replay(tokenHash: [1], name: "a", keyFingerprint: [9], now: 20))
        r.record(tokenHash: [4], entry("d"), now: 20)  // full: the oldest (a) goes
        XCTAssertEqual(r.count, 2)
        XCTAssertNil(r.replay(tokenHash: [1], name: "a", keyFingerprint: [1], now: 20))
        XCTAssertNotNil(r.replay(tokenHash: [4], name: "d", keyFingerprint: [1], now: 20))
        XCTAssertNil(r.replay(tokenHash: [4], name: "d", keyFingerprint: [1], now: 100))
    }

    func testAnExpiredTokenIs401() throws {
        let est = try service()
        let secret = try token("dev1.example", lifetime: 60)
        clock += 61
        XCTAssertEqual(post(est, "simpleenroll", try csr("dev1.example").body, token: secret).head.status, 401)
    }

    func testReenrollmentNeedsTheCertificateAndANewKey() throws {
        let est = try service()
        let (body, key) = try csr("dev1.example")
        let der = try issued(post(est, "simpleenroll", body, token: try token("dev1.example")))
        let device = ESTClient(address: "192.0.2.9:1", certificateDER: der, commonName: "dev1.example")
        XCTAssertEqual(post(est, "simplereenroll", try csr("dev1.example").body).head.status, 403)  // no certificate
        XCTAssertEqual(post(est, "simplereenroll", try csr("dev1.example", key: key).body, client: device).head.status, 409)
        XCTAssertEqual(post(est, "simplereenroll", try csr("dev2.example").body, client: device).head.status, 403)
        var user = device
        user.isUserCertificate = true
        XCTAssertEqual(post(est, "simplereenroll", try csr("dev1.example").body, client: user).head.status, 403)
        let renewed = try issued(post(est, "simplereenroll", try csr("dev1.example").body, client: device))
        XCTAssertNotEqual(renewed, der)
        // Renewal keeps the earlier certificate valid (the device rolls over): not revoked.
        XCTAssertFalse(FileManager.default.fileExists(atPath: dir + "/revoked.txt")
                       && text(dir + "/revoked.txt").contains("dev1.example"))
        XCTAssertEqual(est.counts["simplereenroll ok"], 1)
        XCTAssertEqual(est.counts["simplereenroll conflict"], 1)
        XCTAssertEqual(est.counts["simplereenroll refused"], 3)
    }

    func testManualApproval() throws {
        let est = try service("enroll_approval = manual\n")
        let secret = try token("dev1.example")
        let (body, _) = try csr("dev1.example")
        let first = post(est, "simpleenroll", body, token: secret)
        XCTAssertEqual(first.head.status, 202)
        XCTAssertEqual(first.head.headers.first("retry-after"), String(ESTService.retryAfterSeconds))
        XCTAssertEqual(post(est, "simpleenroll", body, token: secret).head.status, 202)
        // Another key for the same name while it waits: 409 (the token is used).
        XCTAssertEqual(post(est, "simpleenroll", try csr("dev1.example").body, token: secret).head.status, 409)
        XCTAssertTrue(est.approvals.json().contains("\"state\":\"pending\""))
        XCTAssertEqual(est.approve("nobody.example").0, 404)
        XCTAssertEqual(est.approve("dev1.example").0, 200)
        XCTAssertEqual(est.approve("dev1.example").0, 404)  // decided already
        _ = try issued(post(est, "simpleenroll", body, token: secret))
        XCTAssertEqual(post(est, "simpleenroll", body, token: secret).head.status, 401)  // handed out once
        XCTAssertEqual(est.approvals.entries.count, 0)

        let other = try token("dev2.example")
        let (b2, _) = try csr("dev2.example")
        XCTAssertEqual(post(est, "simpleenroll", b2, token: other).head.status, 202)
        XCTAssertEqual(est.deny("dev2.example").0, 200)
        XCTAssertEqual(post(est, "simpleenroll", b2, token: other).head.status, 403)
        // Forgotten a day after the decision.
        clock += EnrollmentApprovals.decidedSeconds + 1
        est.approvals.expire(now: clock)
        XCTAssertEqual(est.approvals.entries.count, 0)
    }

    func testWithoutTheCAKeyEnrollmentIs503() throws {
        _ = try service()
        XCTAssertEqual(unlink(dir + "/ca.key"), 0)
        let est = try service()
        let r = post(est, "simpleenroll", try csr("dev1.example").body, token: try token("dev1.example"))
        XCTAssertEqual(r.head.status, 503)
        XCTAssertTrue(text(r).contains("pki_dir"), text(r))
        XCTAssertEqual(post(est, "simplereenroll", try csr("dev1.example").body).head.status, 503)
        XCTAssertEqual(est.handle(ESTRequest(method: "GET", path: ESTService.prefix + "cacerts"), client: ESTClient(address: "x")).head.status, 200)
    }

    func testConfigKeys() throws {
        var s = Settings()
        try ConfigFile.parse(Array("plaintext_devices = true\nenroll_approval = manual\n".utf8), name: "gw.conf", into: &s)
        XCTAssertThrowsError(try GatewayConfig(s)) { e in
            XCTAssertTrue("\(e)".contains("needs pki_dir"), "\(e)")
        }
        _ = try service()
        XCTAssertThrowsError(try service("enroll_approval = sometimes\n"))
        XCTAssertThrowsError(try service("device_cert_days = 0\n"))
        let c = try service().config
        XCTAssertEqual(c.deviceCertDays, 30)
        XCTAssertFalse(c.enrollApprovalManual)
        XCTAssertNil(c.renewableCRL)  // no DIR/crl.pem yet
        try PKI.writeCRL(directory: dir)
        XCTAssertEqual(try service().config.renewableCRL, dir + "/crl.pem")
        let tls = c.deviceTLS()
        XCTAssertEqual(tls.alpn, ["http/1.1", "h2"])
        XCTAssertNotNil(try c.makeDeviceTLS())
    }

    func testCRLIsRenewedHalfwayWhenTheGatewayHoldsTheKey() throws {
        _ = try service()
        try PKI.writeCRL(directory: dir, crlDays: 2)
        let first = try PKI.crlUpdateTimes(file: dir + "/crl.pem")
        let est = try service()
        let keeper = CRLKeeper(loop: EventLoop(), logger: Logger(program: "test", level: .error),
                               settings: CurrentConfig(est.config), now: { [unowned self] in self.clock })
        var renewed = 0
        keeper.onRenewed = { renewed += 1 }
        // Early in its life: read, not renewed.
        clock = first.lastUpdate + 3600
        keeper.holdsKey = { true }
        keeper.check()
        XCTAssertEqual(keeper.nextUpdate, first.nextUpdate)
        XCTAssertEqual(keeper.secondsLeft, first.nextUpdate - clock)
        // Past half its validity, without the key: only read (and warned about: under 7 days).
        clock = first.nextUpdate - 3600
        keeper.holdsKey = { false }
        keeper.check()
        XCTAssertEqual(renewed, 0)
        XCTAssertEqual(keeper.secondsLeft, 3600)
        // With the key: written again for 30 days, and the gateway told.
        keeper.holdsKey = { true }
        keeper.check()
        XCTAssertEqual(renewed, 1)
        let second = try PKI.crlUpdateTimes(file: dir + "/crl.pem")
        XCTAssertGreaterThan(second.nextUpdate, first.nextUpdate + 20 * 86_400)
        XCTAssertEqual(keeper.nextUpdate, second.nextUpdate)
    }
}
