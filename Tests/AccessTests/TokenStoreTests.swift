import Bytes
import FleetAccess
import TLS
import XCTest

final class TokenStoreTests: XCTestCase {
    let secretA = "rht_" + String(repeating: "A", count: 43)
    let secretB = "rht_" + String(repeating: "b", count: 42) + "_"

    func hashHex(_ s: String) -> String {
        sha256(Array(s.utf8)).map { ($0 < 16 ? "0" : "") + String($0, radix: 16) }.joined()
    }

    func store() throws -> TokenStore {
        try TokenStore.parse("""
            # the CI
            ci \(hashHex(secretA)) devices=dev-*,lab.example created=1000 expires=never

            old \(hashHex(secretB)) expires=2000 created=1000 devices=*
            """, file: "tokens.txt")
    }

    func testParseAndAuthenticate() throws {
        let s = try store()
        XCTAssertEqual(s.count, 2)
        guard case .valid(let p) = s.authenticate(secret: secretA, user: nil, now: 5000) else { return XCTFail() }
        XCTAssertEqual(p.method, .token)
        XCTAssertEqual(p.name, "ci")
        XCTAssertEqual(p.displayName, "token:ci")
        XCTAssertEqual(p.expires, nil)
        XCTAssertEqual(p.scope, NamePattern("dev-*,lab.example"))
        XCTAssertTrue(p.scope!.matches("dev-1"))
        XCTAssertFalse(p.scope!.matches("prod-1"))
        // Basic auth: the user must be the token's name.
        XCTAssertEqual(s.authenticate(secret: secretA, user: "ci", now: 5000), .valid(p))
        XCTAssertEqual(s.authenticate(secret: secretA, user: "old", now: 5000), .wrongUser)
        XCTAssertEqual(s.authenticate(secret: secretA, user: "", now: 5000), .wrongUser)
        // Expiry: valid before, expired from the second it names.
        guard case .valid(let q) = s.authenticate(secret: secretB, user: nil, now: 1999) else { return XCTFail() }
        XCTAssertEqual(q.expires, 2000)
        XCTAssertEqual(s.authenticate(secret: secretB, user: nil, now: 2000), .expired(name: "old"))
    }

    func testUnknownAndMalformedSecrets() throws {
        let s = try store()
        let other = "rht_" + String(repeating: "C", count: 43)
        XCTAssertEqual(s.authenticate(secret: other, user: nil, now: 0), .unknown)
        for bad in ["", "rht_", String(secretA.dropLast()), secretA + "A", "xyz_" + String(repeating: "A", count: 43),
                    "RHT_" + String(repeating: "A", count: 43), "rht_" + String(repeating: "A", count: 42) + "=",
                    "rht_" + String(repeating: "A", count: 42) + "+", "rht_" + String(repeating: "é", count: 43),
                    String(repeating: "x", count: 100_000)] {
            XCTAssertEqual(s.authenticate(secret: bad, user: nil, now: 0), .unknown, bad)
            XCTAssertFalse(TokenStore.isWellFormedSecret(bad))
        }
    }

    func testParseErrorsNameTheLine() {
        let h = hashHex(secretA)
        let cases: [(String, String)] = [
            ("b/d \(h) devices=* created=1 expires=never", "tokens.txt:2: invalid token name"),
            ("ci nothex devices=* created=1 expires=never", "tokens.txt:2: expected NAME SHA256HEX"),
            ("ci \(h.dropLast(2)) devices=* created=1 expires=never", "tokens.txt:2: expected NAME SHA256HEX"),
            ("ci", "tokens.txt:2: expected NAME SHA256HEX"),
            ("ci \(h) created=1 expires=never", "tokens.txt:2: devices= is missing"),
            ("ci \(h) devices=* expires=never", "tokens.txt:2: created= is missing"),
            ("ci \(h) devices=* created=1", "tokens.txt:2: expires= is missing"),
            ("ci \(h) devices=* created=1 expires=soon", "tokens.txt:2: expires= must be"),
            ("ci \(h) devices=* created=-1 expires=never", "tokens.txt:2: created= must be"),
            ("ci \(h) devices=* created=1 expires=never color=red", "tokens.txt:2: unknown field \"color\""),
            ("ci \(h) devices=* devices=x created=1 expires=never", "tokens.txt:2: devices= given twice"),
            ("ci \(h) devices=,, created=1 expires=never", "tokens.txt:2: devices= must be"),
            ("ci \(h) devices=* created=1 expires=never junk", "tokens.txt:2: expected key=value"),
            ("\(String(repeating: "n", count: 65)) \(h) devices=* created=1 expires=never", "tokens.txt:2: invalid token name"),
        ]
        for (line, expected) in cases {
            XCTAssertThrowsError(try TokenStore.parse("# header\n" + line + "\n", file: "tokens.txt"), line) { e in
                XCTAssertTrue((e as! TokenError).description.hasPrefix(expected), "\(line): \(e)")
            }
        }
        // Duplicates: a name, or a hash (the same secret under two names).
        let dupName = "a \(h) devices=* created=1 expires=never\n#\na \(hashHex(secretB)) devices=* created=1 expires=never\n"
        XCTAssertThrowsError(try TokenStore.parse(dupName, file: "t")) { e in
            XCTAssertEqual((e as! TokenError).description, "t:3: token \"a\" is defined twice (first on line 1)")
        }
        let dupHash = "a \(h) devices=* created=1 expires=never\nb \(h.uppercased()) devices=* created=1 expires=never\n"
        XCTAssertThrowsError(try TokenStore.parse(dupHash, file: "t")) { e in
            XCTAssertTrue((e as! TokenError).description.hasPrefix("t:2: token \"b\" has the same hash"))
        }
    }

    func testCRLFAndCommentsRoundTrip() throws {
        let h = hashHex(secretA)
        let text = "# c\r\nci \(h) devices=* created=1 expires=never\r\n\r\n#\r\r\n"
        let s = try TokenStore.parse(text, file: "t")
        XCTAssertEqual(s.count, 1)
        guard case .valid = s.authenticate(secret: secretA, user: nil, now: 0) else { return XCTFail() }
        let out = s.formatted()
        XCTAssertEqual(out, "# c\r\nci \(h) devices=* created=1 expires=never\n\r\n#\r\r\n")
        XCTAssertEqual(try TokenStore.parse(out, file: "t").formatted(), out)
    }

    func testBounds() {
        XCTAssertThrowsError(try TokenStore.parse(String(repeating: "#", count: (1 << 20) + 1), file: "t")) { e in
            XCTAssertEqual((e as! TokenError).description, "t: larger than 1 MiB")
        }
        // A hostile line is refused without quadratic work: one long field.
        let long = String(repeating: "a", count: 1 << 19)
        XCTAssertThrowsError(try TokenStore.parse(long, file: "t"))
        XCTAssertThrowsError(try TokenStore.parse("ci " + long, file: "t"))
        // Control characters in a name are not echoed raw.
        XCTAssertThrowsError(try TokenStore.parse("a\u{1b}[2J x", file: "t")) { e in
            XCTAssertFalse((e as! TokenError).description.contains("\u{1b}"))
        }
    }

    func testCreateListRevokeNeverShowSecretOrHash() throws {
        var s = try store()
        let secret = TokenStore.newSecret()
        XCTAssertTrue(TokenStore.isWellFormedSecret(secret))
        XCTAssertNotNil(secret.range(of: "^rht_[A-Za-z0-9_-]{43}$", options: .regularExpression))
        XCTAssertNotEqual(secret, TokenStore.newSecret())
        try s.add(name: "deploy.bot", devices: "dev-1", secret: secret, created: 3000, expires: 3000 + 90 * 86_400)
        XCTAssertEqual(s.count, 3)
        guard case .valid(let p) = s.authenticate(secret: secret, user: "deploy.bot", now: 3001) else { return XCTFail() }
        XCTAssertEqual(p.name, "deploy.bot")

        let text = s.formatted()
        XCTAssertFalse(text.contains(secret))
        XCTAssertFalse(text.contains(String(secret.dropFirst(4))))
        XCTAssertTrue(text.hasPrefix("# the CI\nci "))
        XCTAssertTrue(text.contains("\ndeploy.bot \(hashHex(secret)) devices=dev-1 created=3000 expires=7779000\n"))
        // What it writes it reads back the same.
        let again = try TokenStore.parse(text, file: "t")
        XCTAssertEqual(again.entries, s.entries)
        XCTAssertEqual(again.formatted(), text)

        let list = s.listing(now: 2500)
        XCTAssertEqual(list, """
            NAME        DEVICES            CREATED               EXPIRES
            ci          dev-*,lab.example  1970-01-01T00:16:40Z  never
            old         *                  1970-01-01T00:16:40Z  1970-01-01T00:33:20Z  EXPIRED
            deploy.bot  dev-1              1970-01-01T00:50:00Z  1970-04-01T00:50:00Z

            """)
        for e in s.entries { XCTAssertFalse(list.contains(e.hash.map { ($0 < 16 ? "0" : "") + String($0, radix: 16) }.joined())) }
        XCTAssertFalse(list.contains(hashHex(secret)))
        XCTAssertFalse(list.contains(hashHex(secretA)))
        XCTAssertFalse(list.contains(secret))

        XCTAssertTrue(s.remove(name: "ci"))
        XCTAssertFalse(s.remove(name: "ci"))
        XCTAssertEqual(s.authenticate(secret: secretA, user: nil, now: 0), .unknown)
        guard case .valid = s.authenticate(secret: secret, user: nil, now: 3001) else { return XCTFail() }
        XCTAssertEqual(s.formatted(), "# the CI\n\nold \(hashHex(secretB)) devices=* created=1000 expires=2000\n"
                       + "deploy.bot \(hashHex(secret)) devices=dev-1 created=3000 expires=7779000\n")
    }

    func testAddRefusals() throws {
        var s = try store()
        let secret = TokenStore.newSecret()
        for bad in ["", "a b", "a/b", "é", String(repeating: "x", count: 65), "a:b", "a\n"] {
            XCTAssertThrowsError(try s.add(name: bad, devices: "*", secret: secret, created: 0, expires: nil), bad)
        }
        XCTAssertThrowsError(try s.add(name: "ci", devices: "*", secret: secret, created: 0, expires: nil)) { e in
            XCTAssertEqual((e as! TokenError).description, "a token named \"ci\" exists already (revoke it first)")
        }
        XCTAssertThrowsError(try s.add(name: "n", devices: "a b", secret: secret, created: 0, expires: nil))
        XCTAssertThrowsError(try s.add(name: "n", devices: "", secret: secret, created: 0, expires: nil))
        XCTAssertThrowsError(try s.add(name: "n", devices: "*", secret: "rht_short", created: 0, expires: nil))
        XCTAssertThrowsError(try s.add(name: "n", devices: "*", secret: secretA, created: 0, expires: nil))  // same hash
        XCTAssertEqual(s.count, 2)
        try s.add(name: String(repeating: "x", count: 64), devices: "*", secret: secret, created: 0, expires: nil)
    }

    func testExpiryParsing() throws {
        XCTAssertEqual(try TokenStore.parseExpiry("90d"), 90 * 86_400)
        XCTAssertEqual(try TokenStore.parseExpiry("12h"), 12 * 3_600)
        XCTAssertEqual(try TokenStore.parseExpiry("30m"), 30 * 60)
        XCTAssertEqual(try TokenStore.parseExpiry("never"), nil)
        XCTAssertEqual(try TokenStore.parseExpiry("36500d"), 36_500 * 86_400)
        for bad in ["", "d", "0d", "-1d", "90", "90s", "5y", "1.5h", "36501d", "99999999999d", "90D", " 90d", "never "] {
            XCTAssertThrowsError(try TokenStore.parseExpiry(bad), bad)
        }
    }

    func testUTCText() {
        XCTAssertEqual(TokenStore.utcText(0), "1970-01-01T00:00:00Z")
        XCTAssertEqual(TokenStore.utcText(951_782_400), "2000-02-29T00:00:00Z")
        XCTAssertEqual(TokenStore.utcText(1_796_300_973), "2026-12-03T12:29:33Z")
    }

    func testFileRoundTrip() throws {
        let dir = NSTemporaryDirectory() + "tokens-\(UInt32.random(in: 0...UInt32.max))"
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let path = dir + "/tokens.txt"
        XCTAssertEqual(try TokenStore.loadOrEmpty(path: path).count, 0)
        XCTAssertThrowsError(try TokenStore.load(path: path))
        var s = TokenStore()
        try s.add(name: "ci", devices: "*", secret: secretA, created: 1, expires: nil)
        try TokenStore.withLock(path: path) { () throws(TokenError) in try s.save(path: path) }
        let attrs = try FileManager.default.attributesOfItem(atPath: path)
        // A new file: the directory's group (the gateway's, in /etc/fleet-gateway), 0640.
        XCTAssertEqual((attrs[.posixPermissions] as! NSNumber).intValue, 0o640)
        XCTAssertEqual(try TokenStore.load(path: path).entries, s.entries)
        // An existing file keeps its mode, but never readable by others.
        chmod(path, 0o604)
        try s.save(path: path)
        XCTAssertEqual((try FileManager.default.attributesOfItem(atPath: path)[.posixPermissions] as! NSNumber).intValue, 0o600)
        let stamp = try XCTUnwrap(TokenStore.stamp(path: path))
        XCTAssertEqual(TokenStore.stamp(path: path), stamp)
        try s.add(name: "two", devices: "*", secret: TokenStore.newSecret(), created: 1, expires: nil)
        try s.save(path: path)
        XCTAssertNotEqual(TokenStore.stamp(path: path), stamp)  // a new inode at least
        XCTAssertNil(TokenStore.stamp(path: dir + "/absent"))
        XCTAssertEqual(try FileManager.default.contentsOfDirectory(atPath: dir), ["tokens.txt"])  // no temporary left
        try Data([0xff, 0xfe]).write(to: URL(fileURLWithPath: path))
        XCTAssertThrowsError(try TokenStore.load(path: path)) { e in
            XCTAssertEqual((e as! TokenError).description, path + ": not UTF-8 text")
        }
    }
}

final class CredentialsTests: XCTestCase {
    func b64(_ s: String) -> String { Data(s.utf8).base64EncodedString() }

    func testBearer() {
        XCTAssertEqual(Credentials.parse(authorization: "Bearer rht_abc"), .bearer("rht_abc"))
        XCTAssertEqual(Credentials.parse(authorization: "bEARER   rht_abc  "), .bearer("rht_abc"))
        XCTAssertEqual(Credentials.parse(authorization: "Bearer a.b-c_d~e+f/g=="), .bearer("a.b-c_d~e+f/g=="))
        XCTAssertNil(Credentials.parse(authorization: "Bearer"))
        XCTAssertNil(Credentials.parse(authorization: "Bearer "))
        XCTAssertNil(Credentials.parse(authorization: "Bearer a b"))
        XCTAssertNil(Credentials.parse(authorization: "Bearer a,b"))
        XCTAssertNil(Credentials.parse(authorization: "Bearer é"))
        XCTAssertNil(Credentials.parse(authorization: "Bearerx abc"))
        XCTAssertNil(Credentials.parse(authorization: "Digest abc"))
        XCTAssertNil(Credentials.parse(authorization: ""))
    }

    func testBasic() {
        XCTAssertEqual(Credentials.parse(authorization: "Basic " + b64("ci:rht_x")), .basic(user: "ci", password: "rht_x"))
        XCTAssertEqual(Credentials.parse(authorization: "basic " + b64("ci:a:b")), .basic(user: "ci", password: "a:b"))
        XCTAssertEqual(Credentials.parse(authorization: "BASIC " + b64(":")), .basic(user: "", password: ""))
        XCTAssertEqual(Credentials.parse(authorization: "Basic " + b64("zoë:pässword")), .basic(user: "zoë", password: "pässword"))
        // Unpadded base64 is accepted; padding, when present, must be right.
        XCTAssertEqual(Credentials.parse(authorization: "Basic " + b64("ci:x").replacingOccurrences(of: "=", with: "")),
                       .basic(user: "ci", password: "x"))
        XCTAssertNil(Credentials.parse(authorization: "Basic " + b64("nocolon")))
        XCTAssertNil(Credentials.parse(authorization: "Basic !!!!"))
        XCTAssertNil(Credentials.parse(authorization: "Basic Y2k6eA==="))
        XCTAssertNil(Credentials.parse(authorization: "Basic Y2k6eA=x"))
        XCTAssertNil(Credentials.parse(authorization: "Basic Y"))
        XCTAssertNil(Credentials.parse(authorization: "Basic Y2k6eB=="))  // leftover bits set: not canonical
        XCTAssertNil(Credentials.parse(authorization: "Basic " + Data([0x61, 0x3a, 0xff]).base64EncodedString()))  // not UTF-8
        XCTAssertNil(Credentials.parse(authorization: "Basic " + b64("a:b\u{0}c")))  // control character
        XCTAssertNil(Credentials.parse(authorization: "Basic " + b64("a:b\nc")))
        XCTAssertNil(Credentials.parse(authorization: "Basic"))
    }

    func testHugeIsRefusedQuickly() {
        let big = "Basic " + b64("u:" + String(repeating: "p", count: 10_000))
        XCTAssertNil(Credentials.parse(authorization: big))
        XCTAssertNil(Credentials.parse(authorization: "Bearer " + String(repeating: "a", count: 1 << 20)))
        let limit = "Bearer " + String(repeating: "a", count: Credentials.maxLength - 7)
        XCTAssertEqual(Credentials.parse(authorization: limit), .bearer(String(repeating: "a", count: Credentials.maxLength - 7)))
    }

    func testBase64RoundTrip() {
        for n in 0..<40 {
            let bytes = (0..<n).map { UInt8(truncatingIfNeeded: $0 &* 37 &+ 11) }
            XCTAssertEqual(Base64.encode(bytes, urlSafe: false), Data(bytes).base64EncodedString())
            XCTAssertEqual(Base64.decode(Base64.encode(bytes, urlSafe: false).utf8, urlSafe: false), bytes)
            XCTAssertEqual(Base64.decode(Base64.encode(bytes, urlSafe: true).utf8, urlSafe: true), bytes)
            XCTAssertFalse(Base64.encode(bytes, urlSafe: true).contains("="))
        }
        XCTAssertNil(Base64.decode("a+b/".utf8, urlSafe: true))
        XCTAssertNil(Base64.decode("a-b_".utf8, urlSafe: false))
    }
}
