// The tokens file (`tokens = FILE`): bearer secrets the gateway accepts, kept as
// their SHA-256 only. `fleet-gateway token create|list|revoke` edits it.
//
//   # comment
//   NAME SHA256HEX devices=GLOBS created=UNIX expires=UNIX|never
//
// NAME is [A-Za-z0-9._-]{1,64}, unique; SHA256HEX is the SHA-256 of the secret's
// UTF-8 ("rht_" + 43 base64url characters of 32 random bytes), 64 hex digits;
// GLOBS the devices the token may reach at most (NamePattern). Fields after the
// hash are key=value in any order, each once.
import Bytes
import FleetPKI
import TLS

public struct TokenError: Error, CustomStringConvertible, Equatable {
    public let description: String
    public init(_ description: String) { self.description = description }
}

public struct TokenStore: Sendable {
    public struct Entry: Equatable, Sendable {
        public let name: String
        /// SHA-256 of the secret.
        public let hash: [UInt8]
        public let devices: NamePattern
        /// `devices=` as written (for `token list`).
        public let devicesText: String
        public let created: Int64
        /// Unix seconds from which the token no longer works; nil: never.
        public let expires: Int64?
    }

    public enum Verdict: Equatable {
        case valid(Principal)
        case unknown
        case expired(name: String)
        /// Basic auth whose user name is not the name of the token its password is.
        case wrongUser
    }

    public static let maxFileBytes = 1 << 20
    public static let maxTokens = 100_000
    public static let secretPrefix = "rht_"
    /// "rht_" + base64url of 32 bytes without padding.
    public static let secretLength = 4 + 43

    /// The file's lines: comments and blank lines kept as they are (so that the CLI
    /// rewrites a file without losing them), token lines as an index into `entries`.
    private enum Line: Sendable { case text(String), token(Int) }
    private var lines: [Line] = []
    public private(set) var entries: [Entry] = []
    private var byHash: [[UInt8]: Int] = [:]
    private var byName: [String: Int] = [:]

    public init() {}

    public var count: Int { entries.count }

    public func entry(named name: String) -> Entry? { byName[name].map { entries[$0] } }

    // MARK: - Parsing

    public static func parse(_ text: String, file: String) throws(TokenError) -> TokenStore {
        guard text.utf8.count <= maxFileBytes else { throw TokenError(file + ": larger than 1 MiB") }
        var store = TokenStore()
        try forEachRecord(text, file: file) { (record) throws(TokenError) in
            guard case .fields(let fields, let at) = record else {
                // Kept as it was (a CR too), so that writing it back changes nothing.
                if case .text(let line) = record { store.lines.append(.text(line)) }
                return
            }
            guard store.entries.count < maxTokens else { throw TokenError(at + "more than \(maxTokens) tokens") }
            let entry = try parseEntry(fields, at: at)
            guard store.byName[entry.name] == nil else {
                throw TokenError(at + "token \"" + entry.name + "\" is defined twice (first on line \(store.lineNumber(of: entry.name)))")
            }
            guard store.byHash[entry.hash] == nil else {
                throw TokenError(at + "token \"" + entry.name + "\" has the same hash as token \""
                                 + store.entries[store.byHash[entry.hash]!].name + "\"")
            }
            store.append(entry)
        }
        return store
    }

    /// One line of a token file: text kept as it was (blank, comment), or the
    /// blank-separated fields of a record and where it is ("FILE:LINE: ").
    enum Record {
        case text(String)
        case fields([Substring], at: String)
    }

    /// Walks a token file's lines as bytes, not Characters: "\r\n" is one Character,
    /// and a combining mark after a blank would make one of the blank too. A final
    /// newline leaves no empty last line. Shared by the tokens and the enrollment
    /// tokens files.
    static func forEachRecord<E: Error>(_ text: String, file: String, _ body: (Record) throws(E) -> Void) throws(E) {
        let lines = text.utf8.split(separator: 0x0A, omittingEmptySubsequences: false)
        var lineNo = 0
        for raw in lines {
            lineNo += 1
            if lineNo == lines.count && raw.isEmpty { break }
            var line = raw
            if line.last == 0x0D { line = line.dropLast() }
            let fields = line.split(whereSeparator: { $0 == 0x20 || $0 == 0x09 }).map { Substring($0) }
            if fields.isEmpty || fields[0].hasPrefix("#") {
                try body(.text(String(Substring(raw))))
            } else {
                try body(.fields(fields, at: file + ":" + String(lineNo) + ": "))
            }
        }
    }

    private func lineNumber(of name: String) -> Int {
        guard let i = byName[name] else { return 0 }
        var n = 0
        for l in lines {
            n += 1
            if case .token(let k) = l, k == i { return n }
        }
        return 0
    }

    private static func parseEntry(_ fields: [Substring], at: String) throws(TokenError) -> Entry {
        let name = String(fields[0])
        guard isValidName(name) else {
            throw TokenError(at + "invalid token name \"" + printable(name) + "\": use 1 to 64 of A-Z a-z 0-9 . _ -")
        }
        guard fields.count >= 2, let hash = hexBytes(fields[1]), hash.count == 32 else {
            throw TokenError(at + "expected NAME SHA256HEX devices=GLOBS created=UNIX expires=UNIX|never")
        }
        var devices: (NamePattern, String)?
        var created: Int64?
        var expires: Int64??
        for field in fields.dropFirst(2) {
            guard let eq = field.firstIndex(of: "=") else {
                throw TokenError(at + "expected key=value, got \"" + printable(String(field)) + "\"")
            }
            let key = field[..<eq], value = String(field[field.index(after: eq)...])
            switch key {
            case "devices":
                guard devices == nil else { throw TokenError(at + "devices= given twice") }
                guard let p = NamePattern(value) else {
                    throw TokenError(at + "devices= must be comma-separated name patterns, e.g. dev-*,*.lab.example.com")
                }
                devices = (p, value)
            case "created":
                guard created == nil else { throw TokenError(at + "created= given twice") }
                guard let t = unixTime(value) else { throw TokenError(at + "created= must be Unix seconds") }
                created = t
            case "expires":
                guard expires == nil else { throw TokenError(at + "expires= given twice") }
                if value == "never" {
                    expires = .some(nil)
                } else {
                    guard let t = unixTime(value) else { throw TokenError(at + "expires= must be Unix seconds or never") }
                    expires = .some(t)
                }
            default:
                throw TokenError(at + "unknown field \"" + printable(String(key)) + "\" (devices, created, expires)")
            }
        }
        guard let devices else { throw TokenError(at + "devices= is missing") }
        guard let created else { throw TokenError(at + "created= is missing") }
        guard let expires else { throw TokenError(at + "expires= is missing") }
        return Entry(name: name, hash: hash, devices: devices.0, devicesText: devices.1, created: created, expires: expires)
    }

    /// [A-Za-z0-9._-]{1,64}
    public static func isValidName(_ s: String) -> Bool {
        let b = s.utf8
        return (1...64).contains(b.count) && b.allSatisfy { c in
            (c >= 0x30 && c <= 0x39) || (c >= 0x41 && c <= 0x5A) || (c >= 0x61 && c <= 0x7A)
                || c == UInt8(ascii: ".") || c == UInt8(ascii: "_") || c == UInt8(ascii: "-")
        }
    }

    /// A non-negative decimal of at most 12 digits (year 33658).
    static func unixTime(_ s: String) -> Int64? {
        guard (1...12).contains(s.utf8.count), s.utf8.allSatisfy({ $0 >= 0x30 && $0 <= 0x39 }) else { return nil }
        return Int64(s)
    }

    static func hexBytes(_ s: Substring) -> [UInt8]? {
        let b = Array(s.utf8)
        guard b.count % 2 == 0, b.count <= 128 else { return nil }
        var out: [UInt8] = []
        out.reserveCapacity(b.count / 2)
        var i = 0
        while i < b.count {
            guard let hi = hexValue(b[i]), let lo = hexValue(b[i + 1]) else { return nil }
            out.append(hi << 4 | lo)
            i += 2
        }
        return out
    }

    static func hexValue(_ c: UInt8) -> UInt8? {
        switch c {
        case 0x30...0x39: return c - 0x30
        case 0x61...0x66: return c - 0x61 + 10
        case 0x41...0x46: return c - 0x41 + 10
        default: return nil
        }
    }

    static func hex(_ bytes: [UInt8]) -> String {
        let digits = Array("0123456789abcdef".utf8)
        var out: [UInt8] = []
        out.reserveCapacity(bytes.count * 2)
        for b in bytes { out += [digits[Int(b >> 4)], digits[Int(b & 15)]] }
        return String(decoding: out, as: UTF8.self)
    }

    /// `s` for an error message: at most 64 characters, control characters as '?'.
    static func printable(_ s: String) -> String {
        let t = s.unicodeScalars.prefix(64).map { $0.value < 0x20 || $0.value == 0x7F ? "?" : Character($0) }
        return String(t) + (s.unicodeScalars.count > 64 ? "..." : "")
    }

    private mutating func append(_ entry: Entry) {
        byName[entry.name] = entries.count
        byHash[entry.hash] = entries.count
        lines.append(.token(entries.count))
        entries.append(entry)
    }

    // MARK: - Authentication

    /// Whether a presented secret is one of the file's tokens. `user`: Basic auth's
    /// user name (must be the token's NAME), nil for Bearer. `now`: Unix seconds.
    /// A secret not shaped like ours is `.unknown` before any hashing.
    public func authenticate(secret: String, user: String?, now: Int64) -> Verdict {
        guard TokenStore.isWellFormedSecret(secret) else { return .unknown }
        let hash = sha256(Array(secret.utf8))
        guard let i = byHash[hash] else { return .unknown }
        let entry = entries[i]
        // The dictionary found it by value; compare again without an early exit so
        // that nothing about the stored hash leaks through timing.
        guard constantTimeEqual(entry.hash, hash) else { return .unknown }
        if let user, user != entry.name { return .wrongUser }
        if let expires = entry.expires, now >= expires { return .expired(name: entry.name) }
        return .valid(Principal(method: .token, name: entry.name, scope: entry.devices, expires: entry.expires))
    }

    /// "rht_" and 43 base64url characters.
    public static func isWellFormedSecret(_ s: String) -> Bool {
        let b = s.utf8
        guard b.count == secretLength, s.hasPrefix(secretPrefix) else { return false }
        return b.dropFirst(4).allSatisfy { Base64.value($0, urlSafe: true) != nil }
    }

    // MARK: - The CLI's operations

    /// A new secret from the CSPRNG.
    public static func newSecret() -> String {
        var bytes = randomBytes(32)
        defer { for i in bytes.indices { bytes[i] = 0 } }
        return secretPrefix + Base64.encode(bytes, urlSafe: true)
    }

    /// Adds a token for `secret` (from `newSecret`). Refuses an invalid or existing
    /// name, bad globs, and a store already full.
    public mutating func add(name: String, devices: String, secret: String, created: Int64,
                             expires: Int64?) throws(TokenError) {
        guard TokenStore.isValidName(name) else {
            throw TokenError("invalid token name \"" + TokenStore.printable(name) + "\": use 1 to 64 of A-Z a-z 0-9 . _ -")
        }
        guard byName[name] == nil else {
            throw TokenError("a token named \"" + name + "\" exists already (revoke it first)")
        }
        guard !devices.contains(" "), !devices.contains("\t"), let pattern = NamePattern(devices) else {
            throw TokenError("--devices must be comma-separated name patterns without spaces, e.g. dev-*,*.lab.example.com")
        }
        guard TokenStore.isWellFormedSecret(secret) else { throw TokenError("malformed secret") }
        guard entries.count < TokenStore.maxTokens else { throw TokenError("the file has \(TokenStore.maxTokens) tokens already") }
        let hash = sha256(Array(secret.utf8))
        guard byHash[hash] == nil else { throw TokenError("secret collision (impossible with a fresh secret)") }
        append(Entry(name: name, hash: hash, devices: pattern, devicesText: devices, created: created, expires: expires))
    }

    /// Removes token `name`; false when there is none.
    @discardableResult
    public mutating func remove(name: String) -> Bool {
        guard let gone = byName[name] else { return false }
        let kept = entries.indices.filter { $0 != gone }
        var newIndex: [Int: Int] = [:]
        for (n, old) in kept.enumerated() { newIndex[old] = n }
        var newLines: [Line] = []
        for l in lines {
            switch l {
            case .text: newLines.append(l)
            case .token(let i): if let n = newIndex[i] { newLines.append(.token(n)) }
            }
        }
        let keptEntries = kept.map { entries[$0] }
        lines = []
        entries = []
        byHash = [:]
        byName = [:]
        for e in keptEntries {
            byName[e.name] = entries.count
            byHash[e.hash] = entries.count
            entries.append(e)
        }
        lines = newLines
        return true
    }

    /// The file's text: comments kept, one line a token.
    public func formatted() -> String {
        var out = ""
        for l in lines {
            switch l {
            case .text(let t): out += t
            case .token(let i): out += TokenStore.line(entries[i])
            }
            out += "\n"
        }
        return out
    }

    static func line(_ e: Entry) -> String {
        e.name + " " + hex(e.hash) + " devices=" + e.devicesText + " created=" + String(e.created)
            + " expires=" + (e.expires.map { String($0) } ?? "never")
    }

    /// `token list`: a header and one line a token (name, devices, created, expires, and
    /// "EXPIRED" when it is); never a secret or a hash.
    public func listing(now: Int64) -> String {
        var rows = [["NAME", "DEVICES", "CREATED", "EXPIRES", ""]]
        for e in entries {
            rows.append([e.name, e.devicesText, TokenStore.utcText(e.created),
                         e.expires.map(TokenStore.utcText) ?? "never",
                         e.expires.map { now >= $0 ? "EXPIRED" : "" } ?? ""])
        }
        var widths = [Int](repeating: 0, count: 5)
        for r in rows { for (i, c) in r.enumerated() { widths[i] = max(widths[i], c.count) } }
        var out = ""
        for r in rows {
            var line = ""
            for (i, c) in r.enumerated() {
                line += c
                if i < 4 { line += String(repeating: " ", count: widths[i] - c.count + 2) }
            }
            while line.hasSuffix(" ") { line.removeLast() }
            out += line + "\n"
        }
        return out
    }

    /// "2026-12-03T12:00:00Z" (proleptic Gregorian, UTC).
    public static func utcText(_ t: Int64) -> String {
        let days = t >= 0 ? t / 86_400 : (t - 86_399) / 86_400
        let secs = t - days * 86_400
        // Howard Hinnant's civil_from_days.
        let z = days + 719_468
        let era = (z >= 0 ? z : z - 146_096) / 146_097
        let doe = z - era * 146_097
        let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100)
        let mp = (5 * doy + 2) / 153
        let d = doy - (153 * mp + 2) / 5 + 1
        let m = mp < 10 ? mp + 3 : mp - 9
        let y = yoe + era * 400 + (m <= 2 ? 1 : 0)
        func two(_ v: Int64) -> String { v < 10 ? "0" + String(v) : String(v) }
        return String(y) + "-" + two(m) + "-" + two(d) + "T" + two(secs / 3600) + ":" + two(secs / 60 % 60) + ":" + two(secs % 60) + "Z"
    }

    /// `--expires`: "90d", "12h", "30m" (a positive count, at most 100 years) or
    /// "never"; the duration in seconds, nil for never.
    public static func parseExpiry(_ s: String) throws(TokenError) -> Int64? {
        if s == "never" { return nil }
        let b = Array(s.utf8)
        let unit: Int64
        switch b.last {
        case UInt8(ascii: "d"): unit = 86_400
        case UInt8(ascii: "h"): unit = 3_600
        case UInt8(ascii: "m"): unit = 60
        default: unit = 0
        }
        let digits = b.dropLast()
        guard unit > 0, (1...8).contains(digits.count), digits.allSatisfy({ $0 >= 0x30 && $0 <= 0x39 }),
              let n = Int64(String(decoding: digits, as: UTF8.self)), n > 0, n * unit <= 36_500 * 86_400 else {
            throw TokenError("--expires must be a count of days, hours or minutes (90d, 12h, 30m; at most 100 years) or never")
        }
        return n * unit
    }
}
