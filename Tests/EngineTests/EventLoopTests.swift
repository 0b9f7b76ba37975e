// Timers on an injected clock, the backoff sequence and the config format.
@testable import EventLoop
@testable import AgentKit
import ConfigFormat
import XCTest

final class EventLoopTests: XCTestCase {
    func testTimersFireInDeadlineOrderOnTheManualClock() {
        let clock = ManualClock()
        let loop = EventLoop(clock: clock.clock)
        var fired: [String] = []
        loop.schedule(afterMilliseconds: 30) { fired.append("c") }
        loop.schedule(afterMilliseconds: 10) { fired.append("a") }
        let cancelled = loop.schedule(afterMilliseconds: 20) { fired.append("x") }
        loop.schedule(afterMilliseconds: 20) { fired.append("b") }
        loop.cancel(cancelled)
        loop.fireDueTimers()
        XCTAssertEqual(fired, [])
        clock.advance(milliseconds: 20)
        loop.fireDueTimers()
        XCTAssertEqual(fired, ["a", "b"])
        clock.advance(milliseconds: 10)
        loop.fireDueTimers()
        XCTAssertEqual(fired, ["a", "b", "c"])
        XCTAssertEqual(loop.timerCount, 0)
    }

    func testCancelledTimersDoNotPileUpWhileOthersLive() {
        let clock = ManualClock()
        let loop = EventLoop(clock: clock.clock)
        var fired: [Int] = []
        loop.schedule(afterMilliseconds: 60_000) { fired.append(0) }  // a long-lived timer, as an idle ping
        for i in 0..<10_000 {  // every request arms a timeout and cancels it
            let t = loop.schedule(afterMilliseconds: 30_000 + i % 7) { fired.append(-1) }
            if i % 1000 == 999 { loop.schedule(afterMilliseconds: 1 + i / 1000) { fired.append(i / 1000 + 1) } }
            loop.cancel(t)
        }
        XCTAssertLessThan(loop.timerHeapEntries, 200)
        XCTAssertEqual(loop.timerCount, 11)
        clock.advance(milliseconds: 60_000)
        loop.fireDueTimers()
        XCTAssertEqual(fired, Array(1...10) + [0])
    }

    func testBackoffGrowsToTheCapWithFullJitterAndResetsWhenStable() {
        var b = Backoff(baseMs: 500, capMs: 30_000, stableAfterMs: 30_000)
        var ceilings: [Int] = []
        for _ in 0..<10 {
            ceilings.append(b.ceilingMs)
            let d = b.nextDelayMs { max in max }  // the top of the jitter range
            XCTAssertEqual(d, ceilings.last)
        }
        XCTAssertEqual(ceilings, [500, 1000, 2000, 4000, 8000, 16000, 30000, 30000, 30000, 30000])
        XCTAssertEqual(b.nextDelayMs { _ in 0 }, 0, "full jitter reaches zero")
        b.connectionEnded(upMs: 1000)
        XCTAssertEqual(b.ceilingMs, 30_000, "a short-lived connection does not reset the backoff")
        b.connectionEnded(upMs: 30_000)
        XCTAssertEqual(b.ceilingMs, 500)

        var j = Jitter(seed: 42)
        for _ in 0..<1000 {
            let v = j.next(upTo: 700)
            XCTAssertTrue(v >= 0 && v <= 700)
        }
    }

    func testConfigFileErrorsNameFileAndLine() throws {
        var s = Settings()
        try ConfigFile.parse(Array("# comment\ngateway = gw.example:8443\n\nconnections=3 # two is default\n".utf8),
                             name: "agent.conf", into: &s)
        XCTAssertEqual(s.string("gateway"), "gw.example:8443")
        XCTAssertEqual(try s.int("connections", default: 2, min: 1, max: 64), 3)

        var bad = Settings()
        XCTAssertThrowsError(try ConfigFile.parse(Array("gateway = a:1\nno equals sign\n".utf8), name: "x.conf", into: &bad)) {
            XCTAssertEqual(($0 as? ConfigError)?.message, "x.conf:2: expected 'key = value'")
        }
        var unknown = Settings()
        try ConfigFile.parse(Array("gateway = a:1\ncolour = blue\n".utf8), name: "y.conf", into: &unknown)
        XCTAssertThrowsError(try AgentConfig(unknown)) {
            XCTAssertEqual(($0 as? ConfigError)?.message, "y.conf:2: unknown setting 'colour'")
        }
        var range = Settings()
        try ConfigFile.parse(Array("gateway = a:1\nplaintext = true\nconnections = 0\n".utf8), name: "z.conf", into: &range)
        XCTAssertThrowsError(try AgentConfig(range)) {
            XCTAssertTrue(($0 as? ConfigError)?.message.hasPrefix("z.conf:3: connections") == true)
        }
    }

    func testCommandLineUsesTheSameKeys() throws {
        var s = Settings()
        let rest = try parseCommandLine(["--gateway", "127.0.0.1:9", "--plaintext", "--server-name=gw", "--connections", "4"],
                                        flags: AgentConfig.flags, into: &s)
        XCTAssertEqual(rest, [])
        let c = try AgentConfig(s)
        XCTAssertEqual(c.gateway, HostPort(host: "127.0.0.1", port: 9))
        XCTAssertEqual(c.serverName, "gw")
        XCTAssertEqual(c.connections, 4)
        XCTAssertTrue(c.plaintext)
        var t = Settings()
        _ = try parseCommandLine(["--gateway", "127.0.0.1:9"], flags: AgentConfig.flags, into: &t)
        XCTAssertThrowsError(try AgentConfig(t), "TLS without --ca is refused, not silently plaintext")
    }

    func testCommandLineEdgeCases() throws {
        var s = Settings()
        let rest = try parseCommandLine(["--", "-x", "--a=b=c", "--=v", "--local", "h:1", "--name=\u{E9}t\u{E9}", "--plaintext=false"],
                                        flags: AgentConfig.flags, into: &s)
        XCTAssertEqual(rest, ["--", "-x"], "'--' alone and single dashes are positional")
        XCTAssertEqual(s.items.map { $0.key + "|" + $0.value + "|" + $0.origin },
                       ["a|b=c|option --a", "|v|option --", "local|h:1|option --local", "name|\u{E9}t\u{E9}|option --name",
                        "plaintext|false|option --plaintext"])
        var t = Settings()
        XCTAssertThrowsError(try parseCommandLine(["--connections"], flags: [], into: &t)) {
            XCTAssertEqual(($0 as? ConfigError)?.message, "option --connections needs a value")
        }
    }

    func testIntDecimalAnswersLikeIntString() {
        let cases = ["0", "7", "+7", "-7", "-0", "+", "-", "", " 1", "1 ", "1_000", "0x10", "12a", "007",
                     "9223372036854775807", "9223372036854775808", "-9223372036854775808", "-9223372036854775809",
                     "99999999999999999999", "\u{661}", "+-1", "--1"]
        for c in cases { XCTAssertEqual(Int(decimal: c), Int(c), c) }
    }

    func testJournalFieldsInTheNativeProtocol() {
        var d: [UInt8] = []
        Systemd.appendJournalField("MESSAGE", "hi \u{E9}", to: &d)
        Systemd.appendJournalField("STREAM_ID", "", to: &d)
        XCTAssertEqual(d, Array("MESSAGE=hi \u{E9}\nSTREAM_ID=\n".utf8))
        var b: [UInt8] = []
        Systemd.appendJournalField("MESSAGE", "a\nb", to: &b)
        XCTAssertEqual(b, Array("MESSAGE\n".utf8) + [3, 0, 0, 0, 0, 0, 0, 0] + Array("a\nb\n".utf8),
                       "a value with a newline: binary form with its 64-bit little-endian length")
    }

    func testTCPPortsList() throws {
        func ports(_ value: String) throws -> [Int] {
            var s = Settings()
            _ = try parseCommandLine(["--gateway", "127.0.0.1:9", "--plaintext", "--tcp-ports", value], flags: AgentConfig.flags, into: &s)
            return try AgentConfig(s).tcpPorts
        }
        var none = Settings()
        _ = try parseCommandLine(["--gateway", "127.0.0.1:9", "--plaintext"], flags: AgentConfig.flags, into: &none)
        XCTAssertEqual(try AgentConfig(none).tcpPorts, [], "none by default: every CONNECT refused")
        XCTAssertEqual(try ports("22,5900"), [22, 5900])
        XCTAssertEqual(try ports(" 22 , 5900 ,22"), [22, 5900])
        XCTAssertEqual(try ports("1,65535"), [1, 65535])
        XCTAssertEqual(try ports(""), [])
        for bad in ["0", "65536", "22,", ",22", "22,,80", "2 2", "ssh", "-22", "100000", "22;80"] {
            XCTAssertThrowsError(try ports(bad), bad) {
                XCTAssertEqual(($0 as? ConfigError)?.message,
                               "option --tcp-ports: tcp_ports must be port numbers from 1 to 65535 separated by commas (22,5900), not '" + bad + "'")
            }
        }
    }

    func testHostPortParsing() {
        XCTAssertEqual(HostPort(parsing: "gw.example:8443"), HostPort(host: "gw.example", port: 8443))
        XCTAssertEqual(HostPort(parsing: "[::1]:80"), HostPort(host: "::1", port: 80))
        XCTAssertNil(HostPort(parsing: "::1:80"))
        XCTAssertNil(HostPort(parsing: "host"))
        XCTAssertNil(HostPort(parsing: "host:0"))
        XCTAssertNil(HostPort(parsing: "host:65536"))
        XCTAssertNil(HostPort(parsing: "host:8x"))
    }
}
