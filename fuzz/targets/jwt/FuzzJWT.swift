// fuzz-jwt: the JWT path of FleetAccess on arbitrary bytes. The first byte
// picks what the rest is fed to:
//   0  JSON.parse (limit 8 KiB): a value it returns, written back as JSON,
//      parses to the same value; object keys are unique; depth ≤ 16;
//   1  JWKS.parse: a set it returns has 1 to 100 keys, each of RS256, ES256 or
//      EdDSA; OpenSSL's error queue is left empty;
//   2  JWTVerifier.verify against a fixed key set (RSA 2048, P-256, Ed25519,
//      made once with `openssl genpkey`; the private keys are not kept): it must
//      NEVER succeed (fuzzer input carries no valid signature), and the error
//      queue stays empty;
//   3  the claims check (principal(fromVerifiedPayload:)): a principal it returns
//      has a non-empty printable sub ≤ 256 bytes, printable email and groups
//      (≤ 256), and is valid now (exp + leeway > now, nbf/iat ≤ now + leeway).
// Any mode: no crash, no hang (libFuzzer's -timeout), bounded memory (-rss_limit_mb).
import COpenSSL
import FleetAccess

let fixedKeySet = """
{"keys":[{"kty":"RSA","kid":"r1","use":"sig","alg":"RS256","n":"sM8p12y5NDHP0Fbb77i_kRckLsNCQrCEmf4VfNNutvky5v8PrFQdzb31mLjWKl8G1yq_kS8fbW8Ly7hktUBC5LYHO-jsxfyP49ImCtlZ4vfEYI3wy_MPAGTELGf0ni7T1zi7XeVIiO6LO0BMEZ33xU_YAPhYz4t_vJkDYvqxgcyIa1pM7Y9IJ90OaR3EPmlKGfz9LKBajUZSkVWLX9en5WelH8CcNDHHmXDyeF53qNTck-lH7iomF0TITqAqmzlPopRIG9HvgycR7VApyNeGAN8YwNm7UnXjl55YzFAeZveGyP5mLzwEXcwh-jtmZsfgmyjGlEvouVuPfIqmUSQifw","e":"AQAB"},\
{"kty":"EC","kid":"e1","crv":"P-256","x":"_2BBIIiWPyzOEWrKJQeUL8fUI3hbnqVR-lMgXqFxXqw","y":"wffw9nM4o1zjcY8seftTG1bSGnKa8_VpMkpFLUbHf-o"},\
{"kty":"OKP","kid":"o1","crv":"Ed25519","x":"WD1Yd_Sr26_aqaSxHAcEtFeYO1V17LdsUaqOZInmd1g"}]}
"""

let now: Int64 = 1_800_000_000
let verifier: JWTVerifier = {
    guard let keys = try? JWKS.parse(Array(fixedKeySet.utf8)), keys.keys.count == 3 else { fatalError("fixed key set") }
    return JWTVerifier(keys: keys, issuer: "https://idp.example", audience: "fleet")
}()
let openVerifier = JWTVerifier(keys: verifier.keys, issuer: nil, audience: nil, groupsClaim: "roles", leewaySeconds: 0)

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzJWT(_ data: UnsafePointer<UInt8>?, _ size: Int) -> CInt {
    guard size > 0, let data else { return 0 }
    let mode = data[0] % 4
    let rest = Array(UnsafeBufferPointer(start: data + 1, count: size - 1))
    switch mode {
    case 0: checkJSON(rest)
    case 1: checkKeySet(rest)
    case 2: checkVerify(rest)
    default: checkClaims(rest)
    }
    return 0
}

func fail(_ what: String, _ input: [UInt8]) -> Never {
    fatalError("fuzz-jwt invariant broken: " + what + " (input " + String(input.count) + " bytes)")
}

// MARK: 0: JSON

func checkJSON(_ input: [UInt8]) {
    guard let value = try? JSON.parse(input, maxSize: 8192) else { return }
    if depth(value) > JSON.maxDepth { fail("depth over the limit", input) }
    var text: [UInt8] = []
    write(value, to: &text)
    let again: JSONValue
    do {
        again = try JSON.parse(text, maxSize: 1 << 20)
    } catch {
        fail("a value written back does not parse: " + error.description, input)
    }
    if again != value { fail("a value written back parses differently", input) }
}

func depth(_ v: JSONValue) -> Int {
    switch v {
    case .object(let o): return 1 + (o.members.map { depth($0.value) }.max() ?? 0)
    case .array(let a): return 1 + (a.map(depth).max() ?? 0)
    default: return 0
    }
}

func write(_ v: JSONValue, to out: inout [UInt8]) {
    switch v {
    case .null: out += Array("null".utf8)
    case .bool(let b): out += Array((b ? "true" : "false").utf8)
    case .number(let n): out += Array(n.utf8)
    case .string(let s): writeString(s, to: &out)
    case .array(let a):
        out.append(UInt8(ascii: "["))
        for (i, e) in a.enumerated() {
            if i > 0 { out.append(UInt8(ascii: ",")) }
            write(e, to: &out)
        }
        out.append(UInt8(ascii: "]"))
    case .object(let o):
        var seen = Set<String>()
        out.append(UInt8(ascii: "{"))
        for (i, m) in o.members.enumerated() {
            if !seen.insert(m.key).inserted { fatalError("fuzz-jwt invariant broken: duplicate key kept") }
            if i > 0 { out.append(UInt8(ascii: ",")) }
            writeString(m.key, to: &out)
            out.append(UInt8(ascii: ":"))
            write(m.value, to: &out)
        }
        out.append(UInt8(ascii: "}"))
    }
}

func writeString(_ s: String, to out: inout [UInt8]) {
    let hex = Array("0123456789abcdef".utf8)
    out.append(UInt8(ascii: "\""))
    for c in s.utf8 {
        if c == UInt8(ascii: "\"") || c == UInt8(ascii: "\\") {
            out.append(UInt8(ascii: "\\"))
            out.append(c)
        } else if c < 0x20 {
            out += Array("\\u00".utf8)
            out.append(hex[Int(c >> 4)])
            out.append(hex[Int(c & 0xF)])
        } else {
            out.append(c)
        }
    }
    out.append(UInt8(ascii: "\""))
}

// MARK: 1: key sets

func checkKeySet(_ input: [UInt8]) {
    let result = Result { () throws(JWTError) -> JWKS in try JWKS.parse(input) }
    if ERR_peek_error() != 0 { fail("OpenSSL error queue left non-empty by JWKS.parse", input) }
    guard case .success(let set) = result else { return }
    if set.keys.isEmpty || set.keys.count > JWKS.maxKeys { fail("key count out of range", input) }
    for k in set.keys where !JWTAlgorithm.allCases.contains(k.algorithm) { fail("odd algorithm", input) }
}

// MARK: 2: verify

func checkVerify(_ input: [UInt8]) {
    let token = String(decoding: input, as: UTF8.self)
    for v in [verifier, openVerifier] {
        if case .success = v.verify(token, now: now) { fail("a token without a valid signature was accepted", input) }
        if ERR_peek_error() != 0 { fail("OpenSSL error queue left non-empty by verify", input) }
    }
}

// MARK: 3: claims

func checkClaims(_ input: [UInt8]) {
    for v in [verifier, openVerifier] {
        guard let p = try? v.principal(fromVerifiedPayload: input, now: now) else { continue }
        if p.method != .jwt || p.name.isEmpty || p.name.utf8.count > 256 || !printable(p.name) { fail("bad sub", input) }
        if let e = p.email, e.isEmpty || e.utf8.count > 256 || !printable(e) { fail("bad email", input) }
        if p.groups.count > 256 || p.groups.contains(where: { $0.utf8.count > 256 || !printable($0) }) { fail("bad groups", input) }
        guard let exp = p.expires else { fail("no expiry", input) }
        if exp < Int64.max - v.leewaySeconds && now >= exp + v.leewaySeconds { fail("expired principal", input) }
    }
}

func printable(_ s: String) -> Bool { !s.utf8.contains { $0 < 0x20 || $0 == 0x7F } }
