// AccessControl decides, once per request and before it is routed, whether a user
// may reach a device: the one place where the gateway authenticates users and asks
// the access policy. The same decision serves HTTP/1.1, HTTP/2, WebSocket upgrades
// and extended CONNECT (Exchange.start calls it), so a denied request never reaches
// a device's queue, and costs the device nothing.
//
//   credentials   the Authorization field (a token as Bearer or as Basic auth's
//                 password; a JWT as Bearer), the `jwt_header` field, or a user
//                 certificate on the HTTPS listener. Credentials that are present
//                 must be valid: a wrong one is 401, never "anonymous".
//   decision      no policy: allowed (the listener is on loopback, or the operator
//                 said `public_access = open`). A policy: its decision; a denied
//                 anonymous user gets 401 (credentials may help), a denied principal
//                 403. A token's own `--devices` scope is checked whatever the policy.
//   throttling    wrong credentials from one address (an IPv4 address or an IPv6 /64)
//                 count; `failureLimit` of them within `failureWindow` answer 429 to
//                 that address for `penalty`, before any credential is looked at.
//
// Nothing here does I/O except through `fetchKeys` (the JWKS URL), whose answer may
// come later: `authorize` then calls back once the keys are in.
import CLibc
import EventLoop
import FleetAccess
import HTTP1
import TLS

final class AccessControl {
    enum Outcome: Equatable {
        case allow(Principal?)
        /// 401 (missing or wrong credentials, or a denied anonymous user), 403, 429.
        case deny(status: Int, reason: String, principal: Principal?)

        var principal: Principal? {
            switch self {
            case .allow(let p): return p
            case .deny(_, _, let p): return p
            }
        }
        var status: Int? {
            if case .deny(let s, _, _) = self { return s }
            return nil
        }
    }

    static let failureLimit = 10
    static let failureWindowNs: UInt64 = 60_000_000_000
    static let penaltySeconds = 60
    /// The JWKS URL is asked again for an unknown `kid` at most this often.
    static let refetchIntervalNs: UInt64 = 60_000_000_000
    static let maxTrackedAddresses = 100_000

    private var config: GatewayConfig
    private let clock: Clock
    private let wallClock: () -> Int64
    private let logger: Logger
    private var policy: AccessPolicy?
    private var tokens: TokenStore?
    private var tokensStamp: TokenStore.FileStamp?
    private var tokensCheckedAt: UInt64?
    private var jwks: JWKS?
    /// The JWKS URL's last answer that parsed.
    private var urlKeys: JWKS?
    private var verifier: JWTVerifier?
    private let jwtCache = JWTCache()
    /// Authorization values already verified, and whose: a client sends the same one
    /// with every request, so it is parsed, hashed and looked up once. Forgotten
    /// whenever tokens, keys or settings change, and per entry once it expires.
    private var verified: [String: Principal] = [:]
    static let maxVerified = 1024
    /// The policy's decisions by what they depend on (DecisionKey); forgotten with the policy.
    private var decisions: [DecisionKey: PolicyDecision] = [:]
    static let maxDecisions = 4096
    /// Asks the JWKS URL for the keys; the answer (the body, or nil on failure) may come later.
    var fetchKeys: ((@escaping ([UInt8]?) -> Void) -> Void)?
    /// New keys came from the JWKS URL (the gateway logs them).
    var onKeys: ((JWKS) -> Void)?
    private var lastFetch: UInt64?
    private var fetchWaiters: [() -> Void] = []
    private var failures: [String: (count: Int, since: UInt64, blockedUntil: UInt64?)] = [:]

    init(config: GatewayConfig, clock: Clock, wallClock: @escaping () -> Int64 = { Int64(time(nil)) }, logger: Logger) {
        self.config = config
        self.clock = clock
        self.wallClock = wallClock
        self.logger = logger
        apply(config)
    }

    /// Whether users authenticate here at all; when false, their Authorization field is
    /// the device's business and passes through.
    var authenticates: Bool { config.tokens != nil || config.jwtEnabled }
    /// Whether the Authorization field carries credentials for the gateway (tokens, or
    /// JWTs as Bearer); else it is the device's business and passes through.
    var ownsAuthorization: Bool { config.tokens != nil || (config.jwtEnabled && config.jwtHeader == "authorization") }
        /// Whether the policy decides (else everyone is allowed).
    var hasPolicy: Bool { policy != nil }

    /// SIGHUP: the new policy, tokens and keys (all read and checked by GatewayConfig).
    func apply(_ new: GatewayConfig) {
        config = new
        policy = new.accessPolicy
        decisions.removeAll()
        tokens = new.tokens
        // The file may have changed since GatewayConfig read it (a `token revoke` in
        // between): the first token presented reads it again.
        tokensStamp = nil
        tokensCheckedAt = nil
        if new.jwtJWKSURL == nil { urlKeys = nil }
        // Issuer, audience or keys may have changed: the verifier is made again and
        // what it verified before is forgotten; the URL is asked again (a key the
        // identity provider withdrew goes on a reload, and hourly: Gateway).
        setKeys(fromURL: urlKeys)
        refreshKeys()
    }

    /// The JWT keys: the JWKS file's and the URL's last good answer together. Verified
    /// tokens cached under the old keys are forgotten.
    func setKeys(fromURL: JWKS?) {
        urlKeys = fromURL
        let keys: JWKS? = switch (config.jwtJWKS, fromURL) {
        case (let f?, let u?): f.merging(u)
        case (let f?, nil): f
        case (nil, let u): u
        }
        jwks = keys
        jwtCache.removeAll()
        verified.removeAll()
        verifier = keys.map {
            JWTVerifier(keys: $0, issuer: config.jwtIssuer, audience: config.jwtAudience,
                        groupsClaim: config.jwtGroupsClaim, leewaySeconds: Int64(config.jwtLeewaySeconds))
        }
    }

    /// At start and on reload: fetch the JWKS URL's keys (when none came from a file).
    func refreshKeys() {
        guard config.jwtJWKSURL != nil else { return }
        lastFetch = nil
        refetchKeys {}
    }

    // MARK: The decision

    /// Decides for one request; `done` runs at once, or once the JWKS URL has answered.
    func authorize(_ request: AccessRequest, fields: HTTPHeaders, tls: TLSConnection?, _ done: @escaping (Outcome) -> Void) {
        let now = clock.now()
        let share = ConnectionBudget.share(request.source)
        if let f = failures[share], let until = f.blockedUntil {
            if now < until {
                done(.deny(status: 429, reason: "too many failed logins from this address", principal: nil))
                return
            }
            failures[share] = nil
        }
        switch authenticate(fields: fields, tls: tls, now: now) {
        case .anonymous:
            done(decide(request, principal: nil))
        case .principal(let p):
            // A certificate was checked at the handshake, a connection may outlive it
            // (tokens and JWTs are checked as they are presented, JWTs with their leeway).
            if p.method == .certificate, let expires = p.expires, expires <= wallClock() {
                done(.deny(status: 401, reason: p.displayName + "'s credential has expired", principal: nil))
                return
            }
            done(decide(request, principal: p))
        case .failed(let why):
            fail(share, now: now)
            done(.deny(status: 401, reason: why, principal: nil))
        case .needKeys(let token):
            refetchKeys {
                let outcome: Outcome
                switch self.verifyJWT(token, allowRefetch: false) {
                case .principal(let p): outcome = self.decide(request, principal: p)
                case .failed(let why):
                    self.fail(share, now: self.clock.now())
                    outcome = .deny(status: 401, reason: why, principal: nil)
                default: outcome = .deny(status: 401, reason: "JWT: unknown key", principal: nil)
                }
                done(outcome)
            }
        }
    }

    private func decide(_ request: AccessRequest, principal: Principal?) -> Outcome {
        if let p = principal, let scope = p.scope, !scope.matches(request.device) {
            return .deny(status: 403, reason: p.displayName + " is limited to other devices", principal: p)
        }
        guard let policy else { return .allow(principal) }
        var r = request
        r.principal = principal
        // The policy is a pure function of these: users repeat the same few requests.
        let key = DecisionKey(r)
        let d: PolicyDecision
        if let known = decisions[key] {
            d = known
        } else {
            d = policy.decide(r)
            if decisions.count >= AccessControl.maxDecisions { decisions.removeAll(keepingCapacity: true) }
            decisions[key] = d
        }
        if d.allowed { return .allow(principal) }
        let rule = d.line.map { "rule at line " + String($0) } ?? "no rule allows it"
        guard let principal else {
            return .deny(status: 401, reason: "authentication required (" + rule + ")", principal: nil)
        }
        return .deny(status: 403, reason: principal.displayName + " may not (" + rule + ")", principal: principal)
    }

    // MARK: Credentials

    private enum Authentication {
        case anonymous
        case principal(Principal)
        case failed(String)
        /// A JWT signed with a key we do not have: ask the JWKS URL, then try again.
        case needKeys(String)
    }

    private func authenticate(fields: HTTPHeaders, tls: TLSConnection?, now: UInt64) -> Authentication {
        let jwtInAuthorization = config.jwtEnabled && config.jwtHeader == "authorization"
        if config.jwtEnabled && !jwtInAuthorization, let values = nonEmptyValues(fields, config.jwtHeader) {
            guard values.count == 1 else { return .failed("more than one " + config.jwtHeader + " field") }
            return verifyJWT(values[0], allowRefetch: true)
        }
        if ownsAuthorization, let values = nonEmptyValues(fields, "authorization") {
            guard values.count == 1 else { return .failed("more than one Authorization field") }
            reloadTokensIfChanged(now: now)
            if let p = verified[values[0]] {
                if p.expires.map({ $0 > wallClock() }) ?? true { return .principal(p) }
                verified[values[0]] = nil
            }
            let result: Authentication
            switch Credentials.parse(authorization: values[0]) {
            case .basic(let user, let password):
                result = checkToken(password, user: user, now: now)
            case .bearer(let secret):
                result = secret.hasPrefix("rht_") || !jwtInAuthorization ? checkToken(secret, user: nil, now: now)
                                                                         : verifyJWT(secret, allowRefetch: true)
            case nil:
                return .failed("Authorization is neither Bearer nor Basic")
            }
            if case .principal(let p) = result {
                if verified.count >= AccessControl.maxVerified { verified.removeAll(keepingCapacity: true) }
                verified[values[0]] = p
            }
            return result
        }
        if let tls, let p = userPrincipal(from: tls) { return .principal(p) }
        return .anonymous
    }

    private func nonEmptyValues(_ fields: HTTPHeaders, _ name: String) -> [String]? {
        let v = fields.values(name)
        return v.isEmpty ? nil : v
    }

    /// (The caller has looked at the tokens file: reloadTokensIfChanged.)
    private func checkToken(_ secret: String, user: String?, now: UInt64) -> Authentication {
        guard let tokens else { return .failed("tokens are not accepted here") }
        switch tokens.authenticate(secret: secret, user: user, now: wallClock()) {
        case .valid(let p): return .principal(p)
        case .expired(let name): return .failed("token " + name + " has expired")
        case .wrongUser: return .failed("the user name does not match the token")
        case .unknown: return .failed("unknown token")
        }
    }

    private func verifyJWT(_ token: String, allowRefetch: Bool) -> Authentication {
        let now = wallClock()
        if let p = jwtCache.principal(for: token, now: now) { return .principal(p) }
        guard let verifier else {
            return allowRefetch && config.jwtJWKSURL != nil ? .needKeys(token) : .failed("JWT: no keys")
        }
        switch verifier.verify(token, now: now) {
        case .success(let p):
            jwtCache.insert(token, p)
            return .principal(p)
        case .failure(.unknownKey(let kid)):
            if allowRefetch && config.jwtJWKSURL != nil { return .needKeys(token) }
            return .failed("JWT: unknown key " + (kid ?? "(no kid)"))
        case .failure(let e):
            return .failed("JWT: " + e.description)
        }
    }

    /// Asks the JWKS URL again (at most once a minute; one fetch at a time, others wait
    /// for it); the keys are replaced only by a set that parses. Then `then` runs.
    private func refetchKeys(_ then: @escaping () -> Void) {
        let now = clock.now()
        guard let fetchKeys else { return then() }
        if !fetchWaiters.isEmpty {
            fetchWaiters.append(then)
            return
        }
        if let last = lastFetch, now &- last < AccessControl.refetchIntervalNs { return then() }
        lastFetch = now
        fetchWaiters.append(then)
        fetchKeys { body in
            if let body {
                do throws(JWTError) {
                    let keys = try JWKS.parse(body)
                    self.setKeys(fromURL: keys)
                    self.onKeys?(keys)
                } catch {
                    self.logger.warning("JWKS from " + (self.config.jwtJWKSURL ?? "?") + " refused, keeping the keys we had: " + error.description)
                }
            }
            let waiting = self.fetchWaiters
            self.fetchWaiters = []
            for w in waiting { w() }
        }
    }

    /// The tokens file changed on disk (`token create` or `revoke`): read it again, at
    /// most once a second; a file that does not parse keeps the tokens we had.
    private func reloadTokensIfChanged(now: UInt64) {
        guard let path = config.tokensFile else { return }
        if let at = tokensCheckedAt, now &- at < 1_000_000_000 { return }
        tokensCheckedAt = now
        let stamp = TokenStore.stamp(path: path)
        guard stamp != tokensStamp else { return }
        do throws(TokenError) {
            tokens = try TokenStore.load(path: path)
            tokensStamp = stamp
            verified.removeAll()
            logger.notice("tokens file " + path + " changed: " + String(tokens?.count ?? 0) + " tokens")
        } catch {
            tokensStamp = stamp
            logger.error("tokens file " + path + " changed but is refused, keeping the tokens we had: " + error.description)
        }
    }

    private func fail(_ share: String, now: UInt64) {
        if failures.count >= AccessControl.maxTrackedAddresses {
            failures = failures.filter { now &- $0.value.since < AccessControl.failureWindowNs || ($0.value.blockedUntil ?? 0) > now }
            if failures.count >= AccessControl.maxTrackedAddresses { failures.removeAll() }
        }
        var f = failures[share] ?? (0, now, nil)
        if now &- f.since >= AccessControl.failureWindowNs { f = (0, now, nil) }
        f.count += 1
        if f.count >= AccessControl.failureLimit {
            f.blockedUntil = now &+ UInt64(AccessControl.penaltySeconds) * 1_000_000_000
            logger.warning("access: " + String(f.count) + " failed logins from " + share + " within a minute; answering 429 for "
                           + String(AccessControl.penaltySeconds) + " s")
        }
        failures[share] = f
    }

    // MARK: For the device

    /// Fields that claim who the user is: the device learns that from us only.
    static let identityFields: Set<String> = [
        "x-forwarded-user", "x-forwarded-email", "x-forwarded-groups", "x-forwarded-preferred-username",
        "x-remote-user", "remote-user", "x-auth-request-user", "x-auth-request-email", "x-auth-request-groups",
        "x-user", "x-email",
    ]

    /// Whether a request field (its name in lower case) stays away from the device:
    /// the credentials meant for us, and any identity a user claimed.
    func dropsForDevice(_ name: String) -> Bool {
        AccessControl.identityFields.contains(name) || (name == "authorization" && ownsAuthorization)
            || (config.jwtEnabled && name == config.jwtHeader)
    }

    /// The request's fields as the device gets them (the access part of what
    /// Exchange does with ForwardedFields): ours and claimed identities removed,
    /// X-Forwarded-User set to the principal.
    func forDevice(_ fields: HTTPHeaders, principal: Principal?) -> HTTPHeaders {
        var out = HTTPHeaders()
        for (n, v) in fields where !dropsForDevice(HTTPFieldBytes.lowercased(n)) { out.add(n, v) }
        if let principal { out.add("x-forwarded-user", principal.displayName) }
        return out
    }
}

/// What the policy's decision depends on: who (all a rule can look at), which
/// device, method, path (the policy ignores the query), source address and port.
struct DecisionKey: Hashable {
    let method: AuthMethod?
    let name: String
    let email: String?
    let groups: [String]
    let device: String
    let verb: String
    let path: Substring
    let source: String
    let port: Int?

    init(_ r: AccessRequest) {
        method = r.principal?.method
        name = r.principal?.name ?? ""
        email = r.principal?.email
        groups = r.principal?.groups ?? []
        device = r.device
        verb = r.method
        path = r.path.utf8.firstIndex(of: 0x3F).map { r.path[..<$0] } ?? r.path[...]
        source = r.source
        port = r.port
    }
}
