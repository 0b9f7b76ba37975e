// Back-pressure, the same on both sides of the tunnel, in both directions:
//  - DATA received on a stream is acknowledged to the peer (its flow-control
//    window reopened) only once the socket it is forwarded to has taken it: the
//    consumer keeps a FlowCredit and releases it when that socket's queue is at
//    or below `lowWater` (or when the stream is done, so no window is lost);
//  - a producer that reads a socket into a stream stops reading while the
//    stream's queue is above its share of the connection's budget
//    (`connectionBudget` split between the streams that are sending, at least
//    `minimumShare`) and resumes at a quarter of it
//    (HTTP2Connection.pauseIfBacklogged). One big download gets the whole budget;
//    64 at once get 16 KiB each, so memory stays flat however many streams run.

public enum BackPressure {
    public static let connectionBudget = 256 << 10
    public static let minimumShare = 16 * 1024
    public static let lowWater = 64 * 1024

    /// The queue a sending stream may hold when `sending` streams share a connection.
    public static func share(sending: Int) -> Int {
        max(minimumShare, connectionBudget / max(1, sending))
    }
}

/// DATA bytes received on one stream and not yet acknowledged.
public struct FlowCredit {
    public private(set) var owed = 0

    public init() {}

    public mutating func received(_ count: Int) { owed += count }

    /// The bytes to acknowledge now: everything owed once the receiving socket's
    /// queue is at or below the low-water mark, or once the stream is finished.
    public mutating func release(queued: Int, finished: Bool) -> Int {
        guard owed > 0, finished || queued <= BackPressure.lowWater else { return 0 }
        let n = owed
        owed = 0
        return n
    }
}
