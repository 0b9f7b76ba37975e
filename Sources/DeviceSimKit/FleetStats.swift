// What the simulator counts, and its report: a JSON object written at the end
// and on demand (SIGUSR1), with the curve of connected devices over time and,
// for devices that enroll over EST, an "enrollment" object.

/// Counters the devices update as they serve and fail.
public final class FleetStats {
    /// Responses by status (0: the garbage fault's invalid ones).
    public private(set) var requestsByStatus: [Int: Int] = [:]
    public private(set) var faultsInjected: [String: Int] = [:]
    public let enrollment = EnrollmentStats()

    func served(status: Int) { requestsByStatus[status, default: 0] += 1 }
    func injected(_ kind: FaultKind) { faultsInjected[kind.rawValue, default: 0] += 1 }
}

/// Enrollment over EST (--enroll-token-dir): what the devices' Enrollment reported.
public final class EnrollmentStats {
    /// Devices that had a certificate already and did not enroll.
    public internal(set) var certified = 0
    /// Tokens the simulator minted (--mint-tokens).
    public internal(set) var minted = 0
    public private(set) var enrolled = 0
    /// Failed attempts (each is retried with backoff), and the devices that had one.
    public private(set) var failedAttempts = 0
    public private(set) var devicesFailed = 0
    /// The last failure's reason.
    public private(set) var lastError: String?
    /// Milliseconds from a device's start to its certificate written, by device enrolled.
    public private(set) var latenciesMs: [Int] = []

    func failed(_ why: String, first: Bool) {
        failedAttempts += 1
        if first { devicesFailed += 1 }
        lastError = why
    }

    func succeeded(afterMs ms: Int) {
        enrolled += 1
        latenciesMs.append(ms)
    }

    /// The `p`-th percentile (nearest rank) of the enrollment times, nil before any.
    public func percentileMs(_ p: Double) -> Int? {
        Percentile.nearestRank(latenciesMs.sorted(), p)
    }
}

enum Percentile {
    /// Nearest rank of sorted `values`: the smallest value with at least p % at or below it.
    static func nearestRank(_ sorted: [Int], _ p: Double) -> Int? {
        guard !sorted.isEmpty else { return nil }
        let rank = Int((p / 100 * Double(sorted.count)).rounded(.up))
        return sorted[min(sorted.count, max(1, rank)) - 1]
    }
}

/// The "enrollment" object of the report.
public struct EnrollmentSummary: Equatable {
    public var certified: Int
    public var minted: Int
    public var enrolled: Int
    public var failedAttempts: Int
    public var devicesFailed: Int
    public var lastError: String?
    public var p50Ms: Int?
    public var p99Ms: Int?
    public var maxMs: Int?
    /// Seconds from start until every device had a certificate (nil: not yet).
    public var allEnrolledSeconds: Double?
    /// Certificates renewed by the devices' CertificateRenewal.
    public var renewals: Int

    init(_ s: EnrollmentStats, allEnrolledSeconds: Double?, renewals: Int) {
        certified = s.certified
        minted = s.minted
        enrolled = s.enrolled
        failedAttempts = s.failedAttempts
        devicesFailed = s.devicesFailed
        lastError = s.lastError
        let sorted = s.latenciesMs.sorted()
        p50Ms = Percentile.nearestRank(sorted, 50)
        p99Ms = Percentile.nearestRank(sorted, 99)
        maxMs = sorted.last
        self.allEnrolledSeconds = allEnrolledSeconds
        self.renewals = renewals
    }
}

/// One point of the curve: at `ms` after start, `connected` devices were up and
/// `dials` dial attempts had been made in all.
public struct FleetSample: Equatable {
    public var ms: Int
    public var connected: Int
    public var dials: Int
}

public struct FleetSummary {
    public var devices: Int
    /// Devices whose certificates the gateway should accept (no wrong-ca or expired fault).
    public var expected: Int
    public var connectedDevices: Int
    public var connections: Int
    public var dialAttempts: Int
    /// Connections that came up again after a device's first.
    public var reconnects: Int
    public var requestsByStatus: [Int: Int]
    public var faultsInjected: [String: Int]
    /// Seconds from start until every expected device was first connected (nil: not yet).
    public var allConnectedSeconds: Double?
    public var elapsedSeconds: Double
    public var curve: [FleetSample]
    /// Only when the devices enroll over EST.
    public var enrollment: EnrollmentSummary?

    public var json: String {
        var out = "{\n"
        out += "  \"devices\": \(devices),\n"
        out += "  \"expected_to_connect\": \(expected),\n"
        out += "  \"connected_devices\": \(connectedDevices),\n"
        out += "  \"connections\": \(connections),\n"
        out += "  \"dial_attempts\": \(dialAttempts),\n"
        out += "  \"reconnects\": \(reconnects),\n"
        out += "  \"all_connected_seconds\": " + (allConnectedSeconds.map { seconds($0) } ?? "null") + ",\n"
        out += "  \"elapsed_seconds\": " + seconds(elapsedSeconds) + ",\n"
        let statuses = requestsByStatus.keys.sorted().map { "\"\($0)\": \(requestsByStatus[$0]!)" }
        out += "  \"requests_by_status\": {" + statuses.joined(separator: ", ") + "},\n"
        let faults = faultsInjected.keys.sorted().map { "\"\($0)\": \(faultsInjected[$0]!)" }
        out += "  \"faults_injected\": {" + faults.joined(separator: ", ") + "},\n"
        if let e = enrollment {
            let ms: (Int?) -> String = { $0.map { String($0) } ?? "null" }
            out += "  \"enrollment\": {\"enrolled\": \(e.enrolled), \"failed_attempts\": \(e.failedAttempts), "
                + "\"devices_failed\": \(e.devicesFailed), \"certified_before\": \(e.certified), \"tokens_minted\": \(e.minted), "
                + "\"p50_ms\": " + ms(e.p50Ms) + ", \"p99_ms\": " + ms(e.p99Ms) + ", \"max_ms\": " + ms(e.maxMs) + ", "
                + "\"all_enrolled_seconds\": " + (e.allEnrolledSeconds.map { seconds($0) } ?? "null") + ", "
                + "\"renewals\": \(e.renewals), \"last_error\": " + (e.lastError.map { jsonString($0) } ?? "null") + "},\n"
        }
        out += "  \"curve\": [\n"
        out += curve.map { "    {\"ms\": \($0.ms), \"connected\": \($0.connected), \"dials\": \($0.dials)}" }.joined(separator: ",\n")
        out += "\n  ]\n}\n"
        return out
    }

    /// A JSON string of printable ASCII (anything else becomes '?').
    private func jsonString(_ s: String) -> String {
        var out = "\""
        for u in s.utf8.prefix(300) {
            switch u {
            case UInt8(ascii: "\""), UInt8(ascii: "\\"): out += "\\" + String(UnicodeScalar(u))
            case 0x20..<0x7F: out += String(UnicodeScalar(u))
            default: out += "?"
            }
        }
        return out + "\""
    }

    private func seconds(_ v: Double) -> String {
        let ms = Int((v * 1000).rounded())
        let frac = String(ms % 1000)
        return String(ms / 1000) + "." + String(repeating: "0", count: 3 - frac.count) + frac
    }
}
