// Issue 13's operator side: the access metrics' exposition text, the per-device
// series and their bound, the access ledger behind /devices/NAME "last_access",
// the admin token check and the config rules for admin_token.
@testable import FleetGatewayKit
import HTTP1
import ConfigFormat
import XCTest

final class AccessMetricsTests: XCTestCase {
    private func text(_ m: Metrics) -> String {
        var p = PrometheusText()
        m.exportAccess(&p)
        return p.text
    }

    func testAccessDecisions() {
        let m = Metrics()
        XCTAssertEqual(text(m), "# HELP rhttp_access_decisions_total Users' requests by access decision and how the user authenticated.\n"
                       + "# TYPE rhttp_access_decisions_total counter\n")
        m.accessDecision(result: "allowed", auth: "token")
        m.accessDecision(result: "allowed", auth: "token")
        m.accessDecision(result: "401", auth: "none")
        m.accessDecision(result: "403", auth: "jwt")
        m.deviceRequest(device: "dev1", status: 200, bytesIn: 5, bytesOut: 7)  // per-device off: not kept
        XCTAssertTrue(m.devices.isEmpty)
        let t = text(m)
        XCTAssertTrue(t.hasSuffix("rhttp_access_decisions_total{result=\"401\",auth=\"none\"} 1\n"
                                  + "rhttp_access_decisions_total{result=\"403\",auth=\"jwt\"} 1\n"
                                  + "rhttp_access_decisions_total{result=\"allowed\",auth=\"token\"} 2\n"), t)
        XCTAssertFalse(t.contains("rhttp_device_requests_total"))
    }

    func testPerDeviceSeries() {
        let m = Metrics()
        m.perDevice = true
        m.deviceRequest(device: "dev1", status: 200, bytesIn: 10, bytesOut: 300)
        m.deviceRequest(device: "dev1", status: 204, bytesIn: 0, bytesOut: 0)
        m.deviceRequest(device: "dev1", status: 503, bytesIn: 1, bytesOut: 2)
        m.deviceRequest(device: "a.b\"c\\d\ne", status: 42, bytesIn: -5, bytesOut: 1)
        let t = text(m)
        XCTAssertTrue(t.contains("""
        # HELP rhttp_device_requests_total Users' requests per device, by status class (metrics_per_device).
        # TYPE rhttp_device_requests_total counter
        rhttp_device_requests_total{device="a.b\\"c\\\\d\\ne",class="other"} 1
        rhttp_device_requests_total{device="dev1",class="2xx"} 2
        rhttp_device_requests_total{device="dev1",class="5xx"} 1
        # HELP rhttp_device_request_bytes_total Body bytes of users' requests (in) and of the answers (out) per device (metrics_per_device).
        # TYPE rhttp_device_request_bytes_total counter
        rhttp_device_request_bytes_total{device="a.b\\"c\\\\d\\ne",direction="in"} 0
        rhttp_device_request_bytes_total{device="a.b\\"c\\\\d\\ne",direction="out"} 1
        rhttp_device_request_bytes_total{device="dev1",direction="in"} 11
        rhttp_device_request_bytes_total{device="dev1",direction="out"} 302
        # HELP rhttp_device_metrics_untracked_total
        """), t)
        XCTAssertTrue(t.hasSuffix("rhttp_device_metrics_untracked_total 0\n"), t)
        // Turning it off (a reload) forgets the series.
        m.perDevice = false
        XCTAssertTrue(m.devices.isEmpty)
        XCTAssertFalse(text(m).contains("device="))
    }

    func testPerDeviceIsBounded() {
        let m = Metrics()
        m.perDevice = true
        for i in 0..<Metrics.maxDevices { m.deviceRequest(device: "d" + String(i), status: 200, bytesIn: 0, bytesOut: 0) }
        m.deviceRequest(device: "one-too-many", status: 200, bytesIn: 0, bytesOut: 0)
        m.deviceRequest(device: "d7", status: 200, bytesIn: 0, bytesOut: 0)  // known devices still count
        XCTAssertEqual(m.devices.count, Metrics.maxDevices)
        XCTAssertEqual(m.devicesOverflow, 1)
        XCTAssertEqual(m.devices["d7"]?.byClass[1], 2)
        XCTAssertTrue(text(m).hasSuffix("rhttp_device_metrics_untracked_total 1\n"))
    }

    func testAccessLedger() {
        var now = 1_700_000_000
        let l = AccessLedger(capacity: 3, clock: { now })
        l.recordAccess(device: "dev1", user: "token:ci", status: 200)
        now += 5
        l.recordAccess(device: "dev1", user: "alice@example.com", status: 403)
        XCTAssertEqual(l.last(device: "dev1"), AccessLedger.Entry(user: "alice@example.com", at: 1_700_000_005, status: 403))
        XCTAssertNil(l.last(device: "dev2"))
        for i in 0..<10 { l.recordAccess(device: "x" + String(i), user: "", status: 401) }
        XCTAssertEqual(l.entries.count, 3)
        XCTAssertEqual(l.last(device: "x9")?.status, 401)
    }

    func testAdminBearerToken() {
        let token = "s3cret-admin-token-0123456789"
        func h(_ fields: [(String, String)]) -> HTTPHeaders { HTTPHeaders(fields) }
        XCTAssertTrue(AdminServer.authorized(h([("Authorization", "Bearer " + token)]), token: token))
        XCTAssertTrue(AdminServer.authorized(h([("authorization", "bearer  " + token)]), token: token))
        for bad in [[], [("Authorization", "Bearer " + token + "x")], [("Authorization", "Bearer " + token.dropLast())],
                    [("Authorization", "Basic " + token)], [("Authorization", "Bearer")], [("Authorization", token)],
                    [("Authorization", "Bearer " + token), ("Authorization", "Bearer " + token)],
                    [("Authorization", "Bearer x")]] as [[(String, String)]] {
            XCTAssertFalse(AdminServer.authorized(h(bad), token: token), "\(bad)")
        }
        XCTAssertTrue(AdminServer.constantTimeEqual([1, 2, 3], [1, 2, 3]))
        XCTAssertFalse(AdminServer.constantTimeEqual([1, 2, 3, 0], [1, 2, 3]))
        XCTAssertFalse(AdminServer.constantTimeEqual([], [0]))
    }

    private func config(_ text: String) throws -> GatewayConfig {
        var s = Settings()
        try ConfigFile.parse(Array(("plaintext_devices = true\n" + text).utf8), name: "gw.conf", into: &s)
        return try GatewayConfig(s)
    }

    func testAdminTokenConfig() throws {
        let d = try config("")
        XCTAssertNil(d.adminToken)
        XCTAssertFalse(d.metricsPerDevice)
        XCTAssertNil(d.jwtJWKSCA)
        // Off loopback the admin listener needs a token.
        for addr in ["0.0.0.0:9180", "[::]:9180", "192.0.2.7:9180", "[2001:db8::1]:9180"] {
            XCTAssertThrowsError(try config("listen_admin = " + addr + "\n"), addr) { e in
                let msg = (e as? ConfigError)?.message ?? ""
                XCTAssertTrue(msg.hasPrefix("gw.conf:2: ") && msg.contains("admin_token"), msg)
            }
        }
        let c = try config("listen_admin = 0.0.0.0:9180\nadmin_token = 0123456789abcdef\nmetrics_per_device = true\n"
                           + "jwt_jwks_url = https://idp.example.com/keys\njwt_jwks_ca = /etc/idp.pem\njwt_issuer = https://idp.example.com/\njwt_audience = fleet\n")
        XCTAssertEqual(c.adminToken, "0123456789abcdef")
        XCTAssertTrue(c.metricsPerDevice)
        XCTAssertEqual(c.jwtJWKSCA, "/etc/idp.pem")
        for ok in ["127.0.0.1:9180", "127.8.0.1:9180", "[::1]:9180", "localhost:9180", "off"] {
            XCTAssertNoThrow(try config("listen_admin = " + ok + "\n"), ok)
        }
        for bad in ["admin_token = short", "admin_token = 0123456789abcdef 0123", "admin_token = " + String(repeating: "x", count: 1025),
                    "metrics_per_device = maybe"] {
            XCTAssertThrowsError(try config(bad + "\n"), bad) { e in
                XCTAssertTrue((e as? ConfigError)?.message.hasPrefix("gw.conf:2: ") == true, "\(e)")
            }
        }
    }
}
