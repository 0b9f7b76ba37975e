// fleet-gateway's command line: options and the config file into a GatewayConfig,
// the gateway run on one event loop until SIGTERM, SIGHUP as a reload, and the
// `pki` and `token` commands. main.swift only calls gatewayMain().
import FleetAccess
import FleetPKI
import CLibc
import EventLoop
import TLS
import ConfigFormat

let usage = """
usage: fleet-gateway [options]                 run the gateway
       fleet-gateway pki init DIR --name NAME [--san ADDR]... [--issuing-ca]   fleet CA + gateway certificate;
                                               --issuing-ca: a root CA (root.key can leave the machine)
                                               and an issuing CA signed by it (ca.crt is the chain)
       fleet-gateway pki issue DIR DEVICE [--force]   a device certificate (CN = DEVICE, lower-case);
                                               --force replaces it and revokes every earlier one
       fleet-gateway pki revoke DIR DEVICE     revoke every certificate issued to DEVICE: DIR/crl.pem
                                               lists them (use with --crl, then SIGHUP the gateway)
       fleet-gateway pki revoke DIR --serial HEX   revoke one certificate by serial number
       fleet-gateway pki crl DIR               write DIR/crl.pem again (renew before it expires: 30 days)
       fleet-gateway pki issue-user DIR NAME [--force]   a user certificate (CN = NAME, OU = reversehttp-user)
                                               for HTTPS users: DIR/users/NAME.crt, NAME.key
       fleet-gateway pki revoke-user DIR NAME  revoke every certificate issued to user NAME
       fleet-gateway pki enroll-token DIR NAME|GLOBS [--expires 24h|7d|30m]   a one-time EST enrollment
                                               token for device NAME (or names matching GLOBS, e.g. 'dev-*'),
                                               kept in DIR/enroll-tokens; prints its secret once
       fleet-gateway pki claim DIR NAME --devices GLOBS [--expires 30d] [--out DIR] [--force]   a claim
                                               certificate + key (NAME.crt, NAME.key) for many boards: EST
                                               simpleenroll of any device name matching GLOBS, nothing else
       fleet-gateway pki revoke-claim DIR NAME  revoke claim NAME (DIR/claims.txt)
       fleet-gateway token create NAME --devices GLOBS [--expires 90d|12h|30m|never] (--tokens FILE | --config FILE)
                                               add a token (default expiry 90d); prints its secret once
       fleet-gateway token list (--tokens FILE | --config FILE)     names, devices, dates (never a secret)
       fleet-gateway token revoke NAME (--tokens FILE | --config FILE)   remove a token

options (also `key = value` lines in --config FILE):
  --listen-devices ADDR     device listener (default 127.0.0.1:8443)
  --listen-public ADDR      user listener (default 127.0.0.1:8080)
  --listen-admin ADDR|off   operator listener: /devices, /metrics, status page (default 127.0.0.1:9180)
  --admin-token SECRET      the admin listener wants Authorization: Bearer SECRET (16+ characters;
                            required when listen_admin is not loopback; put it in the config file)
  --metrics-per-device true|false   request and byte counters per device in /metrics (default false)
  --jwt-jwks-ca FILE        CA bundle for jwt_jwks_url's server (default the system bundle)
  --access-log true|false   one log line per request (default true)
  --check-interval-ms MS    health check of every device (default 10000, 0 off); --check-path,
                            --check-method, --check-status 200-499, --check-rise 2, --check-fall 3
  --queue-timeout-ms MS     a request for a busy device waits this long for a free stream (10000)
  --grace-ms MS             ... for a device that just lost its connection to come back (5000)
  --ca FILE                 fleet CA: device certificates must chain to it
  --crl FILE                the fleet CA's CRL: revoked devices are refused
  --pki-dir DIR             the fleet PKI (pki init DIR): EST on the device listener (RFC 7030:
                            /.well-known/est/cacerts, simpleenroll with a `pki enroll-token`,
                            simplereenroll with the current certificate); signs with DIR/ca.key
                            (without it: cacerts only, enrollment 503) and renews DIR/crl.pem;
                            ca defaults to DIR/ca.crt, crl to DIR/crl.pem
  --device-cert-days N      lifetime of the certificates EST issues (default 30)
  --enroll-approval auto|manual   manual: an enrollment waits (202) until approved on the admin
                            API (POST /enrollments/NAME/approve or deny; GET /enrollments)
  --allow-devices GLOBS     only these certificate names may connect (e.g. dev-*,*.lab.example.com)
  --max-connections-per-device N   a newer connection closes the oldest beyond N (default 8)
  --cert FILE --key FILE    the gateway's certificate for the device listener
  --public-cert FILE --public-key FILE   serve users over HTTPS
  --hostname-template T     public hostname of a device, e.g. {cn}.devices.example.com (default {cn})
  --plaintext-devices       no TLS on the device listener (INSECURE; tests only)
  --plaintext-device-name N identity of plaintext devices (default "device")
  --tls-min 1.2|1.3         lowest TLS version (default 1.3)
  --response-timeout-ms MS  time a device has to answer (default 30000)
  --max-header-bytes N      largest request head (default 16384; larger gets 431)
  --drain-timeout-ms MS     on SIGTERM, time requests in flight get to finish (default 10000)
  --request-timeout-ms MS   a user's request head must arrive within this (default 10000; else 408)
  --idle-timeout-ms MS      close a kept-alive user connection idle this long (default 60000)
  --handshake-timeout-ms MS a device must finish TLS and SETTINGS within this (default 10000)
  --max-user-connections N  users' connections in all (default 0: open-file limit minus a reserve for devices)
  --max-user-connections-per-address N   ... from one address (default 0: a 16th of the above, at least 64)
  --upload-budget-bytes N   HTTP/2 upload windows of all users together; past it 503 (default 268435456)
  --trusted-proxies CIDRS   proxies whose X-Forwarded-For/Forwarded we extend (default none: replaced)
  --cookie-domain strip|keep   Domain attribute of a device's Set-Cookie (default strip: host-only)
  --access-policy FILE      who may reach which device (SIGHUP reloads it); see README "Letting people in"
  --public-access open|policy   open: no policy needed off loopback (anyone reaches every device)
  --tokens FILE             users' tokens (fleet-gateway token create ...)
  --jwt-jwks FILE, --jwt-jwks-url URL, --jwt-jwks-ca FILE   keys of JWTs (OIDC); --jwt-issuer, --jwt-audience,
                            --jwt-header NAME (default authorization), --jwt-groups-claim (groups), --jwt-leeway-s (60)
  --idle-ping-ms MS         PING a silent device after this, drop it after as much again (default 4000, 0 off)
  --log-level LEVEL         debug, info, notice, warning, error
  --check-config            validate and exit
"""

public func gatewayMain() -> Int32 {
    do throws(ConfigError) {
        let args = try processArguments()
        if args.first == "pki" { return pkiMain(Array(args.dropFirst())) }
        if args.first == "token" { return tokenMain(Array(args.dropFirst())) }
        let inv = try Invocation(args, flags: GatewayConfig.flags)
        if inv.help { Logger.writeStderr(usage + "\n"); return 0 }
        if inv.version { Logger.writeStderr("fleet-gateway " + reverseHTTPVersion + "\n"); return 0 }
        let config = try GatewayConfig(inv.settings)
        if inv.checkConfig { Logger.writeStderr("configuration OK\n"); return 0 }
        return run(config)
    } catch {
        Logger.writeStderr("fleet-gateway: " + error.description + "\n")
        return 2
    }
}

func run(_ config: GatewayConfig) -> Int32 {
    _ = rh_ignore_sigpipe()
    _ = rh_raise_nofile()  // one file per device connection
    rh_tune_malloc()
    let logger = Logger(program: "fleet-gateway", level: config.logLevel)
    let loop = EventLoop()
    let gateway: Gateway
    do {
        gateway = try Gateway(config: config, loop: loop, logger: logger)
        try gateway.start()
    } catch let e as OpenSSLError {
        Logger.writeStderr("fleet-gateway: " + e.description + "\n")
        return 1
    } catch {
        Logger.writeStderr("fleet-gateway: \(error)\n")
        return 1
    }
    var stopping = false
    loop.handleSignals([SIGTERM, SIGINT, SIGHUP]) { signal in
        if signal == SIGHUP {
            if !stopping { reload(gateway, logger) }
            return
        }
        if stopping { return }
        stopping = true
        logger.notice("stopping: GOAWAY on every device connection")
        Systemd.notify("STOPPING=1")
        gateway.shutdown { loop.stop() }
        loop.schedule(afterMilliseconds: config.drainTimeoutMs) {
            logger.warning("drain timeout: closing with requests still in flight")
            loop.stop()
        }
    }
    Systemd.notify("READY=1")
    Systemd.startWatchdog(on: loop)
    loop.run()
    return 0
}

/// SIGHUP: read the configuration and the certificates again.
func reload(_ gateway: Gateway, _ logger: Logger) {
    Systemd.notify("RELOADING=1\nMONOTONIC_USEC=" + String(rh_monotonic_ns() / 1000))
    logger.notice("reloading the configuration")
    do throws(ConfigError) {
        let config = try GatewayConfig(Invocation(try processArguments(), flags: GatewayConfig.flags).settings)
        try gateway.reload(config)
        logger.notice("reload done")
    } catch {
        logger.error("reload refused, keeping the running configuration: " + error.description)
    }
    Systemd.notify("READY=1")
}

func pkiMain(_ args: [String]) -> Int32 {
    var settings = Settings()
    let positional: [String]
    do throws(ConfigError) {
        positional = try parseCommandLine(args, flags: ["force", "issuing_ca"], into: &settings)
    } catch {
        Logger.writeStderr("fleet-gateway pki: " + error.description + "\n")
        return 2
    }
    let force = settings.last("force") != nil
    do throws(PKIError) {
        switch (positional.first, positional.count) {
        case ("init", 2):
            guard let name = settings.string("name") else {
                Logger.writeStderr("fleet-gateway pki init: --name NAME (the gateway's DNS name) is required\n")
                return 2
            }
            let sans = settings.items.filter { $0.key == "san" }.map(\.value)
            let twoTier = settings.last("issuing_ca") != nil
            try PKI.initialize(directory: positional[1], gatewayName: name, extraSANs: sans, force: force, issuingCA: twoTier)
            Logger.writeStderr((twoTier ? "root CA, issuing CA (ca.crt: the chain)" : "fleet CA") + " and gateway certificate for "
                               + name + " written to " + positional[1] + "\n")
            if twoTier {
                Logger.writeStderr("no command needs " + positional[1] + "/root.key: move it off this machine "
                                   + "(keep it safe: it signs the next issuing CA)\n")
            }
        case ("issue", 3):
            let dir = positional[1], name = positional[2]
            let issued = try PKI.issue(directory: dir, name: name, force: force)
            Logger.writeStderr("device certificate for " + name + " (serial " + issued.serial + ") written to "
                               + dir + "/devices/\n")
            if !issued.revoked.isEmpty {
                Logger.writeStderr("--force: revoked the earlier certificate(s) of " + name + ", serial "
                                   + issued.revoked.joined(separator: ", ") + "; CRL written to " + dir
                                   + "/crl.pem (reload the gateway: SIGHUP)\n")
            } else if force {
                Logger.writeStderr("--force: no earlier certificate of " + name + " was left unrevoked\n")
            }
        case ("revoke", 3):
            guard settings.string("serial") == nil else {
                Logger.writeStderr("fleet-gateway pki revoke: give DEVICE or --serial HEX, not both\n")
                return 2
            }
            let dir = positional[1], name = positional[2]
            let serials = try PKI.revoke(directory: dir, name: name)
            Logger.writeStderr(PKI.asciiLowercased(name) + " revoked"
                               + (serials.isEmpty ? " already" : " (serial " + serials.joined(separator: ", ") + ")")
                               + "; CRL written to " + dir + "/crl.pem (reload the gateway: SIGHUP)\n")
        case ("revoke", 2):
            guard let serial = settings.string("serial") else {
                Logger.writeStderr("fleet-gateway pki revoke: give DEVICE or --serial HEX\n")
                return 2
            }
            let dir = positional[1]
            let (name, added) = try PKI.revoke(directory: dir, serial: serial)
            Logger.writeStderr("serial " + serial + (name.map { " (" + $0 + ")" } ?? " (not in " + dir + "/issued.txt)")
                               + (added ? " revoked" : " was revoked already") + "; CRL written to " + dir
                               + "/crl.pem (reload the gateway: SIGHUP)\n")
        case ("crl", 2):
            try PKI.writeCRL(directory: positional[1])
            Logger.writeStderr("CRL written to " + positional[1] + "/crl.pem\n")
        case ("issue-user", 3):
            let dir = positional[1], name = positional[2]
            let issued = try PKI.issueUser(directory: dir, name: name, force: force)
            Logger.writeStderr("user certificate for " + name + " (serial " + issued.serial + ") written to "
                               + dir + "/users/" + name + ".crt and .key; e.g. curl --cert " + dir + "/users/" + name
                               + ".crt --key " + dir + "/users/" + name + ".key https://DEVICE.../\n")
            if !issued.revoked.isEmpty {
                Logger.writeStderr("--force: revoked the earlier certificate(s) of user " + name + ", serial "
                                   + issued.revoked.joined(separator: ", ") + "; CRL written to " + dir
                                   + "/crl.pem (reload the gateway: SIGHUP)\n")
            }
        case ("revoke-user", 3):
            let dir = positional[1], name = positional[2]
            let serials = try PKI.revokeUser(directory: dir, name: name)
            Logger.writeStderr("user " + name + " revoked"
                               + (serials.isEmpty ? " already" : " (serial " + serials.joined(separator: ", ") + ")")
                               + "; CRL written to " + dir + "/crl.pem (reload the gateway: SIGHUP)\n")
        case ("enroll-token", 3):
            let dir = positional[1], binding = positional[2]
            let now = Int64(time(nil))
            let secret: String
            let lifetime: Int64
            do throws(TokenError) {
                guard let l = try TokenStore.parseExpiry(settings.string("expires") ?? "24h") else {
                    Logger.writeStderr("fleet-gateway pki enroll-token: an enrollment token must expire (--expires 24h, 7d, ...)\n")
                    return 2
                }
                lifetime = l
            } catch {
                Logger.writeStderr("fleet-gateway pki enroll-token: " + error.description + "\n")
                return 2
            }
            do throws(EnrollmentTokenError) {
                secret = try EnrollmentTokens.create(directory: dir, binding: binding, lifetime: lifetime, now: now)
            } catch {
                Logger.writeStderr("fleet-gateway pki enroll-token: " + error.description + "\n")
                return 1
            }
            writeStdout(secret + "\n")
            Logger.writeStderr("enrollment token for " + binding + " added to " + EnrollmentTokens.path(directory: dir)
                               + ", expires " + TokenStore.utcText(now + lifetime) + ", works once. The secret above is "
                               + "shown only now: put it in the device's agent.conf as enroll_token.\n")
        case ("claim", 3):
            let dir = positional[1], name = positional[2]
            guard let devices = settings.string("devices") else {
                Logger.writeStderr("fleet-gateway pki claim: --devices GLOB (the device names the claim may enroll) is required\n")
                return 2
            }
            do throws(EnrollmentTokenError) {
                _ = try EnrollmentBinding(devices)
            } catch {
                Logger.writeStderr("fleet-gateway pki claim: --devices: " + error.description + "\n")
                return 2
            }
            let lifetime: Int64
            do throws(TokenError) {
                guard let l = try TokenStore.parseExpiry(settings.string("expires") ?? "30d") else {
                    Logger.writeStderr("fleet-gateway pki claim: a claim must expire (--expires 30d, 365d, ...)\n")
                    return 2
                }
                lifetime = l
            } catch {
                Logger.writeStderr("fleet-gateway pki claim: " + error.description + "\n")
                return 2
            }
            let out = settings.string("out") ?? "."
            let record = try PKI.issueClaim(directory: dir, name: name, devices: devices, lifetimeSeconds: lifetime,
                                            outDirectory: out, force: force)
            Logger.writeStderr("claim " + name + " (serial " + record.serial + ") for devices " + devices + ", expires "
                               + TokenStore.utcText(record.notAfter) + ": " + out + "/" + name + ".crt and " + out + "/" + name
                               + ".key (0600). It enrolls (EST simpleenroll) any device name matching " + devices
                               + " and does nothing else; recorded in " + dir + "/" + PKI.claimsFile
                               + "; revoke it with: fleet-gateway pki revoke-claim " + dir + " " + name + "\n")
        case ("revoke-claim", 3):
            let dir = positional[1], name = positional[2]
            let serials = try PKI.revokeClaim(directory: dir, name: name)
            Logger.writeStderr("claim " + name + " revoked"
                               + (serials.isEmpty ? " already" : " (serial " + serials.joined(separator: ", ") + ")")
                               + "; CRL written to " + dir + "/crl.pem (reload the gateway: SIGHUP)\n")
        case ("issue-server", 3):
            let sans = settings.items.filter { $0.key == "san" }.map(\.value)
            try PKI.issueServer(directory: positional[1], name: positional[2], extraSANs: sans, force: force)
            Logger.writeStderr("server certificate for " + positional[2] + " written to " + positional[1] + "/servers/\n")
        default:
            Logger.writeStderr(usage + "\n")
            return 2
        }
    } catch {
        Logger.writeStderr("fleet-gateway pki: " + error.description + "\n")
        return 1
    }
    return 0
}
