// AccessControl without sockets: credentials, the policy's answer, the token's own
// scope, throttling of failed logins, the tokens file noticed when it changes, and
// the fields the device gets. Time is a ManualClock; no test sleeps.
import COpenSSL
import EventLoop
import FleetAccess
@testable import FleetGatewayKit
import HTTP1
import ConfigFormat
import XCTest

final class AccessControlTests: XCTestCase {
    private var dir = ""
    private let clock = ManualClock()
    private let logger = Logger(program: "test", level: .error)

    override func setUp() {
        dir = NSTemporaryDirectory() + "access-" + String(UInt64.random(in: 0...UInt64.max), radix: 16)
        try? FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
    }

    override func tearDown() { try? FileManager.default.removeItem(atPath: dir) }

    private static func hex(_ bytes: [UInt8]) -> String { bytes.map { String(format: "%02x", $0) }.joined() }

    private static func sha256(_ s: String) -> String {
        var out = [UInt8](repeating: 0, count: 32)
        let b = Array(s.utf8)
        b.withUnsafeBufferPointer { p in out.withUnsafeMutableBufferPointer { o in _ = SHA256(p.baseAddress, p.count, o.baseAddress) } }
        return hex(out)
    }

    static let aliceSecret = "rht_" + String(repeating: "A", count: 43)
    static let opsSecret = "rht_" + String(repeating: "B", count: 43)
    static let oldSecret = "rht_" + String(repeating: "C", count: 43)

    private func write(_ name: String, _ text: String) -> String {
        let path = dir + "/" + name
        FileManager.default.createFile(atPath: path, contents: Data(text.utf8))
        return path
    }

    private func tokensText(extra: String = "") -> String {
        "alice " + AccessControlTests.sha256(AccessControlTests.aliceSecret) + " devices=dev1 created=1700000000 expires=never\n"
            + "ops " + AccessControlTests.sha256(AccessControlTests.opsSecret) + " devices=* created=1700000000 expires=never\n"
            + "old " + AccessControlTests.sha256(AccessControlTests.oldSecret) + " devices=* created=1600000000 expires=1600000001\n"
            + extra
    }

    private func control(policy: String?, tokens: Bool = true) throws -> AccessControl {
        var text = "plaintext_devices = true\n"
        if let policy { text += "access_policy = " + write("policy", policy) + "\n" }
        if tokens { text += "tokens = " + write("tokens", tokensText()) + "\n" }
        var s = Settings()
        try ConfigFile.parse(Array(text.utf8), name: "gw.conf", into: &s)
        return AccessControl(config: try GatewayConfig(s), clock: clock.clock, wallClock: { 1_800_000_000 }, logger: logger)
    }

    private func decide(_ ac: AccessControl, device: String = "dev1", method: String = "GET", path: String = "/",
                        source: String = "192.0.2.1", _ fields: [(String, String)] = []) -> AccessControl.Outcome {
        var result: AccessControl.Outcome?
        ac.authorize(AccessRequest(principal: nil, device: device, method: method, path: path, source: source),
                     fields: HTTPHeaders(fields), tls: nil) { result = $0 }
        return result!
    }

    private func bearer(_ s: String) -> [(String, String)] { [("Authorization", "Bearer " + s)] }

    func testWithoutAPolicyEveryoneIsAllowedButCredentialsMustBeRight() throws {
        let ac = try control(policy: nil)
        XCTAssertEqual(decide(ac), .allow(nil))
        XCTAssertEqual(decide(ac, bearer(AccessControlTests.opsSecret)).principal?.displayName, "token:ops")
        XCTAssertEqual(decide(ac, bearer("rht_wrong")).status, 401)
        XCTAssertEqual(decide(ac, bearer(AccessControlTests.oldSecret)).status, 401, "expired")
        // A token's own scope holds without a policy too.
        XCTAssertEqual(decide(ac, device: "dev2", bearer(AccessControlTests.aliceSecret)).status, 403)
    }

    func testPolicyDecides401ForAnonymousAnd403ForAKnownPrincipal() throws {
        let ac = try control(policy: "allow token:alice dev1 methods=GET\nallow token:ops * \ndeny anyone * paths=/admin\n")
        XCTAssertEqual(decide(ac).status, 401)
        XCTAssertEqual(decide(ac, bearer(AccessControlTests.aliceSecret)), .allow(decide(ac, bearer(AccessControlTests.aliceSecret)).principal))
        XCTAssertEqual(decide(ac, method: "POST", bearer(AccessControlTests.aliceSecret)).status, 403)
        XCTAssertEqual(decide(ac, path: "/admin/x", bearer(AccessControlTests.opsSecret)).status, 403)
        XCTAssertNotNil(decide(ac, device: "dev9", bearer(AccessControlTests.opsSecret)).principal)
        XCTAssertNil(decide(ac, device: "dev9", bearer(AccessControlTests.opsSecret)).status)
        // Basic auth: the token's name and its secret.
        let basic = "Basic " + Data(("alice:" + AccessControlTests.aliceSecret).utf8).base64EncodedString()
        XCTAssertNil(decide(ac, [("Authorization", basic)]).status)
        let wrongUser = "Basic " + Data(("bob:" + AccessControlTests.aliceSecret).utf8).base64EncodedString()
        XCTAssertEqual(decide(ac, [("Authorization", wrongUser)]).status, 401)
        XCTAssertEqual(decide(ac, [("Authorization", "Digest x")]).status, 401)
        XCTAssertEqual(decide(ac, bearer(AccessControlTests.aliceSecret) + bearer(AccessControlTests.opsSecret)).status, 401)
    }

    func testRepeatedFailuresFromOneAddressGet429ThenPass() throws {
        let ac = try control(policy: "allow authenticated *\n")
        for _ in 0..<(AccessControl.failureLimit - 1) { XCTAssertEqual(decide(ac, bearer("rht_nope")).status, 401) }
        XCTAssertEqual(decide(ac, bearer("rht_nope")).status, 401)
        // Now even a right token from that address waits; another address does not.
        XCTAssertEqual(decide(ac, bearer(AccessControlTests.opsSecret)).status, 429)
        XCTAssertEqual(decide(ac, source: "192.0.2.2", bearer(AccessControlTests.opsSecret)).status, nil)
        // Missing credentials are no failure.
        XCTAssertEqual(decide(ac, source: "192.0.2.3").status, 401)
        XCTAssertEqual(decide(ac, source: "192.0.2.3").status, 401)
        clock.advance(milliseconds: UInt64(AccessControl.penaltySeconds) * 1000)
        XCTAssertNil(decide(ac, bearer(AccessControlTests.opsSecret)).status)
        // One IPv6 /64 is one address.
        for i in 0..<AccessControl.failureLimit { _ = decide(ac, source: "2001:db8::" + String(i + 1), bearer("rht_nope")) }
        XCTAssertEqual(decide(ac, source: "2001:db8::ffff", bearer(AccessControlTests.opsSecret)).status, 429)
    }

    func testTheTokensFileIsReadAgainWhenItChanges() throws {
        let ac = try control(policy: nil)
        let newSecret = "rht_" + String(repeating: "D", count: 43)
        XCTAssertEqual(decide(ac, bearer(newSecret)).status, 401)
        _ = write("tokens", tokensText(extra: "carol " + AccessControlTests.sha256(newSecret) + " devices=* created=1700000000 expires=never\n"))
        clock.advance(milliseconds: 1_100)
        XCTAssertEqual(decide(ac, bearer(newSecret)).principal?.displayName, "token:carol")
        // Revoked (the line removed): refused from the next check on.
        _ = write("tokens", tokensText())
        clock.advance(milliseconds: 1_100)
        XCTAssertEqual(decide(ac, bearer(newSecret)).status, 401)
        // A file that no longer parses keeps the tokens we had.
        _ = write("tokens", "garbage line\n")
        clock.advance(milliseconds: 1_100)
        XCTAssertNil(decide(ac, bearer(AccessControlTests.opsSecret)).status)
    }

    func testTheDeviceGetsXForwardedUserAndNeverOurCredentials() throws {
        let ac = try control(policy: nil)
        let p = Principal(method: .token, name: "ops")
        let out = ac.forDevice(HTTPHeaders([("Authorization", "Bearer " + AccessControlTests.opsSecret), ("X-Forwarded-User", "root"),
                                            ("Remote-User", "root"), ("Accept", "*/*")]), principal: p)
        XCTAssertEqual(out.values("authorization"), [])
        XCTAssertEqual(out.values("x-forwarded-user"), ["token:ops"])
        XCTAssertEqual(out.values("remote-user"), [])
        XCTAssertEqual(out.values("accept"), ["*/*"])
        // Without any user authentication, Authorization is the device's business.
        let open = try control(policy: nil, tokens: false)
        let kept = open.forDevice(HTTPHeaders([("Authorization", "Basic eDp5"), ("X-Forwarded-User", "root")]), principal: nil)
        XCTAssertEqual(kept.values("authorization"), ["Basic eDp5"])
        XCTAssertEqual(kept.values("x-forwarded-user"), [])
    }
}
