// The gateway's settings: values that parse must keep the promises the rest of the
// gateway relies on (inputs found by fuzz-config are kept in fuzz/regressions/config/).
import FleetAccess
@testable import FleetGatewayKit
import ConfigFormat
import XCTest

final class GatewayConfigTests: XCTestCase {
    private func config(_ text: String) throws -> GatewayConfig {
        var s = Settings()
        try ConfigFile.parse(Array(("plaintext_devices = true\n" + text).utf8), name: "gw.conf", into: &s)
        return try GatewayConfig(s)
    }

    func testCheckPathMustBeARequestTarget() throws {
        XCTAssertEqual(try config("check_path = /health?full=1\n").checkPath, "/health?full=1")
        for bad in ["/a\tb", "/a\rb", "/caf\u{e9}", "/a\u{7f}", "health"] {
            XCTAssertThrowsError(try config("check_path = " + bad + "\n"), bad) { e in
                XCTAssertTrue((e as? ConfigError)?.message.hasPrefix("gw.conf:2: ") == true, "\(e)")
            }
        }
    }

    func testPlaintextDeviceNeedsAHostnameUnderTheTemplate() {
        let name = String(repeating: "a", count: 63)
        XCTAssertThrowsError(try config("plaintext_device_name = " + name + "\nhostname_template = x{cn}.example\n")) { e in
            XCTAssertTrue((e as? ConfigError)?.message.hasPrefix("gw.conf:3: ") == true, "\(e)")
        }
        XCTAssertNoThrow(try config("plaintext_device_name = " + name + "\nhostname_template = {cn}.example\n"))
    }

    func testPublicEdgeKeys() throws {
        let d = try config("")
        XCTAssertEqual(d.trustedProxies, [])
        XCTAssertFalse(d.keepCookieDomain)
        XCTAssertEqual(d.maxUserConnections, 0)
        let c = try config("trusted_proxies = 10.0.0.0/8, fd00::/8\ncookie_domain = keep\nmax_user_connections = 500\n"
                           + "max_user_connections_per_address = 20\n")
        XCTAssertEqual(c.trustedProxies, [CIDR("10.0.0.0/8")!, CIDR("fd00::/8")!])
        XCTAssertTrue(c.keepCookieDomain)
        XCTAssertEqual(c.maxUserConnections, 500)
        XCTAssertEqual(c.maxUserConnectionsPerAddress, 20)
        for bad in ["trusted_proxies = 10.0.0.0/33", "trusted_proxies = example.com", "cookie_domain = rewrite"] {
            XCTAssertThrowsError(try config(bad + "\n"), bad) { e in
                XCTAssertTrue((e as? ConfigError)?.message.hasPrefix("gw.conf:2: ") == true, "\(e)")
            }
        }
    }
}
