// device-agent: dials the gateway, reverses the connection and serves the
// gateway's requests from the local HTTP API. Firmware-style: this target and
// every module it uses build as Embedded Swift (see docs/architecture.md,
// "Size of the Embedded agent", and Package.swift).
import CLibc
import EventLoop
import TLS
import AgentKit
import ConfigFormat

let usage = """
usage: device-agent --gateway HOST:PORT --ca FILE --cert FILE --key FILE [options]
       device-agent --config FILE [options]

  --gateway HOST:PORT       gateway's device listener
  --server-name NAME        name the gateway certificate must carry (default: gateway host)
  --ca FILE                 fleet CA certificate (PEM) that signed the gateway certificate
  --cert FILE --key FILE    this device's certificate and key (PEM)
  --local HOST:PORT         local HTTP API to forward requests to (default 127.0.0.1:8080)
  --connections N           reversed connections to keep (default 2)
  --plaintext               no TLS (INSECURE: loopback tests and HAProxy's plain setup only)
  --tls-min 1.2|1.3         lowest TLS version (default 1.3)
  --local-timeout-ms MS     time the local API has to answer (default 30000)
  --max-concurrent-streams N  requests in flight per connection (default 100)
  --local-max-connections N requests in progress at the local API at once (default 32)
  --drain-timeout-ms MS     on SIGTERM, time requests in flight get to finish (default 10000)
  --idle-ping-ms MS         PING the gateway after this much silence, drop it after as much again (default 4000, 0 off)
  --connect-timeout-ms MS   limit for TCP connect + TLS handshake + SETTINGS (default 10000)
  --name NAME               device name for log lines (and the name an enrollment asks for)
  --enroll-token-file FILE  one-time EST enrollment token (fleet-gateway pki enroll-token), read
                            while --cert does not exist: the agent makes --key, enrolls, writes --cert
  --enroll-token TOKEN      the same token inline (visible in ps and the config file)
  --est-server HOST:PORT    where EST is asked (default: --gateway)
  --renew true|false        re-enroll at about 2/3 of the certificate's life and roll the
                            connections (default: true with an enrollment token)
  --log-level LEVEL         debug, info, notice, warning, error (default info)
  --config FILE             read the same keys from FILE (key = value lines); without it,
                            /etc/device-agent/agent.conf is read when it exists
  --check-config            validate the configuration and exit
"""

/// Read when no --config is given and the file exists (the installed package's).
let defaultConfigPath = "/etc/device-agent/agent.conf"

func agentMain() -> Int32 {
    do throws(ConfigError) {
        let inv = try Invocation(try processArguments(), flags: AgentConfig.flags, defaultConfig: defaultConfigPath)
        if inv.help { Logger.writeStderr(usage + "\n"); return 0 }
        if inv.version { Logger.writeStderr("device-agent " + reverseHTTPVersion + "\n"); return 0 }
        let config = try AgentConfig(inv.settings)
        if inv.checkConfig { Logger.writeStderr("configuration OK\n"); return 0 }
        return run(config)
    } catch {
        Logger.writeStderr("device-agent: " + error.description + "\n")
        return 2
    }
}

func run(_ config: AgentConfig) -> Int32 {
    _ = rh_ignore_sigpipe()
    rh_tune_malloc()
    let logger = Logger(program: "device-agent", level: config.logLevel)
    let loop = EventLoop()
    let agent: Agent
    do {
        agent = try Agent(config: config, loop: loop, logger: logger)
    } catch {
        Logger.writeStderr("device-agent: " + error.description + "\n")
        return 1
    }
    var stopping = false
    loop.handleSignals([SIGTERM, SIGINT, SIGHUP]) { signal in
        if signal == SIGHUP {
            if !stopping { reload(agent, logger) }
            return
        }
        if stopping { return }
        stopping = true
        logger.notice("stopping: sending GOAWAY on every connection")
        Systemd.notify("STOPPING=1")
        agent.stop { loop.stop() }
        loop.schedule(afterMilliseconds: config.drainTimeoutMs) {
            logger.warning("drain timeout: closing with requests still in flight")
            loop.stop()
        }
    }
    agent.start {
        Systemd.notify("STATUS=" + String(agent.connectedCount) + " of " + String(config.connections) + " connections up")
    }
    Systemd.notify("READY=1")
    Systemd.startWatchdog(on: loop)
    loop.run()
    return 0
}

/// SIGHUP: read the configuration (the same command line and file) and the
/// certificates again, and roll them in connection by connection.
func reload(_ agent: Agent, _ logger: Logger) {
    Systemd.notify("RELOADING=1\nMONOTONIC_USEC=" + String(rh_monotonic_ns() / 1000))
    logger.notice("reloading the configuration")
    let config: AgentConfig
    do throws(ConfigError) {
        config = try AgentConfig(Invocation(try processArguments(), flags: AgentConfig.flags, defaultConfig: defaultConfigPath).settings)
    } catch {
        logger.error("reload refused, keeping the running configuration: " + error.description)
        Systemd.notify("READY=1")
        return
    }
    agent.reload(config) { error in
        if let error {
            logger.error("reload failed: " + error)
        } else {
            logger.notice("reload done: " + String(config.connections) + " connections on the new configuration")
        }
        Systemd.notify("READY=1")
    }
}

exit(agentMain())
