// Int(decimal:): what Int(String) answers for base-10 text (an optional + or -,
// then digits; nil for anything else and on overflow), in one small function.
// The stdlib's generic parser is specialized once per integer type and costs the
// Embedded agent about 0.6 KB each; every integer setting and environment
// variable the agent reads goes through this one instead.

extension Int {
    @inline(never)
    public init?(decimal text: String) {
        var value = 0
        var negative = false
        var digits = 0
        var first = true
        for b in text.utf8 {
            defer { first = false }
            if first && (b == 43 || b == 45) {  // + -
                negative = b == 45
                continue
            }
            guard b >= 48 && b <= 57 else { return nil }
            let d = Int(b - 48)
            let (m, o1) = value.multipliedReportingOverflow(by: 10)
            let (r, o2) = negative ? m.subtractingReportingOverflow(d) : m.addingReportingOverflow(d)
            if o1 || o2 { return nil }
            value = r
            digits += 1
        }
        guard digits > 0 else { return nil }
        self = value
    }
}
