// The local API every virtual device answers, in-process (no socket, no HTTP/1.1):
//
//   GET /                200, what this is (the gateway's default health check)
//   GET /health          200 "ok"
//   GET /device          200, the device's name: any test can tell who answered
//   ANY /echo            200, the request body streamed back; x-echo-method,
//                        x-echo-path and x-echo-h-<name> for each request header
//   GET /bytes/N         N bytes, byte i = i % 251 (deterministic; content-length N)
//   GET /sleep/MS        200 after MS milliseconds
//   GET /status/CODE     that status
//   GET /stream/N        N chunks "chunk i\n", one every 100 ms (?ms=INTERVAL)
//   CONNECT /ws          WebSocket echo (extended CONNECT, RFC 8441)
//
// Every response carries `x-device: NAME`. The device's faults shape the answer:
// `slow` delays it, `garbage` makes it invalid HTTP/2.
import HTTP1
import AgentKit

enum SimulatedAPI {
    static let maxBytes = 1 << 40
    static let chunk = 16 * 1024

    static func serve(_ r: LocalRequest, device: VirtualDevice) {
        if device.slowMs > 0 {
            let id = r.loop.schedule(afterMilliseconds: device.slowMs) { route(r, device: device) }
            r.onClose = { _ in r.loop.cancel(id) }
            return
        }
        route(r, device: device)
    }

    private static func route(_ r: LocalRequest, device: VirtualDevice) {
        guard !r.isClosed else { return }
        defer { if r.onBody == nil { r.discardBody() } }  // routes that do not read the body
        if device.garbage {
            // Not a valid response: the gateway must refuse it (502), not pass it on.
            device.stats.served(status: 0)
            r.respond(HTTPHeaders([(":status", "2x0"), ("bad header", "x")]), endStream: true)
            return
        }
        let (path, query) = split(r.path)
        let parts = path.split(separator: "/").map(String.init)
        let head = r.method == "HEAD"
        switch (r.method, parts.first ?? "", parts.count) {
        case ("CONNECT", "ws", 1) where r.protocolName == "websocket":
            WebSocketEcho(request: r, device: device).start()
        case (_, "echo", 1):
            echo(r, device: device)
        case ("GET", "", 0), ("HEAD", "", 0):
            text(r, device, 200, "simulated device " + device.name + "\n", head: head)
        case ("GET", "health", 1), ("HEAD", "health", 1):
            text(r, device, 200, "ok\n", head: head)
        case ("GET", "device", 1), ("HEAD", "device", 1):
            text(r, device, 200, device.name + "\n", head: head)
        case ("GET", "bytes", 2), ("HEAD", "bytes", 2):
            guard let n = Int(parts[1]), n >= 0, n <= maxBytes else { return text(r, device, 400, "bad size\n") }
            device.stats.served(status: 200)
            r.respond(HTTPHeaders([(":status", "200"), ("content-type", "application/octet-stream"),
                                   ("content-length", String(n)), ("x-device", device.name)]), endStream: head || n == 0)
            if !head && n > 0 { sendBytes(r, from: 0, to: n) }
        case ("GET", "sleep", 2):
            guard let ms = Int(parts[1]), ms >= 0, ms <= 3_600_000 else { return text(r, device, 400, "bad duration\n") }
            let id = r.loop.schedule(afterMilliseconds: ms) { text(r, device, 200, "slept " + String(ms) + " ms\n") }
            r.onClose = { _ in r.loop.cancel(id) }
        case ("GET", "status", 2), ("HEAD", "status", 2):
            guard let code = Int(parts[1]), (200...599).contains(code) else { return text(r, device, 400, "bad status\n") }
            let empty = code == 204 || code == 304
            text(r, device, code, empty ? "" : "status " + String(code) + "\n", head: head || empty)
        case ("GET", "stream", 2):
            guard let n = Int(parts[1]), n >= 0, n <= 1_000_000 else { return text(r, device, 400, "bad count\n") }
            var interval = 100
            if let q = query.first(where: { $0.0 == "ms" }), let v = Int(q.1), v >= 0, v <= 60_000 { interval = v }
            device.stats.served(status: 200)
            r.respond(HTTPHeaders([(":status", "200"), ("content-type", "text/plain"), ("x-device", device.name)]),
                      endStream: n == 0)
            if n > 0 { streamChunks(r, index: 0, count: n, intervalMs: interval) }
        default:
            text(r, device, 404, "no such path on the simulated API: " + r.path + "\n", head: head)
        }
    }

    static func text(_ r: LocalRequest, _ device: VirtualDevice, _ status: Int, _ body: String, head: Bool = false) {
        device.stats.served(status: status)
        let bytes = Array(body.utf8)
        r.respond(HTTPHeaders([(":status", String(status)), ("content-type", "text/plain"),
                               ("content-length", String(bytes.count)), ("x-device", device.name)]),
                  endStream: head || bytes.isEmpty)
        if !head && !bytes.isEmpty { r.write(bytes, endStream: true) }
    }

    /// The deterministic body of /bytes/N, in chunks, waiting while the stream's queue is full.
    private static func sendBytes(_ r: LocalRequest, from start: Int, to end: Int) {
        var i = start
        while i < end && !r.isClosed {
            let n = min(chunk, end - i)
            var b = [UInt8](repeating: 0, count: n)
            for k in 0..<n { b[k] = UInt8((i + k) % 251) }
            i += n
            r.write(b, endStream: i == end)
            if i < end && r.queued >= 4 * chunk {
                let next = i
                r.whenQueue(isAtMost: chunk) { sendBytes(r, from: next, to: end) }
                return
            }
        }
    }

    private static func streamChunks(_ r: LocalRequest, index: Int, count: Int, intervalMs: Int) {
        guard !r.isClosed else { return }
        r.write(Array(("chunk " + String(index) + "\n").utf8), endStream: index + 1 == count)
        guard index + 1 < count else { return }
        let id = r.loop.schedule(afterMilliseconds: intervalMs) {
            streamChunks(r, index: index + 1, count: count, intervalMs: intervalMs)
        }
        r.onClose = { _ in r.loop.cancel(id) }
    }

    /// The request body back as it arrives; its window reopens as the response queue drains.
    private static func echo(_ r: LocalRequest, device: VirtualDevice) {
        var h = HTTPHeaders([(":status", "200"), ("x-device", device.name), ("x-echo-method", r.method), ("x-echo-path", r.path)])
        for (name, value) in r.headers where !name.hasPrefix(":") {
            h.add("x-echo-h-" + name, value)
        }
        if let len = r.headers.first("content-length") { h.add("content-length", len) }
        if let type = r.headers.first("content-type") { h.add("content-type", type) }
        device.stats.served(status: 200)
        let bodyless = r.requestEnded && !r.hasHeldBody
        r.respond(h, endStream: bodyless)
        if bodyless { return }
        r.autoConsume = false
        var owed = 0
        var waiting = false
        r.onBody = { bytes in
            r.write(bytes)
            owed += bytes.count
            guard !waiting else { return }  // one waiter per stream: it settles everything owed
            waiting = true
            r.whenQueue(isAtMost: 4 * chunk) {
                waiting = false
                r.consume(owed)
                owed = 0
            }
        }
        r.onEnd = { _ in r.write([], endStream: true) }
    }

    static func split(_ target: String) -> (path: String, query: [(String, String)]) {
        guard let q = target.firstIndex(of: "?") else { return (target, []) }
        let pairs = target[target.index(after: q)...].split(separator: "&").map { item -> (String, String) in
            let kv = item.split(separator: "=", maxSplits: 1).map(String.init)
            return (kv[0], kv.count > 1 ? kv[1] : "")
        }
        return (String(target[..<q]), pairs)
    }
}
