// What the simulator counts, and its report: a JSON object written at the end
// and on demand (SIGUSR1), with the curve of connected devices over time.

/// Counters the devices update as they serve and fail.
public final class FleetStats {
    /// Responses by status (0: the garbage fault's invalid ones).
    public private(set) var requestsByStatus: [Int: Int] = [:]
    public private(set) var faultsInjected: [String: Int] = [:]

    func served(status: Int) { requestsByStatus[status, default: 0] += 1 }
    func injected(_ kind: FaultKind) { faultsInjected[kind.rawValue, default: 0] += 1 }
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
        out += "  \"curve\": [\n"
        out += curve.map { "    {\"ms\": \($0.ms), \"connected\": \($0.connected), \"dials\": \($0.dials)}" }.joined(separator: ",\n")
        out += "\n  ]\n}\n"
        return out
    }

    private func seconds(_ v: Double) -> String {
        let ms = Int((v * 1000).rounded())
        let frac = String(ms % 1000)
        return String(ms / 1000) + "." + String(repeating: "0", count: 3 - frac.count) + frac
    }
}
