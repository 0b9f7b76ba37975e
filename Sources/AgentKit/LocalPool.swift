// LocalPool keeps idle HTTP/1.1 keep-alive connections to the device's local API,
// so a busy tunnel does not open a TCP connection per request, and bounds the
// requests in progress at the local API to `maxActive`: a small device server
// (a listen backlog of 5 is common) must not get 100 connections at once, which
// the kernel answers by dropping SYNs for seconds. Beyond `maxIdle` (by default
// `maxActive`: a burst of answers must not close connections the waiting
// requests are about to open again) a finished connection is closed instead of kept.
import EventLoop
import Wire

final class LocalPool {
    let loop: EventLoop
    let endpoint: HostPort
    let maxIdle: Int
    let maxActive: Int
    private var idle: [Transport] = []
    private var active = 0
    private var waiters: [() -> Void] = []

    init(loop: EventLoop, endpoint: HostPort, maxIdle: Int? = nil, maxActive: Int = 32) {
        self.loop = loop
        self.endpoint = endpoint
        self.maxIdle = maxIdle ?? maxActive
        self.maxActive = maxActive
    }

    /// Runs `go` when one more request may use the local API (at once, or when a
    /// running one ends). Every `go` that ran is paired with one `release()`.
    func acquire(_ go: @escaping () -> Void) {
        if active < maxActive {
            active += 1
            go()
        } else {
            waiters.append(go)
        }
    }

    /// A request is done with the local API: the next waiting one takes its place.
    func release() {
        if waiters.isEmpty {
            active -= 1
        } else {
            let next = waiters.removeFirst()
            loop.execute { next() }
        }
    }

    /// An idle open connection, if one is kept. One the local API wrote to or
    /// closed since it went idle -- bytes the event loop has not read yet, which
    /// the next request would take for the start of its response -- is closed.
    func takeIdle() -> Transport? {
        while let t = idle.popLast() {
            if t.isQuiet { return t }
            t.close()
        }
        return nil
    }

    /// Starts a new connection to the local API; nil and an error text when it fails at once.
    func connect() -> Result<Transport, SocketError> {
        do throws(SocketError) {
            let addrs = try Socket.resolve(endpoint)
            guard let addr = addrs.first else { return .failure(SocketError("resolve " + endpoint.host, errno: 113)) }
            let fd = try Socket.startConnect(addr)
            let t = Transport(loop: loop, fd: fd, peer: addr, tls: nil, connecting: true)
            t.readChunk = BackPressure.minimumShare  // what a stream may queue between two checks
            return .success(t)
        } catch {
            return .failure(error)
        }
    }

    /// Keeps `t` for reuse, or closes it when the pool is full or the local API
    /// sent anything beyond the response that ended (the caller checked what it read).
    func release(_ t: Transport) {
        guard idle.count < maxIdle, t.isQuiet else {
            t.close()
            return
        }
        t.resumeReading(t.readPause)  // an idle connection is watched for the server closing it
        t.onData = { _ in t.close() }  // an idle connection must not talk: drop it
        t.onDrained = nil
        t.onClose = { _ in self.forget(t) }
        idle.append(t)
    }

    private func forget(_ t: Transport) {
        idle.removeAll { $0 === t }
    }

    func closeAll() {
        let all = idle
        idle.removeAll()
        for t in all { t.close() }
    }
}
