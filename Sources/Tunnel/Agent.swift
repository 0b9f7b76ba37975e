// Agent runs N Dialers on one event loop, sharing the TLS context and the pool of
// connections to the local API. SIGTERM and SIGINT stop it gracefully: GOAWAY on
// every connection, a short drain, then exit.
import CLibc
import EventLoop
import TLS

public final class Agent {
    public let config: AgentConfig
    public let loop: EventLoop
    public let logger: Logger
    public private(set) var dialers: [Dialer] = []
    let pool: LocalPool
    let tls: TLSContext?
    private var connectionCounter = 0

    public init(config: AgentConfig, loop: EventLoop, logger: Logger) throws(OpenSSLError) {
        self.config = config
        self.loop = loop
        self.logger = logger
        pool = LocalPool(loop: loop, endpoint: config.local)
        tls = config.plaintext ? nil : try TLSContext(config.tlsConfiguration())
    }

    public var connectedCount: Int {
        var n = 0
        for d in dialers where d.state == .connected { n += 1 }
        return n
    }

    /// `onChange` runs whenever a connection comes up or goes down.
    public func start(onChange: (() -> Void)? = nil) {
        if config.plaintext {
            logger.warning("INSECURE: --plaintext: the tunnel is not encrypted and the gateway is not authenticated; use only on loopback or for tests")
        }
        let seed = loop.now ^ (UInt64(UInt32(bitPattern: getpid())) << 32)
        for i in 0..<config.connections {
            let d = Dialer(slot: i, config: config, loop: loop, tls: tls, pool: pool, logger: logger,
                           seed: seed &+ UInt64(i) &* 0x9E37_79B9) {
                self.connectionCounter += 1
                return self.connectionCounter
            }
            d.onStateChange = { _ in onChange?() }
            dialers.append(d)
            d.start()
        }
    }

    /// Stops dialing and drains: GOAWAY on every connection, the streams in flight
    /// finish, then `done` runs once every connection is closed.
    public func stop(done: @escaping () -> Void) {
        var open = dialers.count
        for d in dialers {
            d.onStopped = {
                open -= 1
                if open == 0 {
                    self.pool.closeAll()
                    done()
                }
            }
        }
        for d in dialers { d.stop() }
        if dialers.isEmpty { done() }
    }
}
