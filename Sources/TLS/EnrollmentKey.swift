// What a device needs to enroll over EST (RFC 7030), and nothing more: a fresh
// EC P-256 key, a PKCS#10 request for CN=NAME signed with it (the proof of
// possession); PKCS7Certificates reads the certs-only PKCS#7 the server answers
// with. No I/O: the caller writes the key (0600) and the certificates.
import COpenSSL

/// A new EC P-256 private key and the requests it signs.
public final class EnrollmentKey {
    let key: OpaquePointer

    /// Generates a key from OpenSSL's CSPRNG.
    public init() throws(OpenSSLError) {
        ERR_clear_error()
        guard let k = rh_ec_p256_keygen() else { throw OpenSSLError.drain("generate an EC P-256 key") }
        key = k
    }

    deinit { EVP_PKEY_free(key) }

    /// The key as unencrypted PKCS#8 PEM ("BEGIN PRIVATE KEY"). Secret: write it
    /// with mode 0600 and overwrite the buffer afterwards.
    public func privateKeyPEM() throws(OpenSSLError) -> [UInt8] {
        try PEMBuffer.write(secure: true, "write the private key") { PEM_write_bio_PKCS8PrivateKey($0, key, nil, nil, 0, nil, nil) }
    }

    /// A PKCS#10 request (DER) with subject CN=`commonName`, this public key, no
    /// attributes, signed with ECDSA-SHA256.
    public func certificateRequest(commonName: String) throws(OpenSSLError) -> [UInt8] {
        let req = try makeRequest(commonName: commonName)
        defer { X509_REQ_free(req) }
        let n = i2d_X509_REQ(req, nil)
        guard n > 0 else { throw OpenSSLError.drain("encode the certificate request") }
        var der = [UInt8](repeating: 0, count: Int(n))
        let written = der.withUnsafeMutableBufferPointer { p -> Int32 in
            var out: UnsafeMutablePointer<UInt8>? = p.baseAddress
            return i2d_X509_REQ(req, &out)
        }
        guard written == n else { throw OpenSSLError.drain("encode the certificate request") }
        return der
    }

    /// The same request as PEM ("BEGIN CERTIFICATE REQUEST"), for `openssl req`.
    public func certificateRequestPEM(commonName: String) throws(OpenSSLError) -> [UInt8] {
        let req = try makeRequest(commonName: commonName)
        defer { X509_REQ_free(req) }
        return try PEMBuffer.write(secure: false, "write the certificate request") { PEM_write_bio_X509_REQ($0, req) }
    }

    private func makeRequest(commonName: String) throws(OpenSSLError) -> OpaquePointer {
        ERR_clear_error()
        let cn = Array(commonName.utf8)
        guard !cn.isEmpty, cn.count <= 253 else { throw OpenSSLError("the request's CN must be 1 to 253 bytes", reasons: []) }
        guard let req = X509_REQ_new() else { throw OpenSSLError.drain("X509_REQ_new") }
        var keep = false
        defer { if !keep { X509_REQ_free(req) } }
        guard X509_REQ_set_version(req, 0) == 1, let subject = X509_REQ_get_subject_name(req),
              X509_NAME_add_entry_by_txt(subject, "CN", V_ASN1_UTF8STRING, cn, Int32(cn.count), -1, 0) == 1,
              X509_REQ_set_pubkey(req, key) == 1 else {
            throw OpenSSLError.drain("build the certificate request")
        }
        guard X509_REQ_sign(req, key, EVP_sha256()) > 0 else { throw OpenSSLError.drain("sign the certificate request") }
        keep = true
        return req
    }
}

/// Text OpenSSL writes into a memory BIO.
enum PEMBuffer {
    static func write(secure: Bool, _ what: String, _ body: (OpaquePointer) -> Int32) throws(OpenSSLError) -> [UInt8] {
        guard let bio = BIO_new(secure ? BIO_s_secmem() : BIO_s_mem()) else { throw OpenSSLError.drain("BIO_new") }
        defer { BIO_free(bio) }
        guard body(bio) == 1 else { throw OpenSSLError.drain(what) }
        let count = Int(rh_BIO_pending(bio))
        var out = [UInt8](repeating: 0, count: count)
        let n = out.withUnsafeMutableBytes { BIO_read(bio, $0.baseAddress, Int32(count)) }
        guard count > 0, n == Int32(count) else { throw OpenSSLError.drain(what) }
        return out
    }
}
