import Bytes
import COpenSSL
import AccessTestSupport
import FleetAccess
import XCTest

final class JWTTests: XCTestCase {
    static let rsa = TestKey(.rsa, kid: "rsa1")
    static let rsa2 = TestKey(.rsa, kid: "rsa2")
    static let ec = TestKey(.ec, kid: "ec1")
    static let ed = TestKey(.ed25519, kid: "ed1")
    static var all: [TestKey] { [rsa, ec, ed] }

    let now: Int64 = 1_800_000_000

    func claims(exp: Int64? = nil, extra: String = "") -> String {
        "{\"iss\":\"https://idp.example\",\"aud\":\"fleet\",\"sub\":\"u123\",\"email\":\"ann@example.com\","
            + "\"groups\":[\"ops\",\"dev\"],\"exp\":" + String(exp ?? now + 600) + extra + "}"
    }

    func verifier(_ keys: [TestKey] = JWTTests.all, issuer: String? = "https://idp.example",
                  audience: String? = "fleet") throws -> JWTVerifier {
        JWTVerifier(keys: try JWKS.parse(jwks(keys.map(\.jwk))), issuer: issuer, audience: audience)
    }

    func assertFails(_ v: JWTVerifier, _ token: String, _ expected: JWTError, line: UInt = #line) {
        switch v.verify(token, now: now) {
        case .success(let p): XCTFail("accepted: \(p)", line: line)
        case .failure(let e): XCTAssertEqual(e, expected, line: line)
        }
    }

    // MARK: valid tokens

    func testValidTokensOfEachAlgorithm() throws {
        let v = try verifier()
        for key in JWTTests.all {
            let p = try v.verify(key.token(claims()), now: now).get()
            XCTAssertEqual(p, Principal(method: .jwt, name: "u123", email: "ann@example.com", groups: ["ops", "dev"], expires: now + 600))
            XCTAssertEqual(p.displayName, "ann@example.com")
        }
    }

    func testNoKidTriesTheKeysOfTheAlgorithm() throws {
        let v = try verifier([JWTTests.rsa, JWTTests.ec, JWTTests.rsa2, JWTTests.ed])
        for key in [JWTTests.rsa2, JWTTests.ec, JWTTests.ed] {
            let token = key.token(header: "{\"alg\":\"" + key.alg + "\"}", claims())
            XCTAssertEqual(try v.verify(token, now: now).get().name, "u123")
        }
        // No key of that type at all: unknownKey(nil).
        let onlyRSA = try verifier([JWTTests.rsa])
        assertFails(onlyRSA, JWTTests.ec.token(header: "{\"alg\":\"ES256\"}", claims()), .unknownKey(kid: nil))
    }

    func testUnknownKid() throws {
        let v = try verifier()
        let token = JWTTests.rsa.token(header: "{\"alg\":\"RS256\",\"kid\":\"nope\"}", claims())
        assertFails(v, token, .unknownKey(kid: "nope"))
        assertFails(v, JWTTests.rsa.token(header: "{\"alg\":\"RS256\",\"kid\":7}", claims()), .malformed("kid is not a string"))
    }

    // MARK: time

    func testExpiredAndNotYetValid() throws {
        let v = try verifier()
        for key in JWTTests.all {
            assertFails(v, key.token(claims(exp: now - 3600)), .expired)
            assertFails(v, key.token(claims(extra: ",\"nbf\":" + String(now + 3600))), .notYetValid)
            assertFails(v, key.token(claims(extra: ",\"iat\":" + String(now + 3600))), .notYetValid)
        }
        let noExp = "{\"sub\":\"u\",\"iss\":\"https://idp.example\",\"aud\":\"fleet\"}"
        assertFails(v, JWTTests.ed.token(noExp), .malformed("no exp claim"))
        assertFails(v, JWTTests.ed.token(claims(extra: ",\"nbf\":\"soon\"")), .malformed("nbf is not a number of seconds"))
        // Huge numbers do not overflow into acceptance.
        assertFails(v, JWTTests.ed.token(claims(exp: Int64.min)), .expired)
        assertFails(v, JWTTests.ed.token(claims(extra: ",\"nbf\":9223372036854775807")), .notYetValid)
        XCTAssertNoThrow(try v.verify(JWTTests.ed.token(claims(exp: Int64.max)), now: now).get())
        // A fraction is allowed (NumericDate), an exponent is not.
        XCTAssertEqual(try v.verify(JWTTests.ed.token(claims(extra: ",\"iat\":1799999999.75")), now: now).get().name, "u123")
        assertFails(v, JWTTests.ed.token(claims(extra: ",\"iat\":1.8e9")), .malformed("iat is not a number of seconds"))
    }

    func testLeewayEdges() throws {
        let v = try verifier()   // 60 s
        let key = JWTTests.ec
        XCTAssertNoThrow(try v.verify(key.token(claims(exp: now - 59)), now: now).get())
        assertFails(v, key.token(claims(exp: now - 60)), .expired)
        XCTAssertNoThrow(try v.verify(key.token(claims(extra: ",\"nbf\":" + String(now + 60))), now: now).get())
        assertFails(v, key.token(claims(extra: ",\"nbf\":" + String(now + 61))), .notYetValid)
        let strict = JWTVerifier(keys: v.keys, issuer: nil, audience: nil, leewaySeconds: 0)
        assertFails(strict, key.token(claims(exp: now)), .expired)
        XCTAssertNoThrow(try strict.verify(key.token(claims(exp: now + 1)), now: now).get())
    }

    // MARK: issuer, audience, subject and the other claims

    func testIssuerAndAudience() throws {
        let v = try verifier()
        let key = JWTTests.rsa
        func payload(iss: String, aud: String) -> String {
            "{\"iss\":" + iss + ",\"aud\":" + aud + ",\"sub\":\"u\",\"exp\":" + String(now + 60) + "}"
        }
        assertFails(v, key.token(payload(iss: "\"https://evil.example\"", aud: "\"fleet\"")), .wrongIssuer)
        assertFails(v, key.token(payload(iss: "[\"https://idp.example\"]", aud: "\"fleet\"")), .wrongIssuer)
        assertFails(v, key.token("{\"aud\":\"fleet\",\"sub\":\"u\",\"exp\":" + String(now + 60) + "}"), .wrongIssuer)
        assertFails(v, key.token(payload(iss: "\"https://idp.example\"", aud: "\"other\"")), .wrongAudience)
        assertFails(v, key.token(payload(iss: "\"https://idp.example\"", aud: "[\"other\",\"fleet2\"]")), .wrongAudience)
        assertFails(v, key.token(payload(iss: "\"https://idp.example\"", aud: "[]")), .wrongAudience)
        assertFails(v, key.token(payload(iss: "\"https://idp.example\"", aud: "null")), .wrongAudience)
        XCTAssertNoThrow(try v.verify(key.token(payload(iss: "\"https://idp.example\"", aud: "[\"other\",\"fleet\"]")), now: now).get())
        // Not configured: not checked.
        let open = try verifier(issuer: nil, audience: nil)
        XCTAssertNoThrow(try open.verify(key.token(payload(iss: "\"x\"", aud: "\"y\"")), now: now).get())
    }

    func testSubjectEmailAndGroups() throws {
        let v = try verifier(issuer: nil, audience: nil)
        let key = JWTTests.ed
        let exp = ",\"exp\":" + String(now + 60)
        func check(_ body: String) -> Result<Principal, JWTError> { v.verify(key.token("{" + body + exp + "}"), now: now) }
        XCTAssertEqual(check("\"email\":\"a@b\""), .failure(.missingSubject))
        XCTAssertEqual(check("\"sub\":\"\""), .failure(.missingSubject))
        XCTAssertEqual(check("\"sub\":5"), .failure(.missingSubject))
        XCTAssertEqual(check("\"sub\":\"" + String(repeating: "x", count: 257) + "\""), .failure(.missingSubject))
        XCTAssertEqual(check("\"sub\":\"a\\r\\nX-Admin: 1\""), .failure(.missingSubject))
        XCTAssertEqual(check("\"sub\":\"ann\",\"email\":\"a@b\\r\\nX: y\""),
                       .failure(.malformed("email is not a string of printable characters")))
        XCTAssertEqual(try check("\"sub\":\"ann\",\"email\":\"a@b\",\"email_verified\":false").get().email, nil)
        XCTAssertEqual(try check("\"sub\":\"ann\",\"email\":\"a@b\",\"email_verified\":true").get().email, "a@b")
        XCTAssertEqual(try check("\"sub\":\"ann\",\"groups\":\"ops\"").get().groups, ["ops"])
        XCTAssertEqual(try check("\"sub\":\"\\u00e9l\\ud83d\\ude00\"").get().name, "él😀")
        XCTAssertEqual(check("\"sub\":\"ann\",\"groups\":[\"ops\",1]"), .failure(.malformed("groups is not a list of strings")))
        XCTAssertEqual(check("\"sub\":\"ann\",\"groups\":{}"), .failure(.malformed("groups is not a string or a list of strings")))
        let many = "[" + (0..<257).map { "\"g" + String($0) + "\"" }.joined(separator: ",") + "]"
        XCTAssertEqual(check("\"sub\":\"ann\",\"groups\":" + many), .failure(.malformed("groups has over 256 entries")))
        // Another groups claim name.
        let roles = JWTVerifier(keys: v.keys, issuer: nil, audience: nil, groupsClaim: "roles")
        let p = try roles.verify(key.token("{\"sub\":\"ann\",\"groups\":[\"x\"],\"roles\":[\"admin\"]" + exp + "}"), now: now).get()
        XCTAssertEqual(p.groups, ["admin"])
    }

    // MARK: algorithms and keys

    func testAlgNoneIsRefused() throws {
        let v = try verifier()
        for alg in ["none", "None", "NONE"] {
            let h = Base64URL.encode(Array(("{\"alg\":\"" + alg + "\"}").utf8))
            let p = Base64URL.encode(Array(claims().utf8))
            assertFails(v, h + "." + p + ".", .unsupportedAlgorithm(alg))
            assertFails(v, h + "." + p + "." + Base64URL.encode(JWTTests.rsa.sign(Array((h + "." + p).utf8))), .unsupportedAlgorithm(alg))
        }
        let noAlg = JWTTests.rsa.token(header: "{\"kid\":\"rsa1\"}", claims())
        assertFails(v, noAlg, .malformed("header without alg"))
    }

    func testHS256WithTheRSAPublicKeyIsRefused() throws {
        let v = try verifier()
        let key = JWTTests.rsa
        for secret in [key.publicPEM, key.bn("n"), Array(key.jwk.utf8)] {
            for header in ["{\"alg\":\"HS256\",\"kid\":\"rsa1\"}", "{\"alg\":\"HS256\"}", "{\"alg\":\"HS512\",\"kid\":\"rsa1\"}"] {
                let token = hs256Token(header: header, payload: claims(), secret: secret)
                guard case .failure(.unsupportedAlgorithm) = v.verify(token, now: now) else {
                    return XCTFail("HMAC token accepted or misjudged: " + header)
                }
            }
        }
        // A JWKS `oct` key is never a verification key.
        XCTAssertThrowsError(try JWKS.parse(jwks(["{\"kty\":\"oct\",\"k\":\"c2VjcmV0\",\"alg\":\"HS256\"}"])))
    }

    func testAlgorithmMustFitTheKey() throws {
        let v = try verifier()
        // An ES256 header naming the RSA key, signed with the EC key.
        let mixed = JWTTests.ec.token(header: "{\"alg\":\"ES256\",\"kid\":\"rsa1\"}", claims())
        assertFails(v, mixed, .unsupportedAlgorithm("ES256 does not fit the key rsa1 (RS256)"))
        // An RS256 header naming the Ed25519 key.
        let mixed2 = JWTTests.rsa.token(header: "{\"alg\":\"RS256\",\"kid\":\"ed1\"}", claims())
        assertFails(v, mixed2, .unsupportedAlgorithm("RS256 does not fit the key ed1 (EdDSA)"))
        // Algorithms we do not do.
        for alg in ["RS384", "PS256", "ES384", "ES256K", "RSA-OAEP"] {
            assertFails(v, JWTTests.rsa.token(header: "{\"alg\":\"" + alg + "\",\"kid\":\"rsa1\"}", claims()), .unsupportedAlgorithm(alg))
        }
        // A JWK's own alg and use must agree, else it is skipped.
        let set = try JWKS.parse(jwks([
            "{" + JWTTests.rsa.jwkMembers(extra: ",\"alg\":\"ES256\"") + "}",
            "{" + JWTTests.rsa2.jwkMembers(extra: ",\"alg\":\"RS256\",\"use\":\"sig\"") + "}",
            "{" + JWTTests.ec.jwkMembers(extra: ",\"use\":\"enc\"") + "}",
            "{" + JWTTests.ed.jwkMembers(extra: ",\"key_ops\":[\"encrypt\"]") + "}",
        ]))
        XCTAssertEqual(set.keyIDs, ["rsa2"])
        XCTAssertEqual(set.skipped.count, 3)
        let only = JWTVerifier(keys: set, issuer: nil, audience: nil)
        XCTAssertEqual(only.verify(JWTTests.rsa.token(claims()), now: now), .failure(.unknownKey(kid: "rsa1")))
        XCTAssertNoThrow(try only.verify(JWTTests.rsa2.token(claims()), now: now).get())
    }

    func testCritHeaderIsRefused() throws {
        let v = try verifier()
        let token = JWTTests.ed.token(header: "{\"alg\":\"EdDSA\",\"kid\":\"ed1\",\"crit\":[\"exp\"],\"exp\":1}", claims())
        assertFails(v, token, .malformed("crit header (no extension is supported)"))
    }

    func testEmbeddedKeyInHeaderIsIgnored() throws {
        // An attacker's own key in `jwk` does not make its signature valid.
        let v = try verifier([JWTTests.rsa])
        let attacker = TestKey(.ed25519, kid: "x")
        let token = attacker.token(header: "{\"alg\":\"EdDSA\",\"jwk\":" + attacker.jwk + "}", claims())
        assertFails(v, token, .unknownKey(kid: nil))
    }

    // MARK: bytes

    func testTamperedTokens() throws {
        let v = try verifier()
        for key in JWTTests.all {
            let token = key.token(claims())
            let parts = token.split(separator: ".").map(String.init)
            let other = Base64URL.encode(Array(claims().replacingOccurrences(of: "u123", with: "root").utf8))
            assertFails(v, parts[0] + "." + other + "." + parts[2], .badSignature)
            var sig = Base64URL.decode(parts[2].utf8)!
            sig[sig.count / 2] ^= 1
            assertFails(v, parts[0] + "." + parts[1] + "." + Base64URL.encode(sig), .badSignature)
            assertFails(v, parts[0] + "." + parts[1] + "." + Base64URL.encode(sig.dropLast()), .badSignature)
            assertFails(v, parts[0] + "." + parts[1] + ".", .badSignature)
            assertFails(v, parts[0] + "." + parts[1], .malformed("not three base64url parts"))
            assertFails(v, token + ".x.y", .malformed("not three base64url parts (JWE is not accepted)"))
        }
    }

    func testBadBase64URL() throws {
        let v = try verifier()
        let token = JWTTests.ed.token(claims())
        let parts = token.split(separator: ".").map(String.init)
        assertFails(v, parts[0] + "=." + parts[1] + "." + parts[2], .malformed("header is not base64url"))
        assertFails(v, parts[0] + "." + "+" + parts[1].dropFirst() + "." + parts[2],
                    .malformed("payload is not base64url"))
        assertFails(v, parts[0] + "." + parts[1] + "." + parts[2] + "==", .malformed("signature is not base64url"))
        assertFails(v, parts[0] + " ." + parts[1] + "." + parts[2], .malformed("header is not base64url"))
        // Strictness of the codec itself.
        XCTAssertEqual(Base64URL.decode("QQ".utf8), [0x41])
        XCTAssertNil(Base64URL.decode("QR".utf8))     // non-zero unused bits
        XCTAssertNil(Base64URL.decode("Q".utf8))
        XCTAssertNil(Base64URL.decode("QQ==".utf8))
        XCTAssertNil(Base64URL.decode("a+b/".utf8))
        for n in 0..<40 {
            let bytes = (0..<n).map { UInt8(truncatingIfNeeded: $0 &* 37 &+ 250) }
            XCTAssertEqual(Base64URL.decode(Base64URL.encode(bytes).utf8), bytes)
        }
    }

    func testDuplicateClaimsAndHeaders() throws {
        let v = try verifier()
        let key = JWTTests.rsa
        let dup = "{\"sub\":\"ann\",\"sub\":\"root\",\"exp\":" + String(now + 60) + ",\"iss\":\"https://idp.example\",\"aud\":\"fleet\"}"
        guard case .failure(.malformed(let why)) = v.verify(key.token(dup), now: now) else { return XCTFail() }
        XCTAssertTrue(why.contains("duplicate key \"sub\""), why)
        let dupHeader = key.token(header: "{\"alg\":\"RS256\",\"alg\":\"none\",\"kid\":\"rsa1\"}", claims())
        guard case .failure(.malformed(let why2)) = v.verify(dupHeader, now: now) else { return XCTFail() }
        XCTAssertTrue(why2.contains("duplicate key \"alg\""), why2)
        // Trailing bytes after the JSON object.
        guard case .failure(.malformed) = v.verify(key.token(claims() + "{}"), now: now) else { return XCTFail() }
    }

    func testHugeToken() throws {
        let v = try verifier()
        let big = JWTTests.ed.token(claims(extra: ",\"pad\":\"" + String(repeating: "a", count: 9000) + "\""))
        assertFails(v, big, .tooLarge)
        assertFails(v, String(repeating: "a", count: 1 << 20), .tooLarge)
        // Just under the limit, deeply nested: refused by depth, quickly.
        let deep = Base64URL.encode(Array((String(repeating: "[", count: 3000)).utf8))
        assertFails(v, "eyJhbGciOiJFZERTQSJ9." + deep + ".", .badSignature)
        let deepHeader = Base64URL.encode(Array((String(repeating: "{\"a\":", count: 1000)).utf8))
        guard case .failure(.malformed(let why)) = v.verify(deepHeader + ".e30.", now: now) else { return XCTFail() }
        XCTAssertTrue(why.contains("nested deeper than 16"), why)
    }

    // MARK: key sets

    func testKeySetWithUnusableKeysOnly() throws {
        let fakeN = Base64URL.encode([0xC1] + [UInt8](repeating: 0x5A, count: 126) + [0x01])   // 1024 bits
        let bigE = Base64URL.encode([0x01, 0x00, 0x00, 0x00, 0x01])
        let n2048 = Base64URL.encode(JWTTests.rsa.bn("n"))
        let offCurve = Base64URL.encode([UInt8](repeating: 0, count: 31) + [1])
        let unusable = [
            "{\"kty\":\"oct\",\"k\":\"c2VjcmV0\"}",
            "{\"kty\":\"RSA\",\"n\":\"" + fakeN + "\",\"e\":\"AQAB\"}",
            "{\"kty\":\"RSA\",\"n\":\"" + n2048 + "\",\"e\":\"AQ\"}",
            "{\"kty\":\"RSA\",\"n\":\"" + n2048 + "\",\"e\":\"" + bigE + "\"}",
            "{\"kty\":\"EC\",\"crv\":\"P-384\",\"x\":\"AA\",\"y\":\"AA\"}",
            "{\"kty\":\"EC\",\"crv\":\"P-256\",\"x\":\"" + offCurve + "\",\"y\":\"" + offCurve + "\"}",
            "{\"kty\":\"OKP\",\"crv\":\"Ed448\",\"x\":\"AA\"}",
            "{\"kty\":\"OKP\",\"crv\":\"X25519\",\"x\":\"" + offCurve + "\"}",
            "{\"kty\":\"OKP\",\"crv\":\"Ed25519\",\"x\":\"AAAA\"}",
            "{\"kid\":\"x\"}",
            "[]",
        ]
        XCTAssertThrowsError(try JWKS.parse(jwks(unusable))) { e in
            guard case JWTError.badKeySet(let why) = e else { return XCTFail("\(e)") }
            XCTAssertTrue(why.hasPrefix("no usable key: key 1: kty oct"), why)
        }
        let mixed = try JWKS.parse(jwks(unusable + [JWTTests.ed.jwk]))
        XCTAssertEqual(mixed.keyIDs, ["ed1"])
        XCTAssertEqual(mixed.skipped.count, unusable.count)
        // Shapes that are not a key set at all.
        for doc in ["", "[]", "{}", "{\"keys\":{}}", "{\"keys\":[]}", "{\"keys\":[" + JWTTests.ed.jwk + "]} x"] {
            XCTAssertThrowsError(try JWKS.parse(Array(doc.utf8)), doc)
        }
        let tooMany = jwks(Array(repeating: JWTTests.ed.jwk, count: 101))
        XCTAssertThrowsError(try JWKS.parse(tooMany))
        XCTAssertThrowsError(try JWKS.parse([UInt8](repeating: 0x20, count: JWKS.maxSize + 1))) { e in
            XCTAssertEqual(e as? JWTError, .tooLarge)
        }
        XCTAssertEqual(ERR_peek_error(), 0, "OpenSSL's error queue is left empty")
    }

    func testKeySetRotation() throws {
        let old = try verifier([JWTTests.rsa])
        let newKeys = try JWKS.parse(jwks([JWTTests.rsa2.jwk, JWTTests.ec.jwk]))
        let new = JWTVerifier(keys: newKeys, issuer: "https://idp.example", audience: "fleet")
        let oldToken = JWTTests.rsa.token(claims())
        let newToken = JWTTests.rsa2.token(claims())
        XCTAssertNoThrow(try old.verify(oldToken, now: now).get())
        XCTAssertEqual(old.verify(newToken, now: now), .failure(.unknownKey(kid: "rsa2")))
        XCTAssertNoThrow(try new.verify(newToken, now: now).get())
        XCTAssertEqual(new.verify(oldToken, now: now), .failure(.unknownKey(kid: "rsa1")))
        // The removed key, without kid: the remaining RSA key does not verify it.
        let oldNoKid = JWTTests.rsa.token(header: "{\"alg\":\"RS256\"}", claims())
        XCTAssertEqual(new.verify(oldNoKid, now: now), .failure(.badSignature))
    }

    // MARK: JSON

    func testJSONReader() throws {
        func parse(_ s: String) throws -> JSONValue { try JSON.parse(Array(s.utf8), maxSize: 1 << 16) }
        let doc = try parse(" {\"a\":[1,-2.5e3,true,false,null,\"x\"]} ")
        XCTAssertEqual(doc.object?["a"], .array([.number("1"), .number("-2.5e3"), .bool(true), .bool(false), .null, .string("x")]))
        XCTAssertEqual(try parse("\"\\ud83d\\ude00\\u00e9\\n\\/\"").string, "😀é\n/")
        for bad in ["", "{", "[1,]", "{\"a\":1,}", "01", "1.", "-", "1e", "\"\\ud83d\"", "\"\\ude00\"", "\"\\ud83d\\u0041\"",
                    "\"\\x\"", "\"a\nb\"", "tru", "nul", "{\"a\" 1}", "{1:2}", "[1 2]", "1 2", "{\"a\":1,\"a\":1}", "\"\\u12\""] {
            XCTAssertThrowsError(try parse(bad), bad)
        }
        // Invalid UTF-8 inside strings: overlong, surrogate, truncated, over U+10FFFF.
        for bytes: [UInt8] in [[0x22, 0xC0, 0xAF, 0x22], [0x22, 0xED, 0xA0, 0x80, 0x22], [0x22, 0xE2, 0x82, 0x22],
                               [0x22, 0xF4, 0x90, 0x80, 0x80, 0x22], [0x22, 0xFF, 0x22], [0x22, 0x80, 0x22]] {
            XCTAssertThrowsError(try JSON.parse(bytes, maxSize: 100))
        }
        XCTAssertEqual(try JSON.parse([0x22, 0xF0, 0x9F, 0x98, 0x80, 0x22], maxSize: 100).string, "😀")
        // Depth: 16 levels are fine, 17 are not.
        XCTAssertNoThrow(try parse(String(repeating: "[", count: 16) + String(repeating: "]", count: 16)))
        XCTAssertThrowsError(try parse(String(repeating: "[", count: 17) + String(repeating: "]", count: 17)))
        XCTAssertThrowsError(try JSON.parse(Array("[1,2]".utf8), maxSize: 4))
        // Numbers stay text; int64 reads integers.
        XCTAssertEqual(try parse("12345678901234567890").int64, nil)
        XCTAssertEqual(try parse("-9223372036854775808").int64, Int64.min)
        XCTAssertEqual(try parse("9223372036854775807").int64, Int64.max)
        XCTAssertEqual(try parse("-1.5").int64, -2)
        XCTAssertEqual(try parse("7.0").int64, 7)
        XCTAssertEqual(try parse("1e3").int64, nil)
        XCTAssertEqual(try parse("-0").int64, 0)
        XCTAssertEqual(try parse("1e3"), .number("1e3"))
    }

    func testJSONLargeInputsStayLinear() throws {
        // A 1 MiB key set of many small or escaped strings parses (and is refused
        // for its size or key count) without blowing up; bounded by construction.
        let escapes = "{\"keys\":[\"" + String(repeating: "\\u00e9\\\"", count: 80_000) + "\"]}"
        XCTAssertThrowsError(try JWKS.parse(Array(escapes.utf8)))
        let many = "{\"keys\":[" + Array(repeating: "{}", count: 200_000).joined(separator: ",") + "]}"
        XCTAssertThrowsError(try JWKS.parse(Array(many.utf8)))
        let keys = "{" + (0..<60_000).map { "\"k" + String($0) + "\":0" }.joined(separator: ",") + ",\"keys\":[]}"
        XCTAssertThrowsError(try JWKS.parse(Array(keys.utf8)))
    }

    // MARK: cache

    func testCacheHitExpiryAndEviction() {
        let cache = JWTCache(capacity: 3)
        let p = { (n: String, exp: Int64?) in Principal(method: .jwt, name: n, expires: exp) }
        XCTAssertNil(cache.principal(for: "t1", now: now))
        cache.insert("t1", p("a", now + 10))
        XCTAssertEqual(cache.principal(for: "t1", now: now)?.name, "a")
        XCTAssertNil(cache.principal(for: "t1x", now: now))
        // Expiry: gone at exp.
        XCTAssertEqual(cache.principal(for: "t1", now: now + 9)?.name, "a")
        XCTAssertNil(cache.principal(for: "t1", now: now + 10))
        XCTAssertNil(cache.principal(for: "t1", now: now))
        XCTAssertEqual(cache.count, 0)
        // Eviction: the oldest insertion goes.
        cache.insert("t1", p("a", nil))
        cache.insert("t2", p("b", nil))
        cache.insert("t3", p("c", nil))
        cache.insert("t2", p("b2", nil))   // an update does not take a slot
        cache.insert("t4", p("d", nil))
        XCTAssertNil(cache.principal(for: "t1", now: now))
        XCTAssertEqual(cache.principal(for: "t2", now: now)?.name, "b2")
        XCTAssertEqual(cache.principal(for: "t4", now: now)?.name, "d")
        XCTAssertEqual(cache.count, 3)
        for i in 0..<100 { cache.insert("x" + String(i), p(String(i), nil)) }
        XCTAssertEqual(cache.count, 3)
        XCTAssertEqual(cache.principal(for: "x99", now: now)?.name, "99")
        XCTAssertNil(cache.principal(for: "x96", now: now))
        cache.removeAll()
        XCTAssertEqual(cache.count, 0)
        XCTAssertNil(cache.principal(for: "x99", now: now))
        // A dropped (expired) key inserted again is not evicted by its old slot.
        let c2 = JWTCache(capacity: 2)
        c2.insert("a", p("a", now + 1))
        c2.insert("b", p("b", nil))
        XCTAssertNil(c2.principal(for: "a", now: now + 5))
        c2.insert("a", p("a2", nil))       // slot 0 (ring full: evicts slot 0 = old "a", already gone)
        c2.insert("c", p("c", nil))        // evicts slot 1 = "b"
        XCTAssertEqual(c2.principal(for: "a", now: now)?.name, "a2")
        XCTAssertNil(c2.principal(for: "b", now: now))
        XCTAssertEqual(c2.principal(for: "c", now: now)?.name, "c")
    }

    func testVerifiedTokensGoThroughTheCache() throws {
        let v = try verifier()
        let cache = JWTCache()
        let token = JWTTests.ec.token(claims(exp: now + 100))
        XCTAssertNil(cache.principal(for: token, now: now))
        cache.insert(token, try v.verify(token, now: now).get())
        XCTAssertEqual(cache.principal(for: token, now: now + 99)?.name, "u123")
        XCTAssertNil(cache.principal(for: token, now: now + 100))
    }
}
