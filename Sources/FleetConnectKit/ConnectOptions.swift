// ConnectOptions: fleet-connect's command line, parsed without I/O (the token
// file is read by the caller). `fleet-connect HOST PORT --gateway URL
// [--token-file F | --cert F --key F] [--ca F]`; every mistake is an
// OptionError (exit status 2) naming what is wrong.

/// The gateway's public listener: https://host[:port] (TLS) or http://host[:port]
/// (plain HTTP, loopback addresses only: a token must not cross a network in clear).
public struct GatewayURL: Equatable, Sendable {
    public var tls: Bool
    public var host: String
    public var port: Int

    public init(tls: Bool, host: String, port: Int) {
        self.tls = tls
        self.host = host
        self.port = port
    }

    public init(parsing text: String) throws(OptionError) {
        var rest: Substring
        if text.hasPrefix("https://") {
            tls = true
            rest = text.dropFirst(8)
        } else if text.hasPrefix("http://") {
            tls = false
            rest = text.dropFirst(7)
        } else {
            throw OptionError("--gateway must be https://HOST[:PORT] or http://LOOPBACK[:PORT], not '" + text + "'")
        }
        if rest.hasSuffix("/") { rest = rest.dropLast() }
        let authority = String(rest)
        guard !authority.isEmpty, ConnectOptions.isPlainText(authority),
              !authority.utf8.contains(UInt8(ascii: "/")), !authority.utf8.contains(UInt8(ascii: "@")),
              !authority.utf8.contains(UInt8(ascii: "?")), !authority.utf8.contains(UInt8(ascii: "#")) else {
            throw OptionError("--gateway must be https://HOST[:PORT] (no path, user or query), not '" + text + "'")
        }
        let defaultPort = tls ? 443 : 80
        if let (h, p) = GatewayURL.splitAuthority(authority, defaultPort: defaultPort) {
            host = h
            port = p
        } else {
            throw OptionError("--gateway: bad host or port in '" + text + "'")
        }
        if !tls && !GatewayURL.isLoopback(host) {
            throw OptionError("--gateway: http:// only to a loopback address (127.0.0.1, ::1, localhost); use https://")
        }
    }

    /// "host", "host:port", "[v6]", "[v6]:port".
    static func splitAuthority(_ a: String, defaultPort: Int) -> (String, Int)? {
        let bytes = Array(a.utf8)
        var host: [UInt8]
        var portBytes: ArraySlice<UInt8> = []
        if bytes.first == UInt8(ascii: "[") {
            guard let close = bytes.firstIndex(of: UInt8(ascii: "]")), close > 1 else { return nil }
            host = Array(bytes[1..<close])
            let after = bytes[(close + 1)...]
            if !after.isEmpty {
                guard after.first == UInt8(ascii: ":") else { return nil }
                portBytes = after.dropFirst()
                if portBytes.isEmpty { return nil }
            }
        } else if let colon = bytes.firstIndex(of: UInt8(ascii: ":")) {
            host = Array(bytes[0..<colon])
            portBytes = bytes[(colon + 1)...]
            if portBytes.isEmpty || portBytes.contains(UInt8(ascii: ":")) { return nil }
        } else {
            host = bytes
        }
        guard !host.isEmpty else { return nil }
        var port = defaultPort
        if !portBytes.isEmpty {
            guard let p = ConnectOptions.parsePort(portBytes) else { return nil }
            port = p
        }
        return (String(decoding: host, as: UTF8.self), port)
    }

    static func isLoopback(_ host: String) -> Bool {
        if host == "localhost" || host == "::1" { return true }
        return host.hasPrefix("127.") && host.utf8.allSatisfy { ($0 >= 48 && $0 <= 57) || $0 == UInt8(ascii: ".") }
    }

    public var description: String {
        let h = host.utf8.contains(UInt8(ascii: ":")) ? "[" + host + "]" : host
        return (tls ? "https://" : "http://") + h + ":" + String(port)
    }
}

public struct OptionError: Error, CustomStringConvertible, Equatable {
    public var message: String
    public init(_ message: String) { self.message = message }
    public var description: String { message }
}

public struct ConnectOptions: Equatable, Sendable {
    /// The device (a name under the fleet domain, or the device name) and its TCP port.
    public var host = ""
    public var port = 0
    public var gateway = GatewayURL(tls: true, host: "", port: 443)
    public var tokenFile: String?
    public var certFile: String?
    public var keyFile: String?
    /// CA bundle that signed the gateway's certificate (default: the system's).
    public var caFile: String?
    public var help = false
    public var version = false

    public init() {}

    /// The request target and Host of the CONNECT: "HOST:PORT".
    public var authority: String { host + ":" + String(port) }

    public init(arguments: [String]) throws(OptionError) {
        var positional: [String] = []
        var gatewayText: String?
        var i = 0
        while i < arguments.count {
            let arg = arguments[i]
            i += 1
            if arg == "-h" || arg == "--help" { help = true; continue }
            if arg == "--version" { version = true; continue }
            if arg == "--" {
                positional += arguments[i...]
                break
            }
            if !arg.hasPrefix("--") || arg == "-" {
                if arg.hasPrefix("-") && arg != "-" { throw OptionError("unknown option '" + arg + "'") }
                positional.append(arg)
                continue
            }
            var name = arg
            var value: String?
            if let eq = arg.utf8.firstIndex(of: UInt8(ascii: "=")) {
                name = String(arg[arg.startIndex..<eq])
                value = String(arg[arg.index(after: eq)...])
            }
            guard ["--gateway", "--token-file", "--cert", "--key", "--ca"].contains(name) else {
                throw OptionError("unknown option '" + name + "'")
            }
            if value == nil {
                guard i < arguments.count else { throw OptionError(name + " needs a value") }
                value = arguments[i]
                i += 1
            }
            guard let v = value, !v.isEmpty else { throw OptionError(name + " needs a value") }
            switch name {
            case "--gateway": gatewayText = v
            case "--token-file": tokenFile = v
            case "--cert": certFile = v
            case "--key": keyFile = v
            default: caFile = v
            }
        }
        if help || version { return }
        guard positional.count == 2 else {
            throw OptionError("expected HOST PORT, got " + String(positional.count) + " argument" + (positional.count == 1 ? "" : "s"))
        }
        guard ConnectOptions.isHostName(positional[0]) else {
            throw OptionError("bad HOST '" + positional[0] + "' (a device name: letters, digits, '-', '.', '_')")
        }
        host = positional[0]
        guard let p = ConnectOptions.parsePort(positional[1].utf8[...]) else {
            throw OptionError("PORT must be a number from 1 to 65535, not '" + positional[1] + "'")
        }
        port = p
        guard let gatewayText else { throw OptionError("--gateway URL is required") }
        gateway = try GatewayURL(parsing: gatewayText)
        if (certFile == nil) != (keyFile == nil) { throw OptionError("--cert and --key go together") }
        if tokenFile != nil && certFile != nil { throw OptionError("--token-file or --cert/--key, not both") }
        if certFile != nil && !gateway.tls { throw OptionError("--cert/--key need an https:// gateway") }
        if caFile != nil && !gateway.tls { throw OptionError("--ca needs an https:// gateway") }
    }

    /// A device name as it goes into the authority: DNS-ish bytes only, so that
    /// nothing can break the request line.
    static func isHostName(_ s: String) -> Bool {
        let u = s.utf8
        guard !u.isEmpty, u.count <= 253, u.first != UInt8(ascii: "-"), u.first != UInt8(ascii: ".") else { return false }
        return u.allSatisfy { b in
            (b >= 97 && b <= 122) || (b >= 65 && b <= 90) || (b >= 48 && b <= 57)
                || b == UInt8(ascii: "-") || b == UInt8(ascii: ".") || b == UInt8(ascii: "_")
        }
    }

    static func parsePort<C: Collection>(_ digits: C) -> Int? where C.Element == UInt8 {
        guard !digits.isEmpty, digits.count <= 5 else { return nil }
        var v = 0
        for b in digits {
            guard b >= 48 && b <= 57 else { return nil }
            v = v * 10 + Int(b - 48)
        }
        return v >= 1 && v <= 65535 ? v : nil
    }

    /// Printable ASCII without spaces.
    static func isPlainText(_ s: String) -> Bool {
        s.utf8.allSatisfy { $0 > 32 && $0 < 127 }
    }

    /// The bearer token: the token file's first line, trimmed of spaces and CR.
    public static func token(fromFileContents bytes: [UInt8]) throws(OptionError) -> String {
        var line = bytes.prefix { $0 != UInt8(ascii: "\n") }
        while let last = line.last, last == 13 || last == 32 || last == 9 { line = line.dropLast() }
        while let first = line.first, first == 32 || first == 9 { line = line.dropFirst() }
        guard !line.isEmpty else { throw OptionError("the token file's first line is empty") }
        guard line.allSatisfy({ $0 > 32 && $0 < 127 }) else {
            throw OptionError("the token file's first line has spaces or control characters")
        }
        return String(decoding: line, as: UTF8.self)
    }
}
