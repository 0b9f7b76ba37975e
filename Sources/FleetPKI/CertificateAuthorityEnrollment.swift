// Issuing a device certificate for a verified PKCS#10 request (EST's
// /simpleenroll and /simplereenroll). Only the request's public key is used: the
// subject is CN=NAME with NAME decided by the caller (the enrollment token's
// binding, or the current certificate's name), and the extensions are those of
// `pki issue` (clientAuth, SAN DNS:NAME, no OU). A CA read from a PKI directory
// records the serial in DIR/issued.txt under the directory lock, like `pki issue`,
// so that `pki revoke NAME` revokes it; the device's key never touches the disk here.
import COpenSSL
import TLS
#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

/// A certificate issued for a request.
public struct IssuedCertificate: Equatable, Sendable {
    /// Lower-case hex, as in issued.txt and revoked.txt.
    public let serial: String
    public let certificateDER: [UInt8]
    public let certificatePEM: [UInt8]
    /// Validity, Unix seconds.
    public let notBefore: Int64
    public let notAfter: Int64
    /// Serials of earlier certificates of the same name revoked on the way (`.revoke`).
    public let revoked: [String]
}

/// What to do with earlier, unrevoked certificates of the same name (issued.txt).
public enum EarlierCertificates: Equatable, Sendable {
    /// Refuse with `.stillIssued` (as `pki issue` without --force).
    case refuse
    /// Leave them valid until they expire (re-enrollment: the device rolls over).
    case keep
    /// Revoke them and write DIR/crl.pem valid for `crlDays` (as `pki issue --force`).
    case revoke(crlDays: Int)
}

extension PKI {
    /// Default lifetime of an enrolled device certificate (`device_cert_days`).
    public static let defaultDeviceCertDays = 30
}

extension CertificateAuthority {
    /// Issues a device certificate for `request`'s public key, subject CN=`name`.
    /// `name` must be a canonical device name (`.invalidName`, `.notCanonical`); with a
    /// directory, not a reserved one (`.reservedName`), and `earlier` decides about
    /// earlier certificates of `name`; the new serial is appended to DIR/issued.txt.
    /// The request must come from `CertificateRequest` (signature already verified).
    public func issueDevice(request: CertificateRequest, name: String, days: Int = PKI.defaultDeviceCertDays,
                            earlier: EarlierCertificates = .refuse) throws(PKIError) -> IssuedCertificate {
        guard PKI.isValidDeviceName(name) else { throw .invalidName(name) }
        guard PKI.isCanonicalDeviceName(name) else { throw .notCanonical(name) }
        try PKI.checkDays(days, "days")
        if case .revoke(let crlDays) = earlier { try PKI.checkDays(crlDays, "CRL days") }
        guard let dir = directory else {
            return try sign(request: request, name: name, days: days, revoked: [])
        }
        try PKI.checkNotReserved(name, dir: dir)
        let lock = try PKI.lockDirectory(dir)
        defer { close(lock) }
        var revoked: [String] = []
        switch earlier {
        case .keep:
            break
        case .refuse:
            let revokedSerials = try PKI.readRevocationList(PKI.join(dir, "revoked.txt")).entries.map(\.serial)
            let live = try PKI.issuedSerials(dir, name: name, caCert: cert).filter { !revokedSerials.contains($0) }
            if !live.isEmpty { throw .stillIssued(name, serials: live) }
        case .revoke(let crlDays):
            let previous = try PKI.issuedSerials(dir, name: name, caCert: cert)
            revoked = try PKI.revokeLocked(dir: dir, previous.map { PKI.RevokedEntry(serial: $0, name: name) },
                                           caCert: cert, caKey: key, days: crlDays, writeUnchanged: false)
        }
        let issued = try sign(request: request, name: name, days: days, revoked: revoked)
        let indexPath = PKI.join(dir, "issued.txt")
        try PKI.appendEntries(indexPath, [PKI.RevokedEntry(serial: issued.serial, name: name)],
                              to: PKI.readRevocationList(indexPath).bytes)
        return issued
    }

    /// The checks of `issueDevice` that come before signing (name, reserved names,
    /// earlier certificates with `.refuse`), without signing or writing anything: for
    /// refusing an enrollment before its one-time token is used up.
    public func checkIssuable(name: String, earlier: EarlierCertificates = .refuse) throws(PKIError) {
        guard PKI.isValidDeviceName(name) else { throw .invalidName(name) }
        guard PKI.isCanonicalDeviceName(name) else { throw .notCanonical(name) }
        guard let dir = directory else { return }
        try PKI.checkNotReserved(name, dir: dir)
        guard earlier == .refuse else { return }
        let lock = try PKI.lockDirectory(dir)
        defer { close(lock) }
        let revokedSerials = try PKI.readRevocationList(PKI.join(dir, "revoked.txt")).entries.map(\.serial)
        let live = try PKI.issuedSerials(dir, name: name, caCert: cert).filter { !revokedSerials.contains($0) }
        if !live.isEmpty { throw .stillIssued(name, serials: live) }
    }

    private func sign(request: CertificateRequest, name: String, days: Int, revoked: [String]) throws(PKIError) -> IssuedCertificate {
        guard let publicKey = X509_REQ_get0_pubkey(request.request) else { throw PKI.failure("read the request's public key") }
        let leaf = try PKI.makeCertificate(commonName: name, subjectKey: publicKey, issuer: (cert, key),
                                           days: days, notBeforeOffsetDays: 0,
                                           extensions: PKI.deviceExtensions(name: name))
        defer { X509_free(leaf) }
        let serial = try PKI.serialHex(leaf, what: name)
        let pem = try PKI.certificatePEM(leaf)
        let info: CertificateInfo
        do throws(OpenSSLError) {
            info = try CertificateInfo(pem: pem)
        } catch {
            throw .openssl(error)
        }
        return IssuedCertificate(serial: serial, certificateDER: try PKI.certificateDER(leaf), certificatePEM: pem,
                                 notBefore: info.notBefore, notAfter: info.notAfter, revoked: revoked)
    }

    /// The CA certificate, DER (what /cacerts lists).
    public func certificateDER() throws(PKIError) -> [UInt8] { try PKI.certificateDER(cert) }
}

extension PKI {
    static func certificateDER(_ x: OpaquePointer) throws(PKIError) -> [UInt8] {
        let n = i2d_X509(x, nil)
        guard n > 0 else { throw failure("i2d_X509") }
        var out = [UInt8](repeating: 0, count: Int(n))
        let written = out.withUnsafeMutableBufferPointer { p -> Int32 in
            var o: UnsafeMutablePointer<UInt8>? = p.baseAddress
            return i2d_X509(x, &o)
        }
        guard written == n else { throw failure("i2d_X509") }
        return out
    }
}
