// CertificateInfo: what the agent reads from its own certificate to enroll again
// (issue 17): the subject's CN (the name a re-enrollment keeps) and the validity
// (renewal at about two thirds of it). Read from the first certificate of a PEM
// file's bytes; no I/O.
import COpenSSL

public struct CertificateInfo: Equatable {
    /// The subject's first CN ("" when it has none).
    public let commonName: String
    /// Validity, Unix seconds.
    public let notBefore: Int64
    public let notAfter: Int64

    public init(commonName: String, notBefore: Int64, notAfter: Int64) {
        self.commonName = commonName
        self.notBefore = notBefore
        self.notAfter = notAfter
    }

    /// The first certificate of `pem`.
    public init(pem: [UInt8]) throws(OpenSSLError) {
        ERR_clear_error()
        let cert: OpaquePointer? = pem.withUnsafeBytes { raw in
            guard let bio = BIO_new_mem_buf(raw.baseAddress, Int32(raw.count)) else { return nil }
            defer { BIO_free(bio) }
            return PEM_read_bio_X509(bio, nil, nil, nil)
        }
        guard let cert else { throw OpenSSLError.drain("read certificate PEM") }
        defer { X509_free(cert) }
        guard let from = CertificateInfo.unixTime(X509_get0_notBefore(cert)),
              let to = CertificateInfo.unixTime(X509_get0_notAfter(cert)) else {
            throw OpenSSLError.drain("read the certificate's validity")
        }
        notBefore = from
        notAfter = to
        commonName = CertificateInfo.firstCommonName(cert)
        ERR_clear_error()
    }

    /// When to renew: `notBefore` plus `fraction` (per mille, 667 for two thirds)
    /// of the lifetime, plus `jitter` seconds (the caller draws it, so that a fleet
    /// does not renew at once), never after `notAfter`.
    public func renewalTime(perMille fraction: Int64 = 667, jitter: Int64 = 0) -> Int64 {
        let life = max(0, notAfter - notBefore)
        return min(notAfter, notBefore + life * fraction / 1000 + jitter)
    }

    /// An ASN1_TIME (a certificate's or a CRL's dates) as Unix seconds.
    public static func unixTime(_ t: UnsafePointer<ASN1_TIME>?) -> Int64? {
        guard let t, let epoch = ASN1_TIME_set(nil, 0) else { return nil }
        defer { ASN1_TIME_free(epoch) }
        var days: Int32 = 0
        var seconds: Int32 = 0
        guard ASN1_TIME_diff(&days, &seconds, epoch, t) == 1 else { return nil }
        return Int64(days) * 86_400 + Int64(seconds)
    }

    static func firstCommonName(_ cert: OpaquePointer) -> String {
        guard let subject = X509_get_subject_name(cert) else { return "" }
        let i = X509_NAME_get_index_by_NID(subject, NID_commonName, -1)
        guard i >= 0, let entry = X509_NAME_get_entry(subject, i), let data = X509_NAME_ENTRY_get_data(entry) else { return "" }
        var utf8: UnsafeMutablePointer<UInt8>?
        let len = ASN1_STRING_to_UTF8(&utf8, data)
        guard len > 0, let utf8 else { return "" }
        defer { rh_OPENSSL_free(utf8) }
        return String(decoding: UnsafeBufferPointer(start: utf8, count: Int(len)), as: UTF8.self)
    }
}
