// TLSIdentity owns a certificate and its private key read from PEM in memory:
// the identity one connection presents, when it is not the context's own. The
// simulator runs thousands of devices over one shared client context (an
// OpenSSL 3 SSL_CTX costs far more than an SSL) and gives each connection its
// device's identity.
import COpenSSL

public final class TLSIdentity {
    let certificate: OpaquePointer
    let key: OpaquePointer

    public init(certificatePEM: [UInt8], keyPEM: [UInt8]) throws(OpenSSLError) {
        ERR_clear_error()
        guard let cert = TLSIdentity.read(certificatePEM, { PEM_read_bio_X509($0, nil, nil, nil) }) else {
            throw OpenSSLError.drain("read certificate PEM")
        }
        guard let k = TLSIdentity.read(keyPEM, { PEM_read_bio_PrivateKey($0, nil, nil, nil) }) else {
            X509_free(cert)
            throw OpenSSLError.drain("read private key PEM")
        }
        guard X509_check_private_key(cert, k) == 1 else {
            X509_free(cert)
            EVP_PKEY_free(k)
            throw OpenSSLError.drain("the private key does not match the certificate")
        }
        certificate = cert
        key = k
    }

    deinit {
        X509_free(certificate)
        EVP_PKEY_free(key)
    }

    private static func read(_ pem: [UInt8], _ parse: (OpaquePointer) -> OpaquePointer?) -> OpaquePointer? {
        pem.withUnsafeBytes { raw in
            guard let bio = BIO_new_mem_buf(raw.baseAddress, Int32(raw.count)) else { return nil }
            defer { BIO_free(bio) }
            return parse(bio)
        }
    }
}
