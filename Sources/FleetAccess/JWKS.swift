// A JSON Web Key Set (RFC 7517): the identity provider's public keys that sign
// the JWTs the gateway accepts. Three kinds are usable: RSA (2048 to 8192 bits,
// RS256), EC P-256 (ES256) and OKP Ed25519 (EdDSA); other kinds, and keys whose
// own `use`/`alg`/`key_ops` say they are not RS256/ES256/EdDSA signature keys,
// are skipped (listed in `skipped`), so an identity provider that adds a new
// kind of key does not break sign-in. A set without one usable key is an error.
//
// The key material becomes an OpenSSL EVP_PKEY through DER: a
// SubjectPublicKeyInfo built here and read by d2i_PUBKEY, which checks it (an
// EC point must be on the curve). The EVP_PKEY lives in `PublicKey`, freed in
// its deinit; nothing else of OpenSSL leaves this file and JWTVerifier.
import Bytes
import COpenSSL
import TLS

/// The signature algorithms accepted (RFC 7518, RFC 8037).
public enum JWTAlgorithm: String, Sendable, CaseIterable {
    case rs256 = "RS256"
    case es256 = "ES256"
    case edDSA = "EdDSA"

    /// The `alg` of a JWS header or a JWK; nil for anything else (none, HS256, RS384, ...).
    /// "Ed25519" (the fully specified name of draft-ietf-jose-fully-specified-algorithms) is EdDSA.
    public init?(jose name: String) {
        switch name {
        case "RS256": self = .rs256
        case "ES256": self = .es256
        case "EdDSA", "Ed25519": self = .edDSA
        default: return nil
        }
    }
}

/// One verification key: an owned OpenSSL EVP_PKEY and the one algorithm it may verify.
public final class PublicKey: @unchecked Sendable {
    // @unchecked: the EVP_PKEY is never changed after init; OpenSSL 3 allows
    // concurrent verifications with one key (each has its own EVP_MD_CTX).
    private let pkey: OpaquePointer
    public let algorithm: JWTAlgorithm
    public let kid: String?

    /// Reads a DER SubjectPublicKeyInfo and checks it suits `algorithm`.
    init(spki der: [UInt8], algorithm: JWTAlgorithm, kid: String?) throws(JWTError) {
        ERR_clear_error()
        let key: OpaquePointer? = der.withUnsafeBufferPointer { buf in
            var p: UnsafePointer<UInt8>? = buf.baseAddress
            guard let k = d2i_PUBKEY(nil, &p, buf.count) else { return nil }
            // Every byte must belong to the key.
            guard p == buf.baseAddress.map({ $0 + buf.count }) else {
                EVP_PKEY_free(k)
                return nil
            }
            return k
        }
        guard let key else { throw PublicKey.failure("read the public key") }
        pkey = key
        self.algorithm = algorithm
        self.kid = kid
        let expected: Int32
        switch algorithm {
        case .rs256: expected = EVP_PKEY_RSA
        case .es256: expected = EVP_PKEY_EC
        case .edDSA: expected = EVP_PKEY_ED25519
        }
        guard EVP_PKEY_get_base_id(pkey) == expected else { throw .badKeySet("the key is not of the type its algorithm needs") }
        if algorithm == .rs256 {
            let bits = EVP_PKEY_get_bits(pkey)
            guard bits >= 2048 && bits <= 8192 else {
                throw .badKeySet("RSA key of " + String(bits) + " bits (2048 to 8192 accepted)")
            }
        }
        if algorithm == .es256 {
            // d2i_PUBKEY already refuses a point off the curve; the full public
            // key check (point at infinity, order) is cheap for P-256.
            guard let ctx = EVP_PKEY_CTX_new_from_pkey(nil, pkey, nil) else { throw PublicKey.failure("EVP_PKEY_CTX_new_from_pkey") }
            defer { EVP_PKEY_CTX_free(ctx) }
            guard EVP_PKEY_public_check(ctx) == 1 else { throw PublicKey.failure("the EC public key is not valid") }
        }
    }

    deinit { EVP_PKEY_free(pkey) }

    static func failure(_ what: String) -> JWTError {
        .badKeySet(OpenSSLError.drain(what).description)
    }

    /// Whether `signature` (as JWS carries it) signs `message` with this key.
    /// OpenSSL's error queue is left empty.
    public func verify(_ message: UnsafeRawBufferPointer, signature: [UInt8]) -> Bool {
        let sig: [UInt8]
        switch algorithm {
        case .rs256:
            guard signature.count == Int(EVP_PKEY_get_size(pkey)) else { return false }
            sig = signature
        case .es256:
            guard signature.count == 64 else { return false }
            sig = DER.ecdsaSignature(r: signature[0..<32], s: signature[32..<64])
        case .edDSA:
            guard signature.count == 64 else { return false }
            sig = signature
        }
        guard let ctx = EVP_MD_CTX_new() else {
            ERR_clear_error()
            return false
        }
        defer { EVP_MD_CTX_free(ctx) }
        let md = algorithm == .edDSA ? nil : EVP_sha256()
        guard EVP_DigestVerifyInit(ctx, nil, md, nil, pkey) == 1 else {
            ERR_clear_error()
            return false
        }
        let rc = sig.withUnsafeBufferPointer { s in
            EVP_DigestVerify(ctx, s.baseAddress, s.count, message.bindMemory(to: UInt8.self).baseAddress, message.count)
        }
        ERR_clear_error()
        return rc == 1
    }
}

/// The few DER structures needed to hand JWK material to OpenSSL.
enum DER {
    static func length(_ n: Int) -> [UInt8] {
        if n < 0x80 { return [UInt8(n)] }
        var bytes: [UInt8] = []
        var v = n
        while v > 0 { bytes.insert(UInt8(v & 0xFF), at: 0); v >>= 8 }
        return [0x80 | UInt8(bytes.count)] + bytes
    }

    static func tlv(_ tag: UInt8, _ content: [UInt8]) -> [UInt8] {
        [tag] + length(content.count) + content
    }

    /// An INTEGER from unsigned big-endian bytes.
    static func unsignedInteger<C: Collection>(_ bytes: C) -> [UInt8] where C.Element == UInt8 {
        var v = Array(bytes.drop(while: { $0 == 0 }))
        if v.isEmpty || v[0] & 0x80 != 0 { v.insert(0, at: 0) }
        return tlv(0x02, v)
    }

    static func ecdsaSignature(r: ArraySlice<UInt8>, s: ArraySlice<UInt8>) -> [UInt8] {
        tlv(0x30, unsignedInteger(r) + unsignedInteger(s))
    }

    static func rsaPublicKey(n: [UInt8], e: [UInt8]) -> [UInt8] {
        let algorithm: [UInt8] = [0x30, 0x0D, 0x06, 0x09, 0x2A, 0x86, 0x48, 0x86, 0xF7, 0x0D, 0x01, 0x01, 0x01, 0x05, 0x00]
        let key = tlv(0x30, unsignedInteger(n) + unsignedInteger(e))
        return tlv(0x30, algorithm + tlv(0x03, [0] + key))
    }

    /// id-ecPublicKey, prime256v1, an uncompressed point.
    static func p256PublicKey(x: [UInt8], y: [UInt8]) -> [UInt8] {
        [0x30, 0x59, 0x30, 0x13, 0x06, 0x07, 0x2A, 0x86, 0x48, 0xCE, 0x3D, 0x02, 0x01,
         0x06, 0x08, 0x2A, 0x86, 0x48, 0xCE, 0x3D, 0x03, 0x01, 0x07, 0x03, 0x42, 0x00, 0x04] + x + y
    }

    static func ed25519PublicKey(x: [UInt8]) -> [UInt8] {
        [0x30, 0x2A, 0x30, 0x05, 0x06, 0x03, 0x2B, 0x65, 0x70, 0x03, 0x21, 0x00] + x
    }
}

/// An immutable set of verification keys.
public struct JWKS: Sendable {
    public static let maxSize = 1 << 20
    public static let maxKeys = 100

    public let keys: [PublicKey]
    /// Why keys of the set were left out ("key 2 (kid k1): kty oct is not supported").
    public let skipped: [String]

    public var keyIDs: [String?] { keys.map(\.kid) }

    /// The keys of both sets (a JWKS file's and the JWKS URL's answer), these first.
    public func merging(_ other: JWKS) -> JWKS {
        JWKS(keys: keys + other.keys, skipped: skipped + other.skipped)
    }

    /// A JWK Set document: `{"keys": [JWK, ...]}`, at most 1 MiB and 100 keys.
    public static func parse(_ bytes: [UInt8]) throws(JWTError) -> JWKS {
        guard bytes.count <= maxSize else { throw .tooLarge }
        let doc: JSONValue
        do {
            doc = try JSON.parse(bytes, maxSize: maxSize)
        } catch {
            throw .badKeySet("not JSON: " + error.description)
        }
        guard let list = doc.object?["keys"]?.array else { throw .badKeySet("no \"keys\" array") }
        guard list.count <= maxKeys else {
            throw .badKeySet(String(list.count) + " keys (at most " + String(maxKeys) + ")")
        }
        var keys: [PublicKey] = []
        var skipped: [String] = []
        for (i, entry) in list.enumerated() {
            let kid = entry.object?["kid"]?.string
            do {
                keys.append(try key(entry))
            } catch {
                var at = "key " + String(i + 1)
                if let kid { at += " (kid " + kid + ")" }
                if case .badKeySet(let why) = error { skipped.append(at + ": " + why) } else { skipped.append(at + ": " + error.description) }
            }
        }
        guard !keys.isEmpty else {
            throw .badKeySet("no usable key" + (skipped.isEmpty ? "" : ": " + skipped.joined(separator: "; ")))
        }
        return JWKS(keys: keys, skipped: skipped)
    }

    /// One JWK, or .badKeySet(why it is not usable).
    static func key(_ value: JSONValue) throws(JWTError) -> PublicKey {
        guard let jwk = value.object else { throw .badKeySet("not an object") }
        let kid: String?
        switch jwk["kid"] {
        case nil: kid = nil
        case .string(let s)?: kid = s
        default: throw .badKeySet("kid is not a string")
        }
        guard let kty = jwk["kty"]?.string else { throw .badKeySet("no kty") }
        if let use = jwk["use"] {
            guard use.string == "sig" else { throw .badKeySet("use is not \"sig\"") }
        }
        if let ops = jwk["key_ops"] {
            guard let list = ops.array, list.contains(.string("verify")) else { throw .badKeySet("key_ops without \"verify\"") }
        }
        let algorithm: JWTAlgorithm
        let der: [UInt8]
        switch kty {
        case "RSA":
            algorithm = .rs256
            guard let n = bytes(jwk, "n"), let e = bytes(jwk, "e") else { throw .badKeySet("RSA key without base64url n and e") }
            let nv = n.drop(while: { $0 == 0 }), ev = e.drop(while: { $0 == 0 })
            guard nv.count <= 1024 else { throw .badKeySet("RSA modulus over 8192 bits") }
            guard let last = nv.last, last & 1 == 1 else { throw .badKeySet("RSA modulus is even") }
            // e odd, 3 ... 2^32 (e = 1 would make every message its own signature).
            guard ev.count <= 5, let e0 = ev.last, e0 & 1 == 1 else { throw .badKeySet("RSA exponent must be odd and at most 2^32") }
            let evalue = ev.reduce(UInt64(0)) { $0 << 8 | UInt64($1) }
            guard evalue >= 3, evalue <= 1 << 32 else { throw .badKeySet("RSA exponent must be odd, 3 to 2^32") }
            der = DER.rsaPublicKey(n: Array(nv), e: Array(ev))
        case "EC":
            algorithm = .es256
            guard let crv = jwk["crv"]?.string else { throw .badKeySet("EC key without crv") }
            guard crv == "P-256" else { throw .badKeySet("EC curve " + crv + " is not supported (P-256)") }
            guard let x = bytes(jwk, "x"), let y = bytes(jwk, "y"), x.count == 32, y.count == 32 else {
                throw .badKeySet("P-256 key without 32-byte base64url x and y")
            }
            der = DER.p256PublicKey(x: x, y: y)
        case "OKP":
            algorithm = .edDSA
            guard let crv = jwk["crv"]?.string else { throw .badKeySet("OKP key without crv") }
            guard crv == "Ed25519" else { throw .badKeySet("OKP curve " + crv + " is not supported (Ed25519)") }
            guard let x = bytes(jwk, "x"), x.count == 32 else { throw .badKeySet("Ed25519 key without a 32-byte base64url x") }
            der = DER.ed25519PublicKey(x: x)
        default:
            throw .badKeySet("kty " + kty + " is not supported (RSA, EC, OKP)")
        }
        if let alg = jwk["alg"] {
            guard let name = alg.string, JWTAlgorithm(jose: name) == algorithm else {
                throw .badKeySet("alg " + (alg.string ?? "?") + " does not fit kty " + kty + " (" + algorithm.rawValue + ")")
            }
        }
        return try PublicKey(spki: der, algorithm: algorithm, kid: kid)
    }

    private static func bytes(_ jwk: JSONObject, _ name: String) -> [UInt8]? {
        guard let s = jwk[name]?.string else { return nil }
        return Base64URL.decode(s.utf8)
    }
}
