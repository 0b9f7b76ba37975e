// ConnectClient: runs one fleet-connect session on an event loop. It dials the
// gateway (TCP, then TLS through the engine's Transport), feeds a ConnectSession
// with what happens and carries out its actions: the CONNECT request, the bytes
// between the tunnel and stdin/stdout, the two half-closes, the exit. Bytes of
// an open tunnel skip the state machine: gateway -> stdout and stdin -> gateway
// are one copy each (into the stdout queue, or into the TLS record).
//
// Back-pressure: stdin is not read while more than 1 MiB waits for the gateway;
// the gateway is not read while more than 1 MiB waits for stdout.
import Bytes
import CLibc
import EventLoop
import TLS
import Wire

public final class ConnectClient {
    let loop: EventLoop
    let options: ConnectOptions
    var session: ConnectSession
    private let stdin: StandardInput
    private let stdout: StandardOutput
    private var transport: Transport?
    private var addresses: [SocketAddress] = []
    private var tlsContext: TLSContext?
    private var answerTimer: TimerID?
    private var finishingGatewayWrite = false
    private var exitCode: Int32 = 1
    private var running = true

    /// Time from the start to the gateway's answer.
    public static let answerTimeoutSeconds = 60
    static let gatewayHighWater = 1 << 20

    public init(options: ConnectOptions, token: String?, version: String, loop: EventLoop) {
        self.loop = loop
        self.options = options
        session = ConnectSession(options: options, token: token, version: version)
        stdin = StandardInput(loop: loop)
        stdout = StandardOutput(loop: loop, input: stdin)
    }

    /// Runs until the session ends; the exit status.
    public func run() -> Int32 {
        loop.handleSignals([SIGINT, SIGTERM, SIGHUP]) { signal in
            // ssh sends SIGHUP to its ProxyCommand when it is done: not an error to report.
            guard self.running else { return }
            if signal != SIGHUP { Logger.writeStderr("fleet-connect: interrupted\n") }
            self.exitCode = 1
            self.cleanUp()
        }
        do throws(FleetConnectError) {
            try prepare()
        } catch {
            apply(session.handle(.failed(error.message)))
            cleanUp()
            return exitCode
        }
        answerTimer = loop.schedule(afterMilliseconds: ConnectClient.answerTimeoutSeconds * 1000) {
            self.answerTimer = nil
            self.apply(self.session.handle(.answerTimeout(seconds: ConnectClient.answerTimeoutSeconds)))
        }
        dialNext(lastError: nil)
        while running { loop.runOnce(maxWaitMilliseconds: 60_000) }
        return exitCode
    }

    private func prepare() throws(FleetConnectError) {
        let gw = options.gateway
        do throws(SocketError) {
            addresses = try Socket.resolve(HostPort(host: gw.host, port: gw.port))
        } catch {
            throw FleetConnectError("cannot resolve the gateway " + gw.host + ": " + error.description)
        }
        guard !addresses.isEmpty else { throw FleetConnectError("no address for the gateway " + gw.host) }
        guard gw.tls else { return }
        var config = TLSConfiguration(role: .client)
        config.trustFile = options.caFile ?? ConnectClient.systemTrustFile
        config.certificateFile = options.certFile
        config.keyFile = options.keyFile
        config.minimumVersion = .tls12
        config.alpn = ["http/1.1"]
        do throws(OpenSSLError) {
            tlsContext = try TLSContext(config)
        } catch {
            throw FleetConnectError(error.description)
        }
    }

    /// Debian's bundle of the system's trusted CAs (package ca-certificates).
    public static let systemTrustFile = "/etc/ssl/certs/ca-certificates.crt"

    /// Dials the next address of the gateway; an address that refuses passes to the next.
    private func dialNext(lastError: String?) {
        guard !addresses.isEmpty else {
            apply(session.handle(.failed("cannot connect to the gateway: " + (lastError ?? "no address"))))
            return
        }
        let addr = addresses.removeFirst()
        let fd: Int32
        do throws(SocketError) {
            fd = try Socket.startConnect(addr)
        } catch {
            dialNext(lastError: error.description)
            return
        }
        var tls: TLSConnection?
        if let tlsContext {
            do throws(OpenSSLError) {
                tls = try TLSConnection(context: tlsContext, serverName: options.gateway.host)
            } catch {
                Socket.close(fd)
                apply(session.handle(.failed(error.description)))
                return
            }
        }
        let t = Transport(loop: loop, fd: fd, peer: addr, tls: tls, connecting: true)
        transport = t
        t.onOpen = { self.apply(self.session.handle(.connected)) }
        t.onData = { bytes in self.gatewayData(bytes) }
        t.onPeerFinished = { self.apply(self.session.handle(.gatewayEOF)) }
        t.onDrained = { self.gatewayDrained() }
        t.onClose = { reason in self.gatewayClosed(reason) }
        t.start()
    }

    private func gatewayData(_ bytes: UnsafeRawBufferPointer) {
        guard session.isBridging else {
            apply(session.handle(.gatewayData(Array(bytes))))
            return
        }
        stdout.write(bytes)
        if stdout.isCongested { transport?.pauseReading(.backPressure) }
    }

    private func gatewayDrained() {
        if finishingGatewayWrite {
            finishingGatewayWrite = false
            apply(session.handle(.gatewayWriteDone))
            return
        }
        stdin.resume()
    }

    private func gatewayClosed(_ reason: CloseReason) {
        transport = nil
        guard running else { return }
        if case .connecting = session.state, case .socket(let e) = reason {
            dialNext(lastError: e.description)
            return
        }
        if case .peerClosed = reason, session.isBridging, session.upstream != .open {
            // Both sides were done sending; the gateway closed first.
            if session.downstream == .open { apply(session.handle(.gatewayEOF)) }
            if finishingGatewayWrite {
                finishingGatewayWrite = false
                apply(session.handle(.gatewayWriteDone))
            }
            if session.state != .finished { return }
        }
        if session.state == .finished { return }
        if case .peerClosed = reason {
            apply(session.handle(.failed("the gateway closed the connection")))
        } else {
            apply(session.handle(.failed("connection to the gateway: " + reason.description)))
        }
    }

    private func apply(_ actions: ConnectSession.Actions) {
        guard running else { return }
        if actions.contains(.sendRequest) { transport?.write(session.request) }
        if actions.contains(.writeStdout) {
            stdout.write(session.takeOutput())
            if stdout.isCongested { transport?.pauseReading(.backPressure) }
        }
        if actions.contains(.startStdin) {
            loop.cancel(answerTimer)
            answerTimer = nil
            startBridging()
        }
        if actions.contains(.finishGatewayWrite) { finishGatewayWrite() }
        if actions.contains(.finishStdout) { stdout.finish() }
        if actions.contains(.exit) {
            if !session.exitMessage.isEmpty { Logger.writeStderr("fleet-connect: " + session.exitMessage + "\n") }
            exitCode = session.exitStatus
            cleanUp()
        }
    }

    private func startBridging() {
        stdin.onData = { bytes in
            guard let t = self.transport else { return }
            t.write(bytes)
            if t.bufferedOutput > ConnectClient.gatewayHighWater { self.stdin.pause() }
        }
        stdin.onEOF = { self.apply(self.session.handle(.stdinEOF)) }
        stdin.onError = { why in self.apply(self.session.handle(.failed(why))) }
        stdout.onDone = { self.apply(self.session.handle(.stdoutDone)) }
        stdout.onError = { why in self.apply(self.session.handle(.failed(why))) }
        stdout.onRelieved = { self.transport?.resumeReading(.backPressure) }
        stdin.start()
    }

    /// The tunnel's upstream end: close_notify on TLS, then FIN, once the queued bytes are written.
    private func finishGatewayWrite() {
        guard let t = transport else {
            apply(session.handle(.gatewayWriteDone))
            return
        }
        t.tls?.close()
        t.finishWriting()
        if t.bufferedOutput == 0 {
            apply(session.handle(.gatewayWriteDone))
        } else {
            finishingGatewayWrite = true
            // close_notify is queued behind the transport's back: have it flushed.
            loop.modify(fd: t.fd, readable: !t.readPaused, writable: true)
        }
    }

    private func cleanUp() {
        running = false
        loop.cancel(answerTimer)
        answerTimer = nil
        stdin.stop()
        stdout.stop()
        let t = transport
        transport = nil
        t?.close()
    }
}

public struct FleetConnectError: Error {
    public var message: String
    public init(_ message: String) { self.message = message }
}
