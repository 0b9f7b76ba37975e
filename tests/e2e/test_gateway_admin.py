"""The operator's interface: /devices, /metrics, the status page, disconnect, and
the access log. Checked for content, not only status codes."""

from __future__ import annotations

import http.client
import json
import re
import time

import e2e_lib as lib
from e2e_lib import request


def admin(gw, method, path):
    c = http.client.HTTPConnection("127.0.0.1", gw.admin_port, timeout=10)
    c.request(method, path)
    r = c.getresponse()
    body = r.read()
    c.close()
    return r.status, r.getheader("Content-Type"), body


def _fleet(procs, api, pki, extra=()):
    gw = lib.start_gateway(procs, pki, extra=["--check-interval-ms", "200", "--check-path", "/health", *extra])
    agents = {}
    for dev, n in (("dev1.example", 2), ("dev2.example", 1)):
        a = api(dev)
        agents[dev] = lib.start_agent(procs, gw.device_port, pki=pki, device=dev, local_port=a.port, connections=n)
        lib.wait_device(gw, dev)
    gw.proc.wait_log("dev1.example is up", timeout=10)
    gw.proc.wait_log("dev2.example is up", timeout=10)
    return gw, agents


def test_devices_json_lists_devices_health_and_connections(procs, api, pki):
    gw, _ = _fleet(procs, api, pki)
    lib.wait_until(lambda: len(json.loads(admin(gw, "GET", "/devices")[2])[0]["connections"]) == 2, 10,
                   "both connections of dev1 registered")
    status, ctype, body = admin(gw, "GET", "/devices")
    assert status == 200 and ctype == "application/json"
    devices = {d["name"]: d for d in json.loads(body)}
    assert set(devices) == {"dev1.example", "dev2.example"}
    d1 = devices["dev1.example"]
    assert d1["hostname"] == "dev1.example" and d1["health"] == "up"
    assert abs(d1["health_since"] - time.time()) < 60 and d1["last_check_latency_ms"] is not None
    assert len(d1["connections"]) == 2 and len(devices["dev2.example"]["connections"]) == 1
    c = d1["connections"][0]
    assert c["remote"].startswith("127.0.0.1:") and c["bytes_in"] > 0 and c["bytes_out"] > 0
    assert c["max_concurrent_streams"] == 100 and c["streams_in_flight"] == 0
    status, _, body = admin(gw, "GET", "/devices/dev2.example")
    assert status == 200 and json.loads(body)["name"] == "dev2.example"
    assert admin(gw, "GET", "/devices/nope.example")[0] == 404


def test_metrics_count_requests_devices_and_checks(procs, api, pki):
    gw, _ = _fleet(procs, api, pki)
    for _ in range(5):
        assert request(gw.public_port, "GET", "/device", "dev1.example").status == 200
    assert request(gw.public_port, "GET", "/status/404", "dev2.example").status == 404
    assert request(gw.public_port, "GET", "/", "nobody.example").status == 503
    status, ctype, body = admin(gw, "GET", "/metrics")
    text = body.decode()
    assert status == 200 and ctype.startswith("text/plain")

    def metric(name, labels=""):
        m = re.search(r"^" + re.escape(name + labels) + r" (\S+)$", text, re.M)
        assert m, f"{name}{labels} missing:\n{text}"
        return float(m.group(1))
    assert metric("rhttp_devices_connected") == 2
    assert metric("rhttp_devices_healthy", '{state="up"}') == 2
    assert metric("rhttp_device_connections") == 3
    assert metric("rhttp_requests_total", '{code="2xx"}') >= 5
    assert metric("rhttp_requests_total", '{code="4xx"}') >= 1
    assert metric("rhttp_requests_total", '{code="5xx"}') >= 1
    assert metric("rhttp_request_duration_seconds_count") >= 7
    assert metric("rhttp_request_duration_seconds_bucket", '{le="+Inf"}') == metric("rhttp_request_duration_seconds_count")
    assert metric("rhttp_health_checks_total", '{result="success"}') >= 4
    assert metric("rhttp_device_connections_accepted_total") >= 3
    assert metric("rhttp_device_bytes_total", '{direction="in"}') > 0


def test_status_page_and_disconnect(procs, api, pki):
    gw, agents = _fleet(procs, api, pki)
    status, ctype, body = admin(gw, "GET", "/")
    assert status == 200 and ctype.startswith("text/html")
    assert b"dev1.example" in body and b"dev2.example" in body and b"up" in body
    status, _, body = admin(gw, "POST", "/devices/dev2.example/disconnect")
    assert status == 200 and json.loads(body) == {"disconnected": 1}
    agents["dev2.example"].wait_log("closed", timeout=10)
    # The agent re-dials; the device comes back.
    lib.wait_device(gw, "dev2.example")
    assert admin(gw, "GET", "/devices/dev2.example")[0] == 200
    assert admin(gw, "DELETE", "/devices")[0] == 405


def test_access_log_lines(procs, api, pki):
    gw, _ = _fleet(procs, api, pki)
    assert request(gw.public_port, "GET", "/device?x=1", "dev1.example").status == 200
    line = gw.proc.wait_log("path=/device?x=1", timeout=5)
    assert "device=dev1.example" in line and "conn=" in line
    for field in ("client=127.0.0.1:", "host=dev1.example", "method=GET", "status=200", "bytes=12", "duration_ms="):
        assert field in line, line


def test_admin_refuses_web_pages(procs, api, pki):
    """A page in an operator's browser must not drive the admin API: requests with
    an Origin, or a Host that is a domain name (DNS rebinding), are refused."""
    gw = lib.start_gateway(procs, pki)
    for headers in ({"Origin": "http://attacker.example"}, {"Host": "attacker.example"}):
        c = http.client.HTTPConnection("127.0.0.1", gw.admin_port, timeout=10)
        c.request("POST", "/devices/dev1.example/disconnect", headers=headers)
        r = c.getresponse()
        assert r.status == 403, (headers, r.status)
        c.close()
    assert admin(gw, "GET", "/devices")[0] == 200
