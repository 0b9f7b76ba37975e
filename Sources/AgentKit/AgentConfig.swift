// The agent's settings, from a config file and the command line (same keys).
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
    /// A one-time EST enrollment token (`fleet-gateway pki enroll-token`), or the file
    /// holding it (better: not in the config, not on a command line). Used only while
    /// `certFile` does not exist: the agent then makes `keyFile`, enrolls as `name`
    /// and writes `certFile` before it dials.
    public var enrollToken: String?
    public var enrollTokenFile: String?
    /// Where EST is asked (enrollment and renewal); defaults to `gateway`.
    public var estServer: HostPort?
    /// Re-enroll at about two thirds of the certificate's life. Default: on with an
    /// enrollment token, off without (a certificate made by hand).
    public var renew = false

    public static let keys = ["config", "gateway", "server_name", "ca", "cert", "key", "local", "connections",
                              "plaintext", "tls_min", "log_level", "local_timeout_ms", "name",
                              "max_concurrent_streams", "local_max_connections", "drain_timeout_ms", "idle_ping_ms", "connect_timeout_ms",
                              "enroll_token", "enroll_token_file", "est_server", "renew", "check_config", "help", "version"]
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
        if let n = s.string("name") { name = n }
        enrollToken = s.string("enroll_token")
        enrollTokenFile = s.string("enroll_token_file")
        estServer = try s.hostPort("est_server")
        renew = s.string("renew") != nil ? try s.bool("renew") : (enrollToken != nil || enrollTokenFile != nil)
        if renew && plaintext { throw ConfigError("renew needs TLS (not --plaintext)") }
        if enrollToken != nil || enrollTokenFile != nil {
            guard !plaintext else { throw ConfigError("enroll_token needs TLS (not --plaintext)") }
            guard s.string("name") != nil else { throw ConfigError("enroll_token needs --name NAME (the name the certificate is asked for)") }
            guard enrollToken == nil || enrollTokenFile == nil else { throw ConfigError("set enroll_token or enroll_token_file, not both") }
        }
        tlsMinimum = try s.tlsVersion("tls_min", default: .tls13)
        logLevel = try s.logLevel("log_level", default: .info)
        if !plaintext {
            guard caFile != nil else { throw ConfigError("TLS needs --ca FILE (the fleet CA that signed the gateway certificate), or --plaintext") }
            guard certFile != nil, keyFile != nil else { throw ConfigError("TLS needs --cert FILE and --key FILE (this device's certificate and key), or --plaintext") }
        }
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

    /// Whether the agent must enroll before it dials: a token and no certificate yet.
    public var needsEnrollment: Bool {
        guard enrollToken != nil || enrollTokenFile != nil, let certFile else { return false }
        return !AtomicFile.exists(certFile)
    }

    /// The client context for EST: HTTP/1.1 only (never h2, so the gateway's device
    /// listener answers EST instead of reversing the connection), presenting the
    /// current certificate when there is one (re-enrollment).
    func estTLSConfiguration(withCertificate: Bool) -> TLSConfiguration {
        var c = TLSConfiguration(role: .client)
        if withCertificate {
            c.certificateFile = certFile
            c.keyFile = keyFile
        }
        c.trustFile = caFile
        c.minimumVersion = tlsMinimum
        c.alpn = ["http/1.1"]
        return c
    }
}
