// Who is asking, and for what: the vocabulary shared by the gateway's access
// control (AccessControl), the policy (AccessPolicy), tokens (TokenStore),
// user certificates and JWTs (JWTVerifier). Nothing here does I/O.

/// How a principal proved who it is.
public enum AuthMethod: String, Sendable, CaseIterable {
    /// A token from the tokens file, as Bearer or as Basic auth's password.
    case token
    /// A user certificate (fleet CA, marked as a user's) on the HTTPS public listener.
    case certificate
    /// A JWT verified against the JWKS.
    case jwt
}

/// An authenticated user. Anonymous users have no Principal.
public struct Principal: Equatable, Sendable {
    public let method: AuthMethod
    /// Token name, certificate CN, or the JWT's `sub`.
    public let name: String
    /// JWT claims usable in rules (`email:`, `group:`).
    public var email: String? { didSet { displayName = Principal.display(method, name, email) } }
    public var groups: [String]
    /// A token's own limit (`--devices`): it reaches no other device, whatever the policy says.
    public var scope: NamePattern?
    /// Unix seconds after which the credential is no longer valid (nil: never).
    public var expires: Int64?

    public init(method: AuthMethod, name: String, email: String? = nil, groups: [String] = [],
                scope: NamePattern? = nil, expires: Int64? = nil) {
        self.method = method
        self.name = name
        self.email = email
        self.groups = groups
        self.scope = scope
        self.expires = expires
        displayName = Principal.display(method, name, email)
    }

    /// The name the device sees in X-Forwarded-User and the access log shows:
    /// `token:NAME`, `user:NAME`, or the JWT's email (else `sub:SUB`). Made once, not per request.
    public private(set) var displayName: String

    private static func display(_ method: AuthMethod, _ name: String, _ email: String?) -> String {
        switch method {
        case .token: return "token:" + name
        case .certificate: return "user:" + name
        case .jwt: return email ?? ("sub:" + name)
        }
    }
}

/// One request as the policy sees it.
public struct AccessRequest: Sendable {
    public var principal: Principal?
    /// The device's canonical (lower-case) name, as in its certificate's CN.
    public var device: String
    public var method: String
    /// The request target in origin-form (query included; the policy ignores it),
    /// or "*" for OPTIONS, or "" for CONNECT.
    public var path: String
    /// The client's address (the connection's peer; see ForwardedFields for proxies).
    public var source: String
    /// CONNECT to a TCP port of the device (a later issue): the port; nil for HTTP.
    public var port: Int?

    public init(principal: Principal?, device: String, method: String, path: String, source: String, port: Int? = nil) {
        self.principal = principal
        self.device = device
        self.method = method
        self.path = path
        self.source = source
        self.port = port
    }
}
