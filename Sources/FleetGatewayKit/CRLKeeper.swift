// CRLKeeper: the CRL the device listener checks (`crl`) must not pass its
// nextUpdate, or OpenSSL refuses every device ("CRL has expired"). Every hour (and
// at start and reload) it reads the CRL's lastUpdate and nextUpdate
// (PKI.crlUpdateTimes); when the gateway holds the CA key and the CRL is
// DIR/crl.pem of `pki_dir`, it writes it again (PKI.writeCRL, 30 days, as `pki crl`)
// once half its validity has passed, and the gateway takes it at once
// (`onRenewed`: new TLS contexts for new connections). Otherwise, from 7 days
// before it expires, a warning a day says what to run. /metrics shows the seconds
// left (rhttp_crl_expiry_seconds).
import EventLoop
import FleetAccess
import FleetPKI

final class CRLKeeper {
    static let checkIntervalMs = 3_600_000
    static let warnSeconds: Int64 = 7 * 86_400
    static let renewDays = 30

    private let loop: EventLoop
    private let logger: Logger
    private let settings: CurrentConfig
    private let now: () -> Int64
    /// Whether the gateway holds the CA key (EST's CA loaded).
    var holdsKey: () -> Bool = { false }
    /// The CRL file was written again: make the TLS contexts again.
    var onRenewed: (() -> Void)?
    private(set) var nextUpdate: Int64?
    private var timer: TimerID?
    private var warnedAt: Int64?
    private var failureLogged: String?

    init(loop: EventLoop, logger: Logger, settings: CurrentConfig, now: @escaping () -> Int64) {
        self.loop = loop
        self.logger = logger
        self.settings = settings
        self.now = now
    }

    var secondsLeft: Int64? { nextUpdate.map { $0 - now() } }

    func start() {
        check()
        schedule()
    }

    func stop() {
        loop.cancel(timer)
        timer = nil
    }

    private func schedule() {
        timer = loop.schedule(afterMilliseconds: CRLKeeper.checkIntervalMs) {
            self.timer = nil
            self.check()
            self.schedule()
        }
    }

    /// Reads the CRL, renews it when due and possible, warns when it expires soon.
    func check() {
        let config = settings.value
        guard let path = config.crlFile else {
            nextUpdate = nil
            return
        }
        var times: (lastUpdate: Int64, nextUpdate: Int64)
        do throws(PKIError) {
            times = try PKI.crlUpdateTimes(file: path)
        } catch {
            nextUpdate = nil
            logOnce("crl " + path + ": " + error.description)
            return
        }
        let t = now()
        if let dir = config.pkiDir, config.renewableCRL != nil, holdsKey(),
           t >= times.nextUpdate - (times.nextUpdate - times.lastUpdate) / 2 {
            do throws(PKIError) {
                try PKI.writeCRL(directory: dir, crlDays: CRLKeeper.renewDays)
                times = try PKI.crlUpdateTimes(file: path)
                failureLogged = nil
                logger.notice("CRL " + path + " renewed: valid until " + TokenStore.utcText(times.nextUpdate))
                onRenewed?()
            } catch {
                logOnce("CRL " + path + " cannot be renewed: " + error.description)
            }
        }
        nextUpdate = times.nextUpdate
        let left = times.nextUpdate - t
        if left < CRLKeeper.warnSeconds {
            if warnedAt.map({ t - $0 >= 86_400 }) ?? true {
                warnedAt = t
                logger.warning("CRL " + path + (left > 0 ? " expires " : " expired ") + TokenStore.utcText(times.nextUpdate)
                               + ": devices are refused once it has; run `fleet-gateway pki crl DIR`, copy DIR/crl.pem to "
                               + path + " and reload (or set pki_dir, with the CA key, so that the gateway renews it)")
            }
        } else {
            warnedAt = nil
        }
    }

    private func logOnce(_ text: String) {
        guard failureLogged != text else { return }
        failureLogged = text
        logger.error(text)
    }
}
