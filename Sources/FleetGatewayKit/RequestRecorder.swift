// RequestRecorder: what becomes of each user request once decided or answered:
// the metrics, the device's last access (AccessLedger, admin API) and the access
// log line. Given the loop's clock, the settings, the directory (a denial counts
// per device only for a device that is there) and the logger; no Gateway.
import EventLoop
import FleetAccess

final class RequestRecorder {
    private let loop: EventLoop
    private let logger: Logger
    private let settings: CurrentConfig
    private let directory: GatewayDirectory
    let metrics: Metrics
    let ledger: AccessLedger

    init(loop: EventLoop, logger: Logger, settings: CurrentConfig, directory: GatewayDirectory,
         metrics: Metrics, ledger: AccessLedger) {
        self.loop = loop
        self.logger = logger
        self.settings = settings
        self.directory = directory
        self.metrics = metrics
        self.ledger = ledger
    }

    /// One access decision: metrics and the device's last access (admin API).
    func recordAccess(_ outcome: AccessControl.Outcome, device: String) {
        let auth = outcome.principal?.method.rawValue ?? "none"
        metrics.accessDecision(result: outcome.status.map { String($0) } ?? "allowed", auth: auth)
        // Per device only for a device that is there: names strangers make up take no slot.
        if let status = outcome.status, !directory.connections(device: device).isEmpty {
            ledger.recordAccess(device: device, user: outcome.principal?.displayName ?? "", status: status)
        }
    }

    /// A user's request answered (or cut; status 0: the user left before the answer,
    /// logged as 499, nginx's convention): the metrics, the access log line, the
    /// device's last access and its own series with `metrics_per_device`.
    func requestDone(_ r: AccessLog.Request, status answered: Int, bytes: Int, aborted: Bool, exchange ex: Exchange?) {
        let status = answered == 0 ? 499 : answered
        let seconds = Double(loop.now &- r.start) / 1e9
        metrics.request(status: status, seconds: seconds)
        // A denial was recorded when decided; a request no device took names no device.
        if let ex, ex.access?.status == nil, let name = ex.deviceName {
            ledger.recordAccess(device: name, user: ex.access?.principal?.displayName ?? "", status: status)
            metrics.deviceRequest(device: name, status: status, bytesIn: ex.bytesIn, bytesOut: bytes)
        }
        guard settings.value.accessLog else { return }
        logger.info(AccessLog.line(r, status: status, bytes: bytes, seconds: seconds, aborted: aborted, access: ex?.access),
                    LogContext(device: ex?.deviceName, connection: ex?.connectionID))
    }

    /// A CONNECT is over (refused, or its tunnel ended): the tunnel metrics and one
    /// `tunnel` access log line (device, port, bytes each way, duration, result).
    func tunnelDone(_ t: AccessLog.Tunnel, result: String, wasOpen: Bool, exchange ex: Exchange) {
        metrics.tunnelDone(result: result, wasOpen: wasOpen)
        guard settings.value.accessLog else { return }
        let seconds = Double(loop.now &- t.start) / 1e9
        logger.info(AccessLog.tunnelLine(t, result: result, seconds: seconds, access: ex.access),
                    LogContext(device: ex.deviceName, connection: ex.connectionID))
    }
}
