// Review of issue 13 (access control): failing tests for the findings; each names the
// behaviour the gateway should have. Time is a ManualClock.
import COpenSSL
import EventLoop
import AccessTestSupport
import FleetAccess
@testable import FleetGatewayKit
@testable import FleetPKI
@testable import TLS
import HTTP1
import ConfigFormat
import XCTest

final class ReviewI13Tests: XCTestCase {
    private var dir = ""
    private let clock = ManualClock()
    private let logger = Logger(program: "test", level: .error)
    static let key = TestKey(.ec, kid: "k1")
    static let claims = "jwt_issuer = https://idp.example.com/\njwt_audience = fleet\n"

    override func setUp() {
        dir = NSTemporaryDirectory() + "review13-" + String(UInt64.random(in: 0...UInt64.max), radix: 16)
        try? FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
    }

    override func tearDown() { try? FileManager.default.removeItem(atPath: dir) }

    private func write(_ name: String, _ text: String) -> String {
        let path = dir + "/" + name
        FileManager.default.createFile(atPath: path, contents: Data(text.utf8))
        return path
    }

    private func config(_ text: String) throws -> GatewayConfig {
        var s = Settings()
        try ConfigFile.parse(Array(("plaintext_devices = true\n" + text).utf8), name: "gw.conf", into: &s)
        return try GatewayConfig(s)
    }

    private func decide(_ ac: AccessControl, device: String = "dev1", path: String = "/", source: String = "192.0.2.1",
                        _ fields: [(String, String)] = []) -> AccessControl.Outcome {
        var result: AccessControl.Outcome?
        ac.authorize(AccessRequest(principal: nil, device: device, method: "GET", path: path, source: source),
                     fields: HTTPHeaders(fields), tls: nil) { result = $0 }
        return result!
    }

    private func jwt(iss: String, sub: String = "alice") -> String {
        ReviewI13Tests.key.token("{\"iss\":\"" + iss + "\",\"aud\":\"fleet\",\"sub\":\"" + sub + "\",\"exp\":1900000000}")
    }

    /// SIGHUP with keys from jwt_jwks_url: a new jwt_issuer (or audience, groups claim,
    /// leeway) must apply at once. AccessControl.apply keeps the old verifier and cache
    /// while `jwks != nil` (and Gateway.reload never calls refreshKeys).
    func testReloadOfJWTIssuerAppliesWhenKeysCameFromTheURL() throws {
        let policy = write("policy", "allow authenticated *\n")
        let before = try config("access_policy = " + policy + "\njwt_jwks_url = https://idp.example.com/jwks\njwt_issuer = https://old.example\njwt_audience = fleet\n")
        let ac = AccessControl(config: before, clock: clock.clock, wallClock: { 1_800_000_000 }, logger: logger)
        let body = jwks([ReviewI13Tests.key.jwk])
        ac.fetchKeys = { done in done(body) }
        ac.refreshKeys()
        let cached = jwt(iss: "https://old.example", sub: "cached")
        XCTAssertNil(decide(ac, [("Authorization", "Bearer " + cached)]).status, "the old issuer is accepted before the reload")
        let after = try config("access_policy = " + policy + "\njwt_jwks_url = https://idp.example.com/jwks\njwt_issuer = https://new.example\njwt_audience = fleet\n")
        ac.apply(after)
        XCTAssertEqual(decide(ac, [("Authorization", "Bearer " + cached)]).status, 401, "a token verified before the reload, old issuer")
        XCTAssertEqual(decide(ac, [("Authorization", "Bearer " + jwt(iss: "https://old.example", sub: "fresh"))]).status, 401,
                       "a token never seen before, old issuer")
        XCTAssertNil(decide(ac, [("Authorization", "Bearer " + jwt(iss: "https://new.example"))]).status, "the new issuer")
    }

    /// Secure default on SIGHUP: GatewayConfig checks "non-loopback listener needs a policy"
    /// against the NEW listen_public, but Gateway.reload keeps the OLD listener. Reloading
    /// "listen_public = 127.0.0.1 + no access_policy" onto a gateway bound to 0.0.0.0
    /// leaves every device open to the network without a policy.
    func testReloadCannotDropThePolicyOfANonLoopbackListenerByNamingLoopback() throws {
        let policy = write("policy", "allow authenticated *\n")
        let loop = EventLoop()
        var first = try config("listen_public = 0.0.0.0:18080\naccess_policy = " + policy + "\n")
        first.listenDevices = HostPort(host: "127.0.0.1", port: 0)
        first.listenPublic = HostPort(host: "0.0.0.0", port: 0)
        first.listenAdmin = nil
        let g = try Gateway(config: first, loop: loop, logger: logger)
        XCTAssertTrue(g.access.hasPolicy)
        try? g.reload(try config("listen_public = 127.0.0.1:18080\n"))
        XCTAssertEqual(g.config.listenPublic.host, "0.0.0.0", "the listener stays where it was (restart only)")
        XCTAssertTrue(g.access.hasPolicy, "0.0.0.0 without a policy and without public_access = open")
        XCTAssertEqual(decide(g.access).status, 401, "an anonymous user from the network")
    }

    /// jwt_header = cf-access-jwt-assertion and no tokens: forDevice passes Authorization
    /// to the device (it is not ours), but authenticate() answers 401 "tokens are not
    /// accepted here" to any request that carries one without the JWT header, so a
    /// device's own Basic auth cannot be used (e.g. on a device open to `anyone`).
    func testCustomJWTHeaderLeavesTheDevicesOwnAuthorizationAlone() throws {
        let keys = write("jwks.json", String(decoding: jwks([ReviewI13Tests.key.jwk]), as: UTF8.self))
        let policy = write("policy", "allow anyone dev1\n")
        let ac = AccessControl(config: try config("access_policy = " + policy + "\njwt_jwks = " + keys
                                                  + "\njwt_header = cf-access-jwt-assertion\n" + ReviewI13Tests.claims),
                               clock: clock.clock, wallClock: { 1_800_000_000 }, logger: logger)
        XCTAssertEqual(ac.forDevice(HTTPHeaders([("Authorization", "Basic eDp5")]), principal: nil).values("authorization"), ["Basic eDp5"])
        XCTAssertNil(decide(ac, [("Authorization", "Basic eDp5")]).status)
    }

    /// `jwt_jwks = FILE` and `jwt_jwks_url` together ("and/or", README): the URL's answer
    /// replaces the file's keys (setKeys), so JWTs signed with a key only in the file are
    /// refused as soon as the URL has answered once.
    func testJWKSFileKeysSurviveTheURLsAnswer() throws {
        let fileKey = TestKey(.ec, kid: "file1")
        let keys = write("jwks.json", String(decoding: jwks([fileKey.jwk]), as: UTF8.self))
        let policy = write("policy", "allow authenticated *\n")
        let ac = AccessControl(config: try config("access_policy = " + policy + "\njwt_jwks = " + keys
                                                  + "\njwt_jwks_url = https://idp.example.com/jwks\n" + ReviewI13Tests.claims),
                               clock: clock.clock, wallClock: { 1_800_000_000 }, logger: logger)
        let token = fileKey.token("{\"iss\":\"https://idp.example.com/\",\"aud\":\"fleet\",\"sub\":\"alice\",\"exp\":1900000000}")
        XCTAssertNil(decide(ac, [("Authorization", "Bearer " + token)]).status, "before the URL answered")
        let body = jwks([ReviewI13Tests.key.jwk])
        ac.fetchKeys = { done in done(body) }
        ac.refreshKeys()
        let other = fileKey.token("{\"iss\":\"https://idp.example.com/\",\"aud\":\"fleet\",\"sub\":\"bob\",\"exp\":1900000000}")
        XCTAssertNil(decide(ac, [("Authorization", "Bearer " + other)]).status, "a key of jwt_jwks, after the URL answered")
    }

    /// A key the IdP withdrew (rotated out after a compromise) stays trusted: the JWKS URL
    /// is asked again only for an unknown kid (which a holder of the old key never sends),
    /// never periodically and not on SIGHUP (Gateway.reload does not call refreshKeys).
    func testAKeyWithdrawnFromTheJWKSURLIsDroppedByADayAndAReload() throws {
        let old = TestKey(.ec, kid: "old")
        let policy = write("policy", "allow authenticated *\n")
        let cfg = try config("access_policy = " + policy + "\njwt_jwks_url = https://idp.example.com/jwks\n" + ReviewI13Tests.claims)
        let ac = AccessControl(config: cfg, clock: clock.clock, wallClock: { 1_800_000_000 }, logger: logger)
        var served = jwks([old.jwk, ReviewI13Tests.key.jwk])
        ac.fetchKeys = { done in done(served) }
        ac.refreshKeys()
        XCTAssertNil(decide(ac, [("Authorization", "Bearer " + old.token("{\"iss\":\"https://idp.example.com/\",\"aud\":\"fleet\",\"sub\":\"a\",\"exp\":1900000000}"))]).status)
        served = jwks([ReviewI13Tests.key.jwk])  // the IdP withdraws "old"
        clock.advance(milliseconds: 86_400_000)
        ac.apply(cfg)  // what Gateway.reload does on SIGHUP
        XCTAssertEqual(decide(ac, [("Authorization", "Bearer " + old.token("{\"iss\":\"https://idp.example.com/\",\"aud\":\"fleet\",\"sub\":\"mallory\",\"exp\":1900000000}"))]).status, 401)
    }

    /// The tokens file's stamp is taken in AccessControl.apply, after GatewayConfig read
    /// the tokens: a `token revoke` between the two (SIGHUP builds TLS contexts meanwhile)
    /// leaves the revoked token valid until the file changes again. Stamp the bytes that were parsed.
    func testARevokeBetweenConfigReadAndApplyIsNotMissed() throws {
        let secret = "rht_" + String(repeating: "Q", count: 43)
        var digest = [UInt8](repeating: 0, count: 32)
        let b = Array(secret.utf8)
        b.withUnsafeBufferPointer { p in digest.withUnsafeMutableBufferPointer { o in _ = SHA256(p.baseAddress, p.count, o.baseAddress) } }
        let hash = digest.map { String(format: "%02x", $0) }.joined()
        let tokens = write("tokens", "eve " + hash + " devices=* created=1700000000 expires=never\n")
        let cfg = try config("tokens = " + tokens + "\n")       // GatewayConfig reads the file
        _ = write("tokens", "# eve revoked\n")                   // `token revoke eve` meanwhile
        let ac = AccessControl(config: cfg, clock: clock.clock, wallClock: { 1_800_000_000 }, logger: logger)
        clock.advance(milliseconds: 5_000)
        XCTAssertEqual(decide(ac, [("Authorization", "Bearer " + secret)]).status, 401, "eve was revoked")
    }

    /// JWTs without jwt_audience (and jwt_issuer): any token the IdP signs for any other
    /// application (a shared IdP: Google, an Auth0/Okta/Entra tenant, a Cloudflare team) is
    /// a principal here, and `allow authenticated` / `group:` rules let it in. Secure
    /// default: refuse the configuration (or require an explicit opt-out).
    func testJWTWithoutAnAudienceIsRefused() throws {
        let keys = write("jwks.json", String(decoding: jwks([ReviewI13Tests.key.jwk]), as: UTF8.self))
        XCTAssertThrowsError(try config("jwt_jwks = " + keys + "\njwt_issuer = https://accounts.google.com\n"))
        XCTAssertThrowsError(try config("jwt_jwks = " + keys + "\njwt_audience = fleet\n"), "and without an issuer")
    }

    /// A user certificate's notAfter (Principal.expires) is never compared with the time:
    /// the handshake checked it once, and an HTTP/1.1 keep-alive or HTTP/2 connection
    /// that stays busy keeps the user in after the certificate expired (tokens and JWTs
    /// are checked per request). Here: a connection made now, a request a year and a month later.
    func testAUserCertificatePastItsNotAfterIsNoUserAnyMore() throws {
        let pki = dir + "/pki"
        try PKI.initialize(directory: pki, gatewayName: "gw.fleet.test", extraSANs: ["127.0.0.1"])
        try PKI.issueServer(directory: pki, name: "www.fleet.test")
        try PKI.issueUser(directory: pki, name: "alice")
        let policy = write("policy", "allow user:alice *\n")
        var s = Settings()
        let text = "ca = \(pki)/ca.crt\ncert = \(pki)/gateway.crt\nkey = \(pki)/gateway.key\n"
            + "public_cert = \(pki)/servers/www.fleet.test.crt\npublic_key = \(pki)/servers/www.fleet.test.key\n"
            + "access_policy = " + policy + "\n"
        try ConfigFile.parse(Array(text.utf8), name: "gw.conf", into: &s)
        let cfg = try GatewayConfig(s)
        let server = try TLSContext(try XCTUnwrap(cfg.publicTLS()))
        var cc = TLSConfiguration(role: .client)
        cc.trustFile = pki + "/ca.crt"
        let client = try TLSContext(cc)
        let id = try TLSIdentity(certificatePEM: Array(try Data(contentsOf: URL(fileURLWithPath: pki + "/users/alice.crt"))),
                                 keyPEM: Array(try Data(contentsOf: URL(fileURLWithPath: pki + "/users/alice.key"))))
        let sc = try TLSConnection(context: server)
        let c = try TLSConnection(context: client, serverName: "www.fleet.test", identity: id)
        for _ in 0..<100 {
            _ = try c.handshake(); _ = try sc.handshake()
            var a: [UInt8] = [], b: [UInt8] = []
            c.takeOutput(into: &a); sc.takeOutput(into: &b)
            sc.feed(a); c.feed(b)
        }
        XCTAssertNotNil(userPrincipal(from: sc))
        let later = Int64(Date().timeIntervalSince1970) + 400 * 86_400
        let ac = AccessControl(config: cfg, clock: clock.clock, wallClock: { later }, logger: logger)
        var result: AccessControl.Outcome?
        ac.authorize(AccessRequest(principal: nil, device: "dev1", method: "GET", path: "/", source: "192.0.2.1"),
                     fields: HTTPHeaders(), tls: sc) { result = $0 }
        XCTAssertEqual(result?.status, 401, "alice's certificate expired 35 days ago")
    }
}
