// fleet-connect: opens a TCP connection to a device's port through the
// gateway (HTTP CONNECT) and bridges it to standard input and output, for
// `ssh -o ProxyCommand='fleet-connect %h %p --gateway https://gw.example.com'`.
// Embedded Swift like device-agent (LibmShim.swift and UnicodeDataShim.swift are
// copies of the agent's); the work is in FleetConnectKit.
import CLibc
import ConfigFormat
import EventLoop
import FleetConnectKit

let usage = """
usage: fleet-connect HOST PORT --gateway URL [--token-file FILE | --cert FILE --key FILE] [--ca FILE]

Connects to PORT of the device HOST through the gateway (HTTP CONNECT) and
bridges the connection to standard input and output. For ssh:
  ssh -o ProxyCommand='fleet-connect %h %p --gateway https://gw.example.com --token-file ~/.config/fleet/token' root@dev1.devices.example.com

  --gateway URL        https://HOST[:PORT] (TLS), or http://127.0.0.1:PORT (loopback only)
  --token-file FILE    send the token on FILE's first line (Authorization: Bearer)
  --cert FILE --key FILE  present this user certificate and key (PEM) instead
  --ca FILE            CA certificate(s) that signed the gateway's (default: the system's,
                       /etc/ssl/certs/ca-certificates.crt)
  --help, --version

Exit status: 0 when both directions ended, 1 on an error or a refusal (one line on
stderr names the gateway's status and reason), 2 for bad options.
"""

func readTokenFile(_ path: String) throws(OptionError) -> String {
    guard let f = fopen(path, "r") else {
        throw OptionError("--token-file " + path + ": " + String(cString: strerror(rh_errno())))
    }
    defer { fclose(f) }
    var bytes = [UInt8](repeating: 0, count: 8192)
    let n = bytes.withUnsafeMutableBytes { fread($0.baseAddress, 1, 8192, f) }
    if n == 0 && ferror(f) != 0 {
        throw OptionError("--token-file " + path + ": " + String(cString: strerror(rh_errno())))
    }
    return try ConnectOptions.token(fromFileContents: Array(bytes[0..<n]))
}

func connectMain() -> Int32 {
    let options: ConnectOptions
    var token: String?
    do throws(OptionError) {
        let args: [String]
        do throws(ConfigError) { args = try processArguments() } catch { throw OptionError(error.description) }
        options = try ConnectOptions(arguments: args)
        if options.help { Logger.writeStderr(usage + "\n"); return 0 }
        if options.version { Logger.writeStderr("fleet-connect " + reverseHTTPVersion + "\n"); return 0 }
        if let file = options.tokenFile { token = try readTokenFile(file) }
    } catch {
        Logger.writeStderr("fleet-connect: " + error.message + " (fleet-connect --help)\n")
        return 2
    }
    _ = rh_ignore_sigpipe()
    let client = ConnectClient(options: options, token: token, version: reverseHTTPVersion, loop: EventLoop())
    return client.run()
}

exit(connectMain())
