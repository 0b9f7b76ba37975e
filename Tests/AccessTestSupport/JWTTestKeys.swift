// Keys and tokens for the JWT tests (AccessTests, GatewayTests), made with OpenSSL
// here: the library only verifies. A library target of the tests, not a test itself.
import Bytes
import COpenSSL
import FleetAccess

public final class TestKey: @unchecked Sendable {
    public enum Kind { case rsa, ec, ed25519 }
    public let kind: Kind
    public let pkey: OpaquePointer
    public let kid: String

    public init(_ kind: Kind, kid: String, rsaBits: Int32 = 2048) {
        self.kind = kind
        self.kid = kid
        let name: String
        switch kind {
        case .rsa: name = "RSA"
        case .ec: name = "EC"
        case .ed25519: name = "ED25519"
        }
        let ctx = EVP_PKEY_CTX_new_from_name(nil, name, nil)!
        defer { EVP_PKEY_CTX_free(ctx) }
        precondition(EVP_PKEY_keygen_init(ctx) == 1)
        if kind == .rsa { precondition(EVP_PKEY_CTX_set_rsa_keygen_bits(ctx, rsaBits) == 1) }
        if kind == .ec { precondition(EVP_PKEY_CTX_set_group_name(ctx, "P-256") == 1) }
        var key: OpaquePointer? = nil
        precondition(EVP_PKEY_generate(ctx, &key) == 1)
        pkey = key!
    }

    deinit { EVP_PKEY_free(pkey) }

    public var alg: String {
        switch kind {
        case .rsa: return "RS256"
        case .ec: return "ES256"
        case .ed25519: return "EdDSA"
        }
    }

    public func bn(_ param: String, pad: Int32 = 0) -> [UInt8] {
        var bn: OpaquePointer? = nil
        precondition(EVP_PKEY_get_bn_param(pkey, param, &bn) == 1)
        defer { BN_free(bn) }
        let n = pad > 0 ? Int(pad) : Int((BN_num_bits(bn) + 7) / 8)
        var out = [UInt8](repeating: 0, count: n)
        precondition(BN_bn2binpad(bn, &out, Int32(n)) == Int32(n))
        return out
    }

    /// The JWK members of the public key (no braces), kid and extra members included.
    public func jwkMembers(extra: String = "") -> String {
        var s = "\"kid\":\"" + kid + "\","
        switch kind {
        case .rsa:
            s += "\"kty\":\"RSA\",\"n\":\"" + Base64URL.encode(bn("n")) + "\",\"e\":\"" + Base64URL.encode(bn("e")) + "\""
        case .ec:
            s += "\"kty\":\"EC\",\"crv\":\"P-256\",\"x\":\"" + Base64URL.encode(bn("qx", pad: 32))
                + "\",\"y\":\"" + Base64URL.encode(bn("qy", pad: 32)) + "\""
        case .ed25519:
            var raw = [UInt8](repeating: 0, count: 32)
            var len = 32
            precondition(EVP_PKEY_get_raw_public_key(pkey, &raw, &len) == 1)
            s += "\"kty\":\"OKP\",\"crv\":\"Ed25519\",\"x\":\"" + Base64URL.encode(raw) + "\""
        }
        return s + extra
    }

    public var jwk: String { "{" + jwkMembers() + "}" }

    public var publicPEM: [UInt8] {
        let bio = BIO_new(BIO_s_mem())!
        defer { BIO_free(bio) }
        precondition(PEM_write_bio_PUBKEY(bio, pkey) == 1)
        var out = [UInt8](repeating: 0, count: Int(rh_BIO_pending(bio)))
        precondition(BIO_read(bio, &out, Int32(out.count)) == Int32(out.count))
        return out
    }

    /// The JWS signature of `message` (ES256: raw r||s).
    public func sign(_ message: [UInt8]) -> [UInt8] {
        let ctx = EVP_MD_CTX_new()!
        defer { EVP_MD_CTX_free(ctx) }
        precondition(EVP_DigestSignInit(ctx, nil, kind == .ed25519 ? nil : EVP_sha256(), nil, pkey) == 1)
        var len = 0
        precondition(EVP_DigestSign(ctx, nil, &len, message, message.count) == 1)
        var sig = [UInt8](repeating: 0, count: len)
        precondition(EVP_DigestSign(ctx, &sig, &len, message, message.count) == 1)
        sig.removeLast(sig.count - len)
        guard kind == .ec else { return sig }
        return sig.withUnsafeBufferPointer { buf in
            var p: UnsafePointer<UInt8>? = buf.baseAddress
            let ecdsa = d2i_ECDSA_SIG(nil, &p, buf.count)!
            defer { ECDSA_SIG_free(ecdsa) }
            var raw = [UInt8](repeating: 0, count: 64)
            raw.withUnsafeMutableBufferPointer { r in
                _ = BN_bn2binpad(ECDSA_SIG_get0_r(ecdsa), r.baseAddress, 32)
                _ = BN_bn2binpad(ECDSA_SIG_get0_s(ecdsa), r.baseAddress! + 32, 32)
            }
            return raw
        }
    }

    /// A compact JWS of `header` and `payload` (JSON text) signed with this key.
    public func token(header: String? = nil, _ payload: String) -> String {
        let h = header ?? "{\"alg\":\"" + alg + "\",\"kid\":\"" + kid + "\",\"typ\":\"JWT\"}"
        let input = Base64URL.encode(Array(h.utf8)) + "." + Base64URL.encode(Array(payload.utf8))
        return input + "." + Base64URL.encode(sign(Array(input.utf8)))
    }
}

/// HS256 over header.payload with `secret` (what an attacker would send).
public func hs256Token(header: String, payload: String, secret: [UInt8]) -> String {
    let input = Base64URL.encode(Array(header.utf8)) + "." + Base64URL.encode(Array(payload.utf8))
    var mac = [UInt8](repeating: 0, count: 32)
    var len: UInt32 = 32
    let msg = Array(input.utf8)
    _ = HMAC(EVP_sha256(), secret, Int32(secret.count), msg, msg.count, &mac, &len)
    return input + "." + Base64URL.encode(mac)
}

public func jwks(_ keys: [String]) -> [UInt8] {
    Array(("{\"keys\":[" + keys.joined(separator: ",") + "]}").utf8)
}
