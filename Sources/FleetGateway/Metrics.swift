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

    func request(status: Int, seconds: Double) {
        let cls = status >= 100 && status < 600 ? String(status / 100) + "xx" : "other"
        requestsByClass[cls, default: 0] += 1
        latencySum += seconds
        latencyCount += 1
        for (i, bound) in Metrics.latencyBuckets.enumerated() where seconds <= bound { latencyCounts[i] += 1 }
    }

    func deviceConnectionAccepted() { deviceConnectionsAccepted += 1 }
    func deviceConnectionRefused() { deviceConnectionsRefused += 1 }
    func userConnectionRefused() { userConnectionsRefused += 1 }

    func deviceConnectionClosed(bytesIn: Int, bytesOut: Int) {
        closedBytesIn += bytesIn
        closedBytesOut += bytesOut
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
