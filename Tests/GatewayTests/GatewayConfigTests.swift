// The gateway's settings: values that parse must keep the promises the rest of the
// gateway relies on (inputs found by fuzz-config are kept in fuzz/regressions/config/).
@testable import FleetGateway
import Tunnel
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
}
