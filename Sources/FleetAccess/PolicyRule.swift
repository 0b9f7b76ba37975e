// One line of the access policy (AccessPolicy.swift): its parser and its match.

struct PolicyRuleError: Error {
    let message: String
    init(_ message: String) { self.message = message }
}

final class PolicyRule: Sendable {
    enum Who: Sendable {
        case anyone, authenticated, token, user, sub, email, group
    }

    let allow: Bool
    let who: Who
    /// The name glob of token:, user:, sub:, email: and group:.
    let name: PolicyGlob
    let devices: [PolicyGlob]
    /// Upper-case method tokens.
    let methods: [[UInt8]]?
    /// Canonical path prefixes (PathCanonical).
    let paths: [[UInt8]]?
    let from: [CIDR]?
    let ports: [Int]?
    let line: Int

    static let get: [UInt8] = Array("GET".utf8)
    static let head: [UInt8] = Array("HEAD".utf8)
    static let usage = "allow|deny WHO DEVICES [methods=GET,HEAD] [paths=/api/,/status] [from=CIDR,...] [ports=22,5900]"
    static let whoKinds = "token:NAME, user:NAME, sub:X, email:X, group:X, authenticated or anyone"

    init(_ fields: [ArraySlice<UInt8>], line: Int) throws(PolicyRuleError) {
        self.line = line
        switch text(fields[0]) {
        case "allow": allow = true
        case "deny": allow = false
        default: throw PolicyRuleError("expected 'allow' or 'deny' at the start of a rule, got '" + text(fields[0]) + "' (" + PolicyRule.usage + ")")
        }
        guard fields.count >= 3, !fields[1].contains(0x3D), !fields[2].contains(0x3D) else {
            throw PolicyRuleError("a rule needs WHO and DEVICES before its options: " + PolicyRule.usage)
        }
        (who, name) = try PolicyRule.parseWho(fields[1])
        devices = try PolicyRule.parseDevices(fields[2])
        var methods: [[UInt8]]? = nil, paths: [[UInt8]]? = nil, from: [CIDR]? = nil, ports: [Int]? = nil
        for field in fields[3...] {
            guard let eq = field.firstIndex(of: 0x3D) else {
                throw PolicyRuleError("expected an option (methods=, paths=, from= or ports=), got '" + text(field) + "'")
            }
            let key = text(field[..<eq])
            let items = try PolicyRule.list("'" + key + "='", field[(eq + 1)...])
            func once(_ present: Bool) throws(PolicyRuleError) {
                if present { throw PolicyRuleError("'" + key + "=' given twice in one rule") }
            }
            switch key {
            case "methods":
                try once(methods != nil)
                methods = try items.map { (m) throws(PolicyRuleError) in try PolicyRule.parseMethod(m) }
            case "paths":
                try once(paths != nil)
                paths = try items.map { (p) throws(PolicyRuleError) in try PolicyRule.parsePath(p) }
            case "from":
                try once(from != nil)
                from = try items.map { (c) throws(PolicyRuleError) in
                    guard let cidr = CIDR(text(c)) else {
                        throw PolicyRuleError("bad CIDR '" + text(c) + "' in from= (expected an address or address/prefix, e.g. 192.168.1.0/24 or fd00::/8)")
                    }
                    return cidr
                }
            case "ports":
                try once(ports != nil)
                ports = try items.map { (p) throws(PolicyRuleError) in
                    guard (1...5).contains(p.count), p.allSatisfy({ $0 >= 0x30 && $0 <= 0x39 }),
                          let n = Int(text(p)), (1...65535).contains(n) else {
                        throw PolicyRuleError("bad port '" + text(p) + "' in ports= (expected a number 1-65535)")
                    }
                    return n
                }
            default:
                throw PolicyRuleError("unknown option '" + key + "=' (expected methods=, paths=, from= or ports=)")
            }
        }
        if paths != nil && ports != nil {
            throw PolicyRuleError("paths= and ports= cannot be combined (a ports= rule is about TCP connections, which have no path)")
        }
        self.methods = methods
        self.paths = paths
        self.from = from
        self.ports = ports
    }

    /// Comma-separated items; `label` names the list in messages ("'methods='", "DEVICES").
    private static func list(_ label: String, _ value: ArraySlice<UInt8>) throws(PolicyRuleError) -> [ArraySlice<UInt8>] {
        guard !value.isEmpty else { throw PolicyRuleError(label + " needs at least one value") }
        let items = value.split(separator: 0x2C, omittingEmptySubsequences: false)
        guard !items.contains(where: { $0.isEmpty }) else { throw PolicyRuleError("empty item in the " + label + " list") }
        guard items.count <= AccessPolicy.maxListItems else {
            throw PolicyRuleError("more than " + String(AccessPolicy.maxListItems) + " items in " + label)
        }
        return items
    }

    private static func parseWho(_ f: ArraySlice<UInt8>) throws(PolicyRuleError) -> (Who, PolicyGlob) {
        let s = text(f)
        if s == "anyone" { return (.anyone, PolicyGlob([], foldCase: false)) }
        if s == "authenticated" { return (.authenticated, PolicyGlob([], foldCase: false)) }
        guard let colon = f.firstIndex(of: 0x3A) else {
            throw PolicyRuleError("unknown principal '" + s + "' (expected " + whoKinds + ")")
        }
        let kind = text(f[..<colon])
        let name = f[(colon + 1)...]
        guard !name.isEmpty else { throw PolicyRuleError("empty name after '" + kind + ":' (expected " + whoKinds + ")") }
        switch kind {
        case "token": return (.token, PolicyGlob(name, foldCase: false))
        case "user": return (.user, PolicyGlob(name, foldCase: false))
        case "sub": return (.sub, PolicyGlob(name, foldCase: false))
        case "email": return (.email, PolicyGlob(name, foldCase: true))
        case "group": return (.group, PolicyGlob(name, foldCase: false))
        default: throw PolicyRuleError("unknown principal '" + s + "' (expected " + whoKinds + ")")
        }
    }

    private static func parseDevices(_ f: ArraySlice<UInt8>) throws(PolicyRuleError) -> [PolicyGlob] {
        let items = try list("DEVICES", f)
        // The same syntax as allow_devices and token scopes.
        guard NamePattern(text(f)) != nil else {
            throw PolicyRuleError("bad DEVICES '" + text(f) + "' (expected comma-separated globs of device names, e.g. dev-*,cam1)")
        }
        return items.map { PolicyGlob($0, foldCase: true) }
    }

    private static func parseMethod(_ m: ArraySlice<UInt8>) throws(PolicyRuleError) -> [UInt8] {
        guard m.allSatisfy(isTokenChar) else {
            throw PolicyRuleError("bad method '" + text(m) + "' in methods= (expected method names such as GET,HEAD,POST)")
        }
        return m.map { $0 >= 0x61 && $0 <= 0x7A ? $0 - 0x20 : $0 }
    }

    private static func parsePath(_ p: ArraySlice<UInt8>) throws(PolicyRuleError) -> [UInt8] {
        guard p.first == 0x2F else {
            throw PolicyRuleError("path '" + text(p) + "' in paths= must start with '/'")
        }
        guard let c = Array(p).withUnsafeBufferPointer({ PathCanonical.canonicalBytes($0, stopAtQuery: false) }) else {
            throw PolicyRuleError("path '" + text(p) + "' in paths= is not canonical (no '.' or '..' segments, '//', '?', '#', '\\', "
                            + "%2F, %5C, %25, %00 or a '%' without two hex digits)")
        }
        return c
    }

    /// RFC 9110 tchar.
    static func isTokenChar(_ c: UInt8) -> Bool {
        switch c {
        case 0x30...0x39, 0x41...0x5A, 0x61...0x7A: return true
        case 0x21, 0x23, 0x24, 0x25, 0x26, 0x27, 0x2A, 0x2B, 0x2D, 0x2E, 0x5E, 0x5F, 0x60, 0x7C, 0x7E: return true
        default: return false
        }
    }

    // MARK: matching

    func matches(_ r: AccessRequest, _ context: inout PolicyRequestContext) -> Bool {
        if let ports {
            guard let port = r.port, ports.contains(port) else { return false }
        } else if allow && r.port != nil {
            return false
        }
        if let methods {
            guard methods.contains(where: { PolicyRule.equalUpper(r.method, $0) })
                    || (!allow && PolicyRule.equalUpper(r.method, PolicyRule.head) && methods.contains(PolicyRule.get))
            else { return false }  // a deny of GET also denies HEAD (the same answer without its body)
        }
        guard whoMatches(r) else { return false }
        guard devices.contains(where: { $0.matches(r.device) }) else { return false }
        if let from {
            let source = context.sourceAddress(r)
            if source.count == 0 {
                if allow { return false }  // not an address: fail closed
            } else if !from.contains(where: { source.isInside($0) }) {
                return false
            }
        }
        if let paths {
            if r.port != nil { return false }  // a TCP connection has no path (paths= is about HTTP)
            guard let path = context.canonicalPath(r) else { return !allow }  // non-canonical: fail closed
            return paths.contains { allow ? PolicyRule.allowMatch(path, $0) : PolicyRule.denyMatch(path, $0) }
        }
        return true
    }

    private func whoMatches(_ r: AccessRequest) -> Bool {
        switch who {
        case .anyone: return true
        case .authenticated: return r.principal != nil
        case .token: return r.principal?.method == .token && name.matches(r.principal!.name)
        case .user: return r.principal?.method == .certificate && name.matches(r.principal!.name)
        case .sub: return r.principal?.method == .jwt && name.matches(r.principal!.name)
        case .email:
            guard r.principal?.method == .jwt, let e = r.principal!.email else { return false }
            return name.matches(e)
        case .group:
            guard r.principal?.method == .jwt else { return false }
            return r.principal!.groups.contains { name.matches($0) }
        }
    }

    /// `method` equals the upper-case `token` ignoring ASCII case.
    static func equalUpper(_ method: String, _ token: [UInt8]) -> Bool {
        let u = method.utf8
        guard u.count == token.count else { return false }
        var i = 0
        for b in u {
            let up = b >= 0x61 && b <= 0x7A ? b - 0x20 : b
            if up != token[i] { return false }
            i += 1
        }
        return true
    }

    /// An allow's prefix: exact bytes, on a segment boundary.
    static func allowMatch(_ path: [UInt8], _ prefix: [UInt8]) -> Bool {
        guard path.count >= prefix.count, path.starts(with: prefix) else { return false }
        return prefix.last == 0x2F || path.count == prefix.count || path[prefix.count] == 0x2F
    }

    /// A deny's prefix, more widely (fail closed): ignoring ASCII case, and "/admin/" as
    /// "/admin": followed by the end, "/" or ";" (%3B, path parameters).
    static func denyMatch(_ path: [UInt8], _ prefix: [UInt8]) -> Bool {
        if prefix.count == 1 { return true }  // "/"
        let n = prefix.last == 0x2F ? prefix.count - 1 : prefix.count
        guard path.count >= n else { return false }
        for i in 0..<n where lower(path[i]) != lower(prefix[i]) { return false }
        if path.count == n || path[n] == 0x2F { return true }
        return path.count >= n + 3 && path[n] == 0x25 && path[n + 1] == 0x33 && path[n + 2] == 0x42  // %3B
    }

    static func lower(_ b: UInt8) -> UInt8 { b >= 0x41 && b <= 0x5A ? b | 0x20 : b }
}

/// A glob (`*` any run, `?` one character) over UTF-8 bytes, matching whole
/// characters; optionally ignoring ASCII case.
struct PolicyGlob: Sendable {
    let pattern: [UInt8]
    let foldCase: Bool

    init(_ bytes: ArraySlice<UInt8>, foldCase: Bool) {
        self.foldCase = foldCase
        pattern = foldCase ? bytes.map(PolicyRule.lower) : Array(bytes)
    }

    func matches(_ s: String) -> Bool {
        if let r = s.utf8.withContiguousStorageIfAvailable({ match($0) }) { return r }
        return Array(s.utf8).withUnsafeBufferPointer { match($0) }
    }

    func match(_ s: UnsafeBufferPointer<UInt8>) -> Bool {
        pattern.withUnsafeBufferPointer { p in
            var pi = 0, si = 0, star = -1, mark = 0
            while si < s.count {
                if pi < p.count && p[pi] == 0x2A {
                    star = pi; mark = si; pi += 1
                } else if pi < p.count && p[pi] == 0x3F {
                    pi += 1; si = PolicyGlob.next(s, si)
                } else if pi < p.count && p[pi] == (foldCase ? PolicyRule.lower(s[si]) : s[si]) {
                    pi += 1; si += 1
                } else if star >= 0 {
                    pi = star + 1; mark = PolicyGlob.next(s, mark); si = mark
                } else {
                    return false
                }
            }
            while pi < p.count && p[pi] == 0x2A { pi += 1 }
            return pi == p.count
        }
    }

    /// The index after the UTF-8 character at `i`.
    private static func next(_ s: UnsafeBufferPointer<UInt8>, _ i: Int) -> Int {
        var j = i + 1
        while j < s.count && s[j] & 0xC0 == 0x80 { j += 1 }
        return j
    }
}

private func text(_ bytes: ArraySlice<UInt8>) -> String {
    String(decoding: bytes, as: UTF8.self)
}
