// device-sim: a whole fleet of virtual devices in one process, on the real agent
// engine, for tests and benchmarks. See DeviceSimKit for the parts.
import CLibc
import DeviceSimKit
import EventLoop
import ConfigFormat

let usage = """
usage: device-sim --gateway HOST:PORT --ca-dir DIR [options]

  --gateway HOST:PORT       the gateway's device listener
  --ca-dir DIR              a fleet PKI (fleet-gateway pki init): each device gets a
                            certificate issued in memory by DIR's CA, which is also
                            trusted for the gateway's certificate
  --cert-dir DIR --ca FILE  instead: DIR/NAME.crt and DIR/NAME.key per device
  --enroll-token-dir DIR    devices get their certificates over EST (the agent's enrollment):
                            DIR/NAME.token is each one's one-time token; a device without
                            DIR/NAME.crt enrolls at the gateway's device listener, writes
                            DIR/NAME.key and DIR/NAME.crt, then dials with them (needs --ca FILE)
  --mint-tokens PKI_DIR     with --enroll-token-dir: make the missing tokens in the gateway's
                            PKI directory (as pki enroll-token, bound to each name); --ca
                            defaults to PKI_DIR/ca.crt
  --token-expires SECONDS   lifetime of a minted token (default 86400)
  --est-server HOST:PORT, --renew true|false
                            as for device-agent (renew: default true)
  --server-name NAME        name the gateway certificate must carry (default: gateway host)
  --plaintext               no TLS (INSECURE: loopback only)
  --devices N               virtual devices (default 1)
  --connections M           reversed connections per device (default 1)
  --name-pattern PATTERN    device names, one %d or %0Nd numbered from 1 (default dev-%05d)
  --ramp RATE               devices started per second (default 0: all at once)
  --duration SECONDS        stop after this long (default 0: at SIGTERM or SIGINT)
  --report FILE             write the JSON summary here at the end and on SIGUSR1
                            (default: standard output, at the end; on SIGUSR1 as a
                            {"event":"report",...} line)
  --fault SPEC              KIND@TARGET[,at=S][,every=S][,for=S][,delay=MS][,up=MS], repeatable;
                            KIND: drop, freeze, flap, slow, garbage, corrupt, wrong-ca, expired;
                            TARGET: 10%, 0.1, or names joined with '+'
  --seed N                  chooses the devices a fraction applies to (default 1)
  --sample-ms MS            interval of the connected-devices curve (default 1000)
  --idle-ping-ms MS, --connect-timeout-ms MS, --max-concurrent-streams N, --tls-min 1.2|1.3
                            as for device-agent
  --log-level LEVEL         debug, info, notice, warning, error (default error)
  --config FILE             the same keys from a file

Standard output gets one JSON line per event: {"event":"all-connected",...} each
time every device expected to connect is up, {"event":"all-enrolled",...} once
every device has its certificate (--enroll-token-dir), and {"event":"stopped",...}.
"""

/// Writes the report to `path`: a regular file (or a new one) is replaced
/// atomically (written beside it, then renamed); anything else (a FIFO,
/// /dev/stdout) is written in place. Returns false, having said why, on failure.
@discardableResult
func writeReport(_ summary: FleetSummary, to path: String) -> Bool {
    var json = summary.json
    let replace = rh_file_mode(path) < 0 || isRegularFile(path)
    let target = replace ? path + ".tmp" : path
    guard let f = fopen(target, "w") else {
        Logger.writeStderr("device-sim: cannot write the report " + target + ": " + String(cString: strerror(rh_errno())) + "\n")
        return false
    }
    let ok = json.withUTF8 { fwrite($0.baseAddress, 1, $0.count, f) == $0.count }
    if fclose(f) != 0 || !ok || (replace && rename(target, path) != 0) {
        Logger.writeStderr("device-sim: cannot write the report " + path + "\n")
        return false
    }
    return true
}

func isRegularFile(_ path: String) -> Bool {
    var st = stat()
    return stat(path, &st) == 0 && (st.st_mode & UInt32(S_IFMT)) == UInt32(S_IFREG)
}

func simMain() -> Int32 {
    let options: SimOptions
    do throws(ConfigError) {
        let inv = try Invocation(try processArguments(), flags: SimOptions.flags)
        if inv.help { Logger.writeStderr(usage + "\n"); return 0 }
        if inv.version { Logger.writeStderr("device-sim " + reverseHTTPVersion + "\n"); return 0 }
        options = try SimOptions(inv.settings)
        if inv.checkConfig { Logger.writeStderr("configuration OK\n"); return 0 }
    } catch {
        Logger.writeStderr("device-sim: " + error.description + "\n")
        return 2
    }
    _ = rh_ignore_sigpipe()
    let limit = rh_raise_nofile()
    // An enrolling device has one EST connection open before it dials.
    let needed = options.devices * options.connections + (options.enrolls ? options.devices : 0) + 64
    if limit >= 0 && limit < needed {
        Logger.writeStderr("device-sim: " + String(options.devices * options.connections) + " connections need about "
                           + String(needed) + " open files; the limit is " + String(limit) + " (raise it: ulimit -n)\n")
        return 1
    }
    let logger = Logger(program: "device-sim", level: options.logLevel)
    let loop = EventLoop()
    let fleet: Fleet
    do throws(SimError) {
        fleet = try Fleet(options: options, loop: loop, logger: logger)
    } catch {
        Logger.writeStderr("device-sim: " + error.description + "\n")
        return 1
    }
    // The report's place must be writable now, not only at the end of a long run.
    if let path = options.report, !writeReport(fleet.summary(), to: path) { return 1 }
    var status: Int32 = 0
    fleet.onAllConnected = { seconds in
        Logger.writeStdout("{\"event\":\"all-connected\",\"connected\":" + String(fleet.connectedDevices) + ",\"seconds\":"
                    + String(seconds) + "}\n")
    }
    fleet.onAllEnrolled = { seconds in
        Logger.writeStdout("{\"event\":\"all-enrolled\",\"enrolled\":" + String(fleet.stats.enrollment.enrolled) + ",\"seconds\":"
                    + String(seconds) + "}\n")
    }
    var stopping = false
    var final: FleetSummary?
    /// Writes the report once (at the end of the run) and leaves the loop.
    func finish() {
        guard let summary = final else { return }
        final = nil
        if let path = options.report {
            if !writeReport(summary, to: path) { status = 1 }
        } else {
            Logger.writeStdout(summary.json)
        }
        let s = fleet.summary()
        Logger.writeStdout("{\"event\":\"stopped\",\"dial_attempts\":" + String(s.dialAttempts) + ",\"reconnects\":"
                    + String(s.reconnects) + "}\n")
        loop.stop()
    }
    func stop() {
        if stopping {
            // A second SIGTERM or SIGINT: do not wait for the streams in flight.
            logger.warning("stopping now, with requests still in flight")
            return finish()
        }
        stopping = true
        final = fleet.summary()  // as the run was, before the devices go away
        let timeout = loop.schedule(afterMilliseconds: 10_000) {
            logger.warning("stop timeout: exiting with requests still in flight")
            finish()
        }
        fleet.stop {
            loop.cancel(timeout)
            finish()
        }
    }
    fleet.onFatal = { _ in  // the fleet has logged why
        status = 1
        loop.execute { stop() }  // may come from fleet.start(), before the loop runs
    }
    loop.handleSignals([SIGTERM, SIGINT, SIGUSR1]) { signal in
        guard signal == SIGUSR1 else { return stop() }
        // On demand: the report file, or one line on standard output.
        if let path = options.report {
            writeReport(fleet.summary(), to: path)
        } else {
            Logger.writeStdout("{\"event\":\"report\",\"summary\":" + String(fleet.summary().json.filter { $0 != "\n" }) + "}\n")
        }
    }
    if options.duration > 0 {
        loop.schedule(afterMilliseconds: Int(options.duration * 1000)) { stop() }
    }
    fleet.start()
    loop.run()
    return status
}

exit(simMain())
