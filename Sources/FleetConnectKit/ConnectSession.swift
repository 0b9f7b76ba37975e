// ConnectSession: fleet-connect's life cycle as a state machine, without I/O.
// Events in (the gateway connection opened, bytes and EOF from it, EOF on
// standard input, a side finished writing, an error, the answer timeout),
// actions out (send the CONNECT, write to stdout, start reading stdin,
// half-close either side, exit with a status and a one-line message).
//
//   connecting --connected--> awaitingAnswer --200--> bridging --both directions done--> finished
//                                            \--other status--> refusalBody (reads a short body) --> finished
//
// While bridging, the two directions end on their own (the contract's
// half-close): stdin's EOF finishes the gateway's write side (FIN or
// close_notify), the gateway's EOF finishes stdout; each waits until its bytes
// are written (`gatewayWriteDone`, `stdoutDone`). Exit 0 once both are done,
// 1 on any error, with one line naming it.

public struct ConnectSession {
    public enum State: Equatable {
        case connecting
        case awaitingAnswer
        case refusalBody(ConnectAnswer)
        case bridging
        case finished
    }

    /// One direction of the tunnel while bridging.
    public enum Direction: Equatable {
        case open
        /// End of data seen; the last bytes are being written before the half-close.
        case finishing
        case done
    }

    public enum Event {
        case connected
        case gatewayData([UInt8])
        /// The gateway finished sending (FIN or close_notify).
        case gatewayEOF
        case stdinEOF
        /// The gateway's write side is shut down with every byte sent.
        case gatewayWriteDone
        /// Standard output is closed with every byte written.
        case stdoutDone
        case failed(String)
        /// The answer did not come in time.
        case answerTimeout(seconds: Int)
    }

    /// What to do after an event, carried out in this order. A set of flags, not
    /// an array of enum cases: the Embedded build (Swift 6.3, -Osize, full LTO)
    /// turned some constant one-element arrays of an Action enum into `[.exit]`
    /// (measured: `[.startStdin]` and `[.finishStdout]`). The bytes and the exit
    /// status are the session's: `request`, `takeOutput()`, `exitStatus`, `exitMessage`.
    public struct Actions: OptionSet, Equatable, Sendable {
        public let rawValue: UInt8
        public init(rawValue: UInt8) { self.rawValue = rawValue }
        /// Send `request`.
        public static let sendRequest = Actions(rawValue: 1 << 0)
        /// Write `takeOutput()` to stdout.
        public static let writeStdout = Actions(rawValue: 1 << 1)
        public static let startStdin = Actions(rawValue: 1 << 2)
        public static let finishGatewayWrite = Actions(rawValue: 1 << 3)
        public static let finishStdout = Actions(rawValue: 1 << 4)
        /// Exit with `exitStatus`, after writing `exitMessage` (when not empty) on stderr.
        public static let exit = Actions(rawValue: 1 << 5)
    }

    public private(set) var state: State = .connecting
    public private(set) var upstream: Direction = .open
    public private(set) var downstream: Direction = .open
    private var received: [UInt8] = []
    /// Bytes for stdout that came with the answer head.
    private var output: [UInt8] = []
    public private(set) var exitStatus: Int32 = 1
    /// The one line for stderr ("" for none).
    public private(set) var exitMessage = ""
    /// "HOST:PORT via URL", the start of every message.
    let subject: String
    public let request: [UInt8]

    /// Most bytes of an error answer's body read for the message.
    static let maxRefusalBody = 1024

    public init(options: ConnectOptions, token: String?, version: String) {
        subject = options.authority + " via " + options.gateway.description
        request = ConnectSession.request(authority: options.authority, token: token, version: version)
    }

    /// The CONNECT request (RFC 9110 §9.3.6): the authority as target and Host.
    public static func request(authority: String, token: String?, version: String) -> [UInt8] {
        var r = "CONNECT " + authority + " HTTP/1.1\r\nHost: " + authority + "\r\n"
        if let token { r += "Authorization: Bearer " + token + "\r\n" }
        r += "User-Agent: fleet-connect/" + version + "\r\n\r\n"
        return Array(r.utf8)
    }

    /// The bytes of the last `.writeStdout`.
    public mutating func takeOutput() -> [UInt8] {
        let out = output
        output = []
        return out
    }

    /// Bytes from the gateway go straight to stdout (the driver may skip `handle`).
    public var isBridging: Bool { state == .bridging }

    public mutating func handle(_ event: Event) -> Actions {
        if state == .finished { return [] }
        switch event {
        case .connected:
            guard state == .connecting else { return [] }
            state = .awaitingAnswer
            return [.sendRequest]
        case .gatewayData(let bytes):
            return gatewayData(bytes)
        case .gatewayEOF:
            switch state {
            case .connecting, .awaitingAnswer:
                return exit(1, "the gateway closed the connection without answering")
            case .refusalBody(let answer):
                return refuse(answer, body: received)
            case .bridging:
                guard downstream == .open else { return [] }
                downstream = .finishing
                return [.finishStdout]
            case .finished:
                return []
            }
        case .stdinEOF:
            guard state == .bridging, upstream == .open else { return [] }
            upstream = .finishing
            return [.finishGatewayWrite]
        case .gatewayWriteDone:
            guard state == .bridging, upstream == .finishing else { return [] }
            upstream = .done
            return finishIfDone()
        case .stdoutDone:
            guard state == .bridging, downstream == .finishing else { return [] }
            downstream = .done
            return finishIfDone()
        case .failed(let why):
            if case .refusalBody(let answer) = state { return refuse(answer, body: received) }
            return exit(1, why)
        case .answerTimeout(let seconds):
            guard state == .connecting || state == .awaitingAnswer else { return [] }
            return exit(1, "no answer from the gateway within " + String(seconds) + " s")
        }
    }

    private mutating func gatewayData(_ bytes: [UInt8]) -> Actions {
        switch state {
        case .bridging:
            if bytes.isEmpty { return [] }
            output += bytes
            return [.writeStdout]
        case .awaitingAnswer:
            received += bytes
            switch ConnectAnswer.parse(received) {
            case .needMore:
                return []
            case .invalid(let why):
                return exit(1, "bad answer from the gateway: " + why)
            case .head(let answer):
                let rest = Array(received[answer.headLength...])
                received = []
                if answer.status >= 200 && answer.status < 300 {
                    state = .bridging
                    if rest.isEmpty { return [.startStdin] }
                    output = rest
                    return [.writeStdout, .startStdin]
                }
                if let n = answer.contentLength, n > rest.count, n <= ConnectSession.maxRefusalBody {
                    state = .refusalBody(answer)
                    received = rest
                    return []
                }
                return refuse(answer, body: rest)
            }
        case .refusalBody(let answer):
            received += bytes
            if received.count >= (answer.contentLength ?? 0) { return refuse(answer, body: received) }
            return []
        case .connecting, .finished:
            return []
        }
    }

    private mutating func finishIfDone() -> Actions {
        guard upstream == .done && downstream == .done else { return [] }
        return exit(0, nil)
    }

    private mutating func exit(_ code: Int32, _ message: String?) -> Actions {
        state = .finished
        exitStatus = code
        exitMessage = message.map { subject + ": " + $0 } ?? ""
        return [.exit]
    }

    /// The one line for a refusal: status, reason, the body's first line, Retry-After.
    private mutating func refuse(_ answer: ConnectAnswer, body: [UInt8]) -> Actions {
        var line = "gateway answered " + String(answer.status)
        if !answer.reason.isEmpty { line += " " + answer.reason }
        let limit = min(body.count, answer.contentLength ?? body.count, ConnectSession.maxRefusalBody)
        var first = body[0..<limit].prefix { $0 != 10 && $0 != 13 }
        while first.last == 32 { first = first.dropLast() }
        if !first.isEmpty { line += ": " + ConnectAnswer.printable(first.prefix(200)) }
        if let retry = answer.retryAfter { line += " (retry after " + retry + " s)" }
        return exit(1, line)
    }
}
