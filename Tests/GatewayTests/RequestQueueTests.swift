// The routing rules of docs/architecture.md ("Requests that wait instead of
// failing", the 503 rows of the error table, README's queue_timeout_ms, grace_ms,
// queue_max) on RequestQueue with a fake directory, fake connections, a fake
// health view and a ManualClock: no sockets, no event loop, no sleeping.
import EventLoop
@testable import FleetGatewayKit
import ConfigFormat
import XCTest

private final class FakeConnection: DeviceStreamTarget {
    let identity: DeviceIdentity
    let connectedAt: UInt64
    var maxStreams = 1
    var streamsInFlight = 0
    var ready = true
    var goingAway = false
    /// Refuses the next stream it is asked to open (out of stream ids, GOAWAY on its way).
    var refuses = false

    init(_ name: String, connectedAt: UInt64 = 0) {
        identity = DeviceIdentity(name: name, hostname: name)
        self.connectedAt = connectedAt
    }

    var canTakeStream: Bool { ready && !goingAway && streamsInFlight < maxStreams }
}

private final class FakeDirectory: DeviceDirectory {
    var byHost: [String: [FakeConnection]] = [:]
    func connections(hostname: String) -> [FakeConnection] { byHost[hostname] ?? [] }
}

private final class FakeHealth: DeviceHealthView {
    var down: [String: UInt64] = [:]
    func downSince(hostname: String) -> UInt64? { down[hostname] }
}

/// A request as the queue sees it; `sent` records where the queue sent it later.
private final class FakeRequest: QueuedRequest {
    let name: String
    var sent: FakeConnection?

    init(_ name: String) { self.name = name }

    func dispatchFromQueue(to connection: FakeConnection) -> Bool {
        if connection.refuses {
            connection.refuses = false
            connection.goingAway = true
            return false
        }
        connection.streamsInFlight += 1
        sent = connection
        return true
    }
}

final class RequestQueueTests: XCTestCase {
    private let clock = ManualClock()
    private let directory = FakeDirectory()
    private let health = FakeHealth()
    private var settings = CurrentConfig(RequestQueueTests.config())
    private lazy var queue = RequestQueue<FakeRequest, FakeDirectory>(clock: clock.clock, settings: settings,
                                                                       directory: directory, health: health)

    private static func config(queueMax: Int = 1024, queueTimeoutMs: Int = 10_000, graceMs: Int = 5_000) -> GatewayConfig {
        var s = Settings()
        try! ConfigFile.parse(Array(("plaintext_devices = true\nqueue_max = \(queueMax)\nqueue_timeout_ms = \(queueTimeoutMs)\ngrace_ms = \(graceMs)\n").utf8),
                              name: "gw.conf", into: &s)
        return try! GatewayConfig(s)
    }

    @discardableResult
    private func connect(_ name: String, maxStreams: Int = 1) -> FakeConnection {
        let c = FakeConnection(name, connectedAt: clock.nanoseconds)
        c.maxStreams = maxStreams
        directory.byHost[name, default: []].append(c)
        return c
    }

    /// The device loses `c`, as Gateway does it: out of the directory, then deviceGone when it was the last.
    private func disconnect(_ c: FakeConnection) {
        directory.byHost[c.identity.hostname]?.removeAll { $0 === c }
        if directory.byHost[c.identity.hostname]?.isEmpty == true {
            directory.byHost[c.identity.hostname] = nil
            queue.deviceGone(hostname: c.identity.hostname)
        }
    }

    private func dispatched(_ d: QueueDecision<FakeConnection>) -> FakeConnection? {
        if case .dispatch(let c) = d { return c }
        return nil
    }

    private func waited(_ d: QueueDecision<FakeConnection>) -> Int? {
        if case .wait(let ms) = d { return ms }
        return nil
    }

    private func rejected(_ d: QueueDecision<FakeConnection>) -> (status: Int, reason: String, retryAfter: Bool)? {
        if case .reject(let status, let reason, let retryAfter) = d { return (status, reason, retryAfter) }
        return nil
    }

    /// Dispatches as Exchange.carryOut does: the stream opens, or the queue is asked again.
    private func route(_ r: FakeRequest, _ host: String) -> QueueDecision<FakeConnection> {
        let d = queue.route(r, hostname: host)
        guard let c = dispatched(d) else { return d }
        if r.dispatchFromQueue(to: c) { return d }
        return queue.streamRefused(r, hostname: host)
    }

    // MARK: 503 at once

    func testNoDeviceConnectedIs503AtOnceWithRetryAfterNamingTheHost() {
        let r = rejected(route(FakeRequest("a"), "dev1"))
        XCTAssertEqual(r?.status, 503)
        XCTAssertEqual(r?.reason, "no device is connected for host dev1")
        XCTAssertEqual(r?.retryAfter, true)
        XCTAssertEqual(queue.count, 0, "nothing waits for a host never seen")
    }

    func testDeviceWhoseHealthChecksFailIs503AtOnceEvenWithAFreeConnection() {
        connect("dev1")
        health.down["dev1"] = clock.nanoseconds
        clock.advance(milliseconds: 3_000)
        let r = rejected(route(FakeRequest("a"), "dev1"))
        XCTAssertEqual(r?.status, 503)
        XCTAssertEqual(r?.reason, "device for host dev1 is down: its health checks fail (since 3 s)")
        XCTAssertEqual(r?.retryAfter, true)
        XCTAssertEqual(queue.count, 0)
    }

    func testDeviceGoneOverAMinuteAgoIs503AtOnce() {
        let c = connect("dev1")
        disconnect(c)
        clock.advance(milliseconds: 60_000)
        XCTAssertEqual(rejected(route(FakeRequest("a"), "dev1"))?.reason, "no device is connected for host dev1")
    }

    // MARK: dispatch

    func testAFreeConnectionTakesTheRequestAtOnce() {
        let c = connect("dev1")
        let r = FakeRequest("a")
        XCTAssertTrue(dispatched(route(r, "dev1")) === c)
        XCTAssertEqual(c.streamsInFlight, 1)
    }

    func testTheConnectionWithFewestStreamsInFlightIsPicked() {
        let busy = connect("dev1", maxStreams: 10)
        let idle = connect("dev1", maxStreams: 10)
        busy.streamsInFlight = 3
        idle.streamsInFlight = 1
        XCTAssertTrue(dispatched(queue.route(FakeRequest("a"), hostname: "dev1")) === idle)
    }

    func testConnectionsNotReadyOrGoingAwayAreNotPicked() {
        let notReady = connect("dev1")
        notReady.ready = false
        let leaving = connect("dev1")
        leaving.goingAway = true
        XCTAssertEqual(waited(route(FakeRequest("a"), "dev1")), 10_000, "connected but nothing can take it: it waits")
        let ok = connect("dev1")
        queue.deviceAvailable(hostname: "dev1")
        XCTAssertEqual(ok.streamsInFlight, 1)
    }

    // MARK: every connection at MAX_CONCURRENT_STREAMS

    func testAllConnectionsAtTheirStreamLimitWaitQueueTimeoutThen503Busy() {
        let c = connect("dev1", maxStreams: 2)
        c.streamsInFlight = 2
        let r = FakeRequest("a")
        XCTAssertEqual(waited(route(r, "dev1")), 10_000)
        XCTAssertEqual(queue.count, 1)
        XCTAssertEqual(queue.count(hostname: "dev1"), 1)
        // The Exchange's timer ends the wait; the device is still connected: "busy".
        let end = rejected(queue.waitEnded(r, hostname: "dev1", waitedMs: 10_000))
        XCTAssertEqual(end?.status, 503)
        XCTAssertEqual(end?.reason, "device for host dev1 is busy: no connection could take the request within 10000 ms")
        XCTAssertEqual(end?.retryAfter, true)
        XCTAssertEqual(queue.count, 0)
    }

    func testAStreamThatEndsSendsTheWaitingRequestsInArrivalOrder() {
        let c = connect("dev1", maxStreams: 1)
        c.streamsInFlight = 1
        let first = FakeRequest("first"), second = FakeRequest("second")
        XCTAssertNotNil(waited(route(first, "dev1")))
        XCTAssertNotNil(waited(route(second, "dev1")))
        c.streamsInFlight = 0
        queue.deviceAvailable(hostname: "dev1")
        XCTAssertTrue(first.sent === c)
        XCTAssertNil(second.sent, "one stream free, one request sent")
        XCTAssertEqual(queue.count(hostname: "dev1"), 1)
        c.streamsInFlight = 0
        queue.deviceAvailable(hostname: "dev1")
        XCTAssertTrue(second.sent === c)
        XCTAssertEqual(queue.count, 0)
    }

    func testANewRequestQueuesBehindWaitingOnesEvenWhenAStreamIsFree() {
        let c = connect("dev1", maxStreams: 1)
        c.streamsInFlight = 1
        let first = FakeRequest("first")
        XCTAssertNotNil(waited(route(first, "dev1")))
        c.streamsInFlight = 0  // freed, but deviceAvailable has not run yet
        let late = FakeRequest("late")
        XCTAssertNotNil(waited(route(late, "dev1")), "no overtaking")
        queue.deviceAvailable(hostname: "dev1")
        XCTAssertTrue(first.sent === c)
        XCTAssertNil(late.sent)
    }

    func testQueueMaxPerDeviceThen503BusyAtOnce() {
        settings.value = RequestQueueTests.config(queueMax: 2)
        let c = connect("dev1")
        c.streamsInFlight = 1
        connect("dev2").streamsInFlight = 1
        XCTAssertNotNil(waited(route(FakeRequest("1"), "dev1")))
        XCTAssertNotNil(waited(route(FakeRequest("2"), "dev1")))
        let r = rejected(route(FakeRequest("3"), "dev1"))
        XCTAssertEqual(r?.status, 503)
        XCTAssertEqual(r?.reason, "device for host dev1 is busy: 2 requests are already waiting for it")
        XCTAssertEqual(r?.retryAfter, true)
        XCTAssertNotNil(waited(route(FakeRequest("4"), "dev2")), "queue_max is per device")
        XCTAssertEqual(queue.count, 3)
    }

    func testQueueMaxZeroNeverQueues() {
        settings.value = RequestQueueTests.config(queueMax: 0)
        connect("dev1").streamsInFlight = 1
        XCTAssertEqual(rejected(route(FakeRequest("1"), "dev1"))?.status, 503)
    }

    func testARequestThatLeavesTheQueueFreesItsPlace() {
        settings.value = RequestQueueTests.config(queueMax: 1)
        let c = connect("dev1")
        c.streamsInFlight = 1
        let gone = FakeRequest("user left")
        XCTAssertNotNil(waited(route(gone, "dev1")))
        queue.remove(gone, hostname: "dev1")
        queue.remove(gone, hostname: "dev1")  // twice is harmless
        XCTAssertEqual(queue.count, 0)
        let next = FakeRequest("next")
        XCTAssertNotNil(waited(route(next, "dev1")))
        c.streamsInFlight = 0
        queue.deviceAvailable(hostname: "dev1")
        XCTAssertNil(gone.sent)
        XCTAssertTrue(next.sent === c)
    }

    func testSettingsChangedByAReloadApplyToTheNextRequest() {
        let c = connect("dev1")
        c.streamsInFlight = 1
        settings.value = RequestQueueTests.config(queueTimeoutMs: 250)
        XCTAssertEqual(waited(route(FakeRequest("a"), "dev1")), 250)
    }

    // MARK: grace: the device lost its last connection less than a minute ago

    func testARecentlyGoneDeviceGetsGraceThenTheReDialTakesTheRequest() {
        let old = connect("dev1")
        disconnect(old)
        clock.advance(milliseconds: 59_000)
        let r = FakeRequest("a")
        XCTAssertEqual(waited(route(r, "dev1")), 5_000, "grace_ms, not queue_timeout_ms")
        let redialed = connect("dev1")
        queue.deviceAvailable(hostname: "dev1")  // Gateway calls this when the new connection is ready
        XCTAssertTrue(r.sent === redialed)
        XCTAssertEqual(queue.count, 0)
    }

    func testGraceEndsWith503NoDeviceAndRetryAfter() {
        disconnect(connect("dev1"))
        let r = FakeRequest("a")
        XCTAssertEqual(waited(route(r, "dev1")), 5_000)
        clock.advance(milliseconds: 5_000)
        let end = rejected(queue.waitEnded(r, hostname: "dev1", waitedMs: 5_000))
        XCTAssertEqual(end?.status, 503)
        XCTAssertEqual(end?.reason, "no device is connected for host dev1")
        XCTAssertEqual(end?.retryAfter, true)
    }

    func testGraceCountsFromTheLastConnectionLost() {
        let a = connect("dev1"), b = connect("dev1")
        disconnect(a)
        clock.advance(milliseconds: 90_000)
        disconnect(b)  // the last one: the minute starts now
        clock.advance(milliseconds: 30_000)
        XCTAssertEqual(waited(route(FakeRequest("r"), "dev1")), 5_000)
    }

    func testARequestWaitingInGraceIsAlsoSubjectToQueueMax() {
        settings.value = RequestQueueTests.config(queueMax: 1)
        disconnect(connect("dev1"))
        XCTAssertNotNil(waited(route(FakeRequest("1"), "dev1")))
        XCTAssertEqual(rejected(route(FakeRequest("2"), "dev1"))?.reason, "device for host dev1 is busy: 1 requests are already waiting for it")
    }

    // MARK: a connection that refuses the stream

    func testAConnectionThatRefusesTheStreamLeavesTheRequestWaitingForAnother() {
        let c = connect("dev1")
        c.refuses = true
        let r = FakeRequest("a")
        XCTAssertEqual(waited(route(r, "dev1")), 10_000, "still connected (its GOAWAY is on the way): queue_timeout_ms")
        XCTAssertNil(r.sent)
        let next = connect("dev1")
        queue.deviceAvailable(hostname: "dev1")
        XCTAssertTrue(r.sent === next)
    }

    func testARefusalWhileSendingFromTheQueueKeepsTheRequestFirst() {
        let c = connect("dev1")
        c.streamsInFlight = 1
        let first = FakeRequest("first"), second = FakeRequest("second")
        _ = route(first, "dev1")
        _ = route(second, "dev1")
        c.streamsInFlight = 0
        c.refuses = true
        queue.deviceAvailable(hostname: "dev1")
        XCTAssertNil(first.sent)
        XCTAssertNil(second.sent)
        XCTAssertEqual(queue.count(hostname: "dev1"), 2)
        let other = connect("dev1")
        queue.deviceAvailable(hostname: "dev1")
        XCTAssertTrue(first.sent === other, "the refused request kept its place")
    }

    // MARK: unhealthy devices

    func testARequestQueuedBeforeTheDeviceWentDownStillLeavesWhenAStreamFrees() {
        let c = connect("dev1")
        c.streamsInFlight = 1
        let r = FakeRequest("a")
        XCTAssertNotNil(waited(route(r, "dev1")))
        health.down["dev1"] = clock.nanoseconds
        XCTAssertEqual(rejected(route(FakeRequest("b"), "dev1"))?.status, 503, "new requests: 503 at once")
        health.down["dev1"] = nil  // up again: HealthChecker.onDeviceUp calls deviceAvailable
        c.streamsInFlight = 0
        queue.deviceAvailable(hostname: "dev1")
        XCTAssertTrue(r.sent === c)
    }

    // MARK: retry after the stream ended unanswered

    private func retry(_ method: String = "GET", hasBody: Bool = false, bodySent: Bool = false, webSocket: Bool = false,
                       errorCode: UInt32 = 0, lost: Bool = false, retries: Int = 0) -> Bool {
        RetryRule.mayRetry(method: method, hasBody: hasBody, bodySent: bodySent, webSocket: webSocket,
                           errorCode: errorCode, connectionLost: lost, retries: retries)
    }

    func testRefusedStreamIsRetriedWhateverTheMethod() {
        XCTAssertTrue(retry("POST", hasBody: true, errorCode: 7))
        XCTAssertTrue(retry("GET", errorCode: 7))
    }

    func testALostConnectionRetriesIdempotentRequestsSentWholeInTheirHeaders() {
        for m in ["GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"] { XCTAssertTrue(retry(m, lost: true), m) }
        XCTAssertFalse(retry("POST", lost: true), "not idempotent: 502")
        XCTAssertFalse(retry("PATCH", lost: true))
        XCTAssertFalse(retry("PUT", hasBody: true, lost: true), "a body: not whole in its HEADERS")
    }

    func testAStreamResetWithAnotherErrorIsNotRetried() {
        XCTAssertFalse(retry("GET", errorCode: 2))
        XCTAssertFalse(retry("GET", errorCode: 1))
    }

    func testNoRetryOnceBodyBytesLeftForAWebSocketOrAfterTwoRetries() {
        XCTAssertFalse(retry("POST", hasBody: true, bodySent: true, errorCode: 7))
        XCTAssertFalse(retry("GET", webSocket: true, errorCode: 7))
        XCTAssertTrue(retry("GET", lost: true, retries: 1))
        XCTAssertFalse(retry("GET", lost: true, retries: 2))
        XCTAssertFalse(retry("GET", errorCode: 7, retries: 2))
    }
}
