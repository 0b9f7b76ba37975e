// PKCS7CertsOnly: the body of EST's answers (RFC 7030 §4.1.3 /cacerts, §4.2.3
// /simpleenroll): a degenerate SignedData (RFC 5652 §5, RFC 5272 "Simple PKI
// Response") holding certificates and no signer, encapsulated content id-data
// without content; DER, then base64 (ESTBody.encode). Content-Type:
// application/pkcs7-mime; smime-type=certs-only. `openssl pkcs7 -print_certs`
// reads it; the decoder is TLS's PKCS7Certificates (the agent reads it too).
import COpenSSL
import TLS

public enum PKCS7CertsOnly {
    /// The Content-Type of EST's certificate answers.
    public static let contentType = "application/pkcs7-mime; smime-type=certs-only"

    /// A certs-only SignedData (DER) holding `certificatesDER` in this order.
    /// Throws `.malformed` for a certificate that does not parse.
    public static func encode(certificatesDER: [[UInt8]]) throws(PKIError) -> [UInt8] {
        guard !certificatesDER.isEmpty else { throw .invalidArgument("a certs-only PKCS#7 needs at least one certificate") }
        guard let p7 = rh_PKCS7_certs_only_new() else { throw PKI.failure("PKCS7_new") }
        defer { PKCS7_free(p7) }
        for (i, der) in certificatesDER.enumerated() {
            let x: OpaquePointer? = der.withUnsafeBufferPointer { b in
                var p: UnsafePointer<UInt8>? = b.baseAddress
                return d2i_X509(nil, &p, b.count)
            }
            guard let x else {
                ERR_clear_error()
                throw .malformed("certificate \(i + 1)", reason: "not a DER certificate")
            }
            defer { X509_free(x) }
            // Takes its own reference.
            guard PKCS7_add_certificate(p7, x) == 1 else { throw PKI.failure("PKCS7_add_certificate") }
        }
        let n = i2d_PKCS7(p7, nil)
        guard n > 0 else { throw PKI.failure("i2d_PKCS7") }
        var out = [UInt8](repeating: 0, count: Int(n))
        let written = out.withUnsafeMutableBufferPointer { p -> Int32 in
            var o: UnsafeMutablePointer<UInt8>? = p.baseAddress
            return i2d_PKCS7(p7, &o)
        }
        guard written == n else { throw PKI.failure("i2d_PKCS7") }
        return out
    }

    /// A certs-only SignedData of every certificate in a PEM bundle, in its order.
    public static func encode(certificatesPEM: [UInt8]) throws(PKIError) -> [UInt8] {
        try encode(certificatesDER: PKI.certificatesDER(pem: certificatesPEM))
    }

    /// The EST body (base64 in CRLF lines) of `encode(certificatesDER:)`.
    public static func estBody(certificatesDER: [[UInt8]]) throws(PKIError) -> [UInt8] {
        ESTBody.encode(try encode(certificatesDER: certificatesDER))
    }

    /// The certificates (DER) of a certs-only PKCS#7 (DER).
    public static func decode(der: [UInt8]) throws(ESTError) -> [[UInt8]] {
        try PKCS7Certificates.decode(der: der)
    }

    /// The certificates (DER) of an EST body: base64 of a certs-only PKCS#7.
    public static func decode(estBody: [UInt8], limit: Int = ESTBody.defaultLimit) throws(ESTError) -> [[UInt8]] {
        try PKCS7Certificates.decode(der: ESTBody.decode(estBody, limit: limit))
    }
}

extension PKI {
    /// The certificates of a PEM bundle as DER, in order; `.malformed` when there is none.
    static func certificatesDER(pem: [UInt8]) throws(PKIError) -> [[UInt8]] {
        var out: [[UInt8]] = []
        let ok: Bool = pem.withUnsafeBytes { raw in
            guard let bio = BIO_new_mem_buf(raw.baseAddress, Int32(raw.count)) else { return false }
            defer { BIO_free(bio) }
            while out.count < 64, let x = PEM_read_bio_X509(bio, nil, nil, nil) {
                defer { X509_free(x) }
                guard let der = try? certificateDER(x) else { return false }
                out.append(der)
            }
            return true
        }
        ERR_clear_error()  // the end of the bundle queues "no start line"
        guard ok, !out.isEmpty else { throw .malformed("PEM bundle", reason: "no certificate") }
        return out
    }
}
