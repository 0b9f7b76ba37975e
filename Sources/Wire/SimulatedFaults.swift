// The simulator's faults (device-sim --faults), all in one place: what a lost
// network path, a hung device and a corrupting middlebox do to a connection.
// Nothing in the agent or the gateway calls these; device-sim reaches them
// through `Dialer.faults`. Kept in the engine because a hung peer has to stop
// the real Transport and HTTP2Connection, not a mock of them.
import EventLoop

public struct SimulatedFaults {
    let connection: HTTP2Connection

    public init(_ connection: HTTP2Connection) { self.connection = connection }

    /// Cuts the connection without GOAWAY, as a lost network path would; a
    /// dialer then dials again with backoff.
    public func drop() { connection.transport.close() }

    /// Freezes the connection as a hung device would: nothing is read, written or
    /// PINGed until `frozen` is false again.
    public func setFrozen(_ frozen: Bool) { connection.setFrozen(frozen) }

    /// Writes bytes that are not HTTP/2 into the connection (under TLS, if any).
    public func injectGarbage(_ bytes: [UInt8]) {
        let t = connection.transport
        guard t.state == .open else { return }
        t.write(bytes)
    }
}

extension HTTP2Connection {
    /// Suspends (or resumes) everything this connection does, as if its process hung.
    func setFrozen(_ frozen: Bool) {
        guard frozen != isFrozen, transport.state != .closed else { return }
        isFrozen = frozen
        transport.setFrozen(frozen)
        if frozen {
            transport.loop.cancel(livenessTimer)
            livenessTimer = nil
        } else {
            if liveness != nil {
                liveness?.received(now: transport.loop.now)
                scheduleLivenessTick()
            }
            flush()
        }
    }
}

extension Transport {
    /// While frozen the socket is not watched at all, so nothing is read or written
    /// and not even a close is noticed; thawing picks up whatever happened meanwhile.
    func setFrozen(_ frozen: Bool) {
        guard frozen != isFrozen, state != .closed else { return }
        isFrozen = frozen
        if frozen {
            loop.unregister(fd: fd)
        } else {
            loop.register(fd: fd, readable: state != .connecting && !readPaused,
                          writable: bufferedOutput > 0 || state == .connecting) { ev in self.handle(ev) }
            if bufferedOutput > 0 { flush() }
        }
    }
}
