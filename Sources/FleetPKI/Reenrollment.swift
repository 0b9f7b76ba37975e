// The rule of /simplereenroll (RFC 7030 §4.2.2, issue 17): the request keeps the
// subject of the certificate the device authenticated with, and brings a new key
// (the old public key is refused, so a stolen key cannot renew itself forever,
// and renewal always rotates the key).
import COpenSSL
import TLS

extension CertificateRequest {
    /// Checks the request against the client's current certificate (DER):
    /// `.subjectChanged` unless the subjects are equal (X509_NAME_cmp) and the CNs
    /// identical byte for byte; `.keyReused` when the public keys are equal.
    /// `.malformed` when `currentCertificateDER` is not one certificate.
    public func checkReenrollment(currentCertificateDER: [UInt8]) throws(ESTError) {
        let cert: OpaquePointer? = currentCertificateDER.withUnsafeBufferPointer { b in
            guard let base = b.baseAddress else { return nil }
            var p: UnsafePointer<UInt8>? = base
            let x = d2i_X509(nil, &p, b.count)
            if let x, p.map({ $0 - base }) != b.count {
                X509_free(x)
                return nil
            }
            return x
        }
        guard let cert else {
            ERR_clear_error()
            throw .malformed("certificate")
        }
        defer { X509_free(cert) }
        try checkReenrollment(current: cert)
    }

    /// The same as `checkReenrollment(currentCertificateDER:)` for a PEM certificate
    /// (the first one of `currentCertificatePEM`).
    public func checkReenrollment(currentCertificatePEM: [UInt8]) throws(ESTError) {
        let cert: OpaquePointer? = currentCertificatePEM.withUnsafeBytes { raw in
            guard let bio = BIO_new_mem_buf(raw.baseAddress, Int32(raw.count)) else { return nil }
            defer { BIO_free(bio) }
            return PEM_read_bio_X509(bio, nil, nil, nil)
        }
        guard let cert else {
            ERR_clear_error()
            throw .malformed("certificate")
        }
        defer { X509_free(cert) }
        try checkReenrollment(current: cert)
    }

    func checkReenrollment(current cert: OpaquePointer) throws(ESTError) {
        guard let certSubject = X509_get_subject_name(cert), let reqSubject = X509_REQ_get_subject_name(request),
              X509_NAME_cmp(certSubject, reqSubject) == 0,
              PKI.certificateCommonNames(cert) == [commonName] else {
            ERR_clear_error()
            throw .subjectChanged
        }
        guard let certKey = X509_get0_pubkey(cert) else {
            ERR_clear_error()
            throw .malformed("certificate (public key)")
        }
        // Compared as parameters and key (EVP_PKEY_eq), and as encodings.
        let currentDER = (try? CertificateRequest.publicKeyDER(certKey)) ?? []
        if EVP_PKEY_eq(certKey, X509_REQ_get0_pubkey(request)) == 1 || currentDER == publicKeyDER {
            ERR_clear_error()
            throw .keyReused
        }
        ERR_clear_error()
    }
}

extension PKI {
    /// Every CN of `cert`'s subject as UTF-8 text (unreadable ones left out).
    static func certificateCommonNames(_ cert: OpaquePointer) -> [String] {
        guard let subject = X509_get_subject_name(cert) else { return [] }
        var out: [String] = []
        var idx = X509_NAME_get_index_by_NID(subject, NID_commonName, -1)
        var guardCount = 0
        while idx >= 0 && guardCount < 64 {
            guardCount += 1
            if let entry = X509_NAME_get_entry(subject, idx), let data = X509_NAME_ENTRY_get_data(entry),
               let text = asn1Text(data) {
                out.append(text)
            }
            idx = X509_NAME_get_index_by_NID(subject, NID_commonName, idx)
        }
        return out
    }
}
