// Fleet runs many virtual devices on one event loop: it makes each device's
// certificate (issued in memory by the fleet CA, or read from a folder, or got
// by the device itself over EST with a one-time token: TokenMint), starts
// the devices at the ramp rate, applies the fault plan, keeps the counters and
// the curve of connected devices, and stops them all cleanly.
//
// Every device runs the real agent engine over one shared TLS client context
// (an SSL_CTX per device would cost far more memory than the connection itself);
// each connection presents its device's own certificate.
//
//   let fleet = try Fleet(options: o, loop: loop, logger: logger)
//   fleet.whenAllConnected { ... }      // every device expected to connect is up
//   fleet.start()
//   fleet.stop { loop.stop() }
import CLibc
import EventLoop
import FleetPKI
import TLS
import ConfigFormat

public struct SimError: Error, CustomStringConvertible {
    public var description: String
    public init(_ description: String) { self.description = description }
}

public final class Fleet {
    public let options: SimOptions
    public let loop: EventLoop
    public let logger: Logger
    public let stats = FleetStats()
    public private(set) var devices: [VirtualDevice] = []
    /// Devices with all their connections up.
    public private(set) var connectedDevices = 0
    /// Connections up, over all devices.
    public private(set) var connections = 0
    /// Devices whose certificates the gateway should accept.
    public let expected: Int
    /// Called each time the connected devices reach `expected` (again), with the seconds since start.
    public var onAllConnected: ((Double) -> Void)?
    /// Called once when every device has a certificate (enrolled over EST, or had one), with the seconds since start.
    public var onAllEnrolled: ((Double) -> Void)?
    /// Devices with a certificate: enrolled, or had one before (--enroll-token-dir).
    public private(set) var enrolledDevices = 0
    private var allEnrolledSeconds: Double?
    /// Called once if the fleet cannot go on (a device's certificate cannot be
    /// made or read); the ramp has stopped.
    public var onFatal: ((String) -> Void)?
    private var waiters: [() -> Void] = []
    private let tls: TLSContext?
    private let ca: CertificateAuthority?
    private var foreignCA: CertificateAuthority?
    private let plan: FaultPlan
    private var startedAt: UInt64 = 0
    private var firstAllConnected: Double?
    private var curve: [FleetSample] = []
    private var rampTimer: TimerID?
    private var sampleTimer: TimerID?
    private var stopping = false

    public init(options: SimOptions, loop: EventLoop, logger: Logger) throws(SimError) {
        self.options = options
        self.loop = loop
        self.logger = logger
        guard options.devices >= 1 else { throw SimError("no devices: devices must be at least 1") }
        if !options.plaintext {
            guard options.caFile != nil, options.caDirectory != nil || options.certDirectory != nil || options.enrolls else {
                throw SimError("TLS needs the fleet CA (a CA directory) or a certificate directory and a CA file")
            }
        }
        if let dir = options.certDirectory, access(dir, R_OK | X_OK) != 0 {
            throw SimError("cannot read the certificate directory " + dir)
        }
        var names: [String] = []
        names.reserveCapacity(options.devices)
        for i in 1...options.devices { names.append(options.name(i)) }
        do throws(ConfigError) {
            plan = try FaultPlan(options.faults, deviceNames: names, seed: options.seed)
        } catch {
            throw SimError(error.message)
        }
        var refused = 0
        for i in 0..<options.devices where plan.byDevice[i]?.contains(where: { $0.kind.atIssue }) ?? false { refused += 1 }
        expected = options.devices - refused
        if options.enrolls {
            // Each device makes its own context once it has its certificate (as an agent does).
            tls = nil
            ca = nil
            let tokens = try TokenMint.prepare(options, names: names)
            stats.enrollment.certified = tokens.certified
            stats.enrollment.minted = tokens.minted
            enrolledDevices = tokens.certified
            return
        }
        if options.plaintext {
            tls = nil
            ca = nil
            return
        }
        do throws(PKIError) {
            ca = try options.caDirectory.map { d throws(PKIError) in try CertificateAuthority(directory: d) }
        } catch {
            throw SimError("fleet CA: " + error.description)
        }
        var c = TLSConfiguration(role: .client)
        c.minimumVersion = options.tlsMinimum
        c.alpn = ["h2"]
        c.trustFile = options.caFile
        do throws(OpenSSLError) {
            tls = try TLSContext(c)
        } catch {
            throw SimError(error.description)
        }
    }

    /// Seconds since `start`.
    public var elapsed: Double { startedAt == 0 ? 0 : Double(loop.now - startedAt) / 1e9 }

    public func start() {
        startedAt = loop.now
        if options.enrolls && enrolledDevices == options.devices { allEnrolledSeconds = 0 }  // all had certificates
        sample()
        startMore()
    }

    /// Runs `callback` once, when every device expected to connect is connected.
    public func whenAllConnected(_ callback: @escaping () -> Void) {
        if devices.count == options.devices && connectedDevices == expected {
            callback()
        } else {
            waiters.append(callback)
        }
    }

    /// Starts the devices due by now at the ramp rate, in batches that keep the loop responsive.
    private func startMore() {
        rampTimer = nil
        guard !stopping else { return }
        let due = options.ramp > 0 ? min(options.devices, Int(elapsed * options.ramp) + 1) : options.devices
        let batchEnd = min(due, devices.count + 250)
        while devices.count < batchEnd {
            do throws(SimError) {
                devices.append(try makeDevice(devices.count))
            } catch {
                let why = "device " + options.name(devices.count + 1) + ": " + error.description
                logger.error(why + "; stopping the ramp")
                let fatal = onFatal
                onFatal = nil
                fatal?(why)
                return
            }
            devices.last!.onEnrolled = { self.deviceEnrolled() }
            devices.last!.start { before, after in self.connectionsChanged(before: before, after: after) }
        }
        guard devices.count < options.devices else {
            // Every device expected to connect may already be up (or none is expected).
            if connectedDevices == expected && firstAllConnected == nil { allConnected() }
            return
        }
        // The next device is due at count / ramp seconds.
        let wait = devices.count < due ? 0 : max(1, Int((Double(devices.count) / options.ramp - elapsed) * 1000))
        rampTimer = loop.schedule(afterMilliseconds: wait) { self.startMore() }
    }

    private func makeDevice(_ index: Int) throws(SimError) -> VirtualDevice {
        let name = options.name(index + 1)
        let faults = plan.byDevice[index] ?? []
        return VirtualDevice(name: name, index: index, config: options.agentConfig(name: name), loop: loop, logger: logger,
                             tls: tls, identity: try identity(name, faults), faults: faults, stats: stats)
    }

    private func identity(_ name: String, _ faults: [FaultSpec]) throws(SimError) -> TLSIdentity? {
        guard !options.plaintext, !options.enrolls else { return nil }
        do {
            let pem: (certificatePEM: [UInt8], keyPEM: [UInt8])
            if let ca {
                if faults.contains(where: { $0.kind == .wrongCA }) {
                    if foreignCA == nil { foreignCA = try CertificateAuthority(ephemeralName: "Foreign Fleet CA") }
                    pem = try foreignCA!.issueDevice(name: name)
                } else if faults.contains(where: { $0.kind == .expired }) {
                    pem = try ca.issueDevice(name: name, days: 1, notBeforeOffsetDays: -10)
                } else {
                    pem = try ca.issueDevice(name: name)
                }
            } else {
                let dir = options.certDirectory!
                pem = (try PKI.readFile(dir + "/" + name + ".crt"), try PKI.readFile(dir + "/" + name + ".key"))
            }
            return try TLSIdentity(certificatePEM: pem.certificatePEM, keyPEM: pem.keyPEM)
        } catch let e as PKIError {
            throw SimError(e.description)
        } catch let e as OpenSSLError {
            throw SimError(e.description)
        } catch {
            throw SimError("\(error)")
        }
    }

    private func deviceEnrolled() {
        enrolledDevices += 1
        guard enrolledDevices == options.devices, allEnrolledSeconds == nil else { return }
        allEnrolledSeconds = elapsed
        onAllEnrolled?(elapsed)
    }

    /// A device's connections up went from `before` to `after`.
    private func connectionsChanged(before: Int, after: Int) {
        connections += after - before
        // A device counts as connected while all its connections are up.
        let m = options.connections
        let was = connectedDevices
        connectedDevices += (after == m ? 1 : 0) - (before == m ? 1 : 0)
        guard connectedDevices == expected, was != expected, devices.count == options.devices else { return }
        allConnected()
    }

    private func allConnected() {
        if firstAllConnected == nil { firstAllConnected = elapsed }
        onAllConnected?(elapsed)
        let w = waiters
        waiters.removeAll()
        for cb in w { cb() }
    }

    private func sample() {
        sampleTimer = nil
        guard !stopping else { return }
        var dials = 0
        for d in devices { dials += d.dialCount }
        if curve.count < 1_000_000 { curve.append(FleetSample(ms: Int(elapsed * 1000), connected: connectedDevices, dials: dials)) }
        sampleTimer = loop.schedule(afterMilliseconds: options.sampleMs) { self.sample() }
    }

    public func summary() -> FleetSummary {
        var dials = 0
        var reconnects = 0
        for d in devices {
            dials += d.dialCount
            reconnects += max(0, d.connectCount - options.connections)
        }
        var points = curve
        points.append(FleetSample(ms: Int(elapsed * 1000), connected: connectedDevices, dials: dials))
        var summary = FleetSummary(devices: options.devices, expected: expected, connectedDevices: connectedDevices,
                                   connections: connections, dialAttempts: dials, reconnects: reconnects,
                                   requestsByStatus: stats.requestsByStatus, faultsInjected: stats.faultsInjected,
                                   allConnectedSeconds: firstAllConnected, elapsedSeconds: elapsed, curve: points)
        if options.enrolls {
            summary.enrollment = EnrollmentSummary(stats.enrollment, allEnrolledSeconds: allEnrolledSeconds,
                                                   renewals: devices.reduce(0) { $0 + $1.renewals })
        }
        return summary
    }

    /// Stops every device (GOAWAY, streams in flight finish); `done` runs once all are closed.
    public func stop(done: @escaping () -> Void) {
        stopping = true
        loop.cancel(rampTimer)
        loop.cancel(sampleTimer)
        rampTimer = nil
        sampleTimer = nil
        var open = devices.count
        if open == 0 { return done() }
        for d in devices {
            d.stop {
                open -= 1
                if open == 0 { done() }
            }
        }
    }
}
