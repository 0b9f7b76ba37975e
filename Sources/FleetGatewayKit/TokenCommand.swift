// `fleet-gateway token create|list|revoke`: edits the tokens file (TokenStore).
// `create` prints the secret alone on stdout, once; the file keeps its SHA-256.
import FleetAccess
import CLibc
import EventLoop
import ConfigFormat
#if canImport(Glibc)
import Glibc
#endif

func tokenMain(_ args: [String]) -> Int32 {
    var settings = Settings()
    let positional: [String]
    do throws(ConfigError) {
        positional = try parseCommandLine(args, flags: [], into: &settings)
    } catch {
        Logger.writeStderr("fleet-gateway token: " + error.description + "\n")
        return 2
    }
    let path: String
    do throws(ConfigError) {
        path = try tokensPath(settings)
    } catch {
        Logger.writeStderr("fleet-gateway token: " + error.description + "\n")
        return 2
    }
    let known = ["tokens", "config", "devices", "expires"]
    if let bad = settings.items.first(where: { !known.contains($0.key) }) {
        Logger.writeStderr("fleet-gateway token: unknown " + bad.origin + "\n")
        return 2
    }
    let now = Int64(time(nil))
    do throws(TokenError) {
        switch (positional.first, positional.count) {
        case ("create", 2):
            let name = positional[1]
            guard let devices = settings.string("devices") else {
                Logger.writeStderr("fleet-gateway token create: --devices GLOBS is required (e.g. --devices 'dev-*')\n")
                return 2
            }
            let lifetime = try TokenStore.parseExpiry(settings.string("expires") ?? "90d")
            let secret = TokenStore.newSecret()
            try TokenStore.withLock(path: path) { () throws(TokenError) in
                var store = try TokenStore.loadOrEmpty(path: path)
                try store.add(name: name, devices: devices, secret: secret, created: now,
                              expires: lifetime.map { now + $0 })
                try store.save(path: path)
            }
            writeStdout(secret + "\n")
            Logger.writeStderr("token " + name + " for devices " + devices + " added to " + path + ", expires "
                               + (lifetime.map { TokenStore.utcText(now + $0) } ?? "never")
                               + ". The secret above is shown only now. Send it as 'Authorization: Bearer SECRET'"
                               + " or as Basic auth with user " + name + ". The gateway notices the file's change.\n")
        case ("list", 1):
            let store = try TokenStore.loadOrEmpty(path: path)
            writeStdout(store.listing(now: now))
        case ("revoke", 2):
            let name = positional[1]
            let removed = try TokenStore.withLock(path: path) { () throws(TokenError) -> Bool in
                var store = try TokenStore.load(path: path)
                guard store.remove(name: name) else { return false }
                try store.save(path: path)
                return true
            }
            guard removed else {
                Logger.writeStderr("fleet-gateway token revoke: no token named \"" + name + "\" in " + path + "\n")
                return 1
            }
            Logger.writeStderr("token " + name + " removed from " + path + "\n")
        default:
            Logger.writeStderr(usage + "\n")
            return 2
        }
    } catch {
        Logger.writeStderr("fleet-gateway token: " + error.description + "\n")
        return 1
    }
    return 0
}

/// `--tokens FILE`, or the `tokens` key of `--config FILE` (a relative path there is
/// used as written, as the gateway does).
private func tokensPath(_ settings: Settings) throws(ConfigError) -> String {
    if let t = settings.string("tokens") {
        guard settings.string("config") == nil else { throw ConfigError("give --tokens FILE or --config FILE, not both") }
        return t
    }
    guard let config = settings.string("config") else { throw ConfigError("--tokens FILE or --config FILE is required") }
    var file = Settings()
    try ConfigFile.load(config, into: &file)
    guard let t = file.string("tokens"), !t.isEmpty else { throw ConfigError(config + ": no `tokens = FILE` line") }
    return t
}

func writeStdout(_ s: String) {
    var bytes = Array(s.utf8)
    var off = 0
    while off < bytes.count {
        let n = bytes.withUnsafeBytes { write(1, $0.baseAddress! + off, $0.count - off) }
        if n < 0 { if errno == EINTR { continue }; break }
        off += n
    }
    for i in bytes.indices { bytes[i] = 0 }
}
