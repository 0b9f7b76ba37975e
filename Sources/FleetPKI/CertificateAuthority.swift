// CertificateAuthority: a fleet CA held in memory, issuing device certificates
// without touching the disk. The simulator uses it to give each of thousands of
// virtual devices its own certificate (EC P-256, as `pki issue` makes them), and
// to make the faulty ones: an expired certificate, or one from a foreign CA.
import COpenSSL

public final class CertificateAuthority {
    let cert: OpaquePointer
    let key: OpaquePointer
    /// The PKI directory this CA was read from (`init(directory:)`), where
    /// `issueDevice(request:...)` records what it issues; nil for an ephemeral CA.
    public let directory: String?
    /// The CA certificate, PEM: what a gateway or device trusts.
    public let certificatePEM: [UInt8]

    /// The CA of a fleet PKI directory (DIR/ca.crt and DIR/ca.key, from `pki init`).
    public convenience init(directory: String) throws(PKIError) {
        let dir = PKI.normalized(directory)
        let (c, k) = try PKI.loadCA(dir)
        try self.init(taking: c, k, directory: dir)
    }

    /// A new CA that exists only in memory (nobody trusts it: a foreign CA).
    public convenience init(ephemeralName name: String) throws(PKIError) {
        let k = try PKI.generateKey()
        let c: OpaquePointer
        do throws(PKIError) {
            c = try PKI.makeCertificate(commonName: name, subjectKey: k, issuer: nil, days: 3650, notBeforeOffsetDays: 0,
                                        extensions: [(NID_basic_constraints, "critical,CA:TRUE"),
                                                     (NID_key_usage, "critical,keyCertSign,cRLSign"),
                                                     (NID_subject_key_identifier, "hash")])
        } catch {
            EVP_PKEY_free(k)
            throw error
        }
        try self.init(taking: c, k, directory: nil)
    }

    /// Owns `cert` and `key` from here on (frees them if this fails).
    private init(taking cert: OpaquePointer, _ key: OpaquePointer, directory: String?) throws(PKIError) {
        do throws(PKIError) {
            certificatePEM = try PKI.certificatePEM(cert)
        } catch {
            X509_free(cert)
            EVP_PKEY_free(key)
            throw error
        }
        self.cert = cert
        self.key = key
        self.directory = directory
    }

    deinit {
        X509_free(cert)
        EVP_PKEY_free(key)
    }

    /// A device (client) certificate for `name` with a new key, both PEM, with the
    /// same extensions as `pki issue`. `notBeforeOffsetDays` < 0 moves the validity
    /// window into the past (with a short `days`, an expired certificate).
    /// The name is checked as a hostname only, not for canonical form or reserved
    /// names: this can make what another tool would ("DEV1.EXAMPLE", "localhost"),
    /// which the gateway must refuse.
    public func issueDevice(name: String, days: Int = 825, notBeforeOffsetDays: Int = 0)
        throws(PKIError) -> (certificatePEM: [UInt8], keyPEM: [UInt8]) {
        guard PKI.isValidDeviceName(name) else { throw .invalidName(name) }
        try PKI.checkDays(days, "days")
        try PKI.checkOffset(notBeforeOffsetDays)
        let leafKey = try PKI.generateKey()
        defer { EVP_PKEY_free(leafKey) }
        let leaf = try PKI.makeCertificate(commonName: name, subjectKey: leafKey, issuer: (cert, key),
                                           days: days, notBeforeOffsetDays: notBeforeOffsetDays,
                                           extensions: PKI.deviceExtensions(name: name))
        defer { X509_free(leaf) }
        return (try PKI.certificatePEM(leaf), try PKI.keyPEM(leafKey))
    }
}
