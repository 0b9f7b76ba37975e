// The configuration format shared by all three programs: one `key = value` per
// line, `#` starts a comment, blank lines ignored. Command-line options use the
// same keys (`--connections 2` is `connections = 2`), so a file and a command line
// are merged into one list of settings; later ones win. Errors name file and line.
import CLibc
import EventLoop
import TLS

public struct ConfigError: Error, CustomStringConvertible {
    public var message: String
    public init(_ message: String) { self.message = message }
    public var description: String { message }
}

public struct Setting {
    public var key: String
    public var value: String
    /// "FILE:LINE" or "command line", for error messages.
    public var origin: String
}

public struct Settings {
    public private(set) var items: [Setting] = []

    public init() {}

    public mutating func add(_ s: Setting) { items.append(s) }

    /// The last value given for `key`.
    public func last(_ key: String) -> Setting? {
        var found: Setting?
        for s in items where s.key == key { found = s }
        return found
    }

    /// Rejects keys not in `known`.
    public func checkKnown(_ known: [String]) throws(ConfigError) {
        for s in items where !known.contains(s.key) {
            throw ConfigError(s.origin + ": unknown setting '" + s.key + "'")
        }
    }

    public func string(_ key: String) -> String? { last(key)?.value }

    public func int(_ key: String, default def: Int, min lo: Int, max hi: Int) throws(ConfigError) -> Int {
        guard let s = last(key) else { return def }
        guard let v = Int(decimal: s.value), v >= lo, v <= hi else {
            throw ConfigError(s.origin + ": " + key + " must be a whole number from " + String(lo) + " to " + String(hi) + ", not '" + s.value + "'")
        }
        return v
    }

    public func double(_ key: String, default def: Double, min lo: Double, max hi: Double) throws(ConfigError) -> Double {
        guard let s = last(key) else { return def }
        guard let v = Double(s.value), v >= lo, v <= hi else {
            throw ConfigError(s.origin + ": " + key + " must be a number from " + String(lo) + " to " + String(hi) + ", not '" + s.value + "'")
        }
        return v
    }

    public func bool(_ key: String) throws(ConfigError) -> Bool {
        guard let s = last(key) else { return false }
        switch s.value {
        case "true", "yes", "1", "on": return true
        case "false", "no", "0", "off": return false
        default: throw ConfigError(s.origin + ": " + key + " must be true or false, not '" + s.value + "'")
        }
    }

    public func tlsVersion(_ key: String, default def: TLSVersion) throws(ConfigError) -> TLSVersion {
        guard let v = last(key) else { return def }
        guard let t = TLSVersion(name: v.value) else { throw ConfigError(v.origin + ": " + key + " must be 1.2 or 1.3") }
        return t
    }

    public func logLevel(_ key: String, default def: LogLevel) throws(ConfigError) -> LogLevel {
        guard let v = last(key) else { return def }
        guard let l = LogLevel(name: v.value) else {
            throw ConfigError(v.origin + ": " + key + " must be debug, info, notice, warning or error")
        }
        return l
    }

    public func hostPort(_ key: String) throws(ConfigError) -> HostPort? {
        guard let s = last(key) else { return nil }
        guard let hp = HostPort(parsing: s.value) else {
            throw ConfigError(s.origin + ": " + key + " must be HOST:PORT, not '" + s.value + "'")
        }
        return hp
    }
}

public enum ConfigFile {
    /// Reads `path` into settings.
    public static func load(_ path: String, into settings: inout Settings) throws(ConfigError) {
        guard let f = fopen(path, "r") else {
            throw ConfigError(path + ": cannot open: " + String(cString: strerror(rh_errno())))
        }
        defer { fclose(f) }
        var bytes: [UInt8] = []
        var buf = [UInt8](repeating: 0, count: 4096)
        while true {
            let n = buf.withUnsafeMutableBytes { fread($0.baseAddress, 1, 4096, f) }
            if n == 0 {
                // A directory opens but does not read (EISDIR): an error, not an empty file.
                if ferror(f) != 0 { throw ConfigError(path + ": cannot read: " + String(cString: strerror(rh_errno()))) }
                break
            }
            bytes += buf[0..<n]
            if bytes.count > 1 << 20 { throw ConfigError(path + ": larger than 1 MiB") }
        }
        try parse(bytes, name: path, into: &settings)
    }

    /// Parses `key = value` lines.
    public static func parse(_ bytes: [UInt8], name: String, into settings: inout Settings) throws(ConfigError) {
        var lineNo = 0
        var start = 0
        while start <= bytes.count {
            var end = start
            while end < bytes.count && bytes[end] != 10 { end += 1 }
            lineNo += 1
            let origin = name + ":" + String(lineNo)
            var line = Array(bytes[start..<end])
            if line.last == 13 { line.removeLast() }
            if let hash = line.firstIndex(of: 35) { line = Array(line[0..<hash]) }
            let text = trim(line)
            if !text.isEmpty {
                guard let eq = text.firstIndex(of: 61) else {
                    throw ConfigError(origin + ": expected 'key = value'")
                }
                let key = trim(Array(text[0..<eq]))
                let value = trim(Array(text[(eq + 1)...]))
                guard !key.isEmpty, key.allSatisfy({ ($0 >= 97 && $0 <= 122) || ($0 >= 48 && $0 <= 57) || $0 == 95 || $0 == 45 }) else {
                    throw ConfigError(origin + ": invalid key '" + String(decoding: key, as: UTF8.self) + "'")
                }
                if value.contains(0) { throw ConfigError(origin + ": NUL byte in value") }
                settings.add(Setting(key: normalize(String(decoding: key, as: UTF8.self)),
                                     value: String(decoding: value, as: UTF8.self), origin: origin))
            }
            start = end + 1
        }
    }

    /// `server-name` and `server_name` are the same key.
    public static func normalize(_ key: String) -> String {
        String(decoding: key.utf8.map { $0 == 45 ? 95 : $0 }, as: UTF8.self)
    }

    static func trim(_ b: [UInt8]) -> [UInt8] {
        var s = 0
        var e = b.count
        while s < e && (b[s] == 32 || b[s] == 9) { s += 1 }
        while e > s && (b[e - 1] == 32 || b[e - 1] == 9) { e -= 1 }
        return Array(b[s..<e])
    }
}

/// Parses a command line into settings. `flags` are options without a value
/// (set to "true"); every other `--key` takes the next argument.
/// Returns the positional arguments.
public func parseCommandLine(_ args: [String], flags: [String], into settings: inout Settings) throws(ConfigError) -> [String] {
    var positional: [String] = []
    var i = 0
    while i < args.count {
        let a = args[i]
        i += 1
        // On the UTF-8 bytes: Character operations (dropFirst, firstIndex(of: "="))
        // would link the stdlib's grapheme breaking into the Embedded agent (3 KB).
        let bytes = Array(a.utf8)
        guard bytes.count > 2, bytes[0] == 45, bytes[1] == 45 else {
            positional.append(a)
            continue
        }
        var end = bytes.count
        var value: String?
        if let eq = bytes[2...].firstIndex(of: 61) {
            value = String(decoding: Array(bytes[(eq + 1)...]), as: UTF8.self)
            end = eq
        }
        let name = String(decoding: Array(bytes[2..<end]), as: UTF8.self)
        let key = ConfigFile.normalize(name)
        if flags.contains(key) {
            settings.add(Setting(key: key, value: value ?? "true", origin: "option --" + name))
            continue
        }
        if value == nil {
            guard i < args.count else { throw ConfigError("option --" + name + " needs a value") }
            value = args[i]
            i += 1
        }
        settings.add(Setting(key: key, value: value!, origin: "option --" + name))
    }
    return positional
}

/// What a program's command line asks for: the merged settings (config file
/// first, then options, so options win) and the informational flags.
public struct Invocation {
    public var settings = Settings()
    public var help = false
    public var version = false
    public var checkConfig = false

    /// Parses `args` (options plus `--config FILE`); positional arguments are errors.
    /// Without `--config`, `defaultConfig` is read when that file exists.
    public init(_ args: [String], flags: [String], defaultConfig: String? = nil) throws(ConfigError) {
        var cmdline = Settings()
        let positional = try parseCommandLine(args, flags: flags, into: &cmdline)
        help = cmdline.last("help") != nil
        version = cmdline.last("version") != nil
        checkConfig = cmdline.last("check_config") != nil
        if help || version { return }
        if !positional.isEmpty { throw ConfigError("unexpected argument '" + positional[0] + "' (see --help)") }
        if let path = cmdline.last("config") {
            try ConfigFile.load(path.value, into: &settings)
        } else if let path = defaultConfig, access(path, F_OK) == 0 {
            try ConfigFile.load(path, into: &settings)
        }
        for s in cmdline.items { settings.add(s) }
    }
}

/// The process arguments, without the program name. Read from /proc/self/cmdline
/// because Embedded Swift has no CommandLine (qemu-user emulates this file too).
/// Without /proc (a bare chroot) that is an error, not an empty command line.
public func processArguments() throws(ConfigError) -> [String] {
    guard let f = fopen("/proc/self/cmdline", "r") else {
        throw ConfigError("cannot read the command line from /proc/self/cmdline (is /proc mounted?)")
    }
    defer { fclose(f) }
    var bytes: [UInt8] = []
    var buf = [UInt8](repeating: 0, count: 4096)
    while bytes.count < 1 << 20 {
        let n = buf.withUnsafeMutableBytes { fread($0.baseAddress, 1, 4096, f) }
        if n == 0 { break }
        bytes += buf[0..<n]
    }
    var args: [String] = []
    var cur: [UInt8] = []
    for b in bytes {
        if b == 0 {
            args.append(String(decoding: cur, as: UTF8.self))
            cur.removeAll()
        } else {
            cur.append(b)
        }
    }
    if !cur.isEmpty { args.append(String(decoding: cur, as: UTF8.self)) }
    return Array(args.dropFirst())
}
