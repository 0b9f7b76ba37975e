// Counters the gateway keeps for /metrics (Prometheus text format) and the access
// log. Gauges (devices, connections, queue lengths) are read from the registry
// and the queue when scraped, never kept twice.

final class Metrics {
    /// Upper bounds of the request latency histogram, in seconds.
    static let latencyBuckets: [Double] = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30]

    private(set) var requestsByClass: [String: Int] = [:]
    private(set) var latencyCounts = [Int](repeating: 0, count: Metrics.latencyBuckets.count)
    private(set) var latencySum = 0.0
    private(set) var latencyCount = 0
    private(set) var deviceConnectionsAccepted = 0
    private(set) var deviceConnectionsRefused = 0
    /// Users' connections closed at accept: over max_user_connections(_per_address).
    private(set) var userConnectionsRefused = 0
    /// Bytes of device connections that have closed (open ones are added when scraped).
    private(set) var closedBytesIn = 0
    private(set) var closedBytesOut = 0
    /// Access decisions (issue 13), by "result auth" (e.g. "401 none").
    private(set) var accessDecisions: [AccessKey: Int] = [:]
    /// `metrics_per_device`: one series set per device seen (at most `maxDevices`);
    /// turning it off forgets them.
    var perDevice = false {
        didSet { if !perDevice { devices = [:] } }
    }
    private(set) var devices: [String: DeviceCounters] = [:]
    /// Requests not counted per device because `maxDevices` were tracked already.
    private(set) var devicesOverflow = 0
    static let maxDevices = 100_000

    struct AccessKey: Hashable, Comparable {
        let result: String
        let auth: String
        static func < (a: AccessKey, b: AccessKey) -> Bool { (a.result, a.auth) < (b.result, b.auth) }
    }

    struct DeviceCounters {
        /// Requests by status class: 1xx...5xx, then other.
        var byClass = [Int](repeating: 0, count: 6)
        var bytesIn = 0
        var bytesOut = 0

        mutating func add(classIndex: Int, bytesIn: Int, bytesOut: Int) {
            byClass[classIndex] += 1
            self.bytesIn += max(0, bytesIn)
            self.bytesOut += max(0, bytesOut)
        }
    }

    func request(status: Int, seconds: Double) {
        let cls = status >= 100 && status < 600 ? String(status / 100) + "xx" : "other"
        requestsByClass[cls, default: 0] += 1
        latencySum += seconds
        latencyCount += 1
        for (i, bound) in Metrics.latencyBuckets.enumerated() where seconds <= bound { latencyCounts[i] += 1 }
    }

    /// A user's request met the access policy: result "allowed", "401", "403" or "429";
    /// auth "token", "certificate", "jwt" or "none".
    func accessDecision(result: String, auth: String) {
        accessDecisions[AccessKey(result: result, auth: auth), default: 0] += 1
    }

    /// A request to `device` (its canonical name) answered with `status`; its body bytes
    /// from the user (in) and to the user (out). Recorded only with `metrics_per_device`.
    func deviceRequest(device: String, status: Int, bytesIn: Int, bytesOut: Int) {
        guard perDevice else { return }
        if devices[device] == nil && devices.count >= Metrics.maxDevices {
            devicesOverflow += 1
            return
        }
        let cls = status >= 100 && status < 600 ? status / 100 - 1 : 5
        devices[device, default: DeviceCounters()].add(classIndex: cls, bytesIn: bytesIn, bytesOut: bytesOut)
    }

    static let classNames = ["1xx", "2xx", "3xx", "4xx", "5xx", "other"]

    /// CONNECT tunnels (issue 14): open now, and every CONNECT by how it ended:
    /// "closed" (both sides ended), "user_reset", "device_reset" once open; the status
    /// that refused it ("403", "502", "503", "504", ...) otherwise.
    private(set) var tunnelsOpen = 0
    private(set) var tunnelsByResult: [String: Int] = [:]

    func tunnelOpened() { tunnelsOpen += 1 }

    func tunnelDone(result: String, wasOpen: Bool) {
        if wasOpen { tunnelsOpen -= 1 }
        tunnelsByResult[result, default: 0] += 1
    }

    func exportTunnels(_ p: inout PrometheusText) {
        p.family("rhttp_tunnels_open", "gauge", "CONNECT tunnels to devices' TCP ports open now.")
        p.sample("rhttp_tunnels_open", [], Double(tunnelsOpen))
        p.family("rhttp_tunnels_total", "counter",
                 "CONNECT requests by how they ended: closed, user_reset, device_reset once open, else the refusing status.")
        for (r, n) in tunnelsByResult.sorted(by: { $0.key < $1.key }) {
            p.sample("rhttp_tunnels_total", [("result", r)], Double(n))
        }
    }

    func deviceConnectionAccepted() { deviceConnectionsAccepted += 1 }
    func deviceConnectionRefused() { deviceConnectionsRefused += 1 }
    func userConnectionRefused() { userConnectionsRefused += 1 }

    func deviceConnectionClosed(bytesIn: Int, bytesOut: Int) {
        closedBytesIn += bytesIn
        closedBytesOut += bytesOut
    }

    /// The access families (issue 13): decisions always; with `perDevice` one series
    /// per device and status class, and per device and direction.
    func exportAccess(_ p: inout PrometheusText) {
        p.family("rhttp_access_decisions_total", "counter", "Users' requests by access decision and how the user authenticated.")
        for (k, n) in accessDecisions.sorted(by: { $0.key < $1.key }) {
            p.sample("rhttp_access_decisions_total", [("result", k.result), ("auth", k.auth)], Double(n))
        }
        guard perDevice else { return }
        let sorted = devices.sorted { $0.key < $1.key }
        p.family("rhttp_device_requests_total", "counter", "Users' requests per device, by status class (metrics_per_device).")
        for (name, c) in sorted {
            for (i, n) in c.byClass.enumerated() where n > 0 {
                p.sample("rhttp_device_requests_total", [("device", name), ("class", Metrics.classNames[i])], Double(n))
            }
        }
        p.family("rhttp_device_request_bytes_total", "counter",
                 "Body bytes of users' requests (in) and of the answers (out) per device (metrics_per_device).")
        for (name, c) in sorted {
            p.sample("rhttp_device_request_bytes_total", [("device", name), ("direction", "in")], Double(c.bytesIn))
            p.sample("rhttp_device_request_bytes_total", [("device", name), ("direction", "out")], Double(c.bytesOut))
        }
        p.family("rhttp_device_metrics_untracked_total", "counter",
                 "Requests not counted per device: metrics_per_device tracks at most " + String(Metrics.maxDevices) + " devices.")
        p.sample("rhttp_device_metrics_untracked_total", [], Double(devicesOverflow))
    }
}

/// Prometheus text exposition, one family at a time.
struct PrometheusText {
    private(set) var text = ""

    mutating func family(_ name: String, _ type: String, _ help: String) {
        text += "# HELP " + name + " " + help + "\n# TYPE " + name + " " + type + "\n"
    }

    mutating func sample(_ name: String, _ labels: [(String, String)] = [], _ value: Double) {
        text += name
        if !labels.isEmpty {
            text += "{" + labels.map { $0.0 + "=\"" + escape($0.1) + "\"" }.joined(separator: ",") + "}"
        }
        text += " " + format(value) + "\n"
    }

    private func format(_ v: Double) -> String {
        if v.isInfinite { return v > 0 ? "+Inf" : "-Inf" }
        if v == v.rounded() && abs(v) < 1e15 { return String(Int64(v)) }
        return String(v)
    }

    private func escape(_ s: String) -> String {
        var out = ""
        for c in s {
            switch c {
            case "\\": out += "\\\\"
            case "\"": out += "\\\""
            case "\n": out += "\\n"
            default: out.append(c)
            }
        }
        return out
    }
}

/// JSON text without Foundation: the admin API's few shapes.
enum JSON {
    static func string(_ s: String) -> String {
        var out = "\""
        for u in s.unicodeScalars {
            switch u {
            case "\"": out += "\\\""
            case "\\": out += "\\\\"
            case "\n": out += "\\n"
            case "\r": out += "\\r"
            case "\t": out += "\\t"
            default:
                if u.value < 0x20 {
                    let hex = String(u.value, radix: 16)
                    out += "\\u" + String(repeating: "0", count: 4 - hex.count) + hex
                } else {
                    out.unicodeScalars.append(u)
                }
            }
        }
        return out + "\""
    }

    static func object(_ fields: [(String, String)]) -> String {
        "{" + fields.map { string($0.0) + ":" + $0.1 }.joined(separator: ",") + "}"
    }

    static func array(_ items: [String]) -> String { "[" + items.joined(separator: ",") + "]" }
}
