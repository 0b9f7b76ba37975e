// The access control keys of the gateway's configuration: the secure default for a
// public listener off loopback, and keys that only make sense together.
import FleetAccess
@testable import FleetGatewayKit
import HTTP1
import ConfigFormat
import XCTest

final class AccessConfigTests: XCTestCase {
    private func config(_ text: String) throws -> GatewayConfig {
        var s = Settings()
        try ConfigFile.parse(Array(("plaintext_devices = true\n" + text).utf8), name: "gw.conf", into: &s)
        return try GatewayConfig(s)
    }

    func testAPublicListenerOffLoopbackNeedsAPolicyOrOpenAccess() throws {
        for host in ["0.0.0.0:8080", "[::]:8080", "192.0.2.10:80"] {
            XCTAssertThrowsError(try config("listen_public = " + host + "\n"), host) { e in
                XCTAssertTrue("\(e)".contains("public_access = open"), "\(e)")
            }
            XCTAssertTrue(try config("listen_public = " + host + "\npublic_access = open\n").publicAccessOpen)
        }
        for host in ["127.0.0.1:8080", "127.1.2.3:8080", "[::1]:8080", "localhost:8080"] {
            XCTAssertNoThrow(try config("listen_public = " + host + "\n"), host)
        }
        XCTAssertThrowsError(try config("public_access = maybe\n"))
    }

    func testJWTKeysNeedKeys() {
        XCTAssertThrowsError(try config("jwt_issuer = https://idp.example.com/\n")) { e in
            XCTAssertTrue("\(e)".contains("gw.conf:2: jwt_issuer needs jwt_jwks or jwt_jwks_url"), "\(e)")
        }
        XCTAssertThrowsError(try config("jwt_jwks_url = ftp://idp.example.com/keys\n"))
        let c = try? config("jwt_jwks_url = https://idp.example.com/keys\njwt_header = CF-Access-JWT-Assertion\njwt_issuer = https://idp.example.com/\njwt_audience = fleet\n")
        XCTAssertEqual(c?.jwtHeader, "cf-access-jwt-assertion")
        XCTAssertTrue(c?.jwtEnabled == true)
        for bad in ["host", "x y", "a_b", ""] {
            XCTAssertThrowsError(try config("jwt_jwks_url = https://idp.example.com/keys\njwt_issuer = i\njwt_audience = a\njwt_header = " + bad + "\n"), bad)
        }
    }

    func testUnreadablePolicyAndTokensFilesAreRefused() {
        XCTAssertThrowsError(try config("access_policy = /nonexistent/policy\n")) { e in
            XCTAssertTrue("\(e)".hasPrefix("gw.conf:2: access_policy"), "\(e)")
        }
        XCTAssertThrowsError(try config("tokens = /nonexistent/tokens\n")) { e in
            XCTAssertTrue("\(e)".hasPrefix("gw.conf:2: tokens"), "\(e)")
        }
        XCTAssertThrowsError(try config("jwt_jwks = /nonexistent/jwks.json\n"))
    }

    func testHostnameTemplateInverse() {
        let t = HostnameTemplate("{cn}.devices.example.com")!
        XCTAssertEqual(t.deviceName(for: "dev1.devices.example.com"), "dev1")
        XCTAssertNil(t.deviceName(for: ".devices.example.com"))
        XCTAssertNil(t.deviceName(for: "dev1.example.com"))
        XCTAssertEqual(HostnameTemplate.identity.deviceName(for: "dev1"), "dev1")
    }

    func testClientAddressBehindTrustedProxies() {
        var h = HTTPHeaders([("x-forwarded-for", "203.0.113.9, 10.0.0.7")])
        let trusted = [CIDR("10.0.0.0/8")!]
        XCTAssertEqual(ForwardedFields.clientAddress(h, peer: "10.1.1.1", trusted: trusted), "203.0.113.9")
        XCTAssertEqual(ForwardedFields.clientAddress(h, peer: "198.51.100.1", trusted: trusted), "198.51.100.1")
        h = HTTPHeaders([("x-forwarded-for", "garbage, 10.0.0.7")])
        XCTAssertEqual(ForwardedFields.clientAddress(h, peer: "10.1.1.1", trusted: trusted), "10.1.1.1")
    }
}
