// Globs of device names, as `allow_devices`, token scopes and access policy rules
// write them.
import FleetPKI

/// Which certificate names may connect: comma-separated globs (`*` any run of
/// characters, `?` one), e.g. `dev-*,*.lab.example.com`. Empty: every name the
/// fleet CA signed.
public struct NamePattern: Equatable, Sendable {
    public let globs: [[Character]]

    public init?(_ text: String) {
        guard text.utf8.allSatisfy({ $0 < 0x80 }) else { return nil }
        let parts = PKI.asciiLowercased(text).split(separator: ",").map(NamePattern.trimSpaces)
        guard !parts.isEmpty, parts.allSatisfy({ !$0.isEmpty && $0.allSatisfy { $0.isASCII && !$0.isWhitespace } }) else { return nil }
        globs = parts.map { Array($0) }
    }

    private static func trimSpaces(_ s: Substring) -> String {
        var t = s
        while t.first == " " { t = t.dropFirst() }
        while t.last == " " { t = t.dropLast() }
        return String(t)
    }

    public func matches(_ name: String) -> Bool {
        let n = Array(name.lowercased())
        return globs.contains { NamePattern.match($0[...], n[...]) }
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
