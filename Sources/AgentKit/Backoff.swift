// Re-dial delays: exponential backoff with full jitter (a uniformly random delay
// between 0 and the current ceiling), capped, and reset once a connection has
// stayed up for `stableAfterMs`. The random source is injected for tests.

public struct Backoff {
    public var baseMs: Int
    public var capMs: Int
    public var stableAfterMs: Int
    public private(set) var failures = 0

    public init(baseMs: Int = 500, capMs: Int = 30_000, stableAfterMs: Int = 30_000) {
        self.baseMs = baseMs
        self.capMs = capMs
        self.stableAfterMs = stableAfterMs
    }

    /// The ceiling for the next delay: base * 2^failures, at most cap.
    public var ceilingMs: Int {
        var c = baseMs
        var i = 0
        while i < failures && c < capMs {
            c *= 2
            i += 1
        }
        return min(c, capMs)
    }

    /// Records a failure and returns the delay before the next dial. `random` gives
    /// a value in 0...max.
    public mutating func nextDelayMs(random: (Int) -> Int) -> Int {
        let ceiling = ceilingMs
        failures += 1
        return max(0, min(ceiling, random(ceiling)))
    }

    /// A connection that stayed up for `upMs` resets the sequence.
    public mutating func connectionEnded(upMs: Int) {
        if upMs >= stableAfterMs { failures = 0 }
    }

    public mutating func reset() { failures = 0 }
}

/// A small xorshift generator for jitter; seeded from the clock and pid.
public struct Jitter {
    private var state: UInt64

    public init(seed: UInt64) { state = seed == 0 ? 0x9E37_79B9_7F4A_7C15 : seed }

    public mutating func next(upTo max: Int) -> Int {
        state ^= state << 13
        state ^= state >> 7
        state ^= state << 17
        guard max > 0 else { return 0 }
        return Int(state % UInt64(max + 1))
    }
}
