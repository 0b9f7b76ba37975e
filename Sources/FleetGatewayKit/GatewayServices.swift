// What the gateway's parts are given instead of the Gateway itself (no service
// locator): each takes, through its initializer, only what it uses. The Gateway
// makes them once and wires them; nothing reaches back through it.
//  - CurrentConfig: the settings in force (SIGHUP replaces them for every holder);
//  - UploadBudget: the upload windows of all users' HTTP/2 streams;
//  - RequestRecorder: what becomes of each request (metrics, ledger, access log);
//  - UserServices: the above plus the loop, logger, access control and queue,
//    shared by every user connection and its exchanges.
import EventLoop
import FleetAccess

/// The settings in force. Gateway.reload replaces `value`; whoever holds this
/// object reads the new settings from then on (as they did through the Gateway).
final class CurrentConfig {
    var value: GatewayConfig

    init(_ value: GatewayConfig) { self.value = value }
}

/// The flow-control windows of users' HTTP/2 uploads, summed over every user
/// connection (UploadWindow, `upload_budget_bytes`).
final class UploadBudget {
    /// Windows grown beyond UploadWindow.initial, in bytes.
    var growth = 0
    /// The windows of all upload streams together.
    var windows = 0
}

/// Whoever owns users' connections (the Gateway): the idle timeout it wants for
/// them now (shorter under pressure), and their end.
protocol UserConnectionOwner: AnyObject {
    var userIdleTimeoutMs: Int { get }
    func userConnectionClosed(_ c: UserConnection)
}

/// What a user's connection (HTTP/1.1 or HTTP/2) and its exchanges use: one
/// object per gateway, so a connection holds one reference, not nine.
final class UserServices {
    let loop: EventLoop
    let logger: Logger
    let settings: CurrentConfig
    let access: AccessControl
    let queue: GatewayQueue
    let uploads: UploadBudget
    let recorder: RequestRecorder
    let owner: UserConnectionOwner

    init(loop: EventLoop, logger: Logger, settings: CurrentConfig, access: AccessControl, queue: GatewayQueue,
         uploads: UploadBudget, recorder: RequestRecorder, owner: UserConnectionOwner) {
        self.loop = loop
        self.logger = logger
        self.settings = settings
        self.access = access
        self.queue = queue
        self.uploads = uploads
        self.recorder = recorder
        self.owner = owner
    }

    var config: GatewayConfig { settings.value }
}

/// The gateway's device directory and request queue, as the gateway instantiates them.
typealias GatewayDirectory = DeviceRegistry<DeviceConnection>
typealias GatewayQueue = RequestQueue<Exchange, GatewayDirectory>
