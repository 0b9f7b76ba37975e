// A binary min-heap of deadlines. Cancellation is lazy: a cancelled timer's
// callback is dropped from `callbacks` and its heap entry skipped when it surfaces,
// or dropped with the others when cancelled entries are most of the heap (every
// request arms and cancels timeouts of tens of seconds: without that, the heap
// grew by ~16 bytes a request for as long as those timeouts, 20 MB at 25k req/s).

public struct TimerID: Hashable {
    let raw: UInt64
}

struct TimerQueue {
    private struct Entry {
        var deadline: UInt64
        var id: UInt64
    }

    private var heap: [Entry] = []
    private var callbacks: [UInt64: () -> Void] = [:]
    private var nextID: UInt64 = 1

    var isEmpty: Bool { callbacks.isEmpty }
    var count: Int { callbacks.count }
    /// Heap entries, cancelled ones included.
    var entries: Int { heap.count }

    mutating func add(deadline: UInt64, _ callback: @escaping () -> Void) -> TimerID {
        let id = nextID
        nextID += 1
        callbacks[id] = callback
        heap.append(Entry(deadline: deadline, id: id))
        siftUp(heap.count - 1)
        return TimerID(raw: id)
    }

    mutating func cancel(_ timer: TimerID) {
        callbacks[timer.raw] = nil
        if callbacks.isEmpty {
            heap.removeAll(keepingCapacity: true)
        } else if heap.count > 64 && heap.count > 2 * callbacks.count {
            compact()
        }
    }

    /// Drops every cancelled entry and restores the heap order: O(n), once per
    /// n/2 cancellations at most.
    private mutating func compact() {
        var live: [Entry] = []
        live.reserveCapacity(callbacks.count * 2)
        for e in heap where callbacks[e.id] != nil { live.append(e) }
        heap = live
        var i = heap.count / 2 - 1
        while i >= 0 {
            siftDown(i)
            i -= 1
        }
    }

    /// The earliest live deadline, discarding cancelled entries on top.
    mutating func nextDeadline() -> UInt64? {
        while let top = heap.first {
            if callbacks[top.id] != nil { return top.deadline }
            popTop()
        }
        return nil
    }

    /// Removes and returns the callbacks of every timer due at `now`, in deadline order.
    mutating func popDue(now: UInt64) -> [() -> Void] {
        var due: [() -> Void] = []
        while let top = heap.first, top.deadline <= now {
            popTop()
            if let cb = callbacks.removeValue(forKey: top.id) { due.append(cb) }
        }
        return due
    }

    private mutating func popTop() {
        let last = heap.removeLast()
        if !heap.isEmpty {
            heap[0] = last
            siftDown(0)
        }
    }

    private func less(_ a: Entry, _ b: Entry) -> Bool {
        a.deadline < b.deadline || (a.deadline == b.deadline && a.id < b.id)
    }

    private mutating func siftUp(_ start: Int) {
        var i = start
        while i > 0 {
            let parent = (i - 1) / 2
            if !less(heap[i], heap[parent]) { break }
            heap.swapAt(i, parent)
            i = parent
        }
    }

    private mutating func siftDown(_ start: Int) {
        var i = start
        let n = heap.count
        while true {
            let l = 2 * i + 1
            let r = l + 1
            var m = i
            if l < n && less(heap[l], heap[m]) { m = l }
            if r < n && less(heap[r], heap[m]) { m = r }
            if m == i { return }
            heap.swapAt(i, m)
            i = m
        }
    }
}
