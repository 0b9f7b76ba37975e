import Bytes
import XCTest

final class ByteQueueTests: XCTestCase {
    private func bytes(_ q: ByteQueue) -> [UInt8] { Array(q.readable) }

    func testAppendConsumeKeepsOrderAcrossGrowthAndCompaction() {
        let q = ByteQueue(retainLimit: 1 << 20)
        var model: [UInt8] = []
        var next: UInt8 = 0
        // Deterministic mix of appends and partial consumes that forces growth and moves.
        for round in 0..<2_000 {
            let n = (round * 7919) % 5000
            var chunk = [UInt8](repeating: 0, count: n)
            for i in 0..<n { chunk[i] = next; next &+= 1 }
            q.append(chunk)
            model += chunk
            let take = min(model.count, (round * 104_729) % 6000)
            q.consume(take)
            model.removeFirst(take)
            XCTAssertEqual(q.count, model.count)
        }
        XCTAssertEqual(bytes(q), model)
    }

    func testEmptyQueueGivesLargeStorageBack() {
        let q = ByteQueue(retainLimit: 64 * 1024)
        q.append([UInt8](repeating: 1, count: 300_000))
        XCTAssertGreaterThanOrEqual(q.capacity, 300_000)
        q.consume(300_000)
        XCTAssertEqual(q.capacity, 0, "over the retain limit: freed once empty")
        q.append([1, 2, 3])
        q.consume(3)
        XCTAssertGreaterThan(q.capacity, 0, "small storage is kept for the next write")
        q.releaseIfEmpty()
        XCTAssertEqual(q.capacity, 0)
        XCTAssertTrue(q.readable.isEmpty)
    }

    func testTransientLimitGivesSmallStorageBackWhenEmptyAndKeepsMidSizedStorage() {
        let q = ByteQueue(retainLimit: 256 * 1024)
        q.transientLimit = ByteQueue.smallStorage
        q.append([UInt8](repeating: 1, count: 100))
        XCTAssertGreaterThan(q.capacity, 0)
        q.consume(50)
        XCTAssertGreaterThan(q.capacity, 0, "not empty yet: kept")
        q.consume(50)
        XCTAssertEqual(q.capacity, 0, "small storage: freed once empty")
        q.append([1, 2])
        q.removeAll()
        XCTAssertEqual(q.capacity, 0, "removeAll frees small storage too")
        // A bulk transfer's storage (above malloc's mmap threshold) stays for the next write.
        q.append([UInt8](repeating: 2, count: 40_000))
        q.consume(40_000)
        XCTAssertGreaterThanOrEqual(q.capacity, 40_000)
        q.releaseIfEmpty()
        XCTAssertEqual(q.capacity, 0)
        q.append([3, 4, 5])
        XCTAssertEqual(bytes(q), [3, 4, 5])
    }

    func testTakeMovesEverything() {
        let q = ByteQueue()
        q.append([1, 2, 3, 4])
        q.consume(1)
        var out: [UInt8] = [9]
        q.take(into: &out)
        XCTAssertEqual(out, [9, 2, 3, 4])
        XCTAssertTrue(q.isEmpty)
        q.take(into: &out)
        XCTAssertEqual(out, [9, 2, 3, 4])
    }

    func testRemoveAllAndEmptyAppends() {
        let q = ByteQueue()
        q.append([])
        XCTAssertTrue(q.isEmpty)
        q.append([5, 6])
        q.removeAll()
        XCTAssertEqual(q.count, 0)
        q.append([7])
        XCTAssertEqual(bytes(q), [7])
    }
}
