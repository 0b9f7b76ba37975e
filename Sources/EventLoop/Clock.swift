// Time for the engine comes from an injected clock, so that every timer-driven
// behaviour (ping, timeouts, backoff) can be tested without sleeping.
import CLibc

/// Monotonic nanoseconds. `Clock.system` reads CLOCK_MONOTONIC; tests use `ManualClock`.
public struct Clock {
    public let now: () -> UInt64

    public init(now: @escaping () -> UInt64) { self.now = now }

    public static var system: Clock { Clock(now: { rh_monotonic_ns() }) }
}

/// A clock that moves only when told to.
public final class ManualClock {
    public private(set) var nanoseconds: UInt64

    public init(start: UInt64 = 1_000_000_000) { nanoseconds = start }

    public func advance(milliseconds: UInt64) { nanoseconds += milliseconds * 1_000_000 }
    public func advance(nanoseconds delta: UInt64) { nanoseconds += delta }

    public var clock: Clock { Clock(now: { self.nanoseconds }) }
}

public enum Duration {
    @inline(__always) public static func ms(_ v: Int) -> UInt64 { UInt64(max(0, v)) * 1_000_000 }
    @inline(__always) public static func seconds(_ v: Int) -> UInt64 { UInt64(max(0, v)) * 1_000_000_000 }
}
