// Errors of the certificate commands (`PKI`). Each one renders as a single line
// that tells the operator what went wrong and what to do about it.
import TLS
#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

public enum PKIError: Error, CustomStringConvertible {
    /// A device, gateway or fleet name that cannot be used (not a hostname, wildcard, ...).
    case invalidName(String)
    /// A file that must not be replaced without `force` (its path).
    case alreadyExists(String)
    /// A file-system call failed on this path with this errno.
    case io(String, errno: Int32)
    /// An OpenSSL call failed; carries the drained error queue.
    case openssl(OpenSSLError)
    /// The directory has no fleet CA (ca.crt and ca.key) to sign with.
    case missingCA(String)
    /// A numeric option out of range ("days must be between 1 and 36500, got 0").
    case invalidArgument(String)
    /// A file that must exist does not (its path), e.g. the certificate of a device to revoke.
    case notFound(String)
    /// A file whose contents cannot be used: its path and what is wrong with it.
    case malformed(String, reason: String)
    /// A device name that is valid but not in canonical form (upper-case letters):
    /// names are case-insensitive, so it would stand for the lower-case one.
    case notCanonical(String)
    /// A device name the gateway answers to itself (its own name, localhost): the
    /// name and why it is reserved.
    case reservedName(String, reason: String)
    /// DIR/issued.txt holds serials for this device name that were never revoked
    /// (its files under devices/ are gone): a new certificate needs `force`.
    case stillIssued(String, serials: [String])
    /// A user name `issue-user` cannot use.
    case invalidUserName(String)

    public var description: String {
        switch self {
        case .invalidName(let name):
            return "invalid name \"\(name)\": use a hostname (labels of 1-63 letters, digits or '-', "
                + "not starting or ending with '-', separated by dots, at most 253 characters, no wildcards)"
        case .alreadyExists(let path):
            if path.hasSuffix("/ca.key") || path == "ca.key" {
                return "refusing to overwrite \(path): a fleet CA already exists there (use --force)"
            }
            return "refusing to overwrite \(path): it already exists (use --force to replace it)"
        case .io(let path, let code):
            return "\(path): \(PKIError.errorText(code))"
        case .openssl(let error):
            return "OpenSSL: \(error.description)"
        case .missingCA(let directory):
            return "no fleet CA in \(directory) (ca.crt and ca.key are required): initialize the PKI there first"
        case .invalidArgument(let text):
            return text
        case .notFound(let path):
            if path.hasSuffix(".crt") && path.contains("/devices/") {
                return "no device certificate \(path): check the device name (see the devices/ directory)"
            }
            return "\(path) does not exist"
        case .malformed(let path, let reason):
            return "\(path): \(reason)"
        case .notCanonical(let name):
            return "device name \"\(name)\" is not in canonical form: names are case-insensitive, "
                + "use \"\(PKI.asciiLowercased(name))\""
        case .reservedName(let name, let reason):
            return "device name \"\(name)\" is reserved: \(reason)"
        case .invalidUserName(let name):
            return "invalid user name \"\(name)\": use 1 to 64 of A-Z a-z 0-9 . _ @ -, starting with a letter or digit"
        case .stillIssued(let name, let serials) where name.hasPrefix("user:"):
            return "\(name) still has a valid certificate (serial \(serials.joined(separator: ", ")) in issued.txt, "
                + "not revoked; its files are gone from users/): use --force to revoke it and issue a new one, "
                + "or revoke it first (pki revoke DIR --serial HEX)"
        case .stillIssued(let name, let serials):
            return "device \"\(name)\" still has a valid certificate (serial \(serials.joined(separator: ", ")) in issued.txt, "
                + "not revoked; its files are gone from devices/): use --force to revoke it and issue a new one, "
                + "or revoke it first (pki revoke)"
        }
    }

    static func errorText(_ code: Int32) -> String {
        guard let text = strerror(code) else { return "errno \(code)" }
        return String(cString: text)
    }
}
