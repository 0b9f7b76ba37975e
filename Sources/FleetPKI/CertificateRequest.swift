// CertificateRequest: a PKCS#10 request (RFC 2986) as EST's /simpleenroll and
// /simplereenroll receive it (RFC 7030 §4.2.1: base64 DER), parsed and checked
// before anything else looks at it:
//   * size capped (`maxDERBytes`), one DER structure with nothing after it,
//     version 1 (0);
//   * the key is one we certify: EC P-256 or P-384 (named curves), Ed25519,
//     RSA 2048...8192 with an odd exponent of 3...2^32 (checked before the
//     signature, so a huge key costs nothing);
//   * the signature verifies with the request's own key (proof of possession),
//     with SHA-256/384/512 (Ed25519: itself); MD5 and SHA-1 are refused;
//   * the subject has exactly one CN, printable UTF-8.
// Nothing of the request but its public key ever reaches a certificate: the
// issuing side decides the subject and the extensions (CertificateAuthority+Enroll).
import COpenSSL
import TLS

public final class CertificateRequest {
    public enum KeyType: Equatable, Sendable, CustomStringConvertible {
        case ecP256, ecP384, ed25519
        case rsa(bits: Int)

        public var description: String {
            switch self {
            case .ecP256: return "EC P-256"
            case .ecP384: return "EC P-384"
            case .ed25519: return "Ed25519"
            case .rsa(let bits): return "RSA " + String(bits)
            }
        }
    }

    /// Largest DER accepted (an RSA 8192 request is about 1.9 KiB).
    public static let maxDERBytes = 8_192

    /// The request as received (DER).
    public let der: [UInt8]
    /// The subject's single CN, as the requester wrote it (not yet a device name:
    /// the caller checks it with PKI.canonicalDeviceName and its own policy).
    public let commonName: String
    public let keyType: KeyType
    /// The public key as a DER SubjectPublicKeyInfo (re-encoded by OpenSSL, so
    /// equal keys have equal bytes).
    public let publicKeyDER: [UInt8]
    /// SHA-256 of `publicKeyDER`.
    public let publicKeyFingerprint: [UInt8]
    /// The parsed request (owned).
    let request: OpaquePointer

    /// Parses and checks DER (see the top of the file). Throws `ESTError`.
    public init(der: [UInt8]) throws(ESTError) {
        guard der.count <= CertificateRequest.maxDERBytes else { throw .tooLarge(limit: CertificateRequest.maxDERBytes) }
        ERR_clear_error()
        let (parsed, used) = der.withUnsafeBufferPointer { b -> (OpaquePointer?, Int) in
            guard let base = b.baseAddress, b.count > 0 else { return (nil, 0) }
            var p: UnsafePointer<UInt8>? = base
            let r = d2i_X509_REQ(nil, &p, b.count)
            return (r, p.map { $0 - base } ?? 0)
        }
        guard let parsed else {
            ERR_clear_error()
            throw .malformed("PKCS#10 request")
        }
        var keep = false
        defer { if !keep { X509_REQ_free(parsed) } }
        guard used == der.count else { throw .trailingBytes(der.count - used) }
        guard X509_REQ_get_version(parsed) == 0 else { throw .malformed("PKCS#10 request (version is not 1)") }
        guard let key = X509_REQ_get0_pubkey(parsed) else {
            ERR_clear_error()
            throw .unsupportedKey("(unreadable public key)")
        }
        let type = try CertificateRequest.keyType(key)
        try CertificateRequest.checkSignatureAlgorithm(parsed, key: type)
        guard X509_REQ_verify(parsed, key) == 1 else {
            ERR_clear_error()
            throw .badSignature
        }
        let cn = try CertificateRequest.singleCommonName(parsed)
        let spki = try CertificateRequest.publicKeyDER(key)

        self.der = der
        commonName = cn
        keyType = type
        publicKeyDER = spki
        publicKeyFingerprint = sha256(spki)
        request = parsed
        keep = true
    }

    /// A request from an EST body: base64 of the DER, white space and line breaks
    /// allowed, at most `limit` bytes.
    public convenience init(estBody: [UInt8], limit: Int = ESTBody.defaultLimit) throws(ESTError) {
        try self.init(der: ESTBody.decode(estBody, limit: limit))
    }

    deinit { X509_REQ_free(request) }

    /// `publicKeyFingerprint` in lower-case hex.
    public var publicKeyFingerprintHex: String { PKI.hex(publicKeyFingerprint) }

    // MARK: - Checks

    static func keyType(_ key: OpaquePointer) throws(ESTError) -> KeyType {
        let id = EVP_PKEY_get_base_id(key)
        switch id {
        case EVP_PKEY_EC:
            var name = [CChar](repeating: 0, count: 64)
            var length = 0
            guard EVP_PKEY_get_group_name(key, &name, name.count, &length) == 1, length < name.count else {
                ERR_clear_error()
                throw .unsupportedKey("EC (explicit or unknown curve)")
            }
            let group = name.withUnsafeBufferPointer { String(cString: $0.baseAddress!) }
            switch group {
            case "prime256v1", "P-256": return .ecP256
            case "secp384r1", "P-384": return .ecP384
            default: throw .unsupportedKey("EC " + printable(group))
            }
        case EVP_PKEY_ED25519:
            return .ed25519
        case EVP_PKEY_RSA:
            let bits = Int(EVP_PKEY_get_bits(key))
            guard (2048...8192).contains(bits) else { throw .unsupportedKey("RSA " + String(bits)) }
            // e = 1 (or even) makes signatures anyone can compute: no proof of anything.
            var e: OpaquePointer? = nil
            guard EVP_PKEY_get_bn_param(key, "e", &e) == 1, let e else {
                ERR_clear_error()
                throw .unsupportedKey("RSA (unreadable exponent)")
            }
            defer { BN_free(e) }
            guard BN_is_odd(e) == 1, BN_num_bits(e) >= 2, BN_num_bits(e) <= 32 else {
                throw .unsupportedKey("RSA (public exponent must be odd, 3 to 2^32)")
            }
            return .rsa(bits: bits)
        default:
            let sn = OBJ_nid2sn(id).map { String(cString: $0) } ?? "unknown"
            throw .unsupportedKey(printable(sn))
        }
    }

    /// SHA-256/384/512 (ECDSA, RSA PKCS#1 v1.5), or Ed25519 with an Ed25519 key.
    static func checkSignatureAlgorithm(_ req: OpaquePointer, key: KeyType) throws(ESTError) {
        let sig = X509_REQ_get_signature_nid(req)
        if key == .ed25519 {
            guard sig == NID_ED25519 else { throw .weakSignature(algorithmName(sig)) }
            return
        }
        var digest: Int32 = 0
        var pkey: Int32 = 0
        guard OBJ_find_sigid_algs(sig, &digest, &pkey) == 1,
              digest == NID_sha256 || digest == NID_sha384 || digest == NID_sha512 else {
            ERR_clear_error()
            throw .weakSignature(algorithmName(sig))
        }
    }

    static func algorithmName(_ nid: Int32) -> String {
        guard nid != NID_undef, let ln = OBJ_nid2ln(nid) else { return "an unknown algorithm" }
        return printable(String(cString: ln))
    }

    static func singleCommonName(_ req: OpaquePointer) throws(ESTError) -> String {
        guard let subject = X509_REQ_get_subject_name(req) else { throw .commonName("no subject") }
        let first = X509_NAME_get_index_by_NID(subject, NID_commonName, -1)
        guard first >= 0 else { throw .commonName("no CN") }
        guard X509_NAME_get_index_by_NID(subject, NID_commonName, first) < 0 else { throw .commonName("more than one CN") }
        guard let entry = X509_NAME_get_entry(subject, first), let data = X509_NAME_ENTRY_get_data(entry) else {
            throw .commonName("unreadable CN")
        }
        var utf8: UnsafeMutablePointer<UInt8>?
        let len = ASN1_STRING_to_UTF8(&utf8, data)
        guard len > 0, let utf8 else {
            ERR_clear_error()
            throw .commonName("empty or unreadable CN")
        }
        defer { rh_OPENSSL_free(utf8) }
        let bytes = UnsafeBufferPointer(start: utf8, count: Int(len))
        guard bytes.count <= 256 else { throw .commonName("CN longer than 256 bytes") }
        guard let text = String(validating: bytes, as: UTF8.self),
              !text.unicodeScalars.contains(where: { $0.value < 0x20 || $0.value == 0x7F }) else {
            throw .commonName("CN with control characters")
        }
        return text
    }

    static func publicKeyDER(_ key: OpaquePointer) throws(ESTError) -> [UInt8] {
        let n = i2d_PUBKEY(key, nil)
        guard n > 0 else {
            ERR_clear_error()
            throw .unsupportedKey("(public key cannot be encoded)")
        }
        var out = [UInt8](repeating: 0, count: Int(n))
        let written = out.withUnsafeMutableBufferPointer { p -> Int32 in
            var o: UnsafeMutablePointer<UInt8>? = p.baseAddress
            return i2d_PUBKEY(key, &o)
        }
        guard written == n else {
            ERR_clear_error()
            throw .unsupportedKey("(public key cannot be encoded)")
        }
        return out
    }

    /// At most 64 characters of `s`, control characters as '?'.
    static func printable(_ s: String) -> String {
        String(String.UnicodeScalarView(s.unicodeScalars.prefix(64).map { $0.value < 0x20 || $0.value == 0x7F ? "?" : $0 }))
    }
}

extension PKI {
    static func hex(_ bytes: [UInt8]) -> String {
        let digits = Array("0123456789abcdef".utf8)
        var out: [UInt8] = []
        out.reserveCapacity(bytes.count * 2)
        for b in bytes { out += [digits[Int(b >> 4)], digits[Int(b & 15)]] }
        return String(decoding: out, as: UTF8.self)
    }
}
