// Two-tier fleet PKI (`pki init --issuing-ca`, issue 17): a root CA that signs one
// issuing CA, which signs everything else. Every command signs with DIR/ca.key as
// before, so the layout is the single-CA one plus the root:
//
//   root.crt   the root CA (self-signed, CA:TRUE, keyCertSign + cRLSign). 0644.
//   root.key   its key. No command needs it afterwards: move it off the machine
//              (it signs a new issuing CA one day). 0600.
//   ca.crt     the chain: the issuing CA (CA:TRUE, pathlen:0, signed by the root),
//              then the root. As a trust file (gateway --ca, agent ca, HAProxy
//              ca-file) it works as the single CA's did; the first certificate is
//              the one that signs (loadCA reads the first). 0644.
//   ca.key     the issuing CA's key: what the gateway holds to enroll devices. 0600.
//   *.crt      leaves, followed by the issuing CA (a peer that trusts only root.crt
//              gets the whole chain in the handshake).
//
// The CRL (crl.pem) is the issuing CA's and covers the leaves (OpenSSL's
// X509_V_FLAG_CRL_CHECK). A verifier that checks the whole chain
// (X509_V_FLAG_CRL_CHECK_ALL, as HAProxy's crl-file does) also needs a CRL of the root.
import COpenSSL
#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

extension PKI {
    static func caExtensions(pathLength: Int?) -> [(Int32, String)] {
        [
            (NID_basic_constraints, "critical,CA:TRUE" + (pathLength.map { ",pathlen:" + String($0) } ?? "")),
            (NID_key_usage, "critical,keyCertSign,cRLSign"),
            (NID_subject_key_identifier, "hash"),
        ]
    }

    static func initializeTwoTier(directory: String, gatewayName: String, extraSANs: [String], days: Int,
                                  caDays: Int, rootDays: Int, fleetName: String, force: Bool) throws(PKIError) {
        try checkDays(rootDays, "root CA days")
        guard rootDays >= caDays else {
            throw .invalidArgument("the root CA must outlive the issuing CA (root \(rootDays) days, issuing \(caDays))")
        }
        guard isValidLabelText(fleetName) else { throw .invalidName(fleetName) }
        let sans = try subjectAltNames(primary: gatewayName, extra: extraSANs)
        let dir = normalized(directory)
        let caKeyPath = join(dir, "ca.key")
        let rootKeyPath = join(dir, "root.key")
        if !force {
            if try exists(caKeyPath) { throw .alreadyExists(caKeyPath) }
            if try exists(rootKeyPath) { throw .alreadyExists(rootKeyPath) }
        }

        let rootKey = try generateKey()
        defer { EVP_PKEY_free(rootKey) }
        let rootCert = try makeCertificate(commonName: fleetName + " Root CA", subjectKey: rootKey, issuer: nil,
                                           days: rootDays, notBeforeOffsetDays: 0, extensions: caExtensions(pathLength: nil))
        defer { X509_free(rootCert) }
        let caKey = try generateKey()
        defer { EVP_PKEY_free(caKey) }
        let caCert = try makeCertificate(commonName: fleetName + " Issuing CA", subjectKey: caKey, issuer: (rootCert, rootKey),
                                         days: caDays, notBeforeOffsetDays: 0,
                                         extensions: caExtensions(pathLength: 0) + [(NID_authority_key_identifier, "keyid:always")])
        defer { X509_free(caCert) }
        let gatewayKey = try generateKey()
        defer { EVP_PKEY_free(gatewayKey) }
        let gatewayCert = try makeCertificate(commonName: gatewayName, subjectKey: gatewayKey, issuer: (caCert, caKey),
                                              days: days, notBeforeOffsetDays: 0, extensions: serverExtensions(sans: sans))
        defer { X509_free(gatewayCert) }

        var rootKeyPEM = try keyPEM(rootKey)
        defer { wipe(&rootKeyPEM) }
        var caKeyPEM = try keyPEM(caKey)
        defer { wipe(&caKeyPEM) }
        var gatewayKeyPEM = try keyPEM(gatewayKey)
        defer { wipe(&gatewayKeyPEM) }
        let rootPEM = try certificatePEM(rootCert)
        let caPEM = try certificatePEM(caCert)
        let gatewayPEM = try certificatePEM(gatewayCert)

        try makeDirectory(dir)
        try writeFile(caKeyPath, caKeyPEM, mode: keyMode, replace: force)
        do throws(PKIError) {
            try writeFile(rootKeyPath, rootKeyPEM, mode: keyMode, replace: force)
        } catch {
            if !force { unlink(caKeyPath) }
            throw error
        }
        do throws(PKIError) {
            try writeFile(join(dir, "root.crt"), rootPEM, mode: certMode, replace: true)
            try writeFile(join(dir, "ca.crt"), caPEM + rootPEM, mode: certMode, replace: true)
            try writeFile(join(dir, "gateway.key"), gatewayKeyPEM, mode: keyMode, replace: true)
            try writeFile(join(dir, "gateway.crt"), gatewayPEM + caPEM, mode: certMode, replace: true)
        } catch {
            if !force {
                unlink(caKeyPath)
                unlink(rootKeyPath)
            }
            throw error
        }
    }

    /// What follows a leaf in its .crt file: the CA's certificate when the CA is an
    /// issuing CA (not self-signed), else nothing.
    static func chainAfterLeaf(_ caCert: OpaquePointer) throws(PKIError) -> [UInt8] {
        X509_check_issued(caCert, caCert) == X509_V_OK ? [] : try certificatePEM(caCert)
    }
}

extension CertificateAuthority {
    /// The CA's chain as DER, signing CA first: DIR/ca.crt's certificates (the issuing
    /// CA and the root, or the one fleet CA); for an ephemeral CA, its certificate.
    /// What EST's /cacerts answers (PKCS7CertsOnly.encode(certificatesDER:)).
    public func chainDER() throws(PKIError) -> [[UInt8]] {
        guard let dir = directory else { return [try certificateDER()] }
        return try PKI.certificatesDER(pem: PKI.readFile(PKI.join(dir, "ca.crt")))
    }
}
