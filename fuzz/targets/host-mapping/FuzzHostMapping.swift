// fuzz-host-mapping: the Host-to-device mapping of fleet-gateway
// (DeviceIdentity.swift, compiled into this target through a symbolic link)
// and PKI.isValidHostname, on arbitrary text.
//
// The input is split into lines (at most 8); every line is tried as a Host
// value, a certificate CN, a hostname_template and an allow_devices pattern,
// against every other line. Invariants:
//   * PKI.isValidHostname and PKI.isValidDeviceName agree with independent
//     byte-level definitions;
//   * HostRouting.routingKey agrees with a byte-level reference (port and one
//     trailing dot stripped, ASCII lower-casing only: no Unicode folding lets a
//     non-ASCII Host reach a device), and is idempotent under case, trailing
//     dot and port;
//   * a CN accepted as a device name is a valid hostname before and after
//     lower-casing;
//   * a template accepted maps every valid device name to a valid hostname that
//     routes back to itself, from which the name is recovered (prefix + name +
//     suffix), the same for any case of the name; or refuses the name (nil);
//   * templates and patterns accepted are ASCII (Unicode lower-casing turns
//     e.g. U+212A KELVIN SIGN into "k": nothing non-ASCII may become ASCII);
//   * NamePattern matches like a reference glob matcher.
import FleetAccess
@testable import FleetGatewayKit
import FleetPKI

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzHostMapping(_ data: UnsafePointer<UInt8>?, _ size: Int) -> CInt {
    let bytes = size == 0 ? [] : Array(UnsafeBufferPointer(start: data!, count: size))
    let lines = bytes.split(separator: 0x0A, omittingEmptySubsequences: false).prefix(8)
        .map { String(decoding: $0, as: UTF8.self) }
    for line in lines {
        checkHostname(line)
        checkRouting(line)
        checkCommonName(line)
        checkTemplate(line, names: lines)
        checkPattern(line, names: lines)
    }
    return 0
}

func fail(_ what: String, _ s: String) -> Never {
    fatalError("fuzz-host-mapping invariant broken: " + what + " for " + String(reflecting: s))
}

func asciiLower(_ b: [UInt8]) -> [UInt8] { b.map { $0 >= 0x41 && $0 <= 0x5A ? $0 | 0x20 : $0 } }
func asciiUpper(_ s: String) -> String {
    String(decoding: s.utf8.map { $0 >= 0x61 && $0 <= 0x7A ? $0 - 0x20 : $0 }, as: UTF8.self)
}

/// RFC 1123 hostname, as bytes: labels of 1...63 [A-Za-z0-9-], no '-' at either end, <= 253 in all.
func refValid(_ b: [UInt8]) -> Bool {
    if b.isEmpty || b.count > 253 { return false }
    var label = 0
    var prev: UInt8 = 0x2E
    for c in b {
        if c == 0x2E {
            if label == 0 || prev == 0x2D { return false }
            label = 0
        } else {
            let ok = (c >= 0x61 && c <= 0x7A) || (c >= 0x41 && c <= 0x5A) || (c >= 0x30 && c <= 0x39) || c == 0x2D
            if !ok { return false }
            if label == 0 && c == 0x2D { return false }
            label += 1
            if label > 63 { return false }
        }
        prev = c
    }
    return label > 0 && prev != 0x2D
}

/// A device name: a hostname whose last label is not all digits (never an IPv4 address).
func refDeviceName(_ b: [UInt8]) -> Bool {
    guard refValid(b) else { return false }
    let last = b.split(separator: 0x2E, omittingEmptySubsequences: false).last ?? []
    return !last.allSatisfy { $0 >= 0x30 && $0 <= 0x39 }
}

func checkHostname(_ s: String) {
    if PKI.isValidHostname(s) != refValid(Array(s.utf8)) { fail("isValidHostname disagrees with the reference", s) }
    if PKI.isValidDeviceName(s) != refDeviceName(Array(s.utf8)) { fail("isValidDeviceName disagrees with the reference", s) }
}

/// Reference routing key: "[" -> nil; ":" + 1...5 ASCII digits stripped; one trailing "." stripped;
/// ASCII lower-case; a valid device name (a hostname, not an IPv4 address) or nil.
func refRoutingKey(_ s: String) -> String? {
    var b = Array(s.utf8)
    if b.first == 0x5B { return nil }
    if let colon = b.lastIndex(of: 0x3A) {
        let port = b[(colon + 1)...]
        guard !port.isEmpty, port.count <= 5, port.allSatisfy({ $0 >= 0x30 && $0 <= 0x39 }) else { return nil }
        b = Array(b[..<colon])
    }
    if b.last == 0x2E { b.removeLast() }
    b = asciiLower(b)
    return refDeviceName(b) ? String(decoding: b, as: UTF8.self) : nil
}

func checkRouting(_ h: String) {
    let key = HostRouting.routingKey(h)
    if key != refRoutingKey(h) {
        fail("routingKey " + String(reflecting: key) + " differs from the reference "
             + String(reflecting: refRoutingKey(h)), h)
    }
    guard let k = key else { return }
    if k.utf8.contains(where: { $0 >= 0x41 && $0 <= 0x5A }) { fail("routing key not lower-case", h) }
    for variant in [k, k + ".", asciiUpper(k), asciiUpper(k) + ".:8080", k + ":1"] {
        if HostRouting.routingKey(variant) != k { fail("routing key not stable under " + variant, h) }
    }
}

func checkCommonName(_ cn: String) {
    guard let name = DeviceIdentity.name(commonName: cn) else { return }
    if !refDeviceName(Array(cn.utf8)) { fail("a CN that is not a device name gave a device name", cn) }
    if Array(name.utf8) != asciiLower(Array(cn.utf8)) { fail("device name is not the lower-cased CN", cn) }
    if HostRouting.routingKey(name) != name { fail("device name does not route to itself", cn) }
}

func checkTemplate(_ t: String, names: [String]) {
    guard let template = HostnameTemplate(t) else { return }
    if t.utf8.contains(where: { $0 >= 0x80 }) { fail("non-ASCII template accepted", t) }
    let lower = asciiLower(Array(t.utf8))
    let marker = Array("{cn}".utf8)
    var occurrences = 0
    if lower.count >= marker.count {
        for i in 0...(lower.count - marker.count) where Array(lower[i..<(i + marker.count)]) == marker { occurrences += 1 }
    }
    if occurrences != 1 { fail("template accepted without exactly one {cn}", t) }
    for cn in names + ["a", String(repeating: "b", count: 63), String(repeating: "c1234567.", count: 28) + "d"] {
        guard let name = DeviceIdentity.name(commonName: cn) else { continue }
        guard let host = template.hostname(for: name) else { continue }  // refused: the device is not admitted
        if !refDeviceName(Array(host.utf8)) { fail("template maps " + name + " to an invalid hostname " + host, t) }
        if HostRouting.routingKey(host) != host { fail("mapped hostname " + host + " does not route to itself", t) }
        if HostRouting.routingKey(asciiUpper(host) + ".") != host { fail("mapped hostname not case/dot stable", t) }
        guard host.hasPrefix(template.prefix), host.hasSuffix(template.suffix),
              String(host.dropFirst(template.prefix.count).dropLast(template.suffix.count)) == name else {
            fail("device name not recovered from " + host, t)
        }
        if template.hostname(for: asciiUpper(cn)) != host { fail("template depends on the CN's case", t) }
    }
}

/// Reference glob match: `*` any run, `?` one character (dynamic programming).
func refGlob(_ p: [Character], _ s: [Character]) -> Bool {
    var row = [Bool](repeating: false, count: s.count + 1)
    row[0] = true
    for pc in p {
        var next = [Bool](repeating: false, count: s.count + 1)
        if pc == "*" {
            var any = false
            for j in 0...s.count { any = any || row[j]; next[j] = any }
        } else {
            for j in 0..<s.count where row[j] && (pc == "?" || pc == s[j]) { next[j + 1] = true }
        }
        row = next
    }
    return row[s.count]
}

func checkPattern(_ p: String, names: [String]) {
    guard let pattern = NamePattern(p) else { return }
    if p.utf8.contains(where: { $0 >= 0x80 }) { fail("non-ASCII pattern accepted", p) }
    for name in names where name.utf8.count <= 300 {
        let n = Array(name.lowercased())
        let expected = pattern.globs.contains { refGlob($0, n) }
        if pattern.matches(name) != expected { fail("NamePattern disagrees with the reference on " + name, p) }
    }
}
