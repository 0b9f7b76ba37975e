#if hasFeature(Embedded)
// UnicodeDataShim: the Embedded agent's stand-in for the toolchain's
// libswiftUnicodeDataTables (38 KB of normalization and grapheme-breaking tables).
//
// The Embedded standard library compiled into the agent calls these seven C
// functions and reads one C global (declared in the stdlib's SwiftShims
// UnicodeData.h as SWIFT_RUNTIME_STDLIB_INTERNAL, plain C calling convention;
// defined in stdlib/public/stubs/Unicode/*.cpp). They are reached from String
// comparison and hashing (NFC, via _NFDNormalizer/_NFCNormalizer) and from
// Character iteration (_GraphemeBreakingState). Every answer below is the one the
// real tables give for ASCII, so ASCII text behaves exactly as before:
//
//   _swift_stdlib_getNormData            0: CCC 0, NFC_QC yes, NFD_QC yes (every
//                                        scalar is already NFC and NFD)
//   _swift_stdlib_getDecompositionEntry  0: hashed scalar U+0000, so no scalar the
//                                        normalizer asks about (all >= U+00C0) has
//                                        a decomposition; never asked in practice,
//                                        since NFD_QC is always yes
//   _swift_stdlib_nfd_decompositions     nil; read only after a decomposition
//                                        entry matched, which never happens
//   _swift_stdlib_getComposition         UInt32.max: no canonical composition
//   _swift_stdlib_getGraphemeBreakProperty  0xFF: Grapheme_Cluster_Break=Any
//                                        (0 would mean Control)
//   _swift_stdlib_isExtendedPictographic false
//   _swift_stdlib_isInCB_Consonant       false (no Indic conjunct joining)
//
// What that changes for non-ASCII text (the agent compares protocol bytes, where
// canonical equivalence is never wanted; scripts/check-unicode-shim proves each
// point against the stdlib the agent is built with):
//   - String ==, <, hashing are code-point (= UTF-8 byte) comparisons: "\u{E9}" is
//     no longer equal to "e\u{301}", nor U+212B to U+00C5, nor a precomposed Hangul
//     syllable to its jamo; equal bytes are still equal and hash alike.
//   - A Character is one scalar, except the rules the stdlib decides in code, not
//     tables: CR LF, Hangul jamo sequences, regional-indicator pairs, and anything
//     followed by U+200D ZWJ stay one Character. So "e\u{301}".count == 2.
//   - Scalar properties and case mapping are not shimmed: code that needs them
//     fails to link (loudly) rather than answering wrongly.
//
// These are toolchain-internal symbols, not a stable ABI: their set, signatures
// and encodings may change with the compiler. Hence the bound below: a new
// toolchain stops the Embedded build until scripts/check-unicode-shim has been
// run with it (and the symbol list compared with `nm` of its
// libswiftUnicodeDataTables.a), then the bound is raised.
#if compiler(>=6.4)
#error("UnicodeDataShim.swift was checked against Swift 6.3 only: run scripts/check-unicode-shim with this toolchain, then raise the bound")
#endif

@_cdecl("_swift_stdlib_getNormData")
public func rh_unicodeNormData(_ scalar: UInt32) -> UInt16 { 0 }

@_cdecl("_swift_stdlib_getDecompositionEntry")
public func rh_unicodeDecompositionEntry(_ scalar: UInt32) -> UInt32 { 0 }

@_silgen_name("_swift_stdlib_nfd_decompositions")
nonisolated(unsafe) public let rh_unicodeNFDDecompositions: UnsafePointer<UInt8>? = nil

@_cdecl("_swift_stdlib_getComposition")
public func rh_unicodeComposition(_ x: UInt32, _ y: UInt32) -> UInt32 { .max }

@_cdecl("_swift_stdlib_getGraphemeBreakProperty")
public func rh_unicodeGraphemeBreakProperty(_ scalar: UInt32) -> UInt8 { 0xFF }

@_cdecl("_swift_stdlib_isExtendedPictographic")
public func rh_unicodeIsExtendedPictographic(_ scalar: UInt32) -> Bool { false }

@_cdecl("_swift_stdlib_isInCB_Consonant")
public func rh_unicodeIsInCBConsonant(_ scalar: UInt32) -> Bool { false }
#endif
