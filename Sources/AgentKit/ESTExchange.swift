// ESTExchange runs one EnrollmentClient over one new connection: resolve, TCP,
// TLS (the context says ALPN http/1.1 and which certificate, if any, is shown),
// write the request, feed the answer to the client, close. Bounded by
// `timeoutMs` from the first dial to the last byte. `done` runs once.
import EventLoop
import TLS
import Wire

final class ESTExchange {
    private let loop: EventLoop
    private let tls: TLSContext
    private let endpoint: HostPort
    private let serverName: String
    private var client: EnrollmentClient
    private let timeoutMs: Int
    private var done: ((EnrollmentClient.Outcome) -> Void)?
    private var resolution: Resolution?
    private var transport: Transport?
    private var deadline: TimerID?

    init(loop: EventLoop, tls: TLSContext, endpoint: HostPort, serverName: String, client: EnrollmentClient,
         timeoutMs: Int, done: @escaping (EnrollmentClient.Outcome) -> Void) {
        self.loop = loop
        self.tls = tls
        self.endpoint = endpoint
        self.serverName = serverName
        self.client = client
        self.timeoutMs = timeoutMs
        self.done = done
    }

    func start() {
        deadline = loop.schedule(afterMilliseconds: timeoutMs) {
            self.deadline = nil
            self.finish(self.client.timedOut(afterMs: self.timeoutMs))
        }
        resolution = Resolution.start(loop: loop, endpoint, timeoutMs: timeoutMs) { result in
            self.resolution = nil
            switch result {
            case .failure(let e): self.finish(.failed(e.description))
            case .success(let addrs): self.connect(addrs, 0, "no address for " + self.endpoint.host)
            }
        }
    }

    private func connect(_ addrs: [SocketAddress], _ index: Int, _ previous: String) {
        guard done != nil else { return }
        guard index < addrs.count else {
            finish(.failed(previous))
            return
        }
        let fd: Int32
        do throws(SocketError) { fd = try Socket.startConnect(addrs[index]) } catch {
            connect(addrs, index + 1, error.description)
            return
        }
        let conn: TLSConnection
        do throws(OpenSSLError) { conn = try TLSConnection(context: tls, serverName: serverName) } catch {
            Socket.close(fd)
            finish(.failed(error.description))
            return
        }
        let t = Transport(loop: loop, fd: fd, peer: addrs[index], tls: conn, connecting: true)
        transport = t
        var opened = false
        t.onOpen = {
            opened = true
            t.write(self.client.request)
        }
        t.onData = { bytes in
            if let o = self.client.receive(Array(bytes)) { self.finish(o) }
        }
        t.onClose = { reason in
            self.transport = nil
            if opened {
                self.finish(self.client.peerClosed())
            } else {
                self.connect(addrs, index + 1, reason.description)
            }
        }
        t.start()
    }

    /// Stops without calling `done`.
    func cancel() {
        done = nil
        finish(.failed("cancelled"))
    }

    private func finish(_ outcome: EnrollmentClient.Outcome) {
        loop.cancel(deadline)
        deadline = nil
        resolution?.cancel()
        resolution = nil
        if let t = transport {
            transport = nil
            t.onClose = nil
            t.close()
        }
        let cb = done
        done = nil
        cb?(outcome)
    }
}
