import FleetAccess
import XCTest

final class AccessPolicyTests: XCTestCase {
    // MARK: helpers

    let token = Principal(method: .token, name: "ci-bot")
    let cert = Principal(method: .certificate, name: "alice")
    let jwt = Principal(method: .jwt, name: "u-123", email: "Bob@Example.com", groups: ["ops", "family"])

    func policy(_ text: String, file: String = "p.policy", _ line: UInt = #line) -> AccessPolicy {
        do {
            return try AccessPolicy.parse(text, file: file)
        } catch {
            XCTFail("policy did not parse: \(error)", line: line)
            return try! AccessPolicy.parse("", file: file)
        }
    }

    func parseError(_ text: String) -> String {
        do {
            _ = try AccessPolicy.parse(text, file: "p.policy")
            return "(parsed)"
        } catch {
            return error.description
        }
    }

    func req(_ principal: Principal?, device: String = "dev1", method: String = "GET", path: String = "/",
             source: String = "192.0.2.7", port: Int? = nil) -> AccessRequest {
        AccessRequest(principal: principal, device: device, method: method, path: path, source: source, port: port)
    }

    func allowed(_ p: AccessPolicy, _ r: AccessRequest) -> Bool { p.decide(r).allowed }

    // MARK: parsing

    func testParsesRulesCommentsAndBlankLines() throws {
        let p = policy("""
            # household
            allow user:alice *        # Alice reaches everything

            \tallow\ttoken:ci-*\tdev-*,cam1  methods=GET,head paths=/api/,/status from=10.0.0.0/8,fd00::/8
            deny anyone cam1 ports=22,5900
            allow email:bob@example.com dev1 methods=GET#X
            """)
        XCTAssertEqual(p.ruleCount, 4)
    }

    func testParseErrorsNameFileAndLine() {
        let cases: [(String, String)] = [
            ("permit anyone *", "p.policy:1: expected 'allow' or 'deny'"),
            ("\n\nallow anyone", "p.policy:3: a rule needs WHO and DEVICES"),
            ("allow anyone methods=GET", "p.policy:1: a rule needs WHO and DEVICES"),
            ("allow nobody *", "p.policy:1: unknown principal 'nobody'"),
            ("allow role:x *", "p.policy:1: unknown principal 'role:x'"),
            ("allow token: *", "p.policy:1: empty name after 'token:'"),
            ("allow anyone dev1,,dev2", "p.policy:1: empty item in the DEVICES list"),
            ("allow anyone * verbs=GET", "p.policy:1: unknown option 'verbs='"),
            ("allow anyone * GET", "p.policy:1: expected an option"),
            ("allow anyone * methods=", "p.policy:1: 'methods=' needs at least one value"),
            ("allow anyone * methods=GET,", "p.policy:1: empty item in the 'methods=' list"),
            ("allow anyone * methods=GET methods=HEAD", "p.policy:1: 'methods=' given twice"),
            ("allow anyone * methods=GE(T", "p.policy:1: bad method 'GE(T'"),
            ("allow anyone * paths=api", "p.policy:1: path 'api' in paths= must start with '/'"),
            ("allow anyone * paths=/a/../b", "p.policy:1: path '/a/../b' in paths= is not canonical"),
            ("allow anyone * paths=/a?x", "p.policy:1: path '/a?x' in paths= is not canonical"),
            ("allow anyone * paths=//a", "p.policy:1: path '//a' in paths= is not canonical"),
            ("allow anyone * from=10.0.0.0/33", "p.policy:1: bad CIDR '10.0.0.0/33'"),
            ("allow anyone * from=example.com", "p.policy:1: bad CIDR 'example.com'"),
            ("allow anyone * ports=0", "p.policy:1: bad port '0'"),
            ("allow anyone * ports=65536", "p.policy:1: bad port '65536'"),
            ("allow anyone * ports=-1", "p.policy:1: bad port '-1'"),
            ("allow anyone * ports=22 paths=/", "p.policy:1: paths= and ports= cannot be combined"),
            ("allow anyone d\u{e9}v1", "p.policy:1: non-ASCII byte 0xC3 at column 15"),
            ("allow anyone dev1\u{7}", "p.policy:1: control character 0x07 at column 18"),
            ("# ok\nallow anyone *\nallow anyone * from=1.2.3.4/", "p.policy:3: bad CIDR '1.2.3.4/'"),
        ]
        for (text, prefix) in cases {
            let e = parseError(text)
            XCTAssertTrue(e.hasPrefix(prefix), "\(text.debugDescription): \(e)")
        }
    }

    func testNonASCIIInCommentsAndCRLFAreFine() {
        let p = policy("# Zugang f\u{fc}r die K\u{fc}che \u{7}\r\nallow anyone dev1 # caf\u{e9}\r\n")
        XCTAssertEqual(p.ruleCount, 1)
        XCTAssertTrue(allowed(p, req(nil)))
    }

    func testLimitsAreErrorsAndFast() {
        let start = Date()
        let long = "allow anyone " + String(repeating: "a", count: 5000)
        XCTAssertTrue(parseError("allow anyone *\n" + long).hasPrefix("p.policy:2: line longer than 4096 bytes"))
        let many = String(repeating: "allow anyone dev1 methods=GET paths=/api/ from=10.0.0.0/8\n", count: 10_001)
        XCTAssertTrue(parseError(many).hasPrefix("p.policy:10001: more than 10000 rules"), parseError(many))
        let items = (1...65).map(String.init).joined(separator: ",")
        XCTAssertTrue(parseError("allow anyone * ports=" + items).hasPrefix("p.policy:1: more than 64 items in 'ports='"))
        let huge = String(repeating: "# comment\n", count: 110_000)
        XCTAssertTrue(parseError(huge).hasPrefix("p.policy: larger than 1 MiB"))
        let oneLine = String(repeating: "x", count: 2 << 20)
        XCTAssertTrue(parseError(oneLine).hasPrefix("p.policy: larger than 1 MiB"))
        XCTAssertLessThan(Date().timeIntervalSince(start), 10)
    }

    func testLoad() throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("policy-\(getpid())-\(UUID())")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: dir) }
        let file = dir.appendingPathComponent("access.policy").path
        try "allow anyone *\ndeny anyone cam*\n".write(toFile: file, atomically: true, encoding: .utf8)
        XCTAssertEqual(try AccessPolicy.load(path: file).ruleCount, 2)
        try "allow anyone *\nallow anybody *\n".write(toFile: file, atomically: true, encoding: .utf8)
        XCTAssertThrowsError(try AccessPolicy.load(path: file)) { e in
            XCTAssertTrue("\(e)".hasPrefix(file + ":2: unknown principal 'anybody'"), "\(e)")
        }
        XCTAssertThrowsError(try AccessPolicy.load(path: dir.path + "/missing")) { e in
            XCTAssertTrue("\(e)".contains("missing: cannot open: No such file"), "\(e)")
        }
        XCTAssertThrowsError(try AccessPolicy.load(path: dir.path)) { e in
            XCTAssertTrue("\(e)".contains("not a regular file"), "\(e)")
        }
        try Data(repeating: 0x23, count: (1 << 20) + 1).write(to: URL(fileURLWithPath: file))
        XCTAssertThrowsError(try AccessPolicy.load(path: file)) { e in
            XCTAssertTrue("\(e)".contains("larger than 1 MiB"), "\(e)")
        }
    }

    // MARK: who

    func testEachWhoAgainstEachPrincipal() {
        let principals: [(String, Principal?)] = [("anon", nil), ("token", token), ("cert", cert), ("jwt", jwt)]
        let expect: [(String, Set<String>)] = [
            ("anyone", ["anon", "token", "cert", "jwt"]),
            ("authenticated", ["token", "cert", "jwt"]),
            ("token:ci-bot", ["token"]),
            ("token:ci-*", ["token"]),
            ("token:ci-bo?", ["token"]),
            ("token:CI-BOT", []),
            ("token:alice", []),
            ("user:alice", ["cert"]),
            ("user:a*", ["cert"]),
            ("user:Alice", []),
            ("user:ci-bot", []),
            ("sub:u-123", ["jwt"]),
            ("sub:u-*", ["jwt"]),
            ("sub:alice", []),
            ("email:bob@example.com", ["jwt"]),
            ("email:BOB@EXAMPLE.COM", ["jwt"]),
            ("email:*@example.com", ["jwt"]),
            ("email:*@example.org", []),
            ("group:ops", ["jwt"]),
            ("group:fam*", ["jwt"]),
            ("group:OPS", []),
            ("group:admins", []),
        ]
        for (who, want) in expect {
            let p = policy("allow \(who) dev1")
            for (kind, principal) in principals {
                XCTAssertEqual(allowed(p, req(principal)), want.contains(kind), "\(who) vs \(kind)")
            }
        }
    }

    func testJWTOnlyClaimsDoNotMatchOtherPrincipals() {
        let tokenWithEmail = Principal(method: .token, name: "x", email: "bob@example.com", groups: ["ops"])
        XCTAssertFalse(allowed(policy("allow email:bob@example.com *"), req(tokenWithEmail)))
        XCTAssertFalse(allowed(policy("allow group:ops *"), req(tokenWithEmail)))
        XCTAssertFalse(allowed(policy("allow sub:x *"), req(tokenWithEmail)))
        XCTAssertFalse(allowed(policy("allow email:* *"), req(Principal(method: .jwt, name: "no-email"))))
    }

    func testGlobsMatchWholeCharacters() {
        let p = policy("allow sub:?? *\nallow sub:x*y *")
        XCTAssertTrue(allowed(p, req(Principal(method: .jwt, name: "\u{e9}\u{e9}"))))
        XCTAssertFalse(allowed(p, req(Principal(method: .jwt, name: "\u{e9}"))))
        XCTAssertTrue(allowed(p, req(Principal(method: .jwt, name: "x\u{1F600}y"))))
        XCTAssertFalse(allowed(p, req(Principal(method: .jwt, name: "x\u{1F600}z"))))
    }

    func testDevices() {
        let p = policy("allow anyone dev-*,CAM1")
        XCTAssertTrue(allowed(p, req(nil, device: "dev-7")))
        XCTAssertTrue(allowed(p, req(nil, device: "cam1")))
        XCTAssertFalse(allowed(p, req(nil, device: "cam2")))
        XCTAssertFalse(allowed(p, req(nil, device: "xdev-7")))
    }

    // MARK: decisions

    func testNothingMatchingIsADenyWithoutLine() {
        XCTAssertEqual(policy("").decide(req(token)), PolicyDecision(allowed: false, line: nil))
        XCTAssertEqual(policy("allow user:alice *").decide(req(token)), PolicyDecision(allowed: false, line: nil))
    }

    func testDenyBeatsAllowInAnyOrder() {
        let a = policy("allow anyone *\n# x\ndeny token:ci-* dev1")
        let b = policy("deny token:ci-* dev1\nallow anyone *")
        XCTAssertEqual(a.decide(req(token)), PolicyDecision(allowed: false, line: 3))
        XCTAssertEqual(b.decide(req(token)), PolicyDecision(allowed: false, line: 1))
        XCTAssertEqual(a.decide(req(cert)), PolicyDecision(allowed: true, line: 1))
        XCTAssertEqual(b.decide(req(cert)), PolicyDecision(allowed: true, line: 2))
        XCTAssertEqual(a.decide(req(token, device: "dev2")), PolicyDecision(allowed: true, line: 1))
        let c = policy("allow user:alice dev1\nallow authenticated dev1")
        XCTAssertEqual(c.decide(req(cert)), PolicyDecision(allowed: true, line: 1))
    }

    func testMethods() {
        let p = policy("allow anyone * methods=GET,head")
        XCTAssertTrue(allowed(p, req(nil, method: "GET")))
        XCTAssertTrue(allowed(p, req(nil, method: "HEAD")))
        XCTAssertTrue(allowed(p, req(nil, method: "get")))
        XCTAssertFalse(allowed(p, req(nil, method: "POST")))
        XCTAssertFalse(allowed(p, req(nil, method: "GETX")))
        let d = policy("allow anyone *\ndeny anyone * methods=DELETE")
        XCTAssertFalse(allowed(d, req(nil, method: "delete")))
        XCTAssertTrue(allowed(d, req(nil, method: "PUT")))
        let g = policy("allow anyone * methods=GET,HEAD\ndeny anyone * methods=GET paths=/secret")
        XCTAssertFalse(allowed(g, req(nil, method: "HEAD", path: "/secret")), "a deny of GET also denies HEAD")
        XCTAssertTrue(allowed(g, req(nil, method: "HEAD", path: "/public")))
        XCTAssertFalse(allowed(policy("allow anyone * methods=GET"), req(nil, method: "HEAD")), "an allow of GET is not HEAD")
    }

    func testFrom() {
        let p = policy("allow anyone * from=192.168.1.0/24,fd00::/8,203.0.113.9")
        XCTAssertTrue(allowed(p, req(nil, source: "192.168.1.200")))
        XCTAssertTrue(allowed(p, req(nil, source: "::ffff:192.168.1.4")))
        XCTAssertTrue(allowed(p, req(nil, source: "fd12::1")))
        XCTAssertTrue(allowed(p, req(nil, source: "203.0.113.9")))
        XCTAssertFalse(allowed(p, req(nil, source: "203.0.113.10")))
        XCTAssertFalse(allowed(p, req(nil, source: "192.168.2.1")))
        XCTAssertFalse(allowed(p, req(nil, source: "fe80::1")))
        XCTAssertFalse(allowed(p, req(nil, source: "")))
        XCTAssertFalse(allowed(p, req(nil, source: "not-an-address")))
        let d = policy("allow anyone *\ndeny anyone * from=0.0.0.0/0")
        XCTAssertFalse(allowed(d, req(nil, source: "8.8.8.8")))
        XCTAssertFalse(allowed(d, req(nil, source: "fe80::1%eth0")), "not an address: a deny with from= matches")
        XCTAssertTrue(allowed(d, req(nil, source: "2001:db8::1")))
    }

    func testPorts() {
        let p = policy("allow anyone *\nallow user:alice dev1 ports=22,5900")
        XCTAssertTrue(allowed(p, req(nil)))
        XCTAssertFalse(allowed(p, req(nil, method: "CONNECT", path: "", port: 22)), "an allow without ports= is HTTP only")
        XCTAssertEqual(p.decide(req(cert, method: "CONNECT", path: "", port: 22)), PolicyDecision(allowed: true, line: 2))
        XCTAssertFalse(allowed(p, req(cert, method: "CONNECT", path: "", port: 23)))
        XCTAssertTrue(allowed(p, req(cert)), "a ports= rule does not decide HTTP")
        let d = policy("allow anyone * ports=22\ndeny anyone cam*")
        XCTAssertFalse(allowed(d, req(nil, device: "cam1", port: 22)), "a deny without ports= denies TCP too")
        XCTAssertTrue(allowed(d, req(nil, device: "dev1", port: 22)))
        let e = policy("allow anyone *\ndeny anyone * ports=22")
        XCTAssertTrue(allowed(e, req(nil)), "a deny with ports= is about TCP only")
        let f = policy("allow anyone * ports=22\ndeny anyone * paths=/admin")
        XCTAssertTrue(allowed(f, req(nil, method: "CONNECT", path: "", port: 22)), "a deny with paths= is about HTTP only")
        let g = policy("allow anyone *\ndeny anyone * paths=/admin")
        XCTAssertEqual(g.decide(req(nil, method: "CONNECT", path: "")), PolicyDecision(allowed: false, line: 2),
                       "an HTTP CONNECT (no port) has a non-canonical path")
    }

    // MARK: paths

    func testPathPrefixesOnSegmentBoundaries() {
        let p = policy("allow anyone * paths=/api,/static/")
        for path in ["/api", "/api/", "/api/x", "/api?q=1", "/api/x?y", "/static/", "/static/a.css", "/%61pi/x"] {
            XCTAssertTrue(allowed(p, req(nil, path: path)), path)
        }
        for path in ["/apix", "/ap", "/", "/static", "/staticx/", "/API", "/Api/x", "/x/api"] {
            XCTAssertFalse(allowed(p, req(nil, path: path)), path)
        }
    }

    func testNonCanonicalPathsFailClosedBothWays() {
        let allow = policy("allow anyone * paths=/api/")
        let deny = policy("allow anyone *\ndeny anyone * paths=/admin")
        let bad = ["/api/../admin", "/api/%2e%2e/admin", "/api/%2E./admin", "/api/.%2e/admin", "/api/./x", "/api/.",
                   "/api/..", "/api%2Fx", "/api/a%2fb", "/api/a%5Cb", "/api/a\\b", "//api/x", "/api//x", "/api/%00",
                   "/api/..;x/admin", "/api/;x/a", "/api/%252e%252e/admin", "/api/%C0%AE%C0%AE/",
                   "/api/a#b", "/api/a b", "/api/a\u{7}", "/api/\u{7f}", "/api/%zz", "/api/%4", "*", "", "api/x", "http://h/api/x"]
        for path in bad {
            XCTAssertNil(PathCanonical.canonical(path), path)
            XCTAssertFalse(allowed(allow, req(nil, path: path)), "allow: " + path)
            XCTAssertEqual(deny.decide(req(nil, path: path)), PolicyDecision(allowed: false, line: 2), "deny: " + path)
        }
        // Rules without paths= ignore the path.
        XCTAssertTrue(allowed(policy("allow anyone *"), req(nil, path: "/api/../admin")))
        XCTAssertTrue(allowed(policy("allow anyone *"), req(nil, method: "OPTIONS", path: "*")))
    }

    func testDenyPathsMatchWidely() {
        let deny = policy("allow anyone *\ndeny anyone * paths=/admin,/private/")
        for path in ["/admin", "/ADMIN", "/Admin/x", "/%61dmin", "/admin;jsessionid=1", "/admin/", "/private", "/PRIVATE;x",
                     "/private/x", "/admin?x"] {
            XCTAssertFalse(allowed(deny, req(nil, path: path)), path)
        }
        for path in ["/administrator", "/adm", "/x/admin", "/privatex", "/"] {
            XCTAssertTrue(allowed(deny, req(nil, path: path)), path)
        }
        XCTAssertFalse(allowed(policy("allow anyone *\ndeny anyone * paths=/"), req(nil, path: "/x")))
    }

    func testCanonicalForm() {
        XCTAssertEqual(PathCanonical.canonical("/%61%7e%2D/a%3bb;c?x=/../"), "/a~-/a%3Bb%3Bc")
        XCTAssertEqual(PathCanonical.canonical("/a:b@c!$&'()*+,=/"), "/a%3Ab%40c%21%24%26%27%28%29%2A%2B%2C%3D/")
        XCTAssertEqual(PathCanonical.canonical("/%c3%a9"), "/%C3%A9")
        XCTAssertEqual(PathCanonical.canonical("/caf\u{e9}"), "/caf%C3%A9")
        XCTAssertEqual(PathCanonical.canonical("/"), "/")
        XCTAssertEqual(PathCanonical.canonical("/..."), "/...")
        XCTAssertEqual(PathCanonical.canonical("/a..b/.x/"), "/a..b/.x/")
        let p = policy("allow anyone * paths=/a%3bb,/c:d")
        XCTAssertTrue(allowed(p, req(nil, path: "/a;b")))
        XCTAssertTrue(allowed(p, req(nil, path: "/a%3Bb/x")))
        XCTAssertTrue(allowed(p, req(nil, path: "/c%3Ad")))
    }

    // MARK: cost

    func testManyRulesDecideQuickly() {
        var text = ""
        for i in 0..<10_000 {
            text += "allow token:t\(i) dev\(i % 50),cam-* methods=GET paths=/api/ from=10.\(i % 256).0.0/16\n"
        }
        let p = policy(text)
        let r = req(Principal(method: .token, name: "t9999"), device: "dev49", path: "/api/x", source: "10.15.1.1")
        let start = Date()
        for _ in 0..<100 { XCTAssertTrue(allowed(p, r)) }
        XCTAssertLessThan(Date().timeIntervalSince(start), 10)
    }
}
