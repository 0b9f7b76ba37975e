// Which device certificates the gateway admits, and under what name: the CN must
// be a device name in canonical form (issue 12, finding 4) that is none of the
// gateway's own names (finding 9), allowed by allow_devices and mappable by
// hostname_template. Refusals are logged, never registered.
import FleetPKI

extension DeviceIdentity {
    /// The identity of a device that presented a verified certificate with this CN
    /// (nil: none, or several), or why it is refused. Checked in this order: a
    /// canonical device name, in allow_devices, a hostname the template can make, and
    /// neither the name nor the hostname reserved (the gateway's own names).
    static func admit(commonName: String?, isUserCertificate: Bool = false, isClaimCertificate: Bool = false,
                      config: GatewayConfig, reserved: ReservedNames) -> Result<DeviceIdentity, DeviceRefusal> {
        // A user's certificate (same CA, OU=reversehttp-user) never stands for a device.
        if isUserCertificate { return .failure(.userCertificate(commonName ?? "")) }
        // Nor does a claim (OU=reversehttp-claim, CN claim:NAME, which is no hostname
        // either: PKIClaims.swift): it only enrolls, on EST.
        if isClaimCertificate { return .failure(.claimCertificate(commonName ?? "")) }
        guard let cn = commonName, PKI.isValidDeviceName(cn) else { return .failure(.noValidName) }
        guard let name = name(commonName: cn) else { return .failure(.notCanonical(cn)) }
        if let allow = config.allowDevices, !allow.matches(name) { return .failure(.notAllowed(name)) }
        guard let hostname = config.hostnameTemplate.hostname(for: name) else { return .failure(.noHostname(name)) }
        if let which = reserved.match(name) ?? reserved.match(hostname) { return .failure(.reserved(name, which)) }
        return .success(DeviceIdentity(name: name, hostname: hostname))
    }
}

/// Why the gateway refuses a device certificate's name (logged, never registered).
enum DeviceRefusal: Error, Equatable, CustomStringConvertible {
    case noValidName
    /// A user's certificate (OU=reversehttp-user) presented on the device listener: its CN.
    case userCertificate(String)
    /// A claim certificate (OU=reversehttp-claim) presented as a device's: its CN.
    case claimCertificate(String)
    case notCanonical(String)
    case notAllowed(String)
    case noHostname(String)
    /// The device name and the reserved name it takes.
    case reserved(String, String)

    var description: String { logLine(peer: "") }

    /// The log line of the refusal of a connection from `peer` (without "; closing").
    func logLine(peer: String) -> String {
        let from = peer.isEmpty ? "" : " from " + peer
        switch self {
        case .noValidName:
            return "device certificate" + from + " has no valid hostname CN"
        case .userCertificate(let cn):
            return "certificate" + from + " is a user's (OU=" + PKI.userMarker + ", CN \"" + cn
                + "\"), not a device's: refused on the device listener (users connect to the public listener)"
        case .claimCertificate(let cn):
            return "certificate" + from + " is a claim (OU=" + PKI.claimMarker + ", CN \"" + cn
                + "\"): it authorizes EST enrollment only, never a device's connection"
        case .notCanonical(let cn):
            return "device certificate" + from + " has CN \"" + cn + "\", not in canonical form (names are case-insensitive; "
                + "`pki issue` writes \"" + PKI.asciiLowercased(cn) + "\"): refused, it would stand for another certificate's device"
        case .notAllowed(let name):
            return "device " + name + from + " is not in allow_devices"
        case .noHostname(let name):
            // e.g. a 63-character CN under "dev-{cn}.example": no Host could reach it.
            return "device " + name + from
                + ": hostname_template gives it no valid hostname (label over 63 or name over 253 characters)"
        case .reserved(let name, let which):
            return "device " + name + from + " takes the reserved name " + which
                + " (the gateway's own names and localhost are never routed to a device)"
        }
    }
}

/// Names users address the gateway itself by, which no device may take: localhost
/// (and *.localhost), the CN and DNS names of the device listener's and the public
/// listener's certificates, and the listen hosts when they are names.
struct ReservedNames: Equatable {
    let names: Set<String>

    init(_ names: Set<String>) { self.names = names }

    init(config: GatewayConfig) {
        var names: Set<String> = ["localhost"]
        for file in [config.certFile, config.publicCertFile].compactMap({ $0 }) {
            names.formUnion(PKI.certificateHostnames(file: file))
        }
        for host in [config.listenPublic.host, config.listenAdmin?.host, config.listenDevices.host].compactMap({ $0 }) {
            if let name = PKI.canonicalDeviceName(host) { names.insert(name) }
        }
        self.names = names
    }

    /// The reserved name `name` (canonical) is, or nil.
    func match(_ name: String) -> String? {
        names.contains(name) || PKI.isLocalhostName(name) ? name : nil
    }
}
