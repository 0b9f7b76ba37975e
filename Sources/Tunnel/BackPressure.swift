// Back-pressure, the same on both sides of the tunnel, in both directions:
//  - DATA received on a stream is acknowledged to the peer (its flow-control
//    window reopened) only once the socket it is forwarded to has taken it: the
//    consumer keeps a FlowCredit and releases it when that socket's queue is at
//    or below `lowWater` (or when the stream is done, so no window is lost);
//  - a producer that reads a socket into a stream stops reading while the
//    stream's queue inside nghttp2 is above `highWater` and resumes at `lowWater`
//    (HTTP2Connection.pauseIfBacklogged).
// With 1 MiB stream windows, a stalled reader costs about 1.3 MiB per stream.

public enum BackPressure {
    public static let highWater = 256 * 1024
    public static let lowWater = 64 * 1024
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
