// Globs of device names, as `allow_devices`, token scopes and access policy rules
// write them.
import FleetPKI

/// Which certificate names may connect: comma-separated globs (`*` any run of
/// characters, `?` one), e.g. `dev-*,*.lab.example.com`. Empty: every name the
/// fleet CA signed.
public struct NamePattern: Equatable, Sendable {
    public let globs: [[Character]]
    /// The same globs as bytes (they are ASCII, lower-case).
    let byteGlobs: [[UInt8]]

    public init?(_ text: String) {
        guard text.utf8.allSatisfy({ $0 < 0x80 }) else { return nil }
        let parts = PKI.asciiLowercased(text).split(separator: ",").map(NamePattern.trimSpaces)
        guard !parts.isEmpty, parts.allSatisfy({ !$0.isEmpty && $0.allSatisfy { $0.isASCII && !$0.isWhitespace } }) else { return nil }
        globs = parts.map { Array($0) }
        byteGlobs = parts.map { Array($0.utf8) }
    }

    private static func trimSpaces(_ s: Substring) -> String {
        var t = s
        while t.first == " " { t = t.dropFirst() }
        while t.last == " " { t = t.dropLast() }
        return String(t)
    }

    public func matches(_ name: String) -> Bool {
        // Device names are ASCII: compared byte by byte, with no allocation (this runs
        // for every request a token makes). Anything else as Characters.
        var ascii = true
        for b in name.utf8 where b >= 0x80 { ascii = false; break }
        if ascii {
            return name.utf8.withContiguousStorageIfAvailable { n in
                byteGlobs.contains { NamePattern.match($0[...], n[...]) }
            } ?? byteGlobs.contains { NamePattern.match($0[...], Array(name.utf8).map(NamePattern.lower)[...]) }
        }
        let n = Array(name.lowercased())
        return globs.contains { NamePattern.match($0[...], n[...]) }
    }

    private static func lower(_ b: UInt8) -> UInt8 { b >= 0x41 && b <= 0x5A ? b | 0x20 : b }

    private static func match(_ p: ArraySlice<UInt8>, _ s: UnsafeBufferPointer<UInt8>.SubSequence) -> Bool {
        var pi = p.startIndex, si = s.startIndex
        var star: ArraySlice<UInt8>.Index? = nil
        var mark = s.startIndex
        while si < s.endIndex {
            let c = lower(s[si])
            if pi < p.endIndex && p[pi] == 0x2A {
                star = pi; mark = si; pi += 1
            } else if pi < p.endIndex && (p[pi] == 0x3F || p[pi] == c) {
                pi += 1; si += 1
            } else if let st = star {
                pi = st + 1; mark += 1; si = mark
            } else {
                return false
            }
        }
        while pi < p.endIndex && p[pi] == 0x2A { pi += 1 }
        return pi == p.endIndex
    }

    private static func match(_ p: ArraySlice<UInt8>, _ s: ArraySlice<UInt8>) -> Bool {
        s.withUnsafeBufferPointer { match(p, $0[...]) }
    }

    private static func match(_ p: ArraySlice<Character>, _ s: ArraySlice<Character>) -> Bool {
        // Iterative glob match with single-star backtracking: linear in practice.
        var pi = p.startIndex, si = s.startIndex
        var star: ArraySlice<Character>.Index? = nil
        var mark = s.startIndex
        while si < s.endIndex {
            // "*" first: a "*" in the name must not use up the pattern's "*" as a literal.
            if pi < p.endIndex && p[pi] == "*" {
                star = pi; mark = si; pi += 1
            } else if pi < p.endIndex && (p[pi] == "?" || p[pi] == s[si]) {
                pi += 1; si += 1
            } else if let st = star {
                pi = st + 1; mark += 1; si = mark
            } else {
                return false
            }
        }
        while pi < p.endIndex && p[pi] == "*" { pi += 1 }
        return pi == p.endIndex
    }
}
