// The simulator's settings, from the command line or a config file (the same
// `key = value` format and option spelling as device-agent).
import EventLoop
import FleetPKI
import TLS
import AgentKit
import ConfigFormat

public struct SimOptions {
    public var gateway = HostPort(host: "127.0.0.1", port: 8443)
    /// Name the gateway certificate must carry; defaults to the gateway host.
    public var serverName: String?
    /// A fleet PKI directory (`fleet-gateway pki init`): devices get certificates
    /// issued in memory by its CA, which is also trusted for the gateway.
    public var caDirectory: String?
    /// The CA that signed the gateway certificate (default: CA_DIR/ca.crt).
    public var caFile: String?
    /// A folder of NAME.crt + NAME.key per device (`pki issue` writes DIR/devices/).
    public var certDirectory: String?
    public var plaintext = false
    public var devices = 1
    public var connections = 1
    /// printf-style: one %d (optionally %0Nd) numbered from 1.
    public var namePattern = "dev-%05d"
    /// Devices started per second (0: all at once).
    public var ramp = 0.0
    /// Seconds to run before stopping (0: until SIGTERM or SIGINT).
    public var duration = 0.0
    public var report: String?
    public var faults: [FaultSpec] = []
    public var seed: UInt64 = 1
    public var logLevel = LogLevel.error
    public var idlePingMs = 4_000
    public var connectTimeoutMs = 10_000
    public var maxConcurrentStreams = 100
    /// Interval of the connected-devices curve in the report.
    public var sampleMs = 1_000
    public var tlsMinimum = TLSVersion.tls13
    /// Enrollment (EST): DIR/NAME.token is each device's one-time token; a device
    /// without DIR/NAME.crt enrolls at the gateway (the agent's Enrollment) and
    /// writes DIR/NAME.key and DIR/NAME.crt, then dials with them.
    public var enrollTokenDirectory: String?
    /// A gateway PKI directory where the simulator mints the missing tokens itself
    /// (EnrollmentTokens.create, one per device, bound to its name).
    public var mintTokensDirectory: String?
    /// Lifetime of a minted token, seconds.
    public var mintTokenSeconds: Int64 = 86_400
    /// Where EST is asked (default: the gateway).
    public var estServer: HostPort?
    /// Enrolled devices re-enroll at about two thirds of their certificate's life.
    public var renew = true

    /// Whether the devices get their certificates over EST.
    public var enrolls: Bool { enrollTokenDirectory != nil }

    public static let keys = ["config", "gateway", "server_name", "ca_dir", "ca", "cert_dir", "plaintext", "devices",
                              "connections", "name_pattern", "ramp", "duration", "report", "fault", "seed",
                              "log_level", "idle_ping_ms", "connect_timeout_ms", "max_concurrent_streams",
                              "sample_ms", "tls_min", "enroll_token_dir", "mint_tokens", "token_expires", "est_server", "renew",
                              "help", "version", "check_config"]
    public static let flags = ["plaintext", "help", "version", "check_config"]

    public init() {}

    public init(_ s: Settings) throws(ConfigError) {
        try s.checkKnown(SimOptions.keys)
        guard let gw = try s.hostPort("gateway") else { throw ConfigError("no gateway set: use --gateway HOST:PORT") }
        gateway = gw
        serverName = s.string("server_name")
        caDirectory = s.string("ca_dir")
        enrollTokenDirectory = s.string("enroll_token_dir")
        mintTokensDirectory = s.string("mint_tokens")
        caFile = s.string("ca") ?? (caDirectory ?? mintTokensDirectory).map { $0 + "/ca.crt" }
        certDirectory = s.string("cert_dir")
        plaintext = try s.bool("plaintext")
        devices = try s.int("devices", default: 1, min: 1, max: 1_000_000)
        connections = try s.int("connections", default: 1, min: 1, max: 64)
        if let p = s.string("name_pattern") { namePattern = p.lowercased() }  // DNS names: case does not matter
        guard DeviceNameFormat.format(namePattern, 1) != nil else {
            throw ConfigError("--name-pattern '" + namePattern + "' needs exactly one %d or %0Nd")
        }
        for i in [1, devices] {
            let name = DeviceNameFormat.format(namePattern, i)!
            guard PKI.isValidDeviceName(name) else {
                throw ConfigError("--name-pattern gives '" + name + "', which is not a valid device name (a DNS hostname whose last label is not a number)")
            }
        }
        ramp = try s.double("ramp", default: 0, min: 0, max: 1_000_000)
        duration = try s.double("duration", default: 0, min: 0, max: 31_536_000)
        report = s.string("report")
        seed = UInt64(try s.int("seed", default: 1, min: 0, max: Int.max))
        logLevel = try s.logLevel("log_level", default: .error)
        idlePingMs = try s.int("idle_ping_ms", default: 4_000, min: 0, max: 3_600_000)
        connectTimeoutMs = try s.int("connect_timeout_ms", default: 10_000, min: 100, max: 600_000)
        maxConcurrentStreams = try s.int("max_concurrent_streams", default: 100, min: 1, max: 10_000)
        sampleMs = try s.int("sample_ms", default: 1_000, min: 10, max: 3_600_000)
        tlsMinimum = try s.tlsVersion("tls_min", default: .tls13)
        mintTokenSeconds = Int64(try s.int("token_expires", default: 86_400, min: 1, max: 36_500 * 86_400))
        estServer = try s.hostPort("est_server")
        renew = s.string("renew") != nil ? try s.bool("renew") : true
        try checkEnrollment(s)
        for item in s.items where item.key == "fault" {
            do throws(ConfigError) {
                faults.append(try FaultSpec(parsing: item.value))
            } catch {
                throw ConfigError(item.origin + ": " + error.message)
            }
        }
        if !plaintext && !enrolls {
            guard caFile != nil else {
                throw ConfigError("TLS needs --ca-dir DIR (a fleet PKI) or --ca FILE with --cert-dir DIR, or --plaintext")
            }
            guard caDirectory != nil || certDirectory != nil else {
                throw ConfigError("the devices need certificates: --ca-dir DIR (issued in memory) or --cert-dir DIR (NAME.crt, NAME.key)")
            }
        }
        if faults.contains(where: { $0.kind == .wrongCA || $0.kind == .expired }) && (caDirectory == nil || plaintext) {
            throw ConfigError("the wrong-ca and expired faults issue certificates: they need --ca-dir, and TLS")
        }
        if caDirectory != nil && certDirectory != nil {
            throw ConfigError("--ca-dir (certificates issued in memory) and --cert-dir (read from files) exclude each other")
        }
    }

    private func checkEnrollment(_ s: Settings) throws(ConfigError) {
        guard enrolls else {
            for (key, flag) in [("mint_tokens", "--mint-tokens"), ("token_expires", "--token-expires"), ("est_server", "--est-server"),
                                ("renew", "--renew")] where s.string(key) != nil {
                throw ConfigError(flag + " goes with --enroll-token-dir DIR (devices that enroll over EST)")
            }
            return
        }
        guard !plaintext else { throw ConfigError("--enroll-token-dir needs TLS (not --plaintext)") }
        guard caDirectory == nil, certDirectory == nil else {
            throw ConfigError("--enroll-token-dir (certificates from the gateway's EST) excludes --ca-dir and --cert-dir")
        }
        guard caFile != nil else {
            throw ConfigError("--enroll-token-dir needs the CA that signed the gateway: --ca FILE (or --mint-tokens PKI_DIR, whose ca.crt)")
        }
    }

    /// The device name of index `i` (1-based).
    public func name(_ i: Int) -> String { DeviceNameFormat.format(namePattern, i)! }

    /// The agent settings every virtual device runs with.
    func agentConfig(name: String) -> AgentConfig {
        var c = AgentConfig()
        c.gateway = gateway
        c.serverName = serverName
        c.connections = connections
        c.plaintext = plaintext
        c.tlsMinimum = tlsMinimum
        c.logLevel = logLevel
        c.name = name
        c.maxConcurrentStreams = maxConcurrentStreams
        c.idlePingMs = idlePingMs
        c.connectTimeoutMs = connectTimeoutMs
        if let dir = enrollTokenDirectory {
            c.caFile = caFile
            c.certFile = dir + "/" + name + ".crt"
            c.keyFile = dir + "/" + name + ".key"
            c.enrollTokenFile = dir + "/" + name + ".token"
            c.estServer = estServer
            c.renew = renew
        }
        return c
    }
}

/// "dev-%05d" and the like: one integer conversion, nothing else.
enum DeviceNameFormat {
    static func format(_ pattern: String, _ n: Int) -> String? {
        let b = Array(pattern.utf8)
        guard let pct = b.firstIndex(of: UInt8(ascii: "%")) else { return nil }
        var i = pct + 1
        var zero = false
        var width = 0
        if i < b.count && b[i] == UInt8(ascii: "0") { zero = true; i += 1 }
        while i < b.count, b[i] >= UInt8(ascii: "0"), b[i] <= UInt8(ascii: "9"), width < 20 {
            width = width * 10 + Int(b[i] - UInt8(ascii: "0"))
            i += 1
        }
        guard i < b.count, b[i] == UInt8(ascii: "d") else { return nil }
        let rest = Array(b[(i + 1)...])
        guard !rest.contains(UInt8(ascii: "%")) else { return nil }
        var digits = String(n)
        while digits.utf8.count < width { digits = (zero ? "0" : " ") + digits }
        return String(decoding: b[..<pct], as: UTF8.self) + digits + String(decoding: rest, as: UTF8.self)
    }
}
