// The public edge's pure rules (issue 12): admin Host literals (finding 6), client
// address fields (7), host-only cookies (15) and the user connection budget (3).
import FleetAccess
@testable import FleetGatewayKit
import HTTP1
import XCTest

final class PublicEdgeTests: XCTestCase {
    func testAdminHostMustBeAnAddressLiteralOrLocalhost() {
        for ok in ["127.0.0.1", "127.0.0.1:9180", "0.0.0.0", "255.255.255.255:1", "[::1]", "[::1]:9180",
                   "[fe80::1:2]", "[::ffff:127.0.0.1]:80", "localhost", "LocalHost:9180", "10.1.2.3:65535"] {
            XCTAssertTrue(AddressLiteral.isAddressHost(ok), ok)
        }
        for bad in ["dead.beef", "cafe.de", "dead.beef:80", "beef", "abc", "1.2.3", "1.2.3.4.5", "256.0.0.1", "01.2.3.4",
                    "1.2.3.4:", "1.2.3.4:65536", "1.2.3.4:123456", "1.2.3.4:8x", "::1", "[::1", "[::1]x", "[::1]:",
                    "[dead.beef]", "[1.2.3.4]", "[::1]:99999", "", ":80", "localhost.", "localhost.evil.example",
                    "127.0.0.1.nip.io", "0x7f.0.0.1", "2130706433", "[::g]"] {
            XCTAssertFalse(AddressLiteral.isAddressHost(bad), bad)
        }
    }

    func testCIDR() {
        XCTAssertEqual(CIDR("10.0.0.0/8")?.contains("10.200.3.4"), true)
        XCTAssertEqual(CIDR("10.0.0.0/8")?.contains("11.0.0.1"), false)
        XCTAssertEqual(CIDR("10.0.0.0/8")?.contains("::ffff:10.0.0.1"), true)
        XCTAssertEqual(CIDR("127.0.0.1")?.contains("127.0.0.1"), true)
        XCTAssertEqual(CIDR("127.0.0.1")?.contains("127.0.0.2"), false)
        XCTAssertEqual(CIDR("192.168.1.128/25")?.contains("192.168.1.200"), true)
        XCTAssertEqual(CIDR("192.168.1.128/25")?.contains("192.168.1.100"), false)
        XCTAssertEqual(CIDR("fd00::/8")?.contains("fd12::1"), true)
        XCTAssertEqual(CIDR("fd00::/8")?.contains("10.0.0.1"), false)
        for bad in ["", "10.0.0.0/33", "10.0.0.0/", "10.0.0/8", "fd00::/129", "x/8", "10.0.0.0/8/8", "10.0.0.0/-1"] {
            XCTAssertNil(CIDR(bad), bad)
        }
    }

    private func names(_ h: HTTPHeaders) -> [String] { h.map { $0.name.lowercased() } }

    func testClientAddressFieldsAreReplacedAndUnderscoreNamesDropped() {
        let user = HTTPHeaders([("Accept", "*/*"), ("X_Forwarded_For", "6.6.6.6"), ("X-Real-IP", "6.6.6.6"),
                                ("X-Forwarded-Host", "evil.example"), ("True-Client-IP", "6.6.6.6"), ("X-Client-IP", "6.6.6.6"),
                                ("X-Forwarded-For", "6.6.6.6"), ("Forwarded", "for=6.6.6.6"), ("X-Forwarded-Proto", "https"),
                                ("X-Forwarded-Port", "443"), ("CF-Connecting-IP", "6.6.6.6"), ("my_header", "x"),
                                ("X-Original-URL", "/admin"), ("Cookie", "a=b")])
        let out = ForwardedFields.forDevice(user, peer: "192.0.2.7", scheme: "http", authority: "dev1.example", trusted: [])
        XCTAssertEqual(names(out), ["accept", "cookie", "x-forwarded-for", "x-forwarded-proto", "forwarded"])
        XCTAssertEqual(out.values("x-forwarded-for"), ["192.0.2.7"])
        XCTAssertEqual(out.first("x-forwarded-proto"), "http")
        XCTAssertEqual(out.first("forwarded"), "for=192.0.2.7;proto=http;host=\"dev1.example\"")
        let v6 = ForwardedFields.forDevice(HTTPHeaders(), peer: "::1", scheme: "https", authority: "d", trusted: [])
        XCTAssertEqual(v6.first("forwarded"), "for=\"[::1]\";proto=https;host=\"d\"")
    }

    func testATrustedProxysForwardingIsExtended() {
        let user = HTTPHeaders([("X-Forwarded-For", "203.0.113.9"), ("X-Forwarded-Proto", "https"), ("X-Real-IP", "1.1.1.1"),
                                ("Forwarded", "for=203.0.113.9"), ("X_Forwarded_For", "6.6.6.6"), ("X-Forwarded-Host", "dev1.example")])
        let trusted = [CIDR("10.0.0.0/8")!]
        let out = ForwardedFields.forDevice(user, peer: "10.1.1.1", scheme: "http", authority: "dev1.example", trusted: trusted)
        XCTAssertEqual(out.values("x-forwarded-for"), ["203.0.113.9, 10.1.1.1"])
        XCTAssertEqual(out.values("x-forwarded-proto"), ["https"])
        XCTAssertEqual(out.values("x-forwarded-host"), ["dev1.example"])
        XCTAssertEqual(out.values("forwarded"), ["for=203.0.113.9, for=10.1.1.1;proto=http;host=\"dev1.example\""])
        XCTAssertNil(out.first("x-real-ip"))
        XCTAssertNil(out.first("x_forwarded_for"))
        // Not from the trusted block: replaced.
        let other = ForwardedFields.forDevice(user, peer: "192.0.2.1", scheme: "http", authority: "dev1.example", trusted: trusted)
        XCTAssertEqual(other.values("x-forwarded-for"), ["192.0.2.1"])
        XCTAssertEqual(other.values("x-forwarded-proto"), ["http"])
        XCTAssertNil(other.first("x-forwarded-host"))
    }

    func testSetCookieLosesItsDomain() {
        XCTAssertEqual(ForwardedFields.withoutDomain("sid=1; Domain=devices.example.com; Path=/; Secure"), "sid=1; Path=/; Secure")
        XCTAssertEqual(ForwardedFields.withoutDomain("sid=1;domain=.example.com"), "sid=1")
        XCTAssertEqual(ForwardedFields.withoutDomain("sid=1; DOMAIN = x ; HttpOnly; domain=y"), "sid=1; HttpOnly")
        XCTAssertEqual(ForwardedFields.withoutDomain("sid=1; Path=/domain=x"), "sid=1; Path=/domain=x")
        XCTAssertEqual(ForwardedFields.withoutDomain("domain=1; Path=/"), "domain=1; Path=/")  // the cookie's own name
        XCTAssertEqual(ForwardedFields.withoutDomain("sid=1"), "sid=1")
        let h = ForwardedFields.hostOnlyCookies(HTTPHeaders([("Set-Cookie", "a=1; Domain=example.com"), ("X-Domain", "k; Domain=z"),
                                                             ("set-cookie", "b=2; Path=/; domain=example.com")]))
        XCTAssertEqual(h, HTTPHeaders([("Set-Cookie", "a=1"), ("X-Domain", "k; Domain=z"), ("set-cookie", "b=2; Path=/")]))
    }

    func testConnectionBudget() {
        // Derived from the open-file limit: a reserve for devices and the admin listener.
        let d = ConnectionBudget(fileLimit: 1024)
        XCTAssertEqual(d.limit, 768)
        XCTAssertEqual(d.perAddress, 64)
        XCTAssertEqual(ConnectionBudget(fileLimit: 20000).perAddress, 937)
        XCTAssertEqual(ConnectionBudget(fileLimit: 256).perAddress, 64)
        XCTAssertEqual(ConnectionBudget(fileLimit: 256).limit, 128)
        XCTAssertEqual(ConnectionBudget(fileLimit: 65536).limit, 49152)
        XCTAssertLessThan(ConnectionBudget(fileLimit: 100).limit, 100)

        var b = ConnectionBudget(fileLimit: 1024, limit: 8, perAddress: 3)
        for _ in 0..<3 {
            XCTAssertEqual(b.verdict("a"), .admit)
            b.add("a")
        }
        XCTAssertEqual(b.verdict("a"), .addressFull)
        XCTAssertEqual(b.idleTimeout(base: 60_000), 60_000)
        b.add("b")
        XCTAssertEqual(b.idleTimeout(base: 60_000), 10_000)  // 50%
        XCTAssertEqual(b.idleTimeout(base: 5_000), 5_000)
        b.add("c"); b.add("d")
        XCTAssertEqual(b.idleTimeout(base: 60_000), 1_000)  // 75%
        b.add("e"); b.add("f")
        XCTAssertEqual(b.total, 8)
        XCTAssertEqual(b.verdict("g"), .full)
        XCTAssertEqual(b.verdict("a"), .addressFull)
        b.remove("a")
        XCTAssertEqual(b.verdict("a"), .admit)
        b.remove("zzz")  // never added: no effect
        XCTAssertEqual(b.total, 7)
        for x in ["a", "a", "b", "c", "d", "e", "f"] { b.remove(x) }
        XCTAssertEqual(b.total, 0)
        XCTAssertEqual(b.connections(from: "a"), 0)
        b.remove("a")
        XCTAssertEqual(b.total, 0)
    }

    func testOneShareIsAnIPv4AddressOrAnIPv6Slash64AndTrustedProxiesHaveNone() {
        var b = ConnectionBudget(fileLimit: 1024, limit: 100, perAddress: 2)
        b.add("2001:db8:1:2::1")
        b.add("2001:db8:1:2:ffff::9")  // the same /64: one host with many addresses
        XCTAssertEqual(b.verdict("2001:db8:1:2:abcd::1"), .addressFull)
        XCTAssertEqual(b.verdict("2001:db8:1:3::1"), .admit)  // the next /64
        XCTAssertEqual(ConnectionBudget.share("::ffff:192.0.2.7"), "192.0.2.7")
        XCTAssertEqual(ConnectionBudget.share("192.0.2.7"), "192.0.2.7")
        XCTAssertEqual(ConnectionBudget.share("2001:db8:1:2::1"), ConnectionBudget.share("2001:0db8:0001:0002:9::"))
        b.add("192.0.2.7"); b.add("192.0.2.7")
        XCTAssertEqual(b.verdict("192.0.2.7"), .addressFull)
        XCTAssertEqual(b.verdict("192.0.2.7", shared: false), .admit)  // a trusted proxy
        b.remove("2001:db8:1:2::1")
        XCTAssertEqual(b.verdict("2001:db8:1:2::5"), .admit)
        XCTAssertEqual(b.total, 3)
    }
}
