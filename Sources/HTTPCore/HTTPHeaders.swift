// HTTPHeaders: an ordered list of (name, value) fields exactly as received
// (original name case, original order, duplicates kept). Look-ups compare
// names ASCII case-insensitively (RFC 9110 §5.1). A plain array of pairs is
// the right structure for the handful of fields a message carries: linear
// scans beat hashing at these sizes and keep Embedded Swift happy.

public struct HTTPHeaders: Sequence, Equatable, Sendable {
    public typealias Element = (name: String, value: String)

    @usableFromInline
    var fields: [(name: String, value: String)]

    public init() {
        fields = []
    }

    public init(_ pairs: [(String, String)]) {
        fields = []
        fields.reserveCapacity(pairs.count)
        for (n, v) in pairs { fields.append((name: n, value: v)) }
    }

    /// Number of fields (duplicates counted separately).
    public var count: Int { fields.count }

    public var isEmpty: Bool { fields.isEmpty }

    /// Field at position `index`, in received order.
    public subscript(index: Int) -> (name: String, value: String) {
        fields[index]
    }

    /// Appends a field (does not replace existing ones).
    public mutating func add(_ name: String, _ value: String) {
        fields.append((name: name, value: value))
    }

    /// First value of the field named `name` (case-insensitive), or nil.
    public func first(_ name: String) -> String? {
        for f in fields where HTTPFieldBytes.equalsIgnoringCase(f.name, name) {
            return f.value
        }
        return nil
    }

    /// All values of fields named `name` (case-insensitive), in order.
    public func values(_ name: String) -> [String] {
        var out: [String] = []
        for f in fields where HTTPFieldBytes.equalsIgnoringCase(f.name, name) {
            out.append(f.value)
        }
        return out
    }

    /// Number of fields named `name` (case-insensitive).
    public func count(_ name: String) -> Int {
        var n = 0
        for f in fields where HTTPFieldBytes.equalsIgnoringCase(f.name, name) { n += 1 }
        return n
    }

    public func contains(_ name: String) -> Bool {
        for f in fields where HTTPFieldBytes.equalsIgnoringCase(f.name, name) {
            return true
        }
        return false
    }

    /// Removes every field named `name` (case-insensitive).
    public mutating func remove(_ name: String) {
        fields.removeAll { HTTPFieldBytes.equalsIgnoringCase($0.name, name) }
    }

    /// Removes every field named `name`, then appends `name: value`.
    public mutating func replace(_ name: String, _ value: String) {
        remove(name)
        add(name, value)
    }

    /// True if any comma-separated element of any `name` field equals `token`
    /// (case-insensitive), e.g. `containsToken("Connection", "close")`.
    public func containsToken(_ name: String, _ token: String) -> Bool {
        let want = Array(token.utf8)
        for f in fields where HTTPFieldBytes.equalsIgnoringCase(f.name, name) {
            for element in HTTPFieldBytes.listElements(f.value)
            where HTTPHeaders.sameIgnoringCase(element, want) {
                return true
            }
        }
        return false
    }

    public func makeIterator() -> IndexingIterator<[(name: String, value: String)]> {
        fields.makeIterator()
    }

    /// Removes the hop-by-hop fields (RFC 9110 §7.6.1): Connection, Keep-Alive,
    /// Proxy-Connection, TE, Transfer-Encoding, Upgrade, and every field named
    /// by a token of any Connection field. Runs for every message that changes
    /// version: a block without any of them is left untouched (no copy, no allocation).
    public mutating func removeHopByHop() {
        var connection: [[UInt8]] = []
        var found = false
        for f in fields {
            if HTTPFieldBytes.equalsIgnoringCase(f.name, "connection") {
                for element in HTTPFieldBytes.listElements(f.value) where !element.isEmpty {
                    connection.append(Array(element))
                }
            }
            if !found && HTTPHeaders.isHopByHop(f.name) { found = true }
        }
        guard found else { return }
        fields.removeAll { field in
            if HTTPHeaders.isHopByHop(field.name) { return true }
            if connection.isEmpty { return false }
            let name = Array(field.name.utf8)
            for n in connection where HTTPHeaders.sameIgnoringCase(name[...], n) {
                return true
            }
            return false
        }
    }

    /// One of the fields that are hop-by-hop by name.
    static func isHopByHop(_ name: String) -> Bool {
        switch name.utf8.count {
        case 2: return HTTPFieldBytes.equalsIgnoringCase(name, "te")
        case 7: return HTTPFieldBytes.equalsIgnoringCase(name, "upgrade")
        case 10: return HTTPFieldBytes.equalsIgnoringCase(name, "connection") || HTTPFieldBytes.equalsIgnoringCase(name, "keep-alive")
        case 16: return HTTPFieldBytes.equalsIgnoringCase(name, "proxy-connection")
        case 17: return HTTPFieldBytes.equalsIgnoringCase(name, "transfer-encoding")
        default: return false
        }
    }

    public static func == (lhs: HTTPHeaders, rhs: HTTPHeaders) -> Bool {
        if lhs.fields.count != rhs.fields.count { return false }
        for i in 0..<lhs.fields.count {
            // Byte-exact comparison (no Unicode normalisation).
            if !lhs.fields[i].name.utf8.elementsEqual(rhs.fields[i].name.utf8)
                || !lhs.fields[i].value.utf8.elementsEqual(rhs.fields[i].value.utf8) {
                return false
            }
        }
        return true
    }

    static func sameIgnoringCase(_ a: ArraySlice<UInt8>, _ b: [UInt8]) -> Bool {
        if a.count != b.count { return false }
        var j = 0
        for x in a {
            if HTTPFieldBytes.lower(x) != HTTPFieldBytes.lower(b[j]) { return false }
            j += 1
        }
        return true
    }
}
