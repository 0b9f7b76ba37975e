// HTTP1Bytes: byte classes and small byte-level helpers shared by the parsers
// and the writer (RFC 9110 §5.6 token / field-value grammar, RFC 9112 §7.1
// chunk lines). Everything works on UInt8 and index ranges: no allocation per
// byte, no Foundation, Embedded-Swift clean.
import HTTPCore

enum HTTP1Bytes {
    static let cr: UInt8 = 0x0D
    static let lf: UInt8 = 0x0A
    static let sp: UInt8 = 0x20
    static let htab: UInt8 = 0x09
    static let colon: UInt8 = 0x3A
    static let comma: UInt8 = 0x2C
    static let semicolon: UInt8 = 0x3B
    static let equals: UInt8 = 0x3D
    static let dquote: UInt8 = 0x22
    static let backslash: UInt8 = 0x5C

    /// Largest body / chunk size accepted (2^62): anything above is an error.
    static let maxLength: Int = 1 << 62

    /// tchar = "!" / "#" / "$" / "%" / "&" / "'" / "*" / "+" / "-" / "." /
    ///         "^" / "_" / "`" / "|" / "~" / DIGIT / ALPHA
    @inline(__always)
    static func isTchar(_ b: UInt8) -> Bool {
        switch b {
        case 0x30...0x39, 0x41...0x5A, 0x61...0x7A: return true
        case 0x21, 0x23, 0x24, 0x25, 0x26, 0x27, 0x2A, 0x2B, 0x2D, 0x2E,
             0x5E, 0x5F, 0x60, 0x7C, 0x7E: return true
        default: return false
        }
    }

    /// Optional whitespace: SP / HTAB.
    @inline(__always)
    static func isOWS(_ b: UInt8) -> Bool { b == sp || b == htab }

    /// A byte allowed inside a field value (after trimming):
    /// VCHAR / SP / HTAB / obs-text. Rejects NUL, the other CTLs and DEL.
    @inline(__always)
    static func isFieldValueByte(_ b: UInt8) -> Bool {
        (b >= 0x20 && b != 0x7F) || b == htab
    }

    @inline(__always)
    static func isDigit(_ b: UInt8) -> Bool { b >= 0x30 && b <= 0x39 }

    /// Value of a hexadecimal digit, or nil.
    @inline(__always)
    static func hexValue(_ b: UInt8) -> Int? {
        switch b {
        case 0x30...0x39: return Int(b - 0x30)
        case 0x41...0x46: return Int(b - 0x41 + 10)
        case 0x61...0x66: return Int(b - 0x61 + 10)
        default: return nil
        }
    }

    @inline(__always)
    static func lower(_ b: UInt8) -> UInt8 { HTTPFieldBytes.lower(b) }

    /// ASCII case-insensitive comparison of two strings (byte-wise on UTF-8).
    static func equalsIgnoringCase(_ a: String, _ b: String) -> Bool { HTTPFieldBytes.equalsIgnoringCase(a, b) }

    /// ASCII case-insensitive comparison of a byte slice with a lowercase literal.
    static func equalsIgnoringCase(_ a: ArraySlice<UInt8>, lowercase b: StaticString) -> Bool {
        if a.count != b.utf8CodeUnitCount { return false }
        let p = b.utf8Start
        var j = 0
        for x in a {
            if lower(x) != p[j] { return false }
            j += 1
        }
        return true
    }

    /// Splits a comma-separated list value (RFC 9110 §5.6.1) into its elements,
    /// OWS-trimmed. Empty elements are kept (callers decide what they mean).
    static func listElements(_ value: String) -> [ArraySlice<UInt8>] { HTTPFieldBytes.listElements(value) }

    /// Parses 1*DIGIT (no sign, no whitespace) up to `maxLength`; nil if invalid.
    static func parseDecimal(_ bytes: ArraySlice<UInt8>) -> Int? {
        if bytes.isEmpty { return nil }
        var value = 0
        for b in bytes {
            guard isDigit(b) else { return nil }
            let d = Int(b - 0x30)
            if value > (maxLength - d) / 10 { return nil }
            value = value * 10 + d
        }
        return value
    }

    /// Appends the decimal form of a non-negative Int.
    static func appendDecimal(_ n: Int, to out: inout [UInt8]) {
        if n < 0 {
            out.append(0x2D)
            appendDecimal(0 - (n / 10), to: &out)  // avoids overflow on Int.min
            out.append(UInt8(0x30 + (0 - n % 10)))
            return
        }
        if n >= 10 { appendDecimal(n / 10, to: &out) }
        out.append(UInt8(0x30 + n % 10))
    }

    /// Appends the lowercase hexadecimal form of a non-negative Int.
    static func appendHex(_ n: Int, to out: inout [UInt8]) {
        if n >= 16 { appendHex(n >> 4, to: &out) }
        let d = UInt8(n & 15)
        out.append(d < 10 ? 0x30 + d : 0x61 + d - 10)
    }

    /// Appends the UTF-8 of `s`, replacing CTLs other than HTAB (CR, LF, NUL, ...)
    /// by SP so that a written head can never be split or smuggled into.
    static func appendSanitized(_ s: String, to out: inout [UInt8]) {
        var s = s  // withUTF8: in place for a native string, no iterator fallback
        s.withUTF8 { bytes in
            for b in bytes where !isFieldValueByte(b) {
                for c in bytes { out.append(isFieldValueByte(c) ? c : sp) }
                return
            }
            out.append(contentsOf: bytes)  // the usual case: one copy
        }
    }
}
