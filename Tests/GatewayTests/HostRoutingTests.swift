// Host-to-device mapping: the rules that decide which device a request reaches.
@testable import FleetGateway
import XCTest

final class HostRoutingTests: XCTestCase {
    func testRoutingKeyStripsPortCaseAndTrailingDot() {
        XCTAssertEqual(HostRouting.routingKey("dev1.example"), "dev1.example")
        XCTAssertEqual(HostRouting.routingKey("DEV1.Example:8080"), "dev1.example")
        XCTAssertEqual(HostRouting.routingKey("dev1.example."), "dev1.example")
        XCTAssertEqual(HostRouting.routingKey("dev1.example.:80"), "dev1.example")
    }

    func testRoutingKeyRefusesWhatIsNotAHostname() {
        for bad in ["", ":80", "dev1.example:", "dev1.example:8x", "dev1.example:123456", "[::1]:80",
                    "*.example", "dev 1", "dev1..example", "-dev.example", "dev1.example/x", "a@b",
                    "127.0.0.1", "10.1.2.3:80", "127.1", "2130706433"] {
            XCTAssertNil(HostRouting.routingKey(bad), bad)
        }
    }

    func testTemplateMapsTheCommonNameToTheHostname() {
        XCTAssertEqual(HostnameTemplate.identity.hostname(for: "Dev1"), "dev1")
        let t = HostnameTemplate("{cn}.devices.example.com")
        XCTAssertEqual(t?.hostname(for: "dev1"), "dev1.devices.example.com")
        XCTAssertNil(HostnameTemplate("devices.example.com"), "no {cn}")
        XCTAssertNil(HostnameTemplate("{cn}.{cn}.example"), "{cn} twice")
        XCTAssertNil(HostnameTemplate("{cn}..example"), "not a hostname")
    }

    func testAbsoluteFormTargets() {
        XCTAssertEqual(HostRouting.absoluteAuthority("http://dev1.example:80/x?y"), "dev1.example:80")
        XCTAssertNil(HostRouting.absoluteAuthority("/x"))
        XCTAssertEqual(HostRouting.originForm("http://dev1.example/x?y"), "/x?y")
        XCTAssertEqual(HostRouting.originForm("http://dev1.example"), "/")
        XCTAssertEqual(HostRouting.originForm("http://dev1.example?q"), "/?q")
        XCTAssertEqual(HostRouting.originForm("/a/b"), "/a/b")
    }
}
