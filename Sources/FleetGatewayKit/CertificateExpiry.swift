// Device certificates' expiry, as the admin API and /metrics show it (issue 17).
// A device's certificate is the newest (latest notAfter) among the certificates its
// open connections presented: after a renewal the agent rolls its connections to
// the new one, and until then the old connection still counts. Its "last renewal"
// is that certificate's notBefore: the time it was issued (the fleet CA backdates
// notBefore by 5 minutes for clock skew), whether by `pki issue`, simpleenroll or
// simplereenroll. issued.txt records serials without times, so it cannot say more.
//
//   rhttp_device_cert_expiry_days_min   gauge: the least days left over online devices
//   rhttp_device_cert_expiry_days       histogram over online devices, one observation
//                                       per device per scrape (a gauge histogram)
import FleetPKI

enum CertificateExpiry {
    /// Upper bounds of the days-to-expiry histogram.
    static let dayBuckets: [Double] = [1, 3, 7, 14, 21, 30, 60, 90, 180, 365]

    /// The certificate that stands for a device: the one that expires last.
    static func newest(_ certificates: [PresentedCertificate]) -> PresentedCertificate? {
        certificates.max { $0.notAfter < $1.notAfter }
    }

    static func daysLeft(_ notAfter: Int64, now: Int64) -> Double {
        Double(notAfter - now) / 86_400
    }

    /// The device's certificate fields of GET /devices (null without a certificate).
    static func json(_ c: PresentedCertificate?, now: Int64) -> [(String, String)] {
        guard let c else {
            return [("certificate_serial", "null"), ("certificate_not_after", "null"), ("certificate_expires_in_days", "null"),
                    ("last_renewal", "null")]
        }
        return [("certificate_serial", JSON.string(c.serial)), ("certificate_not_after", String(c.notAfter)),
                ("certificate_expires_in_days", String(Int64(daysLeft(c.notAfter, now: now).rounded(.down)))),
                ("last_renewal", String(c.notBefore))]
    }

    /// The gauge and the histogram for the devices' notAfter times; nothing when no
    /// online device has a certificate (a plaintext listener).
    static func export(_ p: inout PrometheusText, notAfters: [Int64], now: Int64) {
        guard !notAfters.isEmpty else { return }
        let days = notAfters.map { daysLeft($0, now: now) }
        p.family("rhttp_device_cert_expiry_days_min", "gauge", "Least days until an online device's certificate expires.")
        p.sample("rhttp_device_cert_expiry_days_min", [], days.min() ?? 0)
        p.family("rhttp_device_cert_expiry_days", "histogram", "Online devices by days until their certificate expires.")
        for bound in dayBuckets {
            p.sample("rhttp_device_cert_expiry_days_bucket", [("le", String(Int(bound)))], Double(days.filter { $0 <= bound }.count))
        }
        p.sample("rhttp_device_cert_expiry_days_bucket", [("le", "+Inf")], Double(days.count))
        p.sample("rhttp_device_cert_expiry_days_sum", [], days.reduce(0, +))
        p.sample("rhttp_device_cert_expiry_days_count", [], Double(days.count))
    }
}
