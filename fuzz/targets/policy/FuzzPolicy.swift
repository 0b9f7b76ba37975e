// fuzz-policy: the access policy (FleetAccess/AccessPolicy.swift, PolicyRule.swift)
// and the request path canonicaliser (PathCanonical.swift), on arbitrary bytes.
//
// The input is read two ways.
// 1. As a policy file. Invariants:
//   * no crash, no hang; an error names `fuzz.policy:LINE:` with LINE within the
//     file (or `fuzz.policy:` for the size limit); parsing the bytes and the
//     String gives the same answer for valid UTF-8;
//   * when it parses, for a fixed set of requests (anonymous, token, certificate,
//     JWT; HTTP and TCP ports; canonical and non-canonical paths; IPv4, IPv6,
//     mapped and bad sources): `decide` is deterministic; an allow names a line
//     that starts with `allow`, a deny with a line names one starting with `deny`;
//     the decision equals the combination of each rule decided alone (first
//     matching deny, else first matching allow, else deny without line);
//     `deny anyone *` first, or last, denies everything; adding `allow anyone *`
//     never takes an allow away and allows every HTTP request no deny matched;
//     a request decides the same with its path and with its canonical path.
// 2. Each of the first 8 lines (and "/" + line) as a request path. Invariants:
//   * a canonical path is a fixed point (canonical(canonical(p)) == canonical(p)),
//     starts with "/", has only unreserved characters, "/" and upper-case %XX
//     (never %2F %5C %25 %00), no empty segment, no "." or ".." segment, nothing
//     after a "?"; it does not depend on the query;
//   * a line "CIDR ADDRESS" with a valid CIDR: a `from=CIDR` rule matches exactly
//     when CIDR.contains(ADDRESS).
//   * a line "GLOB NAME": `sub:GLOB` matches a JWT subject NAME, and `email:GLOB` an
//     email NAME, exactly as a reference matcher over Unicode scalars (`*` any run,
//     `?` one scalar; email ignoring ASCII case).
import FleetAccess

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzPolicy(_ data: UnsafePointer<UInt8>?, _ size: Int) -> CInt {
    let bytes = size == 0 ? [] : Array(UnsafeBufferPointer(start: data!, count: size))
    checkPolicy(bytes)
    for line in bytes.split(separator: 0x0A, omittingEmptySubsequences: false).prefix(8) {
        checkPath(Array(line))
        checkPath([0x2F] + line)
        checkFrom(Array(line))
        checkGlob(Array(line))
    }
    return 0
}

func fail(_ what: String, _ input: [UInt8]) -> Never {
    fatalError("fuzz-policy invariant broken: " + what + " for " + String(reflecting: String(decoding: input, as: UTF8.self)))
}

let file = "fuzz.policy"

let principals: [Principal?] = [
    nil,
    Principal(method: .token, name: "ci"),
    Principal(method: .certificate, name: "alice"),
    Principal(method: .jwt, name: "u1", email: "Bob@Example.com", groups: ["ops", "a*b"]),
]

let requests: [AccessRequest] = {
    let shapes: [(String, String, String, String, Int?)] = [
        ("dev1", "GET", "/", "10.1.2.3", nil),
        ("dev1", "get", "/api/x?q=1", "::ffff:10.1.2.3", nil),
        ("cam-7", "POST", "/admin/%2e%2e/x", "fd00::1", nil),
        ("dev1", "DELETE", "/Admin;x/%61", "192.168.1.1", nil),
        ("dev-2", "OPTIONS", "*", "2001:db8::2", nil),
        ("dev1", "CONNECT", "", "10.0.0.1", 22),
        ("x", "GET", "//api", "not-an-address", nil),
        ("cam-7", "CONNECT", "", "127.0.0.1", 5900),
    ]
    var all: [AccessRequest] = []
    for p in principals {
        for s in shapes {
            all.append(AccessRequest(principal: p, device: s.0, method: s.1, path: s.2, source: s.3, port: s.4))
        }
    }
    return all
}()

func parse(_ bytes: [UInt8]) -> Result<AccessPolicy, PolicyError> {
    do throws(PolicyError) {
        return .success(try AccessPolicy.parse(bytes: bytes, file: file))
    } catch {
        return .failure(error)
    }
}

func lineText(_ lines: [ArraySlice<UInt8>], _ n: Int) -> [UInt8] {
    Array(lines[n - 1].drop(while: { $0 == 0x20 || $0 == 0x09 }))
}

func checkPolicy(_ bytes: [UInt8]) {
    let lines = bytes.split(separator: 0x0A, omittingEmptySubsequences: false)
    let result = parse(bytes)
    if let s = String(validating: bytes, as: UTF8.self) {
        let viaString: Result<AccessPolicy, PolicyError>
        do throws(PolicyError) { viaString = .success(try AccessPolicy.parse(s, file: file)) } catch { viaString = .failure(error) }
        switch (result, viaString) {
        case (.success(let a), .success(let b)) where a.ruleCount == b.ruleCount: break
        case (.failure(let a), .failure(let b)) where a.description == b.description: break
        default: fail("bytes and String parse differently", bytes)
        }
    }
    let policy: AccessPolicy
    switch result {
    case .failure(let e):
        let d = e.description
        guard d.hasPrefix(file + ":") else { fail("error without the file name: " + d, bytes) }
        if d.hasPrefix(file + ": larger than") { return }
        let rest = d.dropFirst(file.count + 1)
        guard let colon = rest.firstIndex(of: ":"), let n = Int(rest[..<colon]), n >= 1, n <= lines.count else {
            fail("error without a line in the file: " + d, bytes)
        }
        return
    case .success(let p):
        policy = p
    }
    guard policy.ruleCount <= lines.count else { fail("more rules than lines", bytes) }

    // Each rule alone, at its own line (blank lines before it).
    var alone: [(line: Int, allow: Bool, policy: AccessPolicy)] = []
    let checkAlone = policy.ruleCount <= 12 && lines.count <= 64
    if checkAlone {
        for (i, l) in lines.enumerated() {
            let single = [UInt8](repeating: 0x0A, count: i) + l
            guard case .success(let p) = parse(single) else { fail("a line of a good policy fails alone", bytes) }
            if p.ruleCount == 1 { alone.append((i + 1, lineText(lines, i + 1).starts(with: Array("allow".utf8)), p)) }
        }
        guard alone.count == policy.ruleCount else { fail("rules alone do not add up", bytes) }
    }

    let denyFirst = parse(Array("deny anyone *\n".utf8) + bytes)
    let denyLast = parse(bytes + Array("\ndeny anyone *".utf8))
    let allowLast = parse(bytes + Array("\nallow anyone *".utf8))
    let extraLine = lines.count + 1

    for r in requests {
        let d = policy.decide(r)
        guard policy.decide(r) == d else { fail("decide is not deterministic", bytes) }
        if d.allowed {
            guard let n = d.line, n <= lines.count, lineText(lines, n).starts(with: Array("allow".utf8)) else {
                fail("an allow without an allow line", bytes)
            }
        } else if let n = d.line {
            guard n <= lines.count, lineText(lines, n).starts(with: Array("deny".utf8)) else { fail("a deny names no deny line", bytes) }
        }
        if checkAlone {
            var firstAllow: Int? = nil, firstDeny: Int? = nil
            for a in alone {
                let e = a.policy.decide(r)
                if a.allow {
                    if e.allowed && firstAllow == nil { firstAllow = a.line }
                } else if e.line != nil && firstDeny == nil {
                    firstDeny = a.line
                }
            }
            let expect = firstDeny.map { PolicyDecision(allowed: false, line: $0) }
                ?? firstAllow.map { PolicyDecision(allowed: true, line: $0) } ?? PolicyDecision(allowed: false, line: nil)
            guard d == expect else { fail("decision is not the combination of the rules alone", bytes) }
        }
        if case .success(let p) = denyFirst, p.decide(r) != PolicyDecision(allowed: false, line: 1) {
            fail("deny anyone * first did not decide", bytes)
        }
        if case .success(let p) = denyLast, p.decide(r).allowed { fail("deny anyone * last allows", bytes) }
        if case .success(let p) = allowLast {
            let e = p.decide(r)
            if d.allowed && e != d { fail("allow anyone * took an allow away", bytes) }
            if !d.allowed && d.line != nil && e != d { fail("allow anyone * beat a deny", bytes) }
            if r.port == nil && d.line == nil && e != PolicyDecision(allowed: true, line: extraLine) {
                fail("allow anyone * did not allow", bytes)
            }
        }
        if let c = PathCanonical.canonical(r.path) {
            var canon = r
            canon.path = c
            guard policy.decide(canon) == d else { fail("path and canonical path decide differently", bytes) }
        }
    }
}

func isUnreserved(_ c: UInt8) -> Bool {
    (c >= 0x41 && c <= 0x5A) || (c >= 0x61 && c <= 0x7A) || (c >= 0x30 && c <= 0x39) || c == 0x2D || c == 0x2E || c == 0x5F || c == 0x7E
}

func isUpperHex(_ c: UInt8) -> Bool { (c >= 0x30 && c <= 0x39) || (c >= 0x41 && c <= 0x46) }

func checkPath(_ input: [UInt8]) {
    let c = input.withUnsafeBufferPointer { PathCanonical.canonicalBytes($0, stopAtQuery: true) }
    let pathPart = Array(input.prefix(while: { $0 != 0x3F }))
    let again = pathPart.withUnsafeBufferPointer { PathCanonical.canonicalBytes($0, stopAtQuery: false) }
    guard c == again else { fail("the canonical path depends on the query", input) }
    if let s = String(validating: input, as: UTF8.self), PathCanonical.canonical(s).map({ Array($0.utf8) }) != c {
        fail("String and bytes canonicalise differently", input)
    }
    guard let c else { return }
    guard c.withUnsafeBufferPointer({ PathCanonical.canonicalBytes($0, stopAtQuery: false) }) == c else {
        fail("canonical form is not a fixed point", input)
    }
    guard c.first == 0x2F else { fail("canonical path without a leading /", input) }
    var i = 0
    while i < c.count {
        let b = c[i]
        if b == 0x25 {
            guard i + 2 < c.count, isUpperHex(c[i + 1]), isUpperHex(c[i + 2]) else { fail("bad %XX in canonical path", input) }
            let v = String(decoding: c[(i + 1)...(i + 2)], as: UTF8.self)
            guard !["2F", "5C", "25", "00", "C0", "C1"].contains(v) else { fail("%" + v + " in canonical path", input) }
            guard let n = UInt8(v, radix: 16), !isUnreserved(n) else { fail("encoded unreserved in canonical path", input) }
            i += 3
        } else {
            guard b == 0x2F || isUnreserved(b) else { fail("raw reserved byte in canonical path", input) }
            i += 1
        }
    }
    let segments = c.split(separator: 0x2F, omittingEmptySubsequences: false).dropFirst()
    for (k, seg) in segments.enumerated() {
        if seg.isEmpty && k != segments.count - 1 { fail("empty segment in canonical path", input) }
        if seg.elementsEqual([0x2E]) || seg.elementsEqual([0x2E, 0x2E]) { fail("dot segment in canonical path", input) }
    }
}

func checkFrom(_ line: [UInt8]) {
    guard let sp = line.firstIndex(of: 0x20) else { return }
    let cidrText = String(decoding: line[..<sp], as: UTF8.self)
    let address = String(decoding: line[(sp + 1)...], as: UTF8.self)
    guard let cidr = CIDR(cidrText) else { return }
    guard case .success(let p) = parse(Array(("allow anyone * from=" + cidrText).utf8)) else {
        fail("a CIDR that parses is refused in from=", line)
    }
    let r = AccessRequest(principal: nil, device: "d", method: "GET", path: "/", source: address)
    guard p.decide(r).allowed == cidr.contains(address) else { fail("from= disagrees with CIDR.contains", line) }
}

/// Reference glob over Unicode scalars: a dynamic programme, no backtracking tricks.
func refGlob(_ p: [Unicode.Scalar], _ s: [Unicode.Scalar]) -> Bool {
    var row = [Bool](repeating: false, count: s.count + 1)  // row[j]: p[..<i] matches s[..<j]
    row[0] = true
    for c in p {
        var next = [Bool](repeating: false, count: s.count + 1)
        if c == "*" {
            var any = false
            for j in 0...s.count { any = any || row[j]; next[j] = any }
        } else {
            for j in 0..<s.count where row[j] && (c == "?" || c == s[j]) { next[j + 1] = true }
        }
        row = next
    }
    return row[s.count]
}

func checkGlob(_ line: [UInt8]) {
    guard line.count <= 256, let sp = line.firstIndex(of: 0x20) else { return }
    guard !line[..<sp].contains(0x09) else { return }  // a tab would end the field
    let glob = String(decoding: line[..<sp], as: UTF8.self)
    let name = String(decoding: line[(sp + 1)...], as: UTF8.self)
    let lower = { (t: String) in String(decoding: t.utf8.map { $0 >= 0x41 && $0 <= 0x5A ? $0 | 0x20 : $0 }, as: UTF8.self) }
    if case .success(let p) = parse(Array(("allow sub:" + glob + " *").utf8)), p.ruleCount == 1 {
        let r = AccessRequest(principal: Principal(method: .jwt, name: name), device: "d", method: "GET", path: "/", source: "::1")
        guard p.decide(r).allowed == refGlob(Array(glob.unicodeScalars), Array(name.unicodeScalars)) else {
            fail("sub: glob disagrees with the reference", line)
        }
    }
    if case .success(let p) = parse(Array(("allow email:" + glob + " *").utf8)), p.ruleCount == 1 {
        let r = AccessRequest(principal: Principal(method: .jwt, name: "x", email: name), device: "d", method: "GET", path: "/", source: "::1")
        guard p.decide(r).allowed == refGlob(Array(lower(glob).unicodeScalars), Array(lower(name).unicodeScalars)) else {
            fail("email: glob disagrees with the reference", line)
        }
    }
}
