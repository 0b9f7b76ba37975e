// ClaimAuthority: whether a claim certificate presented on EST's simpleenroll still
// authorizes enrollments (issue 17; the claims themselves: FleetPKI/PKIClaims.swift).
// The certificate has been verified by TLS against the fleet CA (and the CRL read at
// the last reload); here the server's record decides: DIR/claims.txt must hold its
// serial under its name, DIR/revoked.txt must not (read per request, so that
// `pki revoke-claim` takes effect before the next reload), and it must not have
// expired on the injected clock. What it allows is the record's device names.
import FleetAccess
import FleetPKI

enum ClaimRefusal: Error, Equatable, CustomStringConvertible {
    case notAClaim
    case unknown(name: String, serial: String)
    case revoked(name: String, serial: String)
    case expired(name: String, at: Int64)
    /// claims.txt or revoked.txt cannot be read, or the record's names do not parse.
    case unreadable(String)

    /// 403 for the client's fault, 500 for the gateway's.
    var status: Int {
        if case .unreadable = self { return 500 }
        return 403
    }

    var description: String {
        switch self {
        case .notAClaim: return "the client certificate is not a claim (OU=" + PKI.claimMarker + ", CN claim:NAME)"
        case .unknown(let name, let serial): return "claim " + name + " (serial " + serial + ") is not in " + PKI.claimsFile
        case .revoked(let name, let serial): return "claim " + name + " (serial " + serial + ") is revoked"
        case .expired(let name, let at): return "claim " + name + " expired " + TokenStore.utcText(at)
        case .unreadable(let why): return why
        }
    }
}

enum ClaimAuthority {
    /// The record of the claim `cert` (a verified client certificate) and the names it
    /// allows, or why it authorizes nothing.
    static func check(_ cert: PresentedCertificate, directory: String,
                      now: Int64) throws(ClaimRefusal) -> (record: ClaimRecord, binding: EnrollmentBinding) {
        guard let name = cert.claimName else { throw .notAClaim }
        let record: ClaimRecord?
        let revoked: Bool
        do throws(PKIError) {
            record = try PKI.claim(directory: directory, serial: cert.serial)
            revoked = try PKI.isRevoked(directory: directory, serial: cert.serial)
        } catch {
            throw .unreadable("claims: " + error.description)
        }
        guard let record, record.name == name else { throw .unknown(name: name, serial: cert.serial) }
        if revoked { throw .revoked(name: name, serial: cert.serial) }
        let end = min(record.notAfter, cert.notAfter)
        if now >= end { throw .expired(name: name, at: end) }
        do throws(EnrollmentTokenError) {
            return (record, try EnrollmentBinding(record.devices))
        } catch {
            throw .unreadable(PKI.claimsFile + ": claim " + name + ": " + error.description)
        }
    }
}
