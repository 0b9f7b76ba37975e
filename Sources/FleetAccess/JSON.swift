// A small, bounded JSON reader (RFC 8259) for JWT headers, claims and key sets:
// bytes a stranger sends, so every limit is explicit. Linear time: each byte is
// looked at a bounded number of times; nesting is at most `maxDepth` (16) deep;
// the input is refused above the caller's `maxSize` before it is read. Duplicate
// object keys and bytes after the value are errors (a claim must not mean two
// things to two readers). Numbers stay as their text; `int64` reads integers.

public enum JSONValue: Equatable, Sendable {
    case object(JSONObject)
    case array([JSONValue])
    case string(String)
    /// The number's text, as sent (validated against the JSON grammar).
    case number(String)
    case bool(Bool)
    case null

    public var string: String? {
        if case .string(let s) = self { return s }
        return nil
    }

    public var object: JSONObject? {
        if case .object(let o) = self { return o }
        return nil
    }

    public var array: [JSONValue]? {
        if case .array(let a) = self { return a }
        return nil
    }

    /// An integral number within Int64; a fraction is dropped toward negative
    /// infinity ("1700000000.5" is 1700000000). Exponents and out-of-range
    /// numbers give nil.
    public var int64: Int64? {
        guard case .number(let text) = self else { return nil }
        var negative = false
        var value: Int64 = 0
        var sawFraction = false
        var fractionNonZero = false
        for (i, c) in text.utf8.enumerated() {
            if sawFraction {
                guard c >= 0x30, c <= 0x39 else { return nil }
                if c != 0x30 { fractionNonZero = true }
                continue
            }
            switch c {
            case 0x2D where i == 0: negative = true
            case 0x2E: sawFraction = true
            case 0x30...0x39:
                let d = Int64(c - 0x30)
                let (m, o1) = value.multipliedReportingOverflow(by: 10)
                let (v, o2) = negative ? m.subtractingReportingOverflow(d) : m.addingReportingOverflow(d)
                if o1 || o2 { return nil }
                value = v
            default: return nil   // exponent
            }
        }
        if negative && fractionNonZero {
            let (v, o) = value.subtractingReportingOverflow(1)
            return o ? nil : v
        }
        return value
    }
}

/// An object's members in the order sent; keys are unique.
public struct JSONObject: Equatable, Sendable {
    public private(set) var members: [(key: String, value: JSONValue)]
    private var index: [String: Int]

    init() {
        members = []
        index = [:]
    }

    /// Adds a member; false if the key is already there.
    mutating func add(_ key: String, _ value: JSONValue) -> Bool {
        if index[key] != nil { return false }
        index[key] = members.count
        members.append((key, value))
        return true
    }

    public subscript(key: String) -> JSONValue? {
        guard let i = index[key] else { return nil }
        return members[i].value
    }

    public var count: Int { members.count }

    public static func == (a: JSONObject, b: JSONObject) -> Bool {
        a.members.count == b.members.count
            && zip(a.members, b.members).allSatisfy { $0.key == $1.key && $0.value == $1.value }
    }
}

public struct JSONError: Error, Equatable, CustomStringConvertible {
    /// What is wrong, and where (a byte offset).
    public let message: String
    public let offset: Int
    public var description: String { message + " at byte " + String(offset) }
}

public enum JSON {
    public static let maxDepth = 16

    /// Parses one JSON value filling all of `bytes` (whitespace around it allowed).
    public static func parse(_ bytes: [UInt8], maxSize: Int) throws(JSONError) -> JSONValue {
        guard bytes.count <= maxSize else {
            throw JSONError(message: "input of " + String(bytes.count) + " bytes is over the limit of " + String(maxSize), offset: 0)
        }
        return try bytes.withUnsafeBufferPointer { (buf) throws(JSONError) -> JSONValue in
            var p = JSONReader(bytes: buf)
            p.skipSpace()
            let v = try p.value(depth: 1)
            p.skipSpace()
            guard p.pos == buf.count else { throw p.error("bytes after the JSON value") }
            return v
        }
    }
}

private struct JSONReader {
    let bytes: UnsafeBufferPointer<UInt8>
    var pos = 0

    init(bytes: UnsafeBufferPointer<UInt8>) { self.bytes = bytes }

    func error(_ message: String) -> JSONError { JSONError(message: message, offset: pos) }

    mutating func skipSpace() {
        while pos < bytes.count {
            switch bytes[pos] {
            case 0x20, 0x09, 0x0A, 0x0D: pos += 1
            default: return
            }
        }
    }

    mutating func value(depth: Int) throws(JSONError) -> JSONValue {
        guard pos < bytes.count else { throw error("unexpected end of input") }
        switch bytes[pos] {
        case UInt8(ascii: "{"): return try object(depth: depth)
        case UInt8(ascii: "["): return try array(depth: depth)
        case UInt8(ascii: "\""): return .string(try string())
        case UInt8(ascii: "t"): try literal("true"); return .bool(true)
        case UInt8(ascii: "f"): try literal("false"); return .bool(false)
        case UInt8(ascii: "n"): try literal("null"); return .null
        case UInt8(ascii: "-"), 0x30...0x39: return .number(try number())
        default: throw error("unexpected byte " + String(bytes[pos]))
        }
    }

    mutating func literal(_ word: StaticString) throws(JSONError) {
        let n = word.utf8CodeUnitCount
        guard bytes.count - pos >= n else { throw error("unexpected end of input") }
        for i in 0..<n where bytes[pos + i] != word.utf8Start[i] { throw error("not a JSON literal") }
        pos += n
    }

    mutating func object(depth: Int) throws(JSONError) -> JSONValue {
        guard depth <= JSON.maxDepth else { throw error("nested deeper than " + String(JSON.maxDepth)) }
        pos += 1
        var obj = JSONObject()
        skipSpace()
        if pos < bytes.count, bytes[pos] == UInt8(ascii: "}") {
            pos += 1
            return .object(obj)
        }
        while true {
            skipSpace()
            guard pos < bytes.count, bytes[pos] == UInt8(ascii: "\"") else { throw error("expected a string key") }
            let keyAt = pos
            let key = try string()
            skipSpace()
            guard pos < bytes.count, bytes[pos] == UInt8(ascii: ":") else { throw error("expected ':'") }
            pos += 1
            skipSpace()
            let v = try value(depth: depth + 1)
            guard obj.add(key, v) else { throw JSONError(message: "duplicate key \"" + key + "\"", offset: keyAt) }
            skipSpace()
            guard pos < bytes.count else { throw error("unexpected end of input") }
            if bytes[pos] == UInt8(ascii: ",") { pos += 1; continue }
            if bytes[pos] == UInt8(ascii: "}") { pos += 1; return .object(obj) }
            throw error("expected ',' or '}'")
        }
    }

    mutating func array(depth: Int) throws(JSONError) -> JSONValue {
        guard depth <= JSON.maxDepth else { throw error("nested deeper than " + String(JSON.maxDepth)) }
        pos += 1
        var out: [JSONValue] = []
        skipSpace()
        if pos < bytes.count, bytes[pos] == UInt8(ascii: "]") {
            pos += 1
            return .array(out)
        }
        while true {
            skipSpace()
            out.append(try value(depth: depth + 1))
            skipSpace()
            guard pos < bytes.count else { throw error("unexpected end of input") }
            if bytes[pos] == UInt8(ascii: ",") { pos += 1; continue }
            if bytes[pos] == UInt8(ascii: "]") { pos += 1; return .array(out) }
            throw error("expected ',' or ']'")
        }
    }

    mutating func digits() -> Int {
        let start = pos
        while pos < bytes.count, bytes[pos] >= 0x30, bytes[pos] <= 0x39 { pos += 1 }
        return pos - start
    }

    /// -?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?
    mutating func number() throws(JSONError) -> String {
        let start = pos
        if bytes[pos] == UInt8(ascii: "-") { pos += 1 }
        guard pos < bytes.count, bytes[pos] >= 0x30, bytes[pos] <= 0x39 else { throw error("bad number") }
        if bytes[pos] == 0x30 {
            pos += 1
            if pos < bytes.count, bytes[pos] >= 0x30, bytes[pos] <= 0x39 { throw error("number with a leading zero") }
        } else {
            _ = digits()
        }
        if pos < bytes.count, bytes[pos] == UInt8(ascii: ".") {
            pos += 1
            guard digits() > 0 else { throw error("bad number fraction") }
        }
        if pos < bytes.count, bytes[pos] | 0x20 == UInt8(ascii: "e") {
            pos += 1
            if pos < bytes.count, bytes[pos] == UInt8(ascii: "+") || bytes[pos] == UInt8(ascii: "-") { pos += 1 }
            guard digits() > 0 else { throw error("bad number exponent") }
        }
        return String(decoding: UnsafeBufferPointer(rebasing: bytes[start..<pos]), as: UTF8.self)
    }

    mutating func hex4() throws(JSONError) -> UInt32 {
        guard bytes.count - pos >= 4 else { throw error("short \\u escape") }
        var v: UInt32 = 0
        for _ in 0..<4 {
            let c = bytes[pos]
            let d: UInt32
            switch c {
            case 0x30...0x39: d = UInt32(c - 0x30)
            case 0x41...0x46: d = UInt32(c - 0x41 + 10)
            case 0x61...0x66: d = UInt32(c - 0x61 + 10)
            default: throw error("bad \\u escape")
            }
            v = v << 4 | d
            pos += 1
        }
        return v
    }

    /// A string: valid UTF-8, no raw control characters, escapes decoded
    /// (a UTF-16 surrogate pair makes one scalar; a lone surrogate is an error).
    mutating func string() throws(JSONError) -> String {
        pos += 1
        var out: [UInt8] = []
        var runStart = pos
        while true {
            guard pos < bytes.count else { throw error("unterminated string") }
            let c = bytes[pos]
            if c == UInt8(ascii: "\"") {
                out.append(contentsOf: UnsafeBufferPointer(rebasing: bytes[runStart..<pos]))
                pos += 1
                break
            }
            if c < 0x20 { throw error("control character in a string") }
            if c < 0x80 && c != UInt8(ascii: "\\") {
                pos += 1
                continue
            }
            if c >= 0x80 {
                try utf8Sequence()
                continue
            }
            // A backslash: flush the plain run, decode the escape.
            out.append(contentsOf: UnsafeBufferPointer(rebasing: bytes[runStart..<pos]))
            pos += 1
            guard pos < bytes.count else { throw error("unterminated escape") }
            let e = bytes[pos]
            pos += 1
            switch e {
            case UInt8(ascii: "\""), UInt8(ascii: "\\"), UInt8(ascii: "/"): out.append(e)
            case UInt8(ascii: "b"): out.append(0x08)
            case UInt8(ascii: "f"): out.append(0x0C)
            case UInt8(ascii: "n"): out.append(0x0A)
            case UInt8(ascii: "r"): out.append(0x0D)
            case UInt8(ascii: "t"): out.append(0x09)
            case UInt8(ascii: "u"):
                var scalar = try hex4()
                if scalar >= 0xD800 && scalar <= 0xDBFF {
                    guard bytes.count - pos >= 6, bytes[pos] == UInt8(ascii: "\\"), bytes[pos + 1] == UInt8(ascii: "u") else {
                        throw error("lone high surrogate")
                    }
                    pos += 2
                    let low = try hex4()
                    guard low >= 0xDC00 && low <= 0xDFFF else { throw error("high surrogate without a low one") }
                    scalar = 0x10000 + ((scalar - 0xD800) << 10) + (low - 0xDC00)
                } else if scalar >= 0xDC00 && scalar <= 0xDFFF {
                    throw error("lone low surrogate")
                }
                appendUTF8(scalar, to: &out)
            default: throw error("bad escape")
            }
            runStart = pos
        }
        return String(decoding: out, as: UTF8.self)
    }

    /// Checks one well-formed UTF-8 sequence at `pos` (no overlongs, no
    /// surrogates, at most U+10FFFF) and steps over it.
    mutating func utf8Sequence() throws(JSONError) {
        let c = bytes[pos]
        let n: Int
        var lo: UInt8 = 0x80, hi: UInt8 = 0xBF
        switch c {
        case 0xC2...0xDF: n = 1
        case 0xE0: n = 2; lo = 0xA0
        case 0xE1...0xEC, 0xEE, 0xEF: n = 2
        case 0xED: n = 2; hi = 0x9F
        case 0xF0: n = 3; lo = 0x90
        case 0xF1...0xF3: n = 3
        case 0xF4: n = 3; hi = 0x8F
        default: throw error("invalid UTF-8")
        }
        guard bytes.count - pos > n else { throw error("truncated UTF-8") }
        let b1 = bytes[pos + 1]
        guard b1 >= lo && b1 <= hi else { throw error("invalid UTF-8") }
        var i = 2
        while i <= n {
            guard bytes[pos + i] & 0xC0 == 0x80 else { throw error("invalid UTF-8") }
            i += 1
        }
        pos += n + 1
    }

    func appendUTF8(_ s: UInt32, to out: inout [UInt8]) {
        switch s {
        case 0..<0x80: out.append(UInt8(s))
        case 0x80..<0x800:
            out.append(UInt8(0xC0 | s >> 6)); out.append(UInt8(0x80 | s & 0x3F))
        case 0x800..<0x10000:
            out.append(UInt8(0xE0 | s >> 12)); out.append(UInt8(0x80 | s >> 6 & 0x3F)); out.append(UInt8(0x80 | s & 0x3F))
        default:
            out.append(UInt8(0xF0 | s >> 18)); out.append(UInt8(0x80 | s >> 12 & 0x3F))
            out.append(UInt8(0x80 | s >> 6 & 0x3F)); out.append(UInt8(0x80 | s & 0x3F))
        }
    }
}
