// Micro-benchmark of AccessPolicy.decide (run by bench/policy_decide.sh, which compiles
// it with the FleetAccess policy sources, -O, outside SwiftPM).
import CLibc
func now() -> Double { Double(rh_monotonic_ns()) / 1e9 }
let text = """
allow group:fleet-ops dev-*,gw-*
allow group:fleet-dev dev-* methods=GET,HEAD paths=/api/,/metrics from=10.0.0.0/8,fd00::/8
allow email:*@example.com dev-* methods=GET paths=/status
allow user:oncall-* * ports=22,5900
deny sub:banned-* *
deny anyone gw-* paths=/admin,/debug/ from=0.0.0.0/0,::/0
allow token:ci dev-lab-? methods=POST,PUT paths=/api/firmware
allow authenticated cam-* methods=get
allow token:t1 dev1
allow token:t2 dev2
allow token:t3 dev3 methods=GET
allow token:t4 dev4 paths=/a/
allow token:t5 dev5
allow token:t6 dev6
allow token:t7 dev7
allow token:t8 dev8
allow token:t9 dev9
deny token:t10 *
allow token:t11 dev11
allow token:bench dev-bench methods=GET paths=/api/ from=127.0.0.0/8
"""
let p = try! AccessPolicy.parse(text, file: "bench")
let reqs = [
  AccessRequest(principal: Principal(method: .token, name: "bench"), device: "dev-bench", method: "GET", path: "/api/v1/items?x=1", source: "127.0.0.1"),
  AccessRequest(principal: Principal(method: .jwt, name: "u1", email: "a@example.com", groups: ["fleet-dev"]), device: "dev-7", method: "GET", path: "/api/x", source: "10.2.3.4"),
  AccessRequest(principal: nil, device: "dev-7", method: "GET", path: "/", source: "192.0.2.1"),
]
for r in reqs {
  var n = 0
  let t0 = now()
  for _ in 0..<1_000_000 { if p.decide(r).allowed { n += 1 } }
  let dt = now() - t0
  print(p.decide(r), "ns/decide:", Int(dt * 1000), "allowed:", n)
}
var big = ""
for i in 0..<10_000 { big += "allow token:t\(i) dev\(i % 50),cam-* methods=GET paths=/api/ from=10.\(i % 256).0.0/16\n" }
let t0 = now()
let bp = try! AccessPolicy.parse(big, file: "big")
print("parse 10k rules, ms:", Int((now() - t0) * 1000))
let r = AccessRequest(principal: Principal(method: .token, name: "t9999"), device: "dev49", method: "GET", path: "/api/x", source: "10.15.1.1")
let t1 = now()
for _ in 0..<1000 { _ = bp.decide(r) }
print("10k rules, us/decide:", Int((now() - t1) * 1000))
