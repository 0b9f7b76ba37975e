// User certificates on the HTTPS public listener: a client certificate of the fleet
// CA whose subject has OU=reversehttp-user (`fleet-gateway pki issue-user`) makes the
// principal user:CN. A device's certificate there is ignored, as if none was sent.
import FleetPKI
import TLS

/// The principal a public connection's client certificate makes: only when a
/// certificate was sent, its chain verified (fleet CA, CRL) and its subject carries
/// the user marker OU; nil otherwise (no certificate, a device's certificate).
public func userPrincipal(from tls: TLSConnection) -> Principal? {
    guard tls.peerCertificateVerified, tls.peerHasOrganizationalUnit(PKI.userMarker),
          !tls.peerHasOrganizationalUnit(PKI.claimMarker),  // a claim (CN claim:NAME) is never a user
          let cn = tls.peerCommonName, PKI.isValidUserName(cn) else { return nil }
    return Principal(method: .certificate, name: cn, expires: tls.peerCertificateNotAfter)
}
