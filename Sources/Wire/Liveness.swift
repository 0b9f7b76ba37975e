// Liveness decides when to PING a peer and when to give up on it, as HAProxy's
// `idle-ping` does: after `intervalMs` with nothing received, send a PING; if
// nothing at all has arrived `intervalMs` after that PING, the peer is dead.
// Any byte received counts as life, not only the PING's ACK. Pure state: the
// owner feeds it the time (an injected clock) and acts on what it returns.

public struct Liveness {
    public enum Action: Equatable { case none, sendPing, dead }

    public let intervalNs: UInt64
    private var lastReceived: UInt64
    private var pingSentAt: UInt64?

    public init(intervalMs: Int, now: UInt64) {
        intervalNs = UInt64(max(1, intervalMs)) * 1_000_000
        lastReceived = now
    }

    /// How often the owner should call `tick`: a quarter of the interval, so a
    /// dead peer is noticed within about 2.25 intervals.
    public var tickMs: Int { max(1, Int(intervalNs / 4_000_000)) }

    public var awaitingAck: Bool { pingSentAt != nil }

    public mutating func received(now: UInt64) {
        lastReceived = now
        pingSentAt = nil
    }

    public mutating func tick(now: UInt64) -> Action {
        if let sent = pingSentAt {
            return now &- sent >= intervalNs ? .dead : .none
        }
        if now &- lastReceived >= intervalNs {
            pingSentAt = now
            return .sendPing
        }
        return .none
    }
}
