// fuzz-config: the configuration format (ConfigFormat/ConfigFile.swift) and what the
// two programs make of it: AgentConfig(Settings) and the gateway's
// GatewayConfig(Settings) (compiled into this target through symbolic links).
//
// The input is a config file. It is parsed, then given to both programs alone
// and after a base that satisfies their required keys (so the fuzzer reaches
// the checks of every other key). Invariants:
//   * no crash; every error is a ConfigError;
//   * a parse error names the file and a line of it ("fuzz.conf:N: ...");
//   * parsed settings: keys are [a-z0-9_]+ (`-` normalized), values have no
//     NUL, CR-LF or surrounding blanks, origins are "fuzz.conf:N" in order;
//   * an error about one setting names its origin; only errors about what is
//     missing name none;
//   * an accepted configuration keeps its promises: numbers in their ranges,
//     ports 1...65535, a device name that is a hostname, a health-check method
//     that is a token and a path that is a valid request target, a template
//     that maps names to hostnames.
import FleetAccess
@testable import FleetGatewayKit
import EventLoop
import FleetPKI
import TLS
import AgentKit
import ConfigFormat

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzConfig(_ data: UnsafePointer<UInt8>?, _ size: Int) -> CInt {
    let bytes = size == 0 ? [] : Array(UnsafeBufferPointer(start: data!, count: size))
    var parsed = Settings()
    do throws(ConfigError) {
        try ConfigFile.parse(bytes, name: "fuzz.conf", into: &parsed)
    } catch {
        let lines = bytes.split(separator: 10, omittingEmptySubsequences: false).count
        guard let n = lineNumber(error.message, file: "fuzz.conf"), n >= 1, n <= lines else {
            fail("parse error without file:line: " + error.message)
        }
        return 0
    }
    checkSettings(parsed)

    var agentBase = Settings(), gatewayBase = Settings()
    try! ConfigFile.parse(Array("gateway = gw.example:8443\nplaintext = true\n".utf8), name: "base", into: &agentBase)
    try! ConfigFile.parse(Array("plaintext_devices = true\n".utf8), name: "base", into: &gatewayBase)
    for base in [Settings(), agentBase] { checkAgent(merge(base, parsed)) }
    for base in [Settings(), gatewayBase] { checkGateway(merge(base, parsed)) }
    return 0
}

func fail(_ what: String) -> Never {
    fatalError("fuzz-config invariant broken: " + what)
}

func merge(_ a: Settings, _ b: Settings) -> Settings {
    var s = a
    for item in b.items { s.add(item) }
    return s
}

/// N of "FILE:N: ..." or "FILE:N" (nil otherwise).
func lineNumber(_ message: String, file: String) -> Int? {
    guard message.hasPrefix(file + ":") else { return nil }
    let rest = message.dropFirst(file.count + 1)
    let digits = rest.prefix { $0.isASCII && $0.isNumber }
    guard !digits.isEmpty, rest.dropFirst(digits.count).isEmpty || rest.dropFirst(digits.count).hasPrefix(": ") else {
        return nil
    }
    return Int(digits)
}

func checkSettings(_ s: Settings) {
    var lastLine = 0
    for item in s.items {
        if item.key.isEmpty || !item.key.utf8.allSatisfy({ ($0 >= 0x61 && $0 <= 0x7A) || ($0 >= 0x30 && $0 <= 0x39) || $0 == 0x5F }) {
            fail("key " + String(reflecting: item.key))
        }
        let v = Array(item.value.utf8)
        if v.contains(0) || v.contains(10) { fail("NUL or LF in value " + String(reflecting: item.value)) }
        if let f = v.first, f == 32 || f == 9 { fail("leading blank in value") }
        if let l = v.last, l == 32 || l == 9 { fail("trailing blank in value") }
        if v.contains(UInt8(ascii: "#")) { fail("comment kept in value") }
        guard let n = lineNumber(item.origin, file: "fuzz.conf"), n > lastLine else { fail("origin " + item.origin) }
        lastLine = n
    }
}

/// An error about a setting names that setting's origin; errors about absent keys name none.
func checkError(_ e: ConfigError, _ s: Settings) {
    let absent = ["no gateway set", "TLS needs", "the device listener needs", "--public-cert and --public-key go together"]
    if absent.contains(where: { e.message.hasPrefix($0) }) { return }
    guard s.items.contains(where: { e.message.hasPrefix($0.origin + ": ") }) else {
        fail("error names no origin: " + e.message)
    }
}

func inRange(_ v: Int, _ r: ClosedRange<Int>, _ what: String) {
    if !r.contains(v) { fail(what + " out of range: " + String(v)) }
}

func checkPort(_ hp: HostPort, _ what: String) {
    inRange(hp.port, 1...65535, what + " port")
    if hp.host.isEmpty { fail(what + " with an empty host") }
}

func checkAgent(_ s: Settings) {
    let c: AgentConfig
    do throws(ConfigError) {
        c = try AgentConfig(s)
    } catch {
        checkError(error, s)
        return
    }
    checkPort(c.gateway, "gateway")
    checkPort(c.local, "local")
    inRange(c.connections, 1...64, "connections")
    inRange(c.localTimeoutMs, 100...3_600_000, "local_timeout_ms")
    inRange(c.maxConcurrentStreams, 1...10_000, "max_concurrent_streams")
    inRange(c.localMaxConnections, 1...10_000, "local_max_connections")
    inRange(c.idlePingMs, 0...3_600_000, "idle_ping_ms")
    inRange(c.connectTimeoutMs, 100...600_000, "connect_timeout_ms")
    if !c.plaintext && (c.caFile == nil || c.certFile == nil || c.keyFile == nil) { fail("TLS without ca/cert/key") }
}

func isVisibleASCII(_ s: String) -> Bool { s.utf8.allSatisfy { $0 > 0x20 && $0 < 0x7F } }

func checkGateway(_ s: Settings) {
    let c: GatewayConfig
    do throws(ConfigError) {
        c = try GatewayConfig(s)
    } catch {
        checkError(error, s)
        return
    }
    checkPort(c.listenDevices, "listen_devices")
    checkPort(c.listenPublic, "listen_public")
    if let a = c.listenAdmin { checkPort(a, "listen_admin") }
    inRange(c.maxConnectionsPerDevice, 1...1024, "max_connections_per_device")
    inRange(c.maxHeadBytes, 1024...(1 << 20), "max_header_bytes")
    inRange(c.checkRise, 1...100, "check_rise")
    inRange(c.checkFall, 1...100, "check_fall")
    inRange(c.checkStatus.lowerBound, 100...999, "check_status")
    inRange(c.checkStatus.upperBound, 100...999, "check_status")
    if !PKI.isValidHostname(c.plaintextDeviceName) || c.plaintextDeviceName != c.plaintextDeviceName.lowercased() {
        fail("plaintext_device_name " + c.plaintextDeviceName)
    }
    // The health check is sent as :method and :path: a token, and a request target.
    if c.checkMethod.isEmpty || !c.checkMethod.utf8.allSatisfy({ $0 >= 0x41 && $0 <= 0x5A }) {
        fail("check_method " + String(reflecting: c.checkMethod))
    }
    if !c.checkPath.hasPrefix("/") || !isVisibleASCII(c.checkPath) {
        fail("check_path " + String(reflecting: c.checkPath))
    }
    let name = c.plaintextDevices ? c.plaintextDeviceName : "dev-1"
    if let host = c.hostnameTemplate.hostname(for: name), HostRouting.routingKey(host) != host {
        fail("hostname_template maps " + name + " to " + host + ", which does not route to it")
    }
    if let allow = c.allowDevices, allow.globs.isEmpty { fail("allow_devices without a pattern") }
    if !c.plaintextDevices && (c.caFile == nil || c.certFile == nil || c.keyFile == nil) { fail("TLS without ca/cert/key") }
}
