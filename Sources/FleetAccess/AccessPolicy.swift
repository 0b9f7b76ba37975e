// The access policy (`access_policy = FILE`): which principal may reach which
// device, with which methods, paths, source addresses and TCP ports.
//
//   allow|deny WHO DEVICES [methods=GET,HEAD] [paths=/api/,/status] [from=CIDR,...] [ports=22,5900]
//
// Design:
// - A matching deny beats any allow, wherever it is in the file; nothing
//   matching is a deny (line nil). The decision names the rule's line for the log.
// - `ports=` rules are about CONNECT to a TCP port (request.port != nil): an allow
//   without ports= never matches such a request; a deny without ports= matches both.
// - `paths=` are prefixes on a segment boundary of the CANONICAL path
//   (PathCanonical.swift). A path the gateway cannot bring to one spelling
//   (`/api/../admin`, `/api/%2e%2e/x`, `/api%2Fx`, `//api`, `*`, ...) fails closed
//   both ways: an allow with paths= never matches it, a deny with paths= always does.
//   Denies also match more widely than allows (fail closed): ignoring ASCII case
//   (`/ADMIN` for a deny of `/admin`, for servers that fold case), with `;`
//   (path parameters) as a segment boundary, and `/admin` for a deny of `/admin/`.
//   Allows compare exactly (case-sensitive). Rules without paths= ignore the path;
//   rules with paths= are about HTTP and never match a TCP port request.
// - `from=`: a source that is not an address literal is outside every allow's
//   blocks and inside every deny's (fail closed, as for paths).
// - Methods compare ignoring ASCII case, and a deny of GET also denies HEAD;
//   `email:` ignores ASCII case; other names and device globs compare as written
//   (device names are lower-case).
// - The policy alone: a token's own scope (Principal.scope) and expiry are the
//   caller's (AccessControl) to apply.
// - Cost: a request walks the rules once, cheapest conditions first; the canonical
//   path (one allocation) and the source address (on the stack) are computed at most
//   once, and only when a rule reaches its paths= or from= condition.
// - Input bounds: file <= 1 MiB, line <= 4096 bytes, <= 10,000 rules, <= 64 items a
//   list; only printable ASCII and tabs outside comments. Every error is FILE:LINE.
import CLibc

public struct PolicyError: Error, CustomStringConvertible {
    /// "FILE:LINE: message" (or "FILE: message" for the file as a whole).
    public let description: String
    public init(_ description: String) { self.description = description }
}

public struct PolicyDecision: Equatable, Sendable {
    public let allowed: Bool
    /// 1-based line of the rule that decided; nil when nothing matched (a deny).
    public let line: Int?

    public init(allowed: Bool, line: Int?) {
        self.allowed = allowed
        self.line = line
    }
}

public struct AccessPolicy: Sendable {
    public static let maxFileBytes = 1 << 20
    public static let maxLineBytes = 4096
    public static let maxRules = 10_000
    public static let maxListItems = 64

    let rules: [PolicyRule]
    /// The file name the policy was read from (for messages).
    public let file: String

    public var ruleCount: Int { rules.count }

    /// Reads and parses a policy file (at most 1 MiB).
    public static func load(path: String) throws(PolicyError) -> AccessPolicy {
        guard let f = fopen(path, "r") else {
            throw PolicyError(path + ": cannot open: " + String(cString: strerror(rh_errno())))
        }
        defer { fclose(f) }
        var st = stat()
        guard fstat(fileno(f), &st) == 0 else {
            throw PolicyError(path + ": cannot read: " + String(cString: strerror(rh_errno())))
        }
        guard st.st_mode & UInt32(S_IFMT) == UInt32(S_IFREG) else { throw PolicyError(path + ": not a regular file") }
        var bytes: [UInt8] = []
        var buf = [UInt8](repeating: 0, count: 65536)
        while true {
            let n = buf.withUnsafeMutableBytes { fread($0.baseAddress, 1, $0.count, f) }
            if n == 0 {
                if ferror(f) != 0 { throw PolicyError(path + ": cannot read: " + String(cString: strerror(rh_errno()))) }
                break
            }
            bytes += buf[0..<n]
            if bytes.count > maxFileBytes { throw tooLarge(path) }
        }
        return try parse(bytes: bytes, file: path)
    }

    public static func parse(_ text: String, file: String) throws(PolicyError) -> AccessPolicy {
        guard text.utf8.count <= maxFileBytes else { throw tooLarge(file) }
        return try parse(bytes: Array(text.utf8), file: file)
    }

    private static func tooLarge(_ file: String) -> PolicyError {
        PolicyError(file + ": larger than 1 MiB (" + String(maxFileBytes) + " bytes)")
    }

    /// Parses the bytes of a policy file (UTF-8; non-ASCII only in comments).
    public static func parse(bytes: [UInt8], file: String) throws(PolicyError) -> AccessPolicy {
        guard bytes.count <= maxFileBytes else { throw tooLarge(file) }
        var rules: [PolicyRule] = []
        var lineNo = 0
        var start = 0
        while start < bytes.count {
            var end = start
            while end < bytes.count && bytes[end] != 0x0A { end += 1 }
            lineNo += 1
            defer { start = end + 1 }
            let at = file + ":" + String(lineNo) + ": "
            guard end - start <= maxLineBytes else {
                throw PolicyError(at + "line longer than " + String(maxLineBytes) + " bytes")
            }
            var stop = end
            if stop > start && bytes[stop - 1] == 0x0D { stop -= 1 }
            // Content up to a comment ('#' at the start or after a blank); checked byte by byte.
            var fields: [ArraySlice<UInt8>] = []
            var fieldStart = -1
            var i = start
            while i < stop {
                let b = bytes[i]
                let blank = b == 0x20 || b == 0x09
                if b == 0x23 && (i == start || bytes[i - 1] == 0x20 || bytes[i - 1] == 0x09) { break }
                guard blank || (b > 0x20 && b < 0x7F) else {
                    let what = b >= 0x80 ? "non-ASCII byte" : "control character"
                    throw PolicyError(at + what + " " + hex(b) + " at column " + String(i - start + 1)
                                      + " (only printable ASCII outside comments)")
                }
                if blank {
                    if fieldStart >= 0 { fields.append(bytes[fieldStart..<i]); fieldStart = -1 }
                } else if fieldStart < 0 {
                    fieldStart = i
                }
                i += 1
            }
            if fieldStart >= 0 { fields.append(bytes[fieldStart..<i]) }
            if fields.isEmpty { continue }
            guard rules.count < maxRules else {
                throw PolicyError(at + "more than " + String(maxRules) + " rules")
            }
            do throws(PolicyRuleError) {
                rules.append(try PolicyRule(fields, line: lineNo))
            } catch {
                throw PolicyError(at + error.message)
            }
        }
        return AccessPolicy(rules: rules, file: file)
    }

    /// Whether the policy lets `request` through, and the line of the rule that decided.
    public func decide(_ request: AccessRequest) -> PolicyDecision {
        var context = PolicyRequestContext()
        var allowLine: Int? = nil
        return rules.withUnsafeBufferPointer { rules in
            for i in rules.indices {
                if rules[i].allow && allowLine != nil { continue }
                if rules[i].matches(request, &context) {
                    if !rules[i].allow { return PolicyDecision(allowed: false, line: rules[i].line) }
                    allowLine = rules[i].line
                }
            }
            if let line = allowLine { return PolicyDecision(allowed: true, line: line) }
            return PolicyDecision(allowed: false, line: nil)
        }
    }

    static func hex(_ b: UInt8) -> String {
        let d = Array("0123456789ABCDEF")
        return "0x" + String(d[Int(b >> 4)]) + String(d[Int(b & 15)])
    }
}

/// What one request computes at most once, when a rule first needs it.
struct PolicyRequestContext {
    private var pathDone = false
    private var path: [UInt8]? = nil
    private var sourceDone = false
    private var source = PolicySourceAddress()

    /// The canonical path, nil when non-canonical.
    mutating func canonicalPath(_ request: AccessRequest) -> [UInt8]? {
        if !pathDone {
            var t = request.path
            path = t.withUTF8 { PathCanonical.canonicalBytes($0, stopAtQuery: true) }
            pathDone = true
        }
        return path
    }

    mutating func sourceAddress(_ request: AccessRequest) -> PolicySourceAddress {
        if !sourceDone {
            source = PolicySourceAddress(request.source)
            sourceDone = true
        }
        return source
    }
}

/// A client address parsed on the stack, with CIDR.contains's rules (AddressLiteral.parse,
/// IPv4-mapped IPv6 addresses compare as IPv4 against an IPv4 block).
struct PolicySourceAddress {
    private var storage = in6_addr()
    /// 0 (not an address), 4 or 16.
    private(set) var count = 0

    init() {}

    init(_ text: String) {
        let u = text.utf8
        guard !u.isEmpty, u.count < 64, u.allSatisfy({ $0 > 0x20 && $0 < 0x7F }) else { return }
        if u.contains(0x3A) {
            if inet_pton(AF_INET6, text, &storage) == 1 { count = 16 }
        } else {
            var v4 = in_addr()
            if inet_pton(AF_INET, text, &v4) == 1 {
                withUnsafeMutableBytes(of: &storage) { dst in withUnsafeBytes(of: &v4) { dst.copyMemory(from: $0) } }
                count = 4
            }
        }
    }

    func isInside(_ block: CIDR) -> Bool {
        guard count > 0 else { return false }
        return withUnsafeBytes(of: storage) { raw -> Bool in
            var a = UnsafeRawBufferPointer(rebasing: raw[0..<count])
            if block.network.count == 4 && count == 16 && a[0..<10].allSatisfy({ $0 == 0 }) && a[10] == 0xFF && a[11] == 0xFF {
                a = UnsafeRawBufferPointer(rebasing: raw[12..<16])
            }
            guard a.count == block.network.count else { return false }
            var left = block.prefix
            var i = 0
            while left > 0 {
                let mask: UInt8 = left >= 8 ? 0xFF : ~(0xFF >> UInt8(left))
                if a[i] & mask != block.network[i] & mask { return false }
                left -= 8
                i += 1
            }
            return true
        }
    }
}
