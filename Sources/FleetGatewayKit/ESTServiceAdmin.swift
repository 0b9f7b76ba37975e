// ESTService's operator side: the admin API's approve and deny of enrollments on
// hold (`enroll_approval = manual`), and its counters for /metrics. Enrollments are
// simpleenroll, renewals simplereenroll; results are ESTService.results, a fixed set.
import FleetPKI
import HTTP1

extension ESTService {
    /// Approves the waiting enrollment of `name`: the certificate is signed now and
    /// handed out when the device asks again. The status and text for the operator.
    func approve(_ name: String) -> (Int, String) {
        guard let entry = approvals.pending(name) else { return (404, "no enrollment of " + name + " waits for approval") }
        let client = ESTClient(address: entry.address)
        let answer = issue(entry.request, name: name, earlier: .refuse, op: .simpleenroll, client: client)
        guard answer.head.status == 200 else {
            return (answer.head.status == 500 ? 500 : 409, String(decoding: answer.body, as: UTF8.self))
        }
        approvals.decide(name, answer: answer, now: now())
        logger.notice("admin: approved the enrollment of " + name)
        return (200, "approved")
    }

    func deny(_ name: String) -> (Int, String) {
        guard approvals.pending(name) != nil else { return (404, "no enrollment of " + name + " waits for approval") }
        approvals.decide(name, answer: .error(403, "the enrollment of " + name + " was denied"), now: now())
        logger.notice("admin: denied the enrollment of " + name)
        return (200, "denied")
    }

    /// The counters as Prometheus text.
    func export(_ p: inout PrometheusText) {
        p.family("rhttp_est_requests_total", "counter",
                 "EST requests by op (cacerts; simpleenroll: enrollments; simplereenroll: renewals) and result.")
        // Enrollments and renewals: every result, zeros included (rates from the first scrape).
        for op in Operation.allCases {
            for result in ESTService.results {
                let n = counts[op.rawValue + " " + result] ?? 0
                guard op != .cacerts || n > 0 else { continue }
                p.sample("rhttp_est_requests_total", [("op", op.rawValue), ("result", result)], Double(n))
            }
        }
        p.family("rhttp_est_enrollments_pending", "gauge", "Enrollments waiting for an operator's approval (enroll_approval = manual).")
        p.sample("rhttp_est_enrollments_pending", [], Double(approvals.entries.values.filter { $0.state == .pending }.count))
    }
}
