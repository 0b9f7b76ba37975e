// Gateway wires the two sides together on one event loop: the device listener
// (mTLS, reversed HTTP/2 connections into the registry) and the public listener
// (users' HTTP/1.1 requests, routed by Host through an Exchange).
import EventLoop
import HTTP2
import TLS
import Tunnel

final class Gateway {
    let config: GatewayConfig
    let loop: EventLoop
    let logger: Logger
    let registry: DeviceRegistry
    private let deviceTLS: TLSContext?
    private let publicTLS: TLSContext?
    private var deviceListener: Int32 = -1
    private var publicListener: Int32 = -1
    private var connectionCounter = 0
    private var pending: [Int: Transport] = [:]

    init(config: GatewayConfig, loop: EventLoop, logger: Logger) throws(OpenSSLError) {
        self.config = config
        self.loop = loop
        self.logger = logger
        registry = DeviceRegistry()
        deviceTLS = config.plaintextDevices ? nil : try TLSContext(config.deviceTLS())
        publicTLS = try config.publicTLS().map { c throws(OpenSSLError) in try TLSContext(c) }
    }

    var devicePort: Int { Socket.localPort(deviceListener) }
    var publicPort: Int { Socket.localPort(publicListener) }

    func start() throws(SocketError) {
        deviceListener = try Socket.listen(config.listenDevices)
        publicListener = try Socket.listen(config.listenPublic)
        loop.register(fd: deviceListener) { _ in self.acceptDevices() }
        loop.register(fd: publicListener) { _ in self.acceptUsers() }
        if config.plaintextDevices {
            logger.warning("INSECURE: --plaintext-devices: devices are not authenticated; every device connection is '" + config.plaintextDeviceName + "'")
        }
        logger.notice("devices on " + config.listenDevices.host + ":" + String(devicePort) + " (" + (deviceTLS == nil ? "plaintext" : "mTLS")
                      + "), users on " + config.listenPublic.host + ":" + String(publicPort) + " (" + (publicTLS == nil ? "http" : "https") + ")")
    }

    private func acceptDevices() {
        var n = 0
        while n < 64 {
            n += 1
            let accepted: (fd: Int32, peer: SocketAddress)?
            do throws(SocketError) { accepted = try Socket.accept(deviceListener) } catch {
                logger.warning("accept: " + error.description)
                return
            }
            guard let (fd, peer) = accepted else { return }
            var conn: TLSConnection?
            if let deviceTLS {
                do throws(OpenSSLError) { conn = try TLSConnection(context: deviceTLS) } catch {
                    logger.warning(error.description)
                    Socket.close(fd)
                    continue
                }
            }
            connectionCounter += 1
            let id = connectionCounter
            let t = Transport(loop: loop, fd: fd, peer: peer, tls: conn, connecting: false)
            pending[id] = t
            t.onOpen = { self.deviceOpened(t, id: id) }
            t.onClose = { reason in
                self.pending[id] = nil
                self.logger.warning("device connection from " + peer.description + " failed: " + reason.description,
                                    LogContext(connection: id))
            }
            t.start()
        }
    }

    /// TLS is up: take the identity from the certificate and reverse the connection.
    private func deviceOpened(_ t: Transport, id: Int) {
        pending[id] = nil
        let name: String
        if let tls = t.tls {
            guard let cn = tls.peerCommonName?.lowercased(), PKI.isValidHostname(cn) else {
                logger.warning("device certificate from " + t.peer.description + " has no valid hostname CN; closing",
                               LogContext(connection: id))
                t.close()
                return
            }
            name = cn
        } else {
            name = config.plaintextDeviceName
        }
        let identity = DeviceIdentity(name: name, hostname: config.hostnameTemplate.hostname(for: name))
        let dc: DeviceConnection
        do throws(HTTP2Error) {
            dc = try DeviceConnection(id: id, identity: identity, transport: t, logger: logger)
        } catch {
            t.close()
            return
        }
        dc.onReady = { c in
            self.registry.add(c)
            self.logger.notice("device connected from " + t.peer.description + " as " + identity.hostname, c.ctx)
        }
        dc.onClose = { c in self.registry.remove(c) }
        dc.start()
    }

    private func acceptUsers() {
        var n = 0
        while n < 64 {
            n += 1
            let accepted: (fd: Int32, peer: SocketAddress)?
            do throws(SocketError) { accepted = try Socket.accept(publicListener) } catch {
                logger.warning("accept: " + error.description)
                return
            }
            guard let (fd, peer) = accepted else { return }
            var conn: TLSConnection?
            if let publicTLS {
                do throws(OpenSSLError) { conn = try TLSConnection(context: publicTLS) } catch {
                    logger.warning(error.description)
                    Socket.close(fd)
                    continue
                }
            }
            let t = Transport(loop: loop, fd: fd, peer: peer, tls: conn, connecting: false)
            let pc = PublicConnection(gateway: self, transport: t, scheme: publicTLS == nil ? "http" : "https")
            pc.start()
            t.start()
        }
    }
}
