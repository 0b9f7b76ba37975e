// LocalPool keeps idle HTTP/1.1 keep-alive connections to the device's local API,
// so a busy tunnel does not open a TCP connection per request, and bounds the
// requests in progress at the local API to `maxActive`: a small device server
// (a listen backlog of 5 is common) must not get 100 connections at once, which
// the kernel answers by dropping SYNs for seconds. Beyond `maxIdle` (by default
// `maxActive`: a burst of answers must not close connections the waiting
// requests are about to open again) a finished connection is closed instead of kept.
//
// The local API's address is resolved off the loop (Resolution: getaddrinfo_a,
// or no lookup at all for an IP literal), once, and kept: it is normally a
// literal or `localhost`, and a lookup per new connection would cost a thread
// and a poll each time. It is resolved again after a connection to it fails
// and after a reload (SIGHUP), so a changed address is picked up; a name that
// does not resolve fails the requests waiting for it (502), and the next one
// tries again.
import CLibc
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
    /// Where the local API is, once resolved (nil: resolve before the next connection).
    private var address: SocketAddress?
    private var resolving = false
    /// Connections waiting for the address.
    private var unresolved: [LocalDial] = []
    /// How a name is looked up; `done` runs once, on the loop, never inside the call.
    typealias Resolve = (EventLoop, HostPort, @escaping (Result<[SocketAddress], SocketError>) -> Void) -> Void
    var resolve: Resolve = { loop, endpoint, done in Resolution.start(loop: loop, endpoint, done: done) }

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

    /// Opens a new connection to the local API: `done` runs once, on the loop and
    /// never inside this call, with the open connection or why there is none;
    /// not at all if the returned dial is cancelled first.
    func connect(_ done: @escaping (Result<Transport, SocketError>) -> Void) -> LocalDial {
        let dial = LocalDial(done)
        if let address {
            start(dial, address)
        } else {
            unresolved.append(dial)
            resolveAddress()
        }
        return dial
    }

    /// Opens a connection to 127.0.0.1:`port` (a CONNECT tunnel): like `connect`,
    /// without the local API's address and outside the places.
    func connect(localPort port: Int, _ done: @escaping (Result<Transport, SocketError>) -> Void) -> LocalDial {
        let dial = LocalDial(done)
        do throws(SocketError) {
            // A numeric host: getaddrinfo does no lookup.
            guard let addr = try Socket.resolve(HostPort(host: "127.0.0.1", port: port)).first else {
                throw SocketError("resolve 127.0.0.1", errno: EHOSTUNREACH)
            }
            start(dial, addr, pooled: false)
        } catch {
            loop.execute { dial.finish(.failure(error)) }
        }
        return dial
    }

    /// Resolves the address again before the next new connection (after a reload).
    func forgetAddress() { address = nil }

    private func resolveAddress() {
        guard !resolving else { return }
        resolving = true
        resolve(loop, endpoint) { result in
            self.resolving = false
            let waiting = self.unresolved
            self.unresolved = []
            switch result {
            case .success(let addrs):
                guard let first = addrs.first else {
                    for d in waiting { d.finish(.failure(SocketError("resolve " + self.endpoint.host + " (no address)", errno: EHOSTUNREACH))) }
                    return
                }
                self.address = first
                for d in waiting { self.start(d, first) }
            case .failure(let e):
                for d in waiting { d.finish(.failure(e)) }
            }
        }
    }

    private func start(_ dial: LocalDial, _ addr: SocketAddress, pooled: Bool = true) {
        guard dial.isWaiting else { return }  // cancelled meanwhile
        let fd: Int32
        do throws(SocketError) { fd = try Socket.startConnect(addr) } catch {
            if pooled { address = nil }
            loop.execute { dial.finish(.failure(error)) }
            return
        }
        let t = Transport(loop: loop, fd: fd, peer: addr, tls: nil, connecting: true)
        t.readChunk = BackPressure.minimumShare  // what a stream may queue between two checks
        dial.transport = t
        t.onOpen = {
            t.onOpen = nil
            t.onClose = nil
            dial.transport = nil
            dial.finish(.success(t))
        }
        t.onClose = { reason in
            dial.transport = nil
            if pooled { self.address = nil }  // perhaps it moved: resolve again next time
            if case .socket(let e) = reason {
                dial.finish(.failure(e))
            } else {
                dial.finish(.failure(SocketError("connect " + addr.description, errno: ECONNABORTED)))
            }
        }
        t.start()
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

/// One new connection to the local API in the making: waiting for the address,
/// then connecting. Cancelling it stops both.
final class LocalDial {
    private var done: ((Result<Transport, SocketError>) -> Void)?
    /// The connection while it connects.
    fileprivate var transport: Transport?

    fileprivate init(_ done: @escaping (Result<Transport, SocketError>) -> Void) {
        self.done = done
    }

    fileprivate var isWaiting: Bool { done != nil }

    fileprivate func finish(_ result: Result<Transport, SocketError>) {
        let cb = done
        done = nil
        if let cb {
            cb(result)
        } else if case .success(let t) = result {
            t.close()
        }
    }

    /// The request no longer wants the connection.
    func cancel() {
        done = nil
        guard let t = transport else { return }
        transport = nil
        t.onClose = nil  // not a failure of the address
        t.close()
    }
}
