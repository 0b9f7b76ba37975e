// UnicodeShimCheck: what String and Character do in the Embedded agent, whose
// standard library answers Unicode questions from EmbeddedRuntime/UnicodeDataShim.swift
// instead of libswiftUnicodeDataTables. Built and run by scripts/check-unicode-shim,
// twice: with the shim (the agent's case: every expectation's `shim` value) and,
// as the control, with the real tables (-D UNICODE_TABLES: the `tables` value), so
// that each line is shown to tell the two apart or to hold in both.
import CLibc

#if UNICODE_TABLES
let mode = "tables"
#else
let mode = "shim"
#endif

var failures = 0

func check(_ what: StaticString, _ got: Int, shim: Int, tables: Int) {
    #if UNICODE_TABLES
    let want = tables
    #else
    let want = shim
    #endif
    if got != want {
        failures += 1
        print("FAIL (\(mode)) \(what): got \(got), want \(want)")
    }
}

func check(_ what: StaticString, _ got: Bool, shim: Bool, tables: Bool) {
    check(what, got ? 1 : 0, shim: shim ? 1 : 0, tables: tables ? 1 : 0)
}

func characters(_ s: String) -> Int {
    var n = 0
    for _ in s { n += 1 }
    return n
}

func hashValue(_ s: String) -> Int {
    var h = Hasher()
    h.combine(s)
    return h.finalize()
}

/// A String made at run time from bytes (not a literal the compiler could fold).
func utf8(_ bytes: [UInt8]) -> String { String(decoding: bytes, as: UTF8.self) }

@main
struct UnicodeShimCheck {
    static func main() {
        let ascii = utf8([0x48, 0x6F, 0x73, 0x74])             // "Host"
        let precomposed = utf8([0xC3, 0xA9])                    // U+00E9
        let decomposed = utf8([0x65, 0xCC, 0x81])               // U+0065 U+0301
        let hangul = utf8([0xED, 0x95, 0x9C])                   // U+D55C
        let jamo = "\u{1112}\u{1161}\u{11AB}"                   // its canonical decomposition

        // ASCII: unchanged.
        check("ASCII == same bytes", ascii == "Host", shim: true, tables: true)
        check("ASCII == other case", ascii == "host", shim: false, tables: false)
        check("ASCII hash of equal strings", hashValue(ascii) == hashValue("Host"), shim: true, tables: true)
        check("ASCII < ", "Host" < "Hosu", shim: true, tables: true)
        check("ASCII Characters", characters("a\r\nb"), shim: 3, tables: 3)

        // Equal bytes are equal and hash alike, with or without tables.
        check("U+00E9 == same bytes", precomposed == "\u{E9}", shim: true, tables: true)
        check("e U+0301 == same bytes", decomposed == "e\u{301}", shim: true, tables: true)
        check("e U+0301 hash of equal strings", hashValue(decomposed) == hashValue("e\u{301}"), shim: true, tables: true)
        check("Set<String> finds equal non-ASCII", Set([decomposed, hangul]).contains("e\u{301}"), shim: true, tables: true)
        var d: [String: Int] = [:]
        d[precomposed] = 1
        d[decomposed] = 2
        check("Dictionary keys U+00E9 and e U+0301", d.count, shim: 2, tables: 1)
        check("Dictionary[U+00E9]", d["\u{E9}"] ?? 0, shim: 1, tables: 2)

        // Canonical equivalence: gone with the shim (code-point equality).
        check("U+00E9 == e U+0301", precomposed == decomposed, shim: false, tables: true)
        check("Set([U+00E9]) contains e U+0301", Set([precomposed]).contains(decomposed), shim: false, tables: true)
        check("U+212B == U+00C5", utf8([0xE2, 0x84, 0xAB]) == "\u{C5}", shim: false, tables: true)
        check("Hangul syllable == its jamo", hangul == jamo, shim: false, tables: true)
        check("Hangul syllable == same bytes", hangul == "\u{D55C}", shim: true, tables: true)
        check("e U+0301 < U+00E9", decomposed < precomposed, shim: true, tables: false)
        check("U+00E9 < f", precomposed < "f", shim: false, tables: false)
        check("e U+0301 x hasPrefix e", (decomposed + "x").hasPrefix("e"), shim: true, tables: false)

        // Characters: one per scalar, but for the rules the stdlib decides in code.
        check("Characters in e U+0301", characters(decomposed), shim: 2, tables: 1)
        check("String.count of e U+0301", decomposed.count, shim: 2, tables: 1)
        check("Characters in thumbs up + skin tone", characters("\u{1F44D}\u{1F3FD}"), shim: 2, tables: 1)
        check("Characters in man ZWJ woman", characters("\u{1F468}\u{200D}\u{1F469}"), shim: 2, tables: 1)
        check("Characters in ka virama ssa", characters("\u{915}\u{94D}\u{937}"), shim: 3, tables: 1)
        check("Characters in flag (regional indicators)", characters("\u{1F1E9}\u{1F1EA}"), shim: 1, tables: 1)
        check("Characters in CR LF", characters("\r\n"), shim: 1, tables: 1)
        check("Characters in Hangul jamo L V T", characters(jamo), shim: 1, tables: 1)
        check("Characters in a ZWJ b", characters("a\u{200D}b"), shim: 2, tables: 2)
        check("Characters in U+00E9 U+00E9", characters(precomposed + precomposed), shim: 2, tables: 2)

        // Scalars and bytes: never touched by the tables.
        check("unicodeScalars in e U+0301", decomposed.unicodeScalars.count, shim: 2, tables: 2)
        check("utf8 in e U+0301", decomposed.utf8.count, shim: 3, tables: 3)
        check("bytes round trip", Array(utf8([0x65, 0xCC, 0x81, 0xED, 0x95, 0x9C]).utf8) == [0x65, 0xCC, 0x81, 0xED, 0x95, 0x9C],
              shim: true, tables: true)

        if failures > 0 {
            print("unicode-shim-check (\(mode)): \(failures) failed")
            exit(1)
        }
        print("unicode-shim-check (\(mode)): all as expected")
    }
}
