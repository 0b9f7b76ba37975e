// fleet-gateway settings: from a config file and the command line (same keys).
import FleetAccess
import FleetPKI
import EventLoop
import TLS
import ConfigFormat

struct GatewayConfig {
    var listenDevices = HostPort(host: "127.0.0.1", port: 8443)
    var listenPublic = HostPort(host: "127.0.0.1", port: 8080)
    /// The operator's listener (devices, metrics, status page); nil: none.
    var listenAdmin: HostPort? = HostPort(host: "127.0.0.1", port: 9180)
    var accessLog = true
    /// CRL of the fleet CA: devices whose certificates it lists are refused.
    var crlFile: String?
    /// Only certificate names matching these globs may connect (nil: any).
    var allowDevices: NamePattern?
    /// Connections one device may hold; a newer one closes the oldest.
    var maxConnectionsPerDevice = 8
    /// Concurrent streams on a user's HTTP/2 connection.
    var publicMaxStreams = 100
    /// Fleet CA: device certificates must chain to it.
    var caFile: String?
    /// The gateway's certificate and key for the device listener.
    var certFile: String?
    var keyFile: String?
    /// Certificate and key for the public listener; without them it speaks plain HTTP.
    var publicCertFile: String?
    var publicKeyFile: String?
    var hostnameTemplate = HostnameTemplate.identity
    var plaintextDevices = false
    /// Identity of every device on a plaintext device listener.
    var plaintextDeviceName = "device"
    var tlsMinimum = TLSVersion.tls13
    var responseTimeoutMs = 30_000
    var logLevel = LogLevel.info
    var maxHeadBytes = 16384
    var drainTimeoutMs = 10_000
    /// A user's request head (and first, the TLS handshake) must arrive within this.
    var requestTimeoutMs = 10_000
    /// A kept-alive user connection with no request for this long is closed.
    var idleTimeoutMs = 60_000
    /// A device must finish TLS and its SETTINGS within this after connecting.
    var handshakeTimeoutMs = 10_000
    /// PING a device after this much silence; drop it after as much again (0: off).
    var idlePingMs = 4_000
    /// A request no connection can take waits this long (all busy) ...
    var queueTimeoutMs = 10_000
    /// ... or this long (the device has no connection: it may be re-dialing).
    var graceMs = 5_000
    /// Requests waiting per device, at most.
    var queueMax = 1024
    /// Health checks (0 turns them off).
    var checkIntervalMs = 10_000
    var checkTimeoutMs = 3_000
    var checkMethod = "GET"
    var checkPath = "/"
    var checkStatus = 200...499
    var checkRise = 2
    var checkFall = 3
    /// Peers whose X-Forwarded-For and Forwarded we extend (their X-Forwarded-Proto and
    /// -Host kept); from anyone else those fields are replaced. Empty: nobody.
    var trustedProxies: [CIDR] = []
    /// `cookie_domain = keep`: pass Set-Cookie's Domain attribute on (default strip:
    /// a device's cookies are host-only, not shared with its neighbours).
    var keepCookieDomain = false
    /// User connections (HTTP/1.1 and HTTP/2, TLS handshakes included), in all and per
    /// source address; 0: derived from RLIMIT_NOFILE at start (ConnectionBudget).
    var maxUserConnections = 0
    var maxUserConnectionsPerAddress = 0
    /// The windows of all HTTP/2 users' uploads together (UploadWindow): the most request
    /// body users can park in the gateway; past it a new upload gets 503 with Retry-After.
    var uploadBudgetBytes = 256 << 20
    /// Who may reach which device (AccessControl). nil: everyone, which a public listener
    /// off loopback allows only with `public_access = open`.
    var accessPolicyFile: String?
    var accessPolicy: AccessPolicy?
    var publicAccessOpen = false
    /// Users' tokens (`fleet-gateway token create`): names, scopes and SHA-256 of the secrets.
    var tokensFile: String?
    var tokens: TokenStore?
    /// JWTs (OIDC): the keys from a file and/or a URL, and the claims they must carry.
    var jwtJWKSFile: String?
    var jwtJWKS: JWKS?
    var jwtJWKSURL: String?
    var jwtJWKSCA: String?
    var jwtIssuer: String?
    var jwtAudience: String?
    /// The field that carries the JWT: `authorization` (Bearer) or one an SSO proxy sets.
    var jwtHeader = "authorization"
    var jwtGroupsClaim = "groups"
    var jwtLeewaySeconds = 60
    /// Whether users authenticate at all (tokens, JWTs or user certificates may then be asked for).
    var jwtEnabled: Bool { jwtJWKS != nil || jwtJWKSURL != nil }
    /// The admin listener wants `Authorization: Bearer` this (required off loopback).
    var adminToken: String?
    /// One set of request and byte counters per device in /metrics.
    var metricsPerDevice = false
    /// The fleet PKI directory (`pki init`): EST on the device listener (/cacerts from
    /// DIR/ca.crt; /simpleenroll and /simplereenroll sign with DIR/ca.key, record in
    /// DIR/issued.txt, take tokens from DIR/enroll-tokens) and the CRL's renewal. nil:
    /// no EST, the device listener requires a certificate of every client as before.
    var pkiDir: String?
    /// Lifetime of the certificates EST issues.
    var deviceCertDays = 30
    /// `manual`: a /simpleenroll waits (202) until an operator approves it on the admin API.
    var enrollApprovalManual = false

    static let keys = ["config", "listen_devices", "listen_public", "listen_admin", "access_log", "crl", "allow_devices",
                       "max_connections_per_device", "public_max_streams", "ca", "cert", "key", "public_cert", "public_key",
                       "hostname_template", "plaintext_devices", "plaintext_device_name", "tls_min",
                       "response_timeout_ms", "log_level", "max_header_bytes", "drain_timeout_ms", "request_timeout_ms", "idle_timeout_ms",
                       "handshake_timeout_ms", "idle_ping_ms", "queue_timeout_ms", "grace_ms", "queue_max",
                       "check_interval_ms", "check_timeout_ms", "check_method", "check_path", "check_status",
                       "check_rise", "check_fall", "trusted_proxies", "cookie_domain",
                       "max_user_connections", "max_user_connections_per_address", "upload_budget_bytes",
                       "access_policy", "public_access", "tokens", "jwt_jwks", "jwt_jwks_url", "jwt_jwks_ca", "jwt_issuer",
                       "jwt_audience", "jwt_header", "jwt_groups_claim", "jwt_leeway_s", "admin_token", "metrics_per_device",
                       "pki_dir", "device_cert_days", "enroll_approval",
                       "check_config", "help", "version"]
    static let flags = ["plaintext_devices", "check_config", "help", "version"]

    init(_ s: Settings) throws(ConfigError) {
        try s.checkKnown(GatewayConfig.keys)
        if let v = try s.hostPort("listen_devices") { listenDevices = v }
        if let v = try s.hostPort("listen_public") { listenPublic = v }
        if s.string("listen_admin") == "off" { listenAdmin = nil } else if let v = try s.hostPort("listen_admin") { listenAdmin = v }
        if s.last("access_log") != nil { accessLog = try s.bool("access_log") }
        crlFile = s.string("crl")
        if let v = s.last("allow_devices") {
            guard let p = NamePattern(v.value) else { throw ConfigError(v.origin + ": allow_devices must be comma-separated name patterns, e.g. dev-*,*.lab.example.com") }
            allowDevices = p
        }
        maxConnectionsPerDevice = try s.int("max_connections_per_device", default: 8, min: 1, max: 1024)
        publicMaxStreams = try s.int("public_max_streams", default: 100, min: 1, max: 10_000)
        caFile = s.string("ca")
        certFile = s.string("cert")
        keyFile = s.string("key")
        publicCertFile = s.string("public_cert")
        publicKeyFile = s.string("public_key")
        plaintextDevices = try s.bool("plaintext_devices")
        if let v = s.last("plaintext_device_name") {
            guard PKI.isValidHostname(v.value) else { throw ConfigError(v.origin + ": '" + v.value + "' is not a valid device name") }
            plaintextDeviceName = v.value.lowercased()
        }
        if let v = s.last("hostname_template") {
            guard let t = HostnameTemplate(v.value) else {
                throw ConfigError(v.origin + ": hostname_template must contain {cn} once and form a hostname, e.g. {cn}.devices.example.com")
            }
            hostnameTemplate = t
        }
        tlsMinimum = try s.tlsVersion("tls_min", default: .tls13)
        logLevel = try s.logLevel("log_level", default: .info)
        responseTimeoutMs = try s.int("response_timeout_ms", default: 30_000, min: 100, max: 3_600_000)
        maxHeadBytes = try s.int("max_header_bytes", default: 16384, min: 1024, max: 1 << 20)
        drainTimeoutMs = try s.int("drain_timeout_ms", default: 10_000, min: 0, max: 3_600_000)
        requestTimeoutMs = try s.int("request_timeout_ms", default: 10_000, min: 100, max: 3_600_000)
        idleTimeoutMs = try s.int("idle_timeout_ms", default: 60_000, min: 100, max: 3_600_000)
        handshakeTimeoutMs = try s.int("handshake_timeout_ms", default: 10_000, min: 100, max: 600_000)
        idlePingMs = try s.int("idle_ping_ms", default: 4_000, min: 0, max: 3_600_000)
        queueTimeoutMs = try s.int("queue_timeout_ms", default: 10_000, min: 0, max: 3_600_000)
        graceMs = try s.int("grace_ms", default: 5_000, min: 0, max: 3_600_000)
        queueMax = try s.int("queue_max", default: 1024, min: 0, max: 1_000_000)
        checkIntervalMs = try s.int("check_interval_ms", default: 10_000, min: 0, max: 3_600_000)
        checkTimeoutMs = try s.int("check_timeout_ms", default: 3_000, min: 100, max: 600_000)
        checkRise = try s.int("check_rise", default: 2, min: 1, max: 100)
        checkFall = try s.int("check_fall", default: 3, min: 1, max: 100)
        if let v = s.last("trusted_proxies"), !v.value.isEmpty {
            var list: [CIDR] = []
            for part in v.value.split(separator: ",") {
                let t = part.filter { $0 != " " }
                guard let c = CIDR(t) else {
                    throw ConfigError(v.origin + ": trusted_proxies must be comma-separated addresses or CIDRs, e.g. 10.0.0.0/8,fd00::/8")
                }
                list.append(c)
            }
            trustedProxies = list
        }
        if let v = s.last("cookie_domain") {
            guard v.value == "strip" || v.value == "keep" else { throw ConfigError(v.origin + ": cookie_domain must be strip or keep") }
            keepCookieDomain = v.value == "keep"
        }
        maxUserConnections = try s.int("max_user_connections", default: 0, min: 0, max: 10_000_000)
        maxUserConnectionsPerAddress = try s.int("max_user_connections_per_address", default: 0, min: 0, max: 10_000_000)
        uploadBudgetBytes = try s.int("upload_budget_bytes", default: 256 << 20, min: 1 << 20, max: 1 << 40)
        try readAccess(s)
        if let v = s.last("admin_token") {
            guard v.value.utf8.count >= 16, v.value.utf8.count <= 1024, v.value.utf8.allSatisfy({ $0 > 0x20 && $0 < 0x7F }) else {
                throw ConfigError(v.origin + ": admin_token must be 16 to 1024 visible ASCII characters without blanks"
                                  + " (e.g. the output of: openssl rand -base64 32)")
            }
            adminToken = v.value
        }
        if s.last("metrics_per_device") != nil { metricsPerDevice = try s.bool("metrics_per_device") }
        try readEnrollment(s)
        if let a = listenAdmin, adminToken == nil, !Loopback.isLoopback(a.host) {
            throw ConfigError((s.last("listen_admin")?.origin ?? "command line") + ": listen_admin " + a.description
                              + " is not a loopback address: set admin_token (at least 16 characters) so that only operators reach it")
        }
        if let v = s.last("check_method") {
            guard !v.value.isEmpty, v.value.allSatisfy({ $0.isUppercase && $0.isASCII }) else {
                throw ConfigError(v.origin + ": check_method must be an HTTP method such as GET or HEAD")
            }
            checkMethod = v.value
        }
        if let v = s.last("check_path") {
            // Sent as :path: visible ASCII only (no blanks, CTLs or raw non-ASCII).
            guard v.value.hasPrefix("/"), v.value.utf8.allSatisfy({ $0 > 0x20 && $0 < 0x7F }) else {
                throw ConfigError(v.origin + ": check_path must start with / and be visible ASCII (percent-encode the rest)")
            }
            checkPath = v.value
        }
        if let v = s.last("check_status") {
            let parts = v.value.split(separator: "-", omittingEmptySubsequences: false)
            guard (1...2).contains(parts.count), let lo = Int(parts[0]), let hi = Int(parts.last!), 100 <= lo, lo <= hi, hi <= 999 else {
                throw ConfigError(v.origin + ": check_status must be a status or a range, e.g. 200-399")
            }
            checkStatus = lo...hi
        }
        if !plaintextDevices {
            guard caFile != nil else { throw ConfigError("the device listener needs --ca FILE (the fleet CA), or --plaintext-devices") }
            guard certFile != nil, keyFile != nil else { throw ConfigError("the device listener needs --cert FILE and --key FILE, or --plaintext-devices") }
        }
        if plaintextDevices, hostnameTemplate.hostname(for: plaintextDeviceName) == nil {
            let origin = (s.last("hostname_template") ?? s.last("plaintext_device_name"))?.origin ?? "command line"
            throw ConfigError(origin + ": hostname_template gives '" + plaintextDeviceName + "' no valid hostname")
        }
        if (publicCertFile == nil) != (publicKeyFile == nil) {
            throw ConfigError("--public-cert and --public-key go together")
        }
    }

    /// The EST keys. With `pki_dir`, `ca` defaults to DIR/ca.crt, and `crl` to
    /// DIR/crl.pem when that exists (so that the CRL the gateway renews is the one it uses).
    private mutating func readEnrollment(_ s: Settings) throws(ConfigError) {
        if let v = s.last("pki_dir") {
            guard !v.value.isEmpty else { throw ConfigError(v.origin + ": pki_dir must name the fleet PKI directory (pki init DIR)") }
            guard !plaintextDevices else { throw ConfigError(v.origin + ": pki_dir (EST) needs TLS on the device listener, not --plaintext-devices") }
            var dir = v.value
            while dir.count > 1 && dir.hasSuffix("/") { dir.removeLast() }
            pkiDir = dir
            if caFile == nil { caFile = dir + "/ca.crt" }
            if crlFile == nil, (try? PKI.readFile(dir + "/crl.pem")) != nil { crlFile = dir + "/crl.pem" }
        }
        deviceCertDays = try s.int("device_cert_days", default: 30, min: 1, max: 3650)
        if let v = s.last("enroll_approval") {
            guard v.value == "auto" || v.value == "manual" else { throw ConfigError(v.origin + ": enroll_approval must be auto or manual") }
            enrollApprovalManual = v.value == "manual"
        }
        if pkiDir == nil, let stray = ["device_cert_days", "enroll_approval"].compactMap({ s.last($0) }).first {
            throw ConfigError(stray.origin + ": " + stray.key + " needs pki_dir (EST)")
        }
    }

    /// The CRL file the gateway renews itself: DIR/crl.pem when it is the `crl` in use.
    var renewableCRL: String? {
        guard let dir = pkiDir, let crl = crlFile, crl == dir + "/crl.pem" else { return nil }
        return crl
    }

    /// The access control keys; the policy, tokens and JWKS files are read here, so that
    /// --check-config and a reload refuse a bad one with FILE:LINE.
    private mutating func readAccess(_ s: Settings) throws(ConfigError) {
        if let v = s.last("access_policy") {
            accessPolicyFile = v.value
            do throws(PolicyError) { accessPolicy = try AccessPolicy.load(path: v.value) } catch {
                throw ConfigError(v.origin + ": access_policy: " + error.description)
            }
        }
        if let v = s.last("public_access") {
            guard v.value == "open" || v.value == "policy" else { throw ConfigError(v.origin + ": public_access must be open or policy") }
            publicAccessOpen = v.value == "open"
        }
        if let v = s.last("tokens") {
            tokensFile = v.value
            do throws(TokenError) { tokens = try TokenStore.load(path: v.value) } catch {
                throw ConfigError(v.origin + ": tokens: " + error.description)
            }
        }
        if let v = s.last("jwt_jwks") {
            jwtJWKSFile = v.value
            jwtJWKS = try GatewayConfig.readJWKS(v)
        }
        if let v = s.last("jwt_jwks_url") {
            do throws(ConfigError) { _ = try JWKSURL(v.value) } catch { throw ConfigError(v.origin + ": " + error.description) }
            jwtJWKSURL = v.value
        }
        jwtJWKSCA = s.string("jwt_jwks_ca")
        jwtIssuer = s.string("jwt_issuer")
        jwtAudience = s.string("jwt_audience")
        if let v = s.last("jwt_header") {
            let name = HostRouting.asciiLowercased(v.value)
            guard !name.isEmpty, name.utf8.count <= 64, name.utf8.allSatisfy({ ($0 >= 0x61 && $0 <= 0x7A) || ($0 >= 0x30 && $0 <= 0x39) || $0 == 0x2D }) else {
                throw ConfigError(v.origin + ": jwt_header must be a header field name, e.g. authorization or cf-access-jwt-assertion")
            }
            guard !["host", "cookie", "content-length", "transfer-encoding", "connection"].contains(name) else {
                throw ConfigError(v.origin + ": jwt_header cannot be " + name)
            }
            jwtHeader = name
        }
        if let v = s.last("jwt_groups_claim") {
            guard !v.value.isEmpty, v.value.utf8.count <= 64 else { throw ConfigError(v.origin + ": jwt_groups_claim must be a claim name") }
            jwtGroupsClaim = v.value
        }
        jwtLeewaySeconds = try s.int("jwt_leeway_s", default: 60, min: 0, max: 600)
        let jwtKeys = ["jwt_issuer", "jwt_audience", "jwt_header", "jwt_groups_claim", "jwt_jwks_ca"]
        if !jwtEnabled, let stray = jwtKeys.compactMap({ s.last($0) }).first {
            throw ConfigError(stray.origin + ": " + stray.key + " needs jwt_jwks or jwt_jwks_url")
        }
        // An identity provider signs tokens for many applications: only those for this
        // gateway (audience) from this provider (issuer) may be principals here.
        if jwtEnabled {
            let origin = (s.last("jwt_jwks") ?? s.last("jwt_jwks_url"))?.origin ?? "command line"
            if jwtIssuer?.isEmpty ?? true {
                throw ConfigError(origin + ": JWTs need jwt_issuer (the iss your identity provider puts in its tokens)")
            }
            if jwtAudience?.isEmpty ?? true {
                throw ConfigError(origin + ": JWTs need jwt_audience (the aud your identity provider puts in tokens for this gateway)")
            }
        }
        // Secure default: users off this machine reach devices only through a policy,
        // or when the operator says `public_access = open` (warned at every start).
        if accessPolicy == nil && !publicAccessOpen && !Loopback.isLoopback(listenPublic.host) {
            throw ConfigError((s.last("listen_public")?.origin ?? "command line") + ": the public listener "
                              + listenPublic.host + ":" + String(listenPublic.port)
                              + " is not on loopback and there is no access_policy: every device would be open to anyone who reaches it;"
                              + " set access_policy = FILE, or public_access = open to allow that")
        }
    }

    static func readJWKS(_ v: Setting) throws(ConfigError) -> JWKS {
        let bytes: [UInt8]
        do throws(PKIError) { bytes = try PKI.readFile(v.value) } catch {
            throw ConfigError(v.origin + ": jwt_jwks: " + error.description)
        }
        do throws(JWTError) { return try JWKS.parse(bytes) } catch {
            throw ConfigError(v.origin + ": jwt_jwks " + v.value + ": " + error.description)
        }
    }

    func deviceTLS() -> TLSConfiguration {
        var c = TLSConfiguration(role: .server)
        c.certificateFile = certFile
        c.keyFile = keyFile
        c.trustFile = caFile
        c.crlFile = crlFile
        c.minimumVersion = tlsMinimum
        if pkiDir == nil {
            c.alpn = ["h2"]
        } else {
            // EST (issue 17) on the same port: a client offering http/1.1 (or no ALPN)
            // is an EST client and needs no certificate; the reversed connections'
            // dialers offer h2 alone, and must present one (ESTConnection).
            c.alpn = ["http/1.1", "h2"]
        }
        return c
    }

    /// The device listener's TLS context: with EST, a certificate is required of h2
    /// clients only (TLSContext.requireClientCertificate(onlyForALPN:)).
    func makeDeviceTLS() throws(OpenSSLError) -> TLSContext {
        let ctx = try TLSContext(deviceTLS())
        if pkiDir != nil { ctx.requireClientCertificate(onlyForALPN: "h2") }
        return ctx
    }

    func publicTLS() -> TLSConfiguration? {
        guard let cert = publicCertFile, let key = publicKeyFile else { return nil }
        var c = TLSConfiguration(role: .server)
        c.certificateFile = cert
        c.keyFile = key
        // Users may prove who they are with a certificate of the fleet CA (pki issue-user);
        // asked for, never required.
        if let ca = caFile {
            c.trustFile = ca
            c.crlFile = crlFile
            c.clientCertificateOptional = true
        }
        c.minimumVersion = tlsMinimum
        c.alpn = ["h2", "http/1.1"]
        return c
    }
}
