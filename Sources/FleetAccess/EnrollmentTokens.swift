// One-time enrollment tokens (issue 17): what lets a new device get its first
// certificate over EST (/simpleenroll, Basic auth). `fleet-gateway pki
// enroll-token DIR NAME --expires 24h` adds one to DIR/enroll-tokens and prints
// its secret once; the file keeps only the secret's SHA-256.
//
//   # comment
//   SHA256HEX name=BINDING created=UNIX expires=UNIX used=-|UNIX:DEVICE
//
// BINDING is one canonical device name or name globs (NamePattern, "dev-*"): the
// names a device may enroll as with this token. A token works once: `consume`
// marks it used (time and device) in the same locked read-change-write, so two
// devices presenting it at once get one certificate between them. The lock is
// TokenStore's: an exclusive flock on the file's directory, which is the PKI
// directory, the same lock as PKI's own commands: never call `consume` while
// holding PKI's lock (CertificateAuthority.issueDevice takes it itself, after).
import Bytes
import FleetPKI
import TLS
#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

public enum EnrollmentTokenError: Error, Equatable, CustomStringConvertible {
    /// No token has this secret (or the secret is not shaped like one).
    case unknown
    /// The token was used already: when (Unix seconds) and by which device.
    case used(at: Int64, by: String)
    /// The token expired at this time.
    case expired(at: Int64)
    /// The token does not allow this device name: the name and the token's binding.
    case wrongName(String, binding: String)
    /// A binding or an option that cannot be used (the text says why).
    case invalid(String)
    /// The file cannot be read, parsed or written (path and reason).
    case file(String)

    public var description: String {
        switch self {
        case .unknown: return "unknown enrollment token"
        case .used(let at, let by): return "enrollment token already used (" + TokenStore.utcText(at) + " by " + by + ")"
        case .expired(let at): return "enrollment token expired " + TokenStore.utcText(at)
        case .wrongName(let name, let binding):
            return "enrollment token is for " + binding + ", not " + TokenStore.printable(name)
        case .invalid(let text): return text
        case .file(let text): return text
        }
    }
}

/// The names a token lets a device enroll as.
public struct EnrollmentBinding: Equatable, Sendable {
    /// As written in the file ("dev1.example", "dev-*,lab-*").
    public let text: String
    public let pattern: NamePattern
    /// The one name a binding without wildcards stands for; nil for globs.
    public var exactName: String? {
        text.contains("*") || text.contains("?") || text.contains(",") ? nil : text
    }

    /// A binding from the command line: one canonical device name, or globs.
    public init(_ text: String) throws(EnrollmentTokenError) {
        let wild = text.contains("*") || text.contains("?") || text.contains(",")
        if !wild {
            guard PKI.isValidDeviceName(text) else {
                throw .invalid("\"" + TokenStore.printable(text) + "\" is not a device name (a hostname) nor a glob")
            }
            guard PKI.isCanonicalDeviceName(text) else {
                throw .invalid("device name \"" + text + "\" is not in canonical form: use \"" + PKI.asciiLowercased(text) + "\"")
            }
        }
        guard text.utf8.count <= 1024, !text.contains(" "), !text.contains("\t"), let p = NamePattern(text),
              PKI.asciiLowercased(text) == text else {
            throw .invalid("a token's names must be a device name or comma-separated lower-case globs without spaces, e.g. dev-*")
        }
        self.text = text
        pattern = p
    }

    /// Whether a device may enroll as `name` (canonical) with this binding.
    public func allows(_ name: String) -> Bool {
        guard PKI.isCanonicalDeviceName(name) else { return false }
        if let exact = exactName { return name == exact }
        return pattern.matches(name)
    }
}

public struct EnrollmentTokens: Sendable {
    public struct Entry: Equatable, Sendable {
        /// SHA-256 of the secret.
        public let hash: [UInt8]
        public let binding: EnrollmentBinding
        public let created: Int64
        public let expires: Int64
        /// When and by which device it was used; nil while unused.
        public var used: Used?
    }

    public struct Used: Equatable, Sendable {
        public let at: Int64
        public let name: String
    }

    /// The file's name in the PKI directory.
    public static let fileName = "enroll-tokens"
    public static let secretPrefix = "rhe_"
    /// "rhe_" + base64url of 32 bytes without padding.
    public static let secretLength = 4 + 43
    public static let maxTokens = 100_000

    private enum Line: Sendable { case text(String), token(Int) }
    private var lines: [Line] = []
    public private(set) var entries: [Entry] = []
    private var byHash: [[UInt8]: Int] = [:]

    public init() {}

    public static func path(directory: String) -> String {
        var dir = directory.isEmpty ? "." : directory
        while dir.count > 1 && dir.hasSuffix("/") { dir.removeLast() }
        return dir == "/" ? "/" + fileName : dir + "/" + fileName
    }

    // MARK: - The two operations

    /// Adds a token for `binding` to DIR/enroll-tokens, valid `lifetime` seconds from
    /// `now`, and returns its secret (show it once; it is stored nowhere).
    public static func create(directory: String, binding: String, lifetime: Int64, now: Int64) throws(EnrollmentTokenError) -> String {
        let b = try EnrollmentBinding(binding)
        guard lifetime > 0, lifetime <= 36_500 * 86_400 else {
            throw .invalid("an enrollment token must expire (--expires 24h, 7d, ...; at most 100 years)")
        }
        let secret = newSecret()
        let path = path(directory: directory)
        try locked(path) { () throws(EnrollmentTokenError) in
            var tokens = try load(path: path, missingIsEmpty: true)
            guard tokens.entries.count < maxTokens else { throw .file(path + ": holds \(maxTokens) tokens already") }
            let hash = sha256(Array(secret.utf8))
            guard tokens.byHash[hash] == nil else { throw .file("secret collision (impossible with a fresh secret)") }
            tokens.append(Entry(hash: hash, binding: b, created: now, expires: now + lifetime, used: nil))
            try tokens.save(path: path)
        }
        return secret
    }

    /// Uses the token with `secret` for device `name` (canonical): checks that it
    /// exists, is unused, unexpired at `now` and allows `name`, then marks it used,
    /// all under the lock; returns its binding. A token refused for the name or its
    /// age stays as it was. `.unknown` also when DIR/enroll-tokens does not exist.
    public static func consume(directory: String, secret: String, forName name: String, now: Int64) throws(EnrollmentTokenError) -> EnrollmentBinding {
        try consumeEntry(directory: directory, secret: secret, forName: name, now: now, cache: nil).binding
    }

    /// `consume`, returning the token's entry as it was before use (its expiry, for
    /// the gateway's replay of a lost answer); with `cache`, the file is parsed only
    /// when it changed since the cache last saw it (FileCache). The file is written
    /// and synced before this returns: the token is used durably.
    public static func consumeEntry(directory: String, secret: String, forName name: String, now: Int64,
                                    cache: FileCache?) throws(EnrollmentTokenError) -> Entry {
        guard isWellFormedSecret(secret) else { throw .unknown }
        let path = path(directory: directory)
        return try locked(path) { () throws(EnrollmentTokenError) -> Entry in
            var tokens = try load(path: path, cache: cache)
            let entry = try tokens.usable(secret: secret, now: now)
            _ = try tokens.use(secret: secret, forName: name, now: now)
            try tokens.save(path: path)
            cache?.remember(tokens, path: path)
            return entry
        }
    }

    /// The binding of the token with `secret` if it could be used now, without using
    /// it: for choosing the device name (`exactName`, else the request's CN) before
    /// `consume`. Throws as `consume` does, but never `.wrongName`.
    public static func lookup(directory: String, secret: String, now: Int64,
                              cache: FileCache? = nil) throws(EnrollmentTokenError) -> EnrollmentBinding {
        guard isWellFormedSecret(secret) else { throw .unknown }
        let path = path(directory: directory)
        return try locked(path) { () throws(EnrollmentTokenError) -> EnrollmentBinding in
            try load(path: path, cache: cache).usable(secret: secret, now: now).binding
        }
    }

    /// The file as parsed last time while its identity and times (FileStamp) are the
    /// same; read under the lock only. Not thread-safe: one owner (the gateway's EST
    /// service, on its loop).
    public final class FileCache {
        var stamp: FileStamp?
        var tokens: EnrollmentTokens?
        /// How many times the file was read and parsed (tests, benchmarks).
        public internal(set) var parses = 0

        public init() {}

        func remember(_ tokens: EnrollmentTokens, path: String) {
            stamp = FileStamp(path)
            self.tokens = stamp == nil ? nil : tokens
        }
    }

    static func load(path: String, cache: FileCache?) throws(EnrollmentTokenError) -> EnrollmentTokens {
        guard let cache else { return try load(path: path, missingIsEmpty: true) }
        let stamp = FileStamp(path)  // before reading: a change during the read shows next time
        if let stamp, stamp == cache.stamp, let tokens = cache.tokens { return tokens }
        let tokens = try load(path: path, missingIsEmpty: true)
        cache.parses += 1
        cache.stamp = stamp
        cache.tokens = stamp == nil ? nil : tokens
        return tokens
    }

    /// The entry of `secret`, if unused and unexpired at `now`.
    func usable(secret: String, now: Int64) throws(EnrollmentTokenError) -> Entry {
        let hash = sha256(Array(secret.utf8))
        guard let i = byHash[hash], constantTimeEqual(entries[i].hash, hash) else { throw .unknown }
        let entry = entries[i]
        if let used = entry.used { throw .used(at: used.at, by: used.name) }
        guard now < entry.expires else { throw .expired(at: entry.expires) }
        return entry
    }

    /// In memory: what `consume` does between reading and writing the file.
    public mutating func use(secret: String, forName name: String, now: Int64) throws(EnrollmentTokenError) -> EnrollmentBinding {
        guard EnrollmentTokens.isWellFormedSecret(secret) else { throw .unknown }
        let entry = try usable(secret: secret, now: now)
        guard entry.binding.allows(name), let i = byHash[entry.hash] else { throw .wrongName(name, binding: entry.binding.text) }
        entries[i].used = Used(at: now, name: name)
        return entry.binding
    }

    /// "rhe_" and 43 base64url characters.
    public static func isWellFormedSecret(_ s: String) -> Bool {
        let b = s.utf8
        guard b.count == secretLength, s.hasPrefix(secretPrefix) else { return false }
        return b.dropFirst(4).allSatisfy { Base64.value($0, urlSafe: true) != nil }
    }

    static func newSecret() -> String {
        var bytes = randomBytes(32)
        defer { for i in bytes.indices { bytes[i] = 0 } }
        return secretPrefix + Base64.encode(bytes, urlSafe: true)
    }

    // MARK: - The file

    /// Reads DIR/enroll-tokens (at most 1 MiB); with `missingIsEmpty`, an absent file is empty.
    public static func load(path: String, missingIsEmpty: Bool = false) throws(EnrollmentTokenError) -> EnrollmentTokens {
        let bytes: [UInt8]
        do throws(TokenError) {
            var st = stat()
            if missingIsEmpty && stat(path, &st) != 0 && errno == ENOENT { return EnrollmentTokens() }
            bytes = try TokenStore.readFile(path)
        } catch {
            throw .file(error.description)
        }
        guard let text = String(validating: bytes, as: UTF8.self) else { throw .file(path + ": not UTF-8 text") }
        return try parse(text, file: path)
    }

    public static func parse(_ text: String, file: String) throws(EnrollmentTokenError) -> EnrollmentTokens {
        guard text.utf8.count <= TokenStore.maxFileBytes else { throw .file(file + ": larger than 1 MiB") }
        var tokens = EnrollmentTokens()
        try TokenStore.forEachRecord(text, file: file) { (record) throws(EnrollmentTokenError) in
            guard case .fields(let fields, let at) = record else {
                if case .text(let line) = record { tokens.lines.append(.text(line)) }
                return
            }
            guard tokens.entries.count < maxTokens else { throw .file(at + "more than \(maxTokens) tokens") }
            let entry = try parseEntry(fields, at: at)
            guard tokens.byHash[entry.hash] == nil else { throw .file(at + "the same token twice") }
            tokens.append(entry)
        }
        return tokens
    }

    private static func parseEntry(_ fields: [Substring], at: String) throws(EnrollmentTokenError) -> Entry {
        let shape = "expected SHA256HEX name=BINDING created=UNIX expires=UNIX used=-|UNIX:DEVICE"
        guard let hash = TokenStore.hexBytes(fields[0]), hash.count == 32 else { throw .file(at + shape) }
        var binding: EnrollmentBinding?
        var created: Int64?
        var expires: Int64?
        var used: Used??
        for field in fields.dropFirst() {
            guard let eq = field.firstIndex(of: "=") else {
                throw .file(at + "expected key=value, got \"" + TokenStore.printable(String(field)) + "\"")
            }
            let key = field[..<eq], value = String(field[field.index(after: eq)...])
            switch key {
            case "name" where binding == nil:
                do throws(EnrollmentTokenError) {
                    binding = try EnrollmentBinding(value)
                } catch {
                    throw .file(at + "name=: " + error.description)
                }
            case "created" where created == nil:
                guard let t = TokenStore.unixTime(value) else { throw .file(at + "created= must be Unix seconds") }
                created = t
            case "expires" where expires == nil:
                guard let t = TokenStore.unixTime(value) else { throw .file(at + "expires= must be Unix seconds") }
                expires = t
            case "used" where used == nil:
                if value == "-" {
                    used = .some(nil)
                } else {
                    guard let colon = value.firstIndex(of: ":"), let t = TokenStore.unixTime(String(value[..<colon])),
                          case let device = String(value[value.index(after: colon)...]), PKI.isCanonicalDeviceName(device) else {
                        throw .file(at + "used= must be - or UNIX:DEVICE")
                    }
                    used = .some(Used(at: t, name: device))
                }
            case "name", "created", "expires", "used":
                throw .file(at + String(key) + "= given twice")
            default:
                throw .file(at + "unknown field \"" + TokenStore.printable(String(key)) + "\" (name, created, expires, used)")
            }
        }
        guard let binding, let created, let expires, let used else { throw .file(at + shape) }
        return Entry(hash: hash, binding: binding, created: created, expires: expires, used: used)
    }

    private mutating func append(_ entry: Entry) {
        byHash[entry.hash] = entries.count
        lines.append(.token(entries.count))
        entries.append(entry)
    }

    /// The file's text: comments kept, one line a token.
    public func formatted() -> String {
        var out = ""
        for l in lines {
            switch l {
            case .text(let t): out += t
            case .token(let i):
                let e = entries[i]
                out += TokenStore.hex(e.hash) + " name=" + e.binding.text + " created=" + String(e.created)
                    + " expires=" + String(e.expires) + " used=" + (e.used.map { String($0.at) + ":" + $0.name } ?? "-")
            }
            out += "\n"
        }
        return out
    }

    func save(path: String) throws(EnrollmentTokenError) {
        var text = formatted()
        if entries.count == 1 && lines.count == 1 {
            text = "# one-time enrollment tokens (fleet-gateway pki enroll-token): SHA-256 of each secret, never the secret\n" + text
        }
        do throws(TokenError) {
            try TokenStore.writeAtomically(path: path, Array(text.utf8))
        } catch {
            throw .file(error.description)
        }
    }

    /// `body` under TokenStore's lock of the file's directory.
    static func locked<T>(_ path: String, _ body: () throws(EnrollmentTokenError) -> T) throws(EnrollmentTokenError) -> T {
        let result: Result<T, EnrollmentTokenError>
        do throws(TokenError) {
            result = try TokenStore.withLock(path: path) { () throws(TokenError) -> Result<T, EnrollmentTokenError> in
                do throws(EnrollmentTokenError) {
                    return .success(try body())
                } catch {
                    return .failure(error)
                }
            }
        } catch {
            throw .file(error.description)
        }
        return try result.get()
    }
}

