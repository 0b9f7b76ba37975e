// HTTPFieldBytes: the byte-level helpers field names and values need in every
// version of HTTP (RFC 9110 §5): ASCII case folding and comma-separated lists.
// HTTP1's parser and writer use them too (HTTP1Bytes forwards here); inlinable,
// so that the per-byte ones cost no call across the module boundary.

public enum HTTPFieldBytes {
    @inlinable @inline(__always)
    public static func lower(_ b: UInt8) -> UInt8 {
        (b >= 0x41 && b <= 0x5A) ? b | 0x20 : b
    }

    /// ASCII case-insensitive comparison of two strings (byte-wise on UTF-8). Field
    /// names are compared many times per message: native strings are compared in
    /// place, without an iterator per byte.
    @inlinable
    public static func equalsIgnoringCase(_ a: String, _ b: String) -> Bool {
        if a.utf8.count != b.utf8.count { return false }
        // withUTF8 is in place for native strings (all of them in the Embedded agent);
        // it has no per-byte iterator fallback to carry (1 KB there).
        var a = a, b = b
        return a.withUTF8 { ab in b.withUTF8 { bb in equalsIgnoringCase(ab, bb) } }
    }

    /// ASCII case-insensitive comparison of two byte runs of the same length.
    @inlinable
    public static func equalsIgnoringCase(_ a: UnsafeBufferPointer<UInt8>, _ b: UnsafeBufferPointer<UInt8>) -> Bool {
        if a.count != b.count { return false }
        var i = 0
        while i < a.count {
            let x = a[i], y = b[i]
            if x != y && lower(x) != lower(y) { return false }
            i += 1
        }
        return true
    }

    /// `s` with ASCII A-Z lowered (HTTP/2 field names, RFC 9113 §8.2.1); `s` itself when it has none.
    public static func lowercased(_ s: String) -> String {
        guard s.utf8.contains(where: { $0 >= 0x41 && $0 <= 0x5A }) else { return s }
        return String(decoding: s.utf8.map(lower), as: UTF8.self)
    }

    /// Trims SP/HTAB from both ends.
    @inlinable
    public static func trimOWS(_ bytes: ArraySlice<UInt8>) -> ArraySlice<UInt8> {
        var s = bytes.startIndex, e = bytes.endIndex
        while s < e && (bytes[s] == 0x20 || bytes[s] == 0x09) { s += 1 }
        while e > s && (bytes[e - 1] == 0x20 || bytes[e - 1] == 0x09) { e -= 1 }
        return bytes[s..<e]
    }

    /// Splits a comma-separated list value (RFC 9110 §5.6.1) into its elements,
    /// OWS-trimmed. Empty elements are kept (callers decide what they mean).
    public static func listElements(_ value: String) -> [ArraySlice<UInt8>] {
        let bytes = Array(value.utf8)
        var out: [ArraySlice<UInt8>] = []
        var start = 0
        var i = 0
        while i <= bytes.count {
            if i == bytes.count || bytes[i] == 0x2C {
                out.append(trimOWS(bytes[start..<i]))
                start = i + 1
            }
            i += 1
        }
        return out
    }
}
