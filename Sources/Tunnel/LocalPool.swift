// LocalPool keeps idle HTTP/1.1 keep-alive connections to the device's local API,
// so a busy tunnel does not open a TCP connection per request. Bounded: beyond
// `maxIdle` a finished connection is closed instead of kept.
import EventLoop

final class LocalPool {
    let loop: EventLoop
    let endpoint: HostPort
    let maxIdle: Int
    private var idle: [Transport] = []

    init(loop: EventLoop, endpoint: HostPort, maxIdle: Int = 16) {
        self.loop = loop
        self.endpoint = endpoint
        self.maxIdle = maxIdle
    }

    /// An idle open connection, if one is kept.
    func takeIdle() -> Transport? {
        while let t = idle.popLast() {
            if t.state == .open { return t }
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

    /// Keeps `t` for reuse, or closes it when the pool is full.
    func release(_ t: Transport) {
        guard t.state == .open, idle.count < maxIdle else {
            t.close()
            return
        }
        t.resumeReading()  // an idle connection is watched for the server closing it
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
