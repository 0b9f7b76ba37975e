// fuzz-tokens: the tokens file (FleetAccess/TokenStore.swift) and the credentials
// of an Authorization field (FleetAccess/Credentials.swift, Base64).
//
// The first input byte picks what the rest is: even, a tokens file; odd, an
// Authorization field value. Invariants:
//   * no crash; bounded: a file over 1 MiB is refused whole;
//   * a tokens file's error names "fuzz.tokens:N: " with N a line of the input (or
//     the size), and carries no control character of the input;
//   * an accepted file: valid names, 32-byte hashes, unique names and hashes;
//     `formatted()` parses back to the same entries and the same text; `listing`
//     shows no hash; a secret that is not well-formed is .unknown; removing every
//     token leaves none, and adding one makes it authenticate;
//   * Authorization: nil beyond 8 KiB; the scheme is case-insensitive (the same
//     answer with it upper-cased); Basic's user has no colon and no control
//     character, and "Basic " + base64(user:password) parses back to the same;
//     Bearer's value is token68; base64 decode-encode-decode is stable.
import Bytes
import FleetAccess
import TLS

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzTokens(_ data: UnsafePointer<UInt8>?, _ size: Int) -> CInt {
    guard size > 0, let data else { return 0 }
    let bytes = Array(UnsafeBufferPointer(start: data + 1, count: size - 1))
    if data[0] & 1 == 0 { checkTokensFile(bytes) } else { checkAuthorization(bytes) }
    return 0
}

func fail(_ what: String) -> Never {
    fatalError("fuzz-tokens invariant broken: " + what)
}

func hex(_ b: [UInt8]) -> String {
    b.map { ($0 < 16 ? "0" : "") + String($0, radix: 16) }.joined()
}

func checkTokensFile(_ bytes: [UInt8]) {
    let text = String(decoding: bytes, as: UTF8.self)
    let store: TokenStore
    do throws(TokenError) {
        store = try TokenStore.parse(text, file: "fuzz.tokens")
    } catch {
        let m = error.description
        if m == "fuzz.tokens: larger than 1 MiB" {
            guard text.utf8.count > TokenStore.maxFileBytes else { fail("size error for a small file") }
            return
        }
        guard m.hasPrefix("fuzz.tokens:") else { fail("error without file:line: " + m) }
        let digits = m.dropFirst("fuzz.tokens:".count).prefix { $0.isASCII && $0.isNumber }
        let lines = text.utf8.split(separator: 0x0A, omittingEmptySubsequences: false).count
        guard let n = Int(digits), n >= 1, n <= lines,
              m.dropFirst("fuzz.tokens:".count + digits.count).hasPrefix(": ") else { fail("bad line number: " + m) }
        guard !m.unicodeScalars.contains(where: { $0.value < 0x20 || $0.value == 0x7F }) else { fail("control character in: " + m) }
        return
    }
    var names = Set<String>(), hashes = Set<[UInt8]>()
    for e in store.entries {
        guard TokenStore.isValidName(e.name), e.hash.count == 32 else { fail("bad entry " + e.name) }
        guard names.insert(e.name).inserted, hashes.insert(e.hash).inserted else { fail("duplicate " + e.name) }
    }
    let out = store.formatted()
    let again: TokenStore
    do throws(TokenError) { again = try TokenStore.parse(out, file: "again") } catch { fail("formatted text refused: " + error.description) }
    guard again.entries == store.entries, again.formatted() == out else { fail("formatted text differs when read back") }
    let list = store.listing(now: 1_800_000_000)
    for e in store.entries where list.contains(hex(e.hash)) { fail("listing shows a hash") }
    // The input's first line as a secret: unknown unless well-formed (and then only
    // a token whose hash it has).
    let candidate = String(Substring(text.utf8.prefix { $0 != 0x0A }))
    let verdict = store.authenticate(secret: candidate, user: nil, now: 0)
    if !TokenStore.isWellFormedSecret(candidate), verdict != .unknown { fail("malformed secret accepted") }
    if verdict != .unknown, !hashes.contains(sha256(Array(candidate.utf8))) { fail("secret accepted without its hash") }
    var copy = store
    for e in store.entries { guard copy.remove(name: e.name) else { fail("cannot remove " + e.name) } }
    guard copy.count == 0, copy.entries.isEmpty else { fail("tokens left after removing all") }
    guard store.entries.count < TokenStore.maxTokens else { return }
    let secret = TokenStore.newSecret()
    var grown = store
    do throws(TokenError) {
        try grown.add(name: "fuzz-added", devices: "*", secret: secret, created: 1, expires: nil)
    } catch {
        if store.entry(named: "fuzz-added") == nil { fail("add refused: " + error.description) }
        return
    }
    guard case .valid(let p) = grown.authenticate(secret: secret, user: "fuzz-added", now: 2), p.name == "fuzz-added" else {
        fail("added token does not authenticate")
    }
}

func checkAuthorization(_ bytes: [UInt8]) {
    let value = String(decoding: bytes, as: UTF8.self)
    let c = Credentials.parse(authorization: value)
    if value.utf8.count > Credentials.maxLength, c != nil { fail("over 8 KiB accepted") }
    // Scheme case: upper-casing the ASCII letters before the first blank changes nothing.
    let scheme = value.prefix { $0 != " " && $0 != "\t" }
    let upper = String(decoding: scheme.utf8.map { $0 >= 0x61 && $0 <= 0x7A ? $0 - 0x20 : $0 }, as: UTF8.self) + value.dropFirst(scheme.count)
    if Credentials.parse(authorization: upper) != c { fail("scheme case changes the answer") }
    switch c {
    case .basic(let user, let password)?:
        if user.contains(":") { fail("user with a colon") }
        if (user + password).unicodeScalars.contains(where: { $0.value < 0x20 || $0.value == 0x7F }) { fail("control character") }
        let again = Credentials.parse(authorization: "Basic " + Base64.encode(Array((user + ":" + password).utf8), urlSafe: false))
        if (user + password).utf8.count < 6000, again != c { fail("Basic does not round-trip") }
    case .bearer(let token)?:
        if token.isEmpty || token.utf8.contains(where: { $0 <= 0x20 || $0 >= 0x7F || $0 == UInt8(ascii: ",") }) { fail("bad bearer token") }
    case nil:
        break
    }
    for urlSafe in [false, true] {
        if let d = Base64.decode(bytes, urlSafe: urlSafe) {
            let e = Base64.encode(d, urlSafe: urlSafe)
            guard Base64.decode(e.utf8, urlSafe: urlSafe) == d else { fail("base64 not stable") }
        }
    }
}
