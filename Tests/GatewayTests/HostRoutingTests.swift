// Host-to-device mapping: the rules that decide which device a request reaches.
import FleetAccess
@testable import FleetGatewayKit
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

    func testTemplateRefusesNamesItCannotMapToAHostname() {
        // Found by fuzz-host-mapping: such a device was admitted but no Host could reach it.
        let t = HostnameTemplate("dev-{cn}.example")!
        XCTAssertNil(t.hostname(for: String(repeating: "a", count: 63)), "label of 67 characters")
        XCTAssertEqual(t.hostname(for: String(repeating: "a", count: 59)), "dev-" + String(repeating: "a", count: 59) + ".example")
        let long = Array(repeating: String(repeating: "b", count: 60), count: 4).joined(separator: ".")  // 243 characters
        XCTAssertNotNil(HostnameTemplate.identity.hostname(for: long))
        XCTAssertNil(HostnameTemplate("{cn}.devices.example.com")!.hostname(for: long), "over 253 characters")
    }

    func testUnicodeLowerCasingNeverMakesANameOfAnother() {
        // U+212A KELVIN SIGN lower-cases to ASCII "k": "dev1.\u{212A}" must not reach dev1.k.
        let kelvin = "\u{212A}"
        XCTAssertNil(HostRouting.routingKey("dev1." + kelvin))
        XCTAssertNil(HostRouting.routingKey("dev" + kelvin + ":80"))
        XCTAssertNil(DeviceIdentity.name(commonName: "dev" + kelvin))
        // Not folded either: a CN in another case is refused (issue 12, finding 4).
        XCTAssertNil(DeviceIdentity.name(commonName: "Dev-K1"))
        XCTAssertEqual(DeviceIdentity.name(commonName: "dev-k1"), "dev-k1")
        XCTAssertNil(HostnameTemplate("{cn}." + kelvin + ".example"))
        XCTAssertEqual(HostnameTemplate("{CN}.Example")?.hostname(for: "DEV1"), "dev1.example")
        XCTAssertNil(NamePattern(kelvin + "*"))
        XCTAssertEqual(NamePattern("DEV-*")?.matches("dev-1"), true)
    }

    func testGlobStarAlsoMatchesAStar() {
        // Found by fuzz-host-mapping: "*" met a literal "*" in the name and stopped being a wildcard.
        XCTAssertEqual(NamePattern("dev-*")?.matches("dev-*,x"), true)
        XCTAssertEqual(NamePattern("a*")?.matches("a*b"), true)
        XCTAssertEqual(NamePattern("a*c")?.matches("a*b"), false)
    }
}
