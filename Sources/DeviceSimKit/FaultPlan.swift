// Faults the simulator injects, for a fraction of the devices or named ones, at
// start or on a schedule. A spec reads KIND@TARGET[,key=value...]:
//
//   drop@10%,at=5,every=30     cut 10 % of the devices' connections (no GOAWAY) at 5 s, then every 30 s
//   freeze@dev-00007,at=10,for=20   dev-00007 hangs (reads, writes and PINGs nothing) for 20 s
//   flap@2%,up=1000            connect, drop after 1 s, dial again (with backoff), forever
//   slow@5%,delay=3000         every response starts 3 s late
//   garbage@1%                 responses with an invalid status and header name
//   corrupt@1%,at=5            bytes that are not HTTP/2 written into the connection
//   wrong-ca@1%                a certificate from a CA the gateway does not trust
//   expired@1%                 an expired certificate
//
// TARGET is a percentage, a fraction (0.1; 1 is every device) or device names
// joined with '+'. A connection fault (drop, freeze, corrupt) due while the
// device has no connection up waits for one. Times
// are seconds from the device's start; `for` bounds freeze, slow and garbage.
import ConfigFormat

public enum FaultKind: String, CaseIterable {
    case drop, freeze, flap, slow, garbage, corrupt
    case wrongCA = "wrong-ca"
    case expired

    /// Faults decided when the device's certificate is made.
    var atIssue: Bool { self == .wrongCA || self == .expired }
    /// Faults that act on a connection: applied when one is up.
    var needsConnection: Bool { self == .drop || self == .freeze || self == .corrupt }
}

public struct FaultSpec: Equatable {
    public enum Target: Equatable {
        case fraction(Double)
        case names([String])
    }

    public var kind: FaultKind
    public var target: Target
    /// Seconds after the device started.
    public var at = 0.0
    public var every: Double?
    /// How long freeze, slow and garbage last (nil: until the end).
    public var duration: Double?
    /// slow: how late each response starts.
    public var delayMs = 2_000
    /// flap: how long each connection is left up.
    public var upMs = 1_000

    public init(kind: FaultKind, target: Target) {
        self.kind = kind
        self.target = target
    }

    public init(parsing text: String) throws(ConfigError) {
        let parts = text.split(separator: ",", omittingEmptySubsequences: false).map(String.init)
        let head = parts[0].split(separator: "@", maxSplits: 1).map(String.init)
        let kinds = FaultKind.allCases.map(\.rawValue).joined(separator: ", ")
        guard head.count == 2, let kind = FaultKind(rawValue: head[0]) else {
            throw ConfigError("fault '" + text + "': expected KIND@TARGET with KIND one of " + kinds)
        }
        self.kind = kind
        target = try FaultSpec.target(head[1], in: text)
        for option in parts.dropFirst() {
            let kv = option.split(separator: "=", maxSplits: 1).map(String.init)
            guard kv.count == 2 else { throw ConfigError("fault '" + text + "': '" + option + "' is not key=value") }
            func seconds() throws(ConfigError) -> Double {
                guard let v = Double(kv[1]), v >= 0, v <= 31_536_000 else {
                    throw ConfigError("fault '" + text + "': " + kv[0] + " must be seconds (a number >= 0)")
                }
                return v
            }
            func milliseconds() throws(ConfigError) -> Int {
                guard let v = Int(kv[1]), v >= 0, v <= 3_600_000 else {
                    throw ConfigError("fault '" + text + "': " + kv[0] + " must be milliseconds (0...3600000)")
                }
                return v
            }
            switch kv[0] {
            case "at": at = try seconds()
            case "every":
                let v = try seconds()
                guard v >= 0.01 else { throw ConfigError("fault '" + text + "': every must be at least 0.01 s") }
                every = v
            case "for": duration = try seconds()
            case "delay": delayMs = try milliseconds()
            case "up": upMs = max(10, try milliseconds())
            default:
                throw ConfigError("fault '" + text + "': unknown option '" + kv[0] + "' (at, every, for, delay, up)")
            }
        }
        if let every, let duration, duration >= every {
            throw ConfigError("fault '" + text + "': for (" + String(duration) + " s) must be shorter than every (" + String(every) + " s)")
        }
        if kind.atIssue && (at != 0 || every != nil || duration != nil) {
            throw ConfigError("fault '" + text + "': " + kind.rawValue + " is decided when the certificate is made; it takes no at, every or for")
        }
    }

    private static func target(_ t: String, in text: String) throws(ConfigError) -> Target {
        var number = t
        var scale = 1.0
        if number.hasSuffix("%") {
            number.removeLast()
            scale = 100
        }
        if let v = Double(number) {
            guard v >= 0, v / scale <= 1 else {
                throw ConfigError("fault '" + text + "': the fraction must be between 0 and 1 (or 0% and 100%)")
            }
            return .fraction(v / scale)
        }
        let names = t.split(separator: "+").map { String($0).lowercased() }
        guard !names.isEmpty else { throw ConfigError("fault '" + text + "': no target") }
        return .names(names)
    }
}

/// Which devices each fault applies to: a seeded, reproducible choice.
struct FaultPlan {
    /// For each device index (0-based), the specs that apply to it.
    private(set) var byDevice: [Int: [FaultSpec]] = [:]

    init(_ specs: [FaultSpec], deviceNames: [String], seed: UInt64) throws(ConfigError) {
        var index: [String: Int] = [:]
        for (i, n) in deviceNames.enumerated() { index[n] = i }
        var rng = SplitMix(seed: seed)
        for spec in specs {
            var chosen: [Int] = []
            switch spec.target {
            case .names(let names):
                for n in names {
                    guard let i = index[n] else { throw ConfigError("fault " + spec.kind.rawValue + ": no device named '" + n + "'") }
                    chosen.append(i)
                }
            case .fraction(let f):
                let count = Int((f * Double(deviceNames.count)).rounded())
                var order = Array(0..<deviceNames.count)
                // A partial Fisher-Yates shuffle: the first `count` are the sample.
                for k in 0..<min(count, order.count) {
                    let j = k + Int(rng.next() % UInt64(order.count - k))
                    order.swapAt(k, j)
                }
                chosen = Array(order.prefix(count))
            }
            for i in chosen { byDevice[i, default: []].append(spec) }
        }
    }
}

/// SplitMix64: small, fast, reproducible from a seed.
struct SplitMix {
    private var state: UInt64
    init(seed: UInt64) { state = seed }
    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}
