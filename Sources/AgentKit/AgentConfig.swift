// The agent's settings, from a config file and the command line (same keys).
import CLibc
import EventLoop
import TLS
import ConfigFormat

public struct AgentConfig {
    public var gateway = HostPort(host: "127.0.0.1", port: 8443)
    /// Name the gateway certificate must carry (and SNI); defaults to the gateway host.
    public var serverName: String?
    public var caFile: String?
    public var certFile: String?
    public var keyFile: String?
    public var local = HostPort(host: "127.0.0.1", port: 8080)
    public var connections = 2
    public var plaintext = false
    public var tlsMinimum = TLSVersion.tls13
    public var logLevel = LogLevel.info
    /// How long the local API may take to start answering.
    public var localTimeoutMs = 30_000
    /// Device name used in log lines (the certificate CN is the identity the gateway sees).
    public var name = "device"
    public var maxConcurrentStreams = 100
    /// Requests in progress at the local API at once; more wait their turn.
    public var localMaxConnections = 32
    /// On SIGTERM, how long requests in flight may take to finish.
    public var drainTimeoutMs = 10_000
    /// PING the gateway after this much silence; give up after as much again (0: off).
    public var idlePingMs = 4_000
    /// TCP connect plus TLS handshake plus the gateway's SETTINGS must take no longer.
    public var connectTimeoutMs = 10_000
    /// Local TCP ports the gateway may CONNECT to (SSH, VNC, ...); none by default.
    public var tcpPorts: [Int] = []

    /// A one-time EST enrollment token (`fleet-gateway pki enroll-token`), or the file
    /// holding it (better: not in the config, not on a command line). Used only while
    /// `certFile` does not exist: the agent then makes `keyFile`, enrolls as `name`
    /// and writes `certFile` before it dials.
    public var enrollToken: String?
    public var enrollTokenFile: String?
    /// A claim certificate and its key (files): shown in TLS to /simpleenroll while
    /// `certFile` does not exist, so that the gateway issues a certificate for `name`
    /// (with or without a token). The claim itself is never used to dial.
    public var claimCertFile: String?
    public var claimKeyFile: String?
    /// Where EST is asked (enrollment and renewal); defaults to `gateway`.
    public var estServer: HostPort?
    /// Re-enroll at about two thirds of the certificate's life. Default: on with an
    /// enrollment token, off without (a certificate made by hand).
    public var renew = false

    public static let keys = ["config", "gateway", "server_name", "ca", "cert", "key", "local", "connections",
                              "plaintext", "tls_min", "log_level", "local_timeout_ms", "name",
                              "max_concurrent_streams", "local_max_connections", "drain_timeout_ms", "idle_ping_ms", "connect_timeout_ms", "tcp_ports",
                              "enroll_token", "enroll_token_file", "claim_cert", "claim_key", "est_server", "renew", "check_config", "help", "version"]
    public static let flags = ["plaintext", "check_config", "help", "version"]

    public init() {}

    public init(_ s: Settings) throws(ConfigError) {
        try s.checkKnown(AgentConfig.keys)
        guard let gw = try s.hostPort("gateway") else { throw ConfigError("no gateway set: use --gateway HOST:PORT") }
        gateway = gw
        if let l = try s.hostPort("local") { local = l }
        serverName = s.string("server_name")
        caFile = s.string("ca")
        certFile = s.string("cert")
        keyFile = s.string("key")
        connections = try s.int("connections", default: 2, min: 1, max: 64)
        plaintext = try s.bool("plaintext")
        localTimeoutMs = try s.int("local_timeout_ms", default: 30_000, min: 100, max: 3_600_000)
        maxConcurrentStreams = try s.int("max_concurrent_streams", default: 100, min: 1, max: 10_000)
        localMaxConnections = try s.int("local_max_connections", default: 32, min: 1, max: 10_000)
        drainTimeoutMs = try s.int("drain_timeout_ms", default: 10_000, min: 0, max: 3_600_000)
        idlePingMs = try s.int("idle_ping_ms", default: 4_000, min: 0, max: 3_600_000)
        connectTimeoutMs = try s.int("connect_timeout_ms", default: 10_000, min: 100, max: 600_000)
        if let p = s.last("tcp_ports") { tcpPorts = try AgentConfig.ports(p) }
        if let n = s.string("name") { name = n }
        enrollToken = s.string("enroll_token")
        enrollTokenFile = s.string("enroll_token_file")
        claimCertFile = s.string("claim_cert")
        claimKeyFile = s.string("claim_key")
        estServer = try s.hostPort("est_server")
        renew = s.string("renew") != nil ? try s.bool("renew") : enrolls
        // Errors name the setting they are about (FILE:LINE or the option).
        func at(_ keys: String..., say message: String) -> ConfigError {
            for k in keys { if let o = s.last(k)?.origin { return ConfigError(o + ": " + message) } }
            return ConfigError(message)
        }
        func atEnroll(_ message: String) -> ConfigError { at("enroll_token", "enroll_token_file", "claim_cert", "claim_key", say: message) }
        if enrolls {
            guard !plaintext else { throw atEnroll("enroll_token and claim_cert need TLS (not --plaintext)") }
            guard enrollToken == nil || enrollTokenFile == nil else { throw at("enroll_token_file", say: "set enroll_token or enroll_token_file, not both") }
            guard (claimCertFile == nil) == (claimKeyFile == nil) else { throw at("claim_cert", "claim_key", say: "set claim_cert and claim_key together") }
        }
        if renew && plaintext { throw at("renew", say: "renew needs TLS (not --plaintext)") }
        if enrolls {
            // The certificate is asked for `name`; by default the host's name.
            if s.string("name") == nil {
                guard let h = AgentConfig.hostName() else { throw atEnroll("enrolling needs --name NAME (the name the certificate is asked for)") }
                name = h
            }
            // The packaged layout: the fleet CA in /etc/device-agent, key and
            // certificate in the unit's StateDirectory.
            if caFile == nil { caFile = "/etc/device-agent/ca.crt" }
            if certFile == nil && keyFile == nil {
                certFile = AgentConfig.stateDirectory + "/device.crt"
                keyFile = AgentConfig.stateDirectory + "/device.key"
            }
        }
        tlsMinimum = try s.tlsVersion("tls_min", default: .tls13)
        logLevel = try s.logLevel("log_level", default: .info)
        if !plaintext {
            guard caFile != nil else { throw ConfigError("TLS needs --ca FILE (the fleet CA that signed the gateway certificate), or --plaintext") }
            guard certFile != nil, keyFile != nil else { throw ConfigError("TLS needs --cert FILE and --key FILE (this device's certificate and key), or --plaintext") }
        }
    }

    /// "22, 5900": ports 1-65535 separated by commas, spaces around them allowed;
    /// an empty value: none.
    static func ports(_ s: Setting) throws(ConfigError) -> [Int] {
        let bad = ConfigError(s.origin + ": tcp_ports must be port numbers from 1 to 65535 separated by commas (22,5900), not '"
                              + s.value + "'")
        var out: [Int] = []
        var field: [UInt8] = []
        let text = Array(s.value.utf8)
        if text.allSatisfy({ $0 == 0x20 || $0 == 0x09 }) { return [] }
        for b in text + [0x2C] {
            guard b == 0x2C else {
                if b != 0x20 && b != 0x09 { field.append(b) } else if !field.isEmpty { field.append(0x20) }  // "2 2" stays bad
                continue
            }
            while field.last == 0x20 { field.removeLast() }
            var value = 0
            guard !field.isEmpty, field.count <= 5 else { throw bad }
            for d in field {
                guard d >= 0x30 && d <= 0x39 else { throw bad }
                value = value * 10 + Int(d - 0x30)
            }
            guard value >= 1 && value <= 65535 else { throw bad }
            if !out.contains(value) { out.append(value) }
            field = []
        }
        return out
    }

    public func tlsConfiguration() -> TLSConfiguration {
        var c = TLSConfiguration(role: .client)
        c.certificateFile = certFile
        c.keyFile = keyFile
        c.trustFile = caFile
        c.minimumVersion = tlsMinimum
        c.alpn = ["h2"]
        return c
    }

    /// Where an enrolling agent without `cert` and `key` keeps them (the
    /// device-agent unit's StateDirectory).
    public static let stateDirectory = "/var/lib/device-agent"

    static func hostName() -> String? {
        var buf = [UInt8](repeating: 0, count: 256)
        let ok = buf.withUnsafeMutableBufferPointer { p in
            p.baseAddress!.withMemoryRebound(to: CChar.self, capacity: 256) { gethostname($0, 255) == 0 }
        }
        guard ok, let end = buf.firstIndex(of: 0), end > 0 else { return nil }
        return String(decoding: buf[..<end], as: UTF8.self)
    }

    var hasToken: Bool { enrollToken != nil || enrollTokenFile != nil }
    /// A token or a claim certificate is set: the agent can enroll.
    public var enrolls: Bool { hasToken || claimCertFile != nil }

    /// Whether the agent must enroll before it dials: a token or a claim, and no certificate yet.
    public var needsEnrollment: Bool {
        guard enrolls, let certFile else { return false }
        return !AtomicFile.exists(certFile)
    }

    /// Which certificate an EST connection shows.
    enum ESTIdentity { case none, current, claim }

    /// The client context for EST: HTTP/1.1 only (never h2, so the gateway's device
    /// listener answers EST instead of reversing the connection), presenting the
    /// current certificate (re-enrollment) or the claim certificate (enrollment), if any.
    func estTLSConfiguration(withCertificate which: ESTIdentity) -> TLSConfiguration {
        var c = TLSConfiguration(role: .client)
        if which == .current {
            c.certificateFile = certFile
            c.keyFile = keyFile
        } else if which == .claim {
            c.certificateFile = claimCertFile
            c.keyFile = claimKeyFile
        }
        c.trustFile = caFile
        c.minimumVersion = tlsMinimum
        c.alpn = ["http/1.1"]
        return c
    }
}
