// EST (RFC 7030) message bodies: DER, sent base64 (RFC 7030 §4.2.1, §4.1.3:
// "Content-Transfer-Encoding: base64"), which clients wrap in lines. The decoder
// skips ASCII white space (SP, HT, CR, LF) anywhere, then wants strict RFC 4648 §4
// base64: the alphabet only, padding complete and only at the end, no leftover bits
// set. The encoded size is capped before anything is decoded.
//
// ESTError is the one error type of whatever a peer sends over EST (the body, a
// PKCS#10 request, a PKCS#7 reply): each case renders as one line, and the gateway
// answers every one with 400.
import Bytes

public enum ESTError: Error, Equatable, CustomStringConvertible {
    /// The body (or DER) is larger than the limit (bytes).
    case tooLarge(limit: Int)
    /// Nothing but white space.
    case empty
    /// Not base64: the offset of the first offending byte in the body (after white
    /// space), or of the end when the padding or the last bits are wrong.
    case notBase64(offset: Int)
    /// DER that does not parse as the expected structure ("PKCS#10 request", "PKCS#7").
    case malformed(String)
    /// Bytes after the DER structure.
    case trailingBytes(Int)
    /// A PKCS#7 that is not a SignedData, or one without certificates.
    case notCertsOnly(String)
    /// More certificates than the limit.
    case tooManyCertificates(limit: Int)
    /// The request's signature does not verify with its own public key (no proof of
    /// possession of the private key).
    case badSignature
    /// The request's signature uses a digest we refuse (MD5, SHA-1): its name.
    case weakSignature(String)
    /// A public key type or size we do not certify ("RSA 1024", "EC secp256k1", "DSA").
    case unsupportedKey(String)
    /// The request's subject has no CN, or more than one.
    case commonName(String)
    /// A re-enrollment whose subject is not the current certificate's (RFC 7030 §4.2.2).
    case subjectChanged
    /// A re-enrollment with the current certificate's key: a new key is required.
    case keyReused

    public var description: String {
        switch self {
        case .tooLarge(let limit): return "EST body larger than " + String(limit) + " bytes"
        case .empty: return "empty EST body"
        case .notBase64(let offset): return "EST body is not base64 (at byte " + String(offset) + ")"
        case .malformed(let what): return "not a DER " + what
        case .trailingBytes(let n): return String(n) + " bytes after the DER structure"
        case .notCertsOnly(let why): return "not a certs-only PKCS#7: " + why
        case .tooManyCertificates(let limit): return "more than " + String(limit) + " certificates"
        case .badSignature: return "the request's signature does not verify with its public key (no proof of possession)"
        case .weakSignature(let digest): return "the request is signed with " + digest + " (use SHA-256 or better)"
        case .unsupportedKey(let key): return "unsupported key " + key + " (use EC P-256/P-384, Ed25519 or RSA 2048-8192)"
        case .commonName(let why): return "the request's subject: " + why
        case .subjectChanged: return "a re-enrollment must keep the current certificate's subject"
        case .keyReused: return "a re-enrollment needs a new key (the request has the current certificate's)"
        }
    }
}

public enum ESTBody {
    /// Default cap on an encoded body (a P-384 request is about 700 base64 bytes, a
    /// chain of three certificates about 3 KiB).
    public static let defaultLimit = 16_384

    /// The DER a base64 body carries. `limit` caps the body's size (white space
    /// included), checked first.
    public static func decode(_ body: [UInt8], limit: Int = defaultLimit) throws(ESTError) -> [UInt8] {
        guard body.count <= limit else { throw .tooLarge(limit: limit) }
        var out: [UInt8] = []
        out.reserveCapacity(body.count / 4 * 3)
        var acc: UInt32 = 0
        var bits = 0
        var letters = 0
        var pad = 0
        var offset = 0
        for c in body {
            if c == 0x20 || c == 0x09 || c == 0x0D || c == 0x0A { continue }
            if c == UInt8(ascii: "=") {
                pad += 1
                guard pad <= 2 else { throw .notBase64(offset: offset) }
                offset += 1
                continue
            }
            guard pad == 0, let v = Base64.value(c, urlSafe: false) else { throw .notBase64(offset: offset) }
            acc = acc << 6 | UInt32(v)
            bits += 6
            letters += 1
            if bits >= 8 {
                bits -= 8
                out.append(UInt8(truncatingIfNeeded: acc >> UInt32(bits)))
                acc &= (1 << UInt32(bits)) - 1
            }
            offset += 1
        }
        guard letters > 0 else {
            if pad > 0 { throw .notBase64(offset: 0) }
            throw .empty
        }
        // 4n letters and no padding; 4n+2 with "==" or none; 4n+3 with "=" or none.
        let rest = letters % 4
        let padOK = pad == 0 || (rest == 2 && pad == 2) || (rest == 3 && pad == 1)
        guard rest != 1, padOK, acc == 0 else { throw .notBase64(offset: offset) }
        return out
    }

    /// `der` as base64 in lines of 64 characters, each ended by CR LF.
    public static func encode(_ der: [UInt8]) -> [UInt8] {
        let text = Array(Base64.encode(der, urlSafe: false).utf8)
        var out: [UInt8] = []
        out.reserveCapacity(text.count + (text.count / 64 + 1) * 2)
        var i = 0
        while i < text.count {
            let end = min(i + 64, text.count)
            out.append(contentsOf: text[i..<end])
            out.append(0x0D)
            out.append(0x0A)
            i = end
        }
        return out
    }
}
