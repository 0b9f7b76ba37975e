// One-time enrollment tokens (issue 17): created with a secret shown once, used
// once (also by two consumers at once), bound to a name or globs, expiring.
import FleetAccess
import Foundation
import TLS
import XCTest

final class EnrollmentTokensTests: XCTestCase {
    func tempDir() throws -> String {
        let dir = NSTemporaryDirectory() + "rh-enroll-" + UUID().uuidString
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        addTeardownBlock { try? FileManager.default.removeItem(atPath: dir) }
        return dir
    }

    func fileText(_ dir: String) -> String {
        (try? String(contentsOfFile: EnrollmentTokens.path(directory: dir), encoding: .utf8)) ?? ""
    }

    func consume(_ dir: String, _ secret: String, _ name: String, now: Int64 = 1_500) -> Result<EnrollmentBinding, EnrollmentTokenError> {
        Self.consume(dir, secret, name, now: now)
    }

    static func consume(_ dir: String, _ secret: String, _ name: String, now: Int64 = 1_500) -> Result<EnrollmentBinding, EnrollmentTokenError> {
        do throws(EnrollmentTokenError) {
            return .success(try EnrollmentTokens.consume(directory: dir, secret: secret, forName: name, now: now))
        } catch {
            return .failure(error)
        }
    }

    func testCreateKeepsOnlyTheHashAndWorksOnce() throws {
        let dir = try tempDir()
        let secret = try EnrollmentTokens.create(directory: dir, binding: "dev1.example", lifetime: 86_400, now: 1_000)
        XCTAssertTrue(EnrollmentTokens.isWellFormedSecret(secret))
        XCTAssertTrue(secret.hasPrefix("rhe_"))
        let text = fileText(dir)
        XCTAssertFalse(text.contains(secret.dropFirst(4)), "the file never holds the secret")
        let hash = sha256(Array(secret.utf8)).map { ($0 < 16 ? "0" : "") + String($0, radix: 16) }.joined()
        XCTAssertTrue(text.contains(hash + " name=dev1.example created=1000 expires=87400 used=-\n"), text)
        var st = stat()
        XCTAssertEqual(stat(EnrollmentTokens.path(directory: dir), &st), 0)
        XCTAssertEqual(st.st_mode & 0o007, 0, "not readable by others")

        // Another name: refused, and the token stays usable.
        XCTAssertEqual(consume(dir, secret, "dev2.example"), .failure(.wrongName("dev2.example", binding: "dev1.example")))
        XCTAssertEqual(consume(dir, secret, "DEV1.example"), .failure(.wrongName("DEV1.example", binding: "dev1.example")))
        guard case .success(let binding) = consume(dir, secret, "dev1.example") else { return XCTFail() }
        XCTAssertEqual(binding.exactName, "dev1.example")
        XCTAssertTrue(fileText(dir).contains("used=1500:dev1.example"))
        // Once only.
        XCTAssertEqual(consume(dir, secret, "dev1.example", now: 1_600), .failure(.used(at: 1_500, by: "dev1.example")))
        // Unknown and malformed secrets.
        XCTAssertEqual(consume(dir, "rhe_" + String(repeating: "A", count: 43), "dev1.example"), .failure(.unknown))
        XCTAssertEqual(consume(dir, "rht_" + String(secret.dropFirst(4)), "dev1.example"), .failure(.unknown))
        XCTAssertEqual(consume(dir, "", "dev1.example"), .failure(.unknown))
        XCTAssertEqual(consume(try tempDir(), secret, "dev1.example"), .failure(.unknown), "no file: unknown")
    }

    func testExpiryAndGlobs() throws {
        let dir = try tempDir()
        let secret = try EnrollmentTokens.create(directory: dir, binding: "dev-*,*.lab.example", lifetime: 3_600, now: 1_000)
        XCTAssertEqual(consume(dir, secret, "dev-1", now: 4_600), .failure(.expired(at: 4_600)))
        XCTAssertEqual(consume(dir, secret, "prod-1", now: 4_599), .failure(.wrongName("prod-1", binding: "dev-*,*.lab.example")))
        guard case .success(let b) = consume(dir, secret, "x.lab.example", now: 4_599) else { return XCTFail() }
        XCTAssertNil(b.exactName)
        XCTAssertTrue(b.allows("dev-7"))
        XCTAssertFalse(b.allows("DEV-7"), "names are canonical")
        XCTAssertEqual(consume(dir, secret, "dev-2", now: 4_599), .failure(.used(at: 4_599, by: "x.lab.example")))
    }

    func testLookupDoesNotUse() throws {
        let dir = try tempDir()
        let exact = try EnrollmentTokens.create(directory: dir, binding: "dev1.example", lifetime: 100, now: 1_000)
        let glob = try EnrollmentTokens.create(directory: dir, binding: "dev-*", lifetime: 100, now: 1_000)
        XCTAssertEqual(try EnrollmentTokens.lookup(directory: dir, secret: exact, now: 1_050).exactName, "dev1.example")
        XCTAssertNil(try EnrollmentTokens.lookup(directory: dir, secret: glob, now: 1_050).exactName)
        XCTAssertThrowsError(try EnrollmentTokens.lookup(directory: dir, secret: exact, now: 1_100)) { e in
            XCTAssertEqual(e as? EnrollmentTokenError, .expired(at: 1_100))
        }
        XCTAssertTrue(fileText(dir).components(separatedBy: "used=-").count == 3, "still unused")
        _ = try EnrollmentTokens.consume(directory: dir, secret: exact, forName: "dev1.example", now: 1_060)
        XCTAssertThrowsError(try EnrollmentTokens.lookup(directory: dir, secret: exact, now: 1_070)) { e in
            XCTAssertEqual(e as? EnrollmentTokenError, .used(at: 1_060, by: "dev1.example"))
        }
        XCTAssertThrowsError(try EnrollmentTokens.lookup(directory: dir, secret: "rhe_x", now: 1_070)) { e in
            XCTAssertEqual(e as? EnrollmentTokenError, .unknown)
        }
    }

    func testBadBindingsAndLifetimes() throws {
        let dir = try tempDir()
        for bad in ["DEV1", "10.0.0.1", "a b", "", "dev-*, x", "Dev-*", "localhost\n"] {
            XCTAssertThrowsError(try EnrollmentTokens.create(directory: dir, binding: bad, lifetime: 60, now: 0), bad)
        }
        XCTAssertThrowsError(try EnrollmentTokens.create(directory: dir, binding: "d", lifetime: 0, now: 0))
        XCTAssertThrowsError(try EnrollmentTokens.create(directory: dir, binding: "d", lifetime: 36_501 * 86_400, now: 0))
        XCTAssertEqual(fileText(dir), "", "nothing written")
    }

    /// Two consumers at once (two threads, separate opens of the directory lock, as
    /// two processes would): exactly one of them gets the token, every time.
    func testConcurrentConsumersGetItOnce() throws {
        let dir = try tempDir()
        var secrets: [String] = []
        for _ in 0..<10 {
            secrets.append(try EnrollmentTokens.create(directory: dir, binding: "dev-*", lifetime: 86_400, now: 1_000))
        }
        for secret in secrets {
            let results = Results()
            let group = DispatchGroup()
            for name in ["dev-a", "dev-b"] {
                group.enter()
                DispatchQueue.global().async {
                    results.add(EnrollmentTokensTests.consume(dir, secret, name))
                    group.leave()
                }
            }
            XCTAssertEqual(group.wait(timeout: .now() + 30), .success)
            let all = results.all
            XCTAssertEqual(all.count, 2)
            XCTAssertEqual(all.filter { if case .success = $0 { return true }; return false }.count, 1, "\(all)")
            XCTAssertEqual(all.filter { if case .failure(.used) = $0 { return true }; return false }.count, 1, "\(all)")
        }
        let tokens = try EnrollmentTokens.load(path: EnrollmentTokens.path(directory: dir))
        XCTAssertEqual(tokens.entries.count, 10)
        XCTAssertTrue(tokens.entries.allSatisfy { $0.used != nil })
    }

    func testFileFormat() throws {
        let h = String(repeating: "ab", count: 32)
        let text = "# keep me\r\n\(h) used=- expires=20 created=10 name=d.example\n\n"
        var tokens = try EnrollmentTokens.parse(text, file: "f")
        XCTAssertEqual(tokens.entries.count, 1)
        XCTAssertEqual(tokens.formatted(), "# keep me\r\n\(h) name=d.example created=10 expires=20 used=-\n\n")
        XCTAssertEqual(try EnrollmentTokens.parse(tokens.formatted(), file: "f").formatted(), tokens.formatted())
        XCTAssertThrowsError(try tokens.use(secret: "nope", forName: "d.example", now: 0))
        for (bad, why) in [
            ("\(h) name=d created=1 expires=2", "f:1: expected"),
            ("\(h) name=d created=1 expires=2 used=- used=-", "given twice"),
            ("\(h) name=D created=1 expires=2 used=-", "name=:"),
            ("\(h) name=d created=x expires=2 used=-", "created="),
            ("\(h) name=d created=1 expires=2 used=5", "used="),
            ("\(h) name=d created=1 expires=2 used=5:NOT", "used="),
            ("\(h) name=d created=1 expires=2 used=- x=1", "unknown field"),
            ("\(h) name=d created=1 expires=2 used=- junk", "key=value"),
            ("abcd name=d created=1 expires=2 used=-", "expected"),
            ("\(h) name=d created=1 expires=2 used=-\n\(h) name=e created=1 expires=2 used=-", "f:2: the same token twice"),
        ] {
            XCTAssertThrowsError(try EnrollmentTokens.parse(bad, file: "f"), bad) { e in
                XCTAssertTrue(String(describing: e).contains(why), "\(bad): \(e)")
            }
        }
        XCTAssertThrowsError(try EnrollmentTokens.parse(String(repeating: "#", count: (1 << 20) + 1), file: "f"))
    }
}

private final class Results: @unchecked Sendable {
    private let lock = NSLock()
    private var items: [Result<EnrollmentBinding, EnrollmentTokenError>] = []
    func add(_ r: Result<EnrollmentBinding, EnrollmentTokenError>) { lock.lock(); items.append(r); lock.unlock() }
    var all: [Result<EnrollmentBinding, EnrollmentTokenError>] { lock.lock(); defer { lock.unlock() }; return items }
}
