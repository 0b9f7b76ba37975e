// JWTVerifier checks a compact JWS (RFC 7515, 7519) signed by the identity
// provider and turns it into a Principal. What it refuses, on purpose:
//   * `alg` none, every HS* (an RSA or EC public key is public: used as an HMAC
//     secret it lets anyone sign), anything but RS256, ES256 and EdDSA, and an
//     alg that does not fit the chosen key's type (the key decides, not the token);
//   * a `crit` header (we understand no extension), keys carried by the token
//     itself (`jwk`, `jku`, `x5u`, `x5c` are ignored: only the JWKS counts);
//   * tokens over 8 KiB, JSON with duplicate names or trailing bytes, non-canonical
//     base64url;
//   * claims: no `exp`, expired, `nbf`/`iat` in the future (leeway both ways), the
//     wrong `iss` or `aud` when configured, no `sub`; `sub`, `email` and groups
//     with control characters (they reach X-Forwarded-User and the access log).
// The signature is checked before the claims are read.
import Bytes

public enum JWTError: Error, Equatable, CustomStringConvertible {
    case malformed(String)
    case tooLarge
    case unsupportedAlgorithm(String)
    case unknownKey(kid: String?)
    case badSignature
    case expired
    case notYetValid
    case wrongIssuer
    case wrongAudience
    case missingSubject
    case badKeySet(String)

    public var description: String {
        switch self {
        case .malformed(let why): return "malformed JWT: " + why
        case .tooLarge: return "JWT too large"
        case .unsupportedAlgorithm(let alg): return "JWT algorithm not accepted: " + alg
        case .unknownKey(let kid): return kid.map { "no key with kid " + $0 } ?? "no key for the JWT's algorithm"
        case .badSignature: return "JWT signature does not verify"
        case .expired: return "JWT expired"
        case .notYetValid: return "JWT not yet valid"
        case .wrongIssuer: return "JWT issuer not accepted"
        case .wrongAudience: return "JWT audience not accepted"
        case .missingSubject: return "JWT without a usable sub"
        case .badKeySet(let why): return "bad JWKS: " + why
        }
    }
}

public struct JWTVerifier: Sendable {
    /// The longest token accepted, in bytes (and so the most JSON decoded).
    public static let maxTokenSize = 8192
    /// Keys tried for one token (of its algorithm: those with its `kid`, or any without one).
    public static let maxKeysTried = 4
    public static let maxNameLength = 256
    public static let maxGroups = 256

    public let keys: JWKS
    public let issuer: String?
    public let audience: String?
    public let groupsClaim: String
    public let leewaySeconds: Int64

    public init(keys: JWKS, issuer: String?, audience: String?, groupsClaim: String = "groups", leewaySeconds: Int64 = 60) {
        self.keys = keys
        self.issuer = issuer
        self.audience = audience
        self.groupsClaim = groupsClaim
        self.leewaySeconds = max(0, min(leewaySeconds, 86_400))
    }

    /// A compact JWS (header.payload.signature, ≤ 8 KiB) → a Principal(method: .jwt,
    /// name: sub, email:, groups:, expires: exp). `now` in Unix seconds.
    public func verify(_ token: String, now: Int64) -> Result<Principal, JWTError> {
        do {
            return .success(try check(Array(token.utf8), now: now))
        } catch {
            return .failure(error)
        }
    }

    func check(_ token: [UInt8], now: Int64) throws(JWTError) -> Principal {
        guard token.count <= JWTVerifier.maxTokenSize else { throw .tooLarge }
        guard let dot1 = token.firstIndex(of: UInt8(ascii: ".")),
              let dot2 = token[(dot1 + 1)...].firstIndex(of: UInt8(ascii: ".")) else {
            throw .malformed("not three base64url parts")
        }
        let signatureText = token[(dot2 + 1)...]
        guard !signatureText.contains(UInt8(ascii: ".")) else { throw .malformed("not three base64url parts (JWE is not accepted)") }
        guard let headerBytes = Base64URL.decode(token[..<dot1]) else { throw .malformed("header is not base64url") }
        guard let payloadBytes = Base64URL.decode(token[(dot1 + 1)..<dot2]) else { throw .malformed("payload is not base64url") }
        guard let signature = Base64URL.decode(signatureText) else { throw .malformed("signature is not base64url") }

        let header = try JWTVerifier.object(headerBytes, "header")
        guard let algName = header["alg"]?.string else { throw .malformed("header without alg") }
        guard let alg = JWTAlgorithm(jose: algName) else { throw .unsupportedAlgorithm(algName) }
        guard header["crit"] == nil else { throw .malformed("crit header (no extension is supported)") }

        // Choose the keys: by kid, else the first few of the alg's type.
        let candidates: [PublicKey]
        switch header["kid"] {
        case .string(let kid)?:
            let named = keys.keys.filter { $0.kid == kid }
            guard !named.isEmpty else { throw .unknownKey(kid: kid) }
            candidates = Array(named.lazy.filter { $0.algorithm == alg }.prefix(JWTVerifier.maxKeysTried))
            guard !candidates.isEmpty else {
                throw .unsupportedAlgorithm(algName + " does not fit the key " + kid + " (" + named[0].algorithm.rawValue + ")")
            }
        case nil:
            candidates = Array(keys.keys.lazy.filter { $0.algorithm == alg }.prefix(JWTVerifier.maxKeysTried))
            guard !candidates.isEmpty else { throw .unknownKey(kid: nil) }
        default:
            throw .malformed("kid is not a string")
        }
        let signed = token.withUnsafeBytes { raw in
            let message = UnsafeRawBufferPointer(rebasing: raw[..<dot2])
            return candidates.contains { $0.verify(message, signature: signature) }
        }
        guard signed else { throw .badSignature }

        return try principal(fromVerifiedPayload: payloadBytes, now: now)
    }

    /// The claims check alone, on the decoded payload of a token whose signature
    /// has ALREADY been verified (verify does both; this is for tests and fuzzing).
    public func principal(fromVerifiedPayload payload: [UInt8], now: Int64) throws(JWTError) -> Principal {
        try principal(JWTVerifier.object(payload, "payload"), now: now)
    }

    /// The claims → a Principal, or why not.
    func principal(_ claims: JSONObject, now: Int64) throws(JWTError) -> Principal {
        guard let expValue = claims["exp"] else { throw .malformed("no exp claim") }
        guard let exp = expValue.int64 else { throw .malformed("exp is not a number of seconds") }
        // Saturating: a huge exp or nbf must not overflow.
        let (expLimit, o1) = exp.addingReportingOverflow(leewaySeconds)
        guard o1 || now < expLimit else { throw .expired }
        let (nowAhead, o2) = now.addingReportingOverflow(leewaySeconds)
        for name in ["nbf", "iat"] {
            guard let v = claims[name] else { continue }
            guard let t = v.int64 else { throw .malformed(name + " is not a number of seconds") }
            guard o2 || t <= nowAhead else { throw .notYetValid }
        }
        if let issuer {
            guard claims["iss"]?.string == issuer else { throw .wrongIssuer }
        }
        if let audience {
            switch claims["aud"] {
            case .string(let a)?:
                guard a == audience else { throw .wrongAudience }
            case .array(let list)?:
                guard list.contains(.string(audience)) else { throw .wrongAudience }
            default:
                throw .wrongAudience
            }
        }
        guard let sub = claims["sub"]?.string, !sub.isEmpty, sub.utf8.count <= JWTVerifier.maxNameLength else {
            throw .missingSubject
        }
        guard JWTVerifier.printable(sub) else { throw .missingSubject }
        var email: String? = nil
        if let e = claims["email"] {
            guard let s = e.string, s.utf8.count <= JWTVerifier.maxNameLength, JWTVerifier.printable(s) else {
                throw .malformed("email is not a string of printable characters")
            }
            // An address the provider says it has not verified names nobody.
            if claims["email_verified"] != .bool(false), !s.isEmpty { email = s }
        }
        var groups: [String] = []
        switch claims[groupsClaim] {
        case nil, .null?: break
        case .string(let g)?: groups = [g]
        case .array(let list)?:
            guard list.count <= JWTVerifier.maxGroups else { throw .malformed(groupsClaim + " has over " + String(JWTVerifier.maxGroups) + " entries") }
            for g in list {
                guard let s = g.string else { throw .malformed(groupsClaim + " is not a list of strings") }
                groups.append(s)
            }
        default:
            throw .malformed(groupsClaim + " is not a string or a list of strings")
        }
        for g in groups where g.utf8.count > JWTVerifier.maxNameLength || !JWTVerifier.printable(g) {
            throw .malformed(groupsClaim + " entry is too long or has control characters")
        }
        return Principal(method: .jwt, name: sub, email: email, groups: groups, expires: exp)
    }

    static func object(_ bytes: [UInt8], _ part: String) throws(JWTError) -> JSONObject {
        let value: JSONValue
        do {
            value = try JSON.parse(bytes, maxSize: maxTokenSize)
        } catch {
            throw .malformed(part + ": " + error.description)
        }
        guard let obj = value.object else { throw .malformed(part + " is not a JSON object") }
        return obj
    }

    /// No C0 control characters, no DEL (these values go into header fields and log lines).
    static func printable(_ s: String) -> Bool {
        !s.utf8.contains { $0 < 0x20 || $0 == 0x7F }
    }
}
