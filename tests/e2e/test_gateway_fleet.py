"""The gateway for fleets: no needless 503s (requests wait for a free stream or a
re-dialing device), health checks over the devices' own connections."""

from __future__ import annotations

import concurrent.futures
import time

import e2e_lib as lib
from e2e_lib import request


def test_150_concurrent_requests_on_one_connection_of_100_streams_all_succeed(procs, api, pki):
    gw = lib.start_gateway(procs, pki)
    a = api("dev1.example")
    lib.start_agent(procs, gw.device_port, pki=pki, device="dev1.example", local_port=a.port, connections=1,
                    extra=["--max-concurrent-streams", "100"])
    lib.wait_device(gw, "dev1.example")
    with concurrent.futures.ThreadPoolExecutor(max_workers=150) as ex:
        statuses = list(ex.map(lambda i: request(gw.public_port, "GET", "/sleep/300", "dev1.example",
                                                 timeout=30).status, range(150)))
    assert statuses == [200] * 150, {s: statuses.count(s) for s in set(statuses)}


def test_requests_during_a_redial_wait_for_the_device(procs, api, pki):
    gw = lib.start_gateway(procs, pki, extra=["--grace-ms", "8000"])
    a = api("dev1.example")
    agent = lib.start_agent(procs, gw.device_port, pki=pki, device="dev1.example", local_port=a.port, connections=1)
    lib.wait_device(gw, "dev1.example")
    agent.kill()
    gw.proc.wait_log("device connection closed", timeout=10)
    with concurrent.futures.ThreadPoolExecutor(max_workers=8) as ex:
        futures = [ex.submit(request, gw.public_port, "GET", "/device", "dev1.example", timeout=20) for _ in range(8)]
        time.sleep(0.5)  # the requests are waiting: the device is re-dialing
        lib.start_agent(procs, gw.device_port, pki=pki, device="dev1.example", local_port=a.port, connections=1,
                        name="dev1-back")
        statuses = [f.result().status for f in futures]
    assert statuses == [200] * 8, statuses


def test_a_host_never_connected_gets_503_at_once(procs, pki):
    gw = lib.start_gateway(procs, pki, extra=["--grace-ms", "8000"])
    t0 = time.monotonic()
    r = request(gw.public_port, "GET", "/", "never.example")
    assert r.status == 503 and r.header("Retry-After")
    assert time.monotonic() - t0 < 1.0


def test_health_checks_mark_a_failing_device_down_then_up(procs, api, pki):
    gw = lib.start_gateway(procs, pki, extra=["--check-interval-ms", "200", "--check-path", "/health",
                                              "--check-rise", "2", "--check-fall", "3"])
    a = api("dev1.example")
    lib.start_agent(procs, gw.device_port, pki=pki, device="dev1.example", local_port=a.port, connections=1)
    lib.wait_device(gw, "dev1.example")
    gw.proc.wait_log("dev1.example is up", timeout=10)
    a.healthy = False
    checks = a.health_checks
    gw.proc.wait_log("dev1.example is down", timeout=10)
    assert a.health_checks - checks >= 3, "down only after `fall` failed checks"
    t0 = time.monotonic()
    r = request(gw.public_port, "GET", "/device", "dev1.example")
    assert r.status == 503 and "down" in r.text, (r.status, r.text)
    assert time.monotonic() - t0 < 1.0, "a down device's requests are answered at once"
    a.healthy = True
    gw.proc.wait_log("dev1.example is up (was down)", timeout=10)
    assert request(gw.public_port, "GET", "/device", "dev1.example").status == 200


def test_frozen_device_is_dropped_within_the_ping_bound(procs, api, pki):
    import os
    import signal
    gw = lib.start_gateway(procs, pki, extra=["--idle-ping-ms", "500", "--grace-ms", "500"])
    a = api("dev1.example")
    agent = lib.start_agent(procs, gw.device_port, pki=pki, device="dev1.example", local_port=a.port, connections=1)
    lib.wait_device(gw, "dev1.example")
    os.kill(agent.pid, signal.SIGSTOP)
    try:
        t0 = time.monotonic()
        gw.proc.wait_log("unresponsive", timeout=10)
        assert time.monotonic() - t0 < 3.0
        t1 = time.monotonic()
        r = request(gw.public_port, "GET", "/device", "dev1.example", timeout=10)
        assert r.status == 503 and time.monotonic() - t1 < 2.0, (r.status, time.monotonic() - t1)
    finally:
        os.kill(agent.pid, signal.SIGCONT)


def test_lost_connection_retries_safe_requests_and_fails_the_others_at_once(procs, api, pki):
    import threading
    gw = lib.start_gateway(procs, pki, extra=["--grace-ms", "8000"])
    a = api("dev1.example")
    first = lib.start_agent(procs, gw.device_port, pki=pki, device="dev1.example", local_port=a.port, connections=1)
    lib.wait_device(gw, "dev1.example")
    out = {}
    get = threading.Thread(target=lambda: out.__setitem__("get", request(gw.public_port, "GET", "/sleep/1500",
                                                                         "dev1.example", timeout=20)))
    post = threading.Thread(target=lambda: out.__setitem__("post", request(gw.public_port, "POST", "/sleep/1500",
                                                                           "dev1.example", body=b"x" * 10, timeout=20)))
    before = a.requests
    get.start()
    post.start()
    lib.wait_until(lambda: a.requests >= before + 2, 10, "both requests at the device", interval=0.01)
    t0 = time.monotonic()
    first.kill()  # the connection is lost under both requests
    lib.start_agent(procs, gw.device_port, pki=pki, device="dev1.example", local_port=a.port, connections=1,
                    name="dev1-second")
    post.join(20)
    get.join(20)
    assert out["post"].status == 502, "a request with a body cannot be repeated: 502, not a timeout"
    assert out["get"].status == 200, (out["get"].status, out["get"].text)
    assert "retrying GET /sleep/1500" in gw.proc.log()
    assert time.monotonic() - t0 < 10


def test_allow_list_refuses_other_names(procs, api, pki):
    gw = lib.start_gateway(procs, pki, extra=["--allow-devices", "dev1.*"])
    a1, a2 = api("dev1.example"), api("dev2.example")
    lib.start_agent(procs, gw.device_port, pki=pki, device="dev1.example", local_port=a1.port, connections=1)
    lib.start_agent(procs, gw.device_port, pki=pki, device="dev2.example", local_port=a2.port, connections=1)
    lib.wait_device(gw, "dev1.example")
    gw.proc.wait_log("dev2.example from", timeout=10)
    assert "not in allow_devices" in gw.proc.log()
    assert request(gw.public_port, "GET", "/device", "dev2.example").status == 503


def test_same_name_joins_and_the_oldest_connection_goes_beyond_the_limit(procs, api, pki):
    """A second agent with the same certificate (a rebooted device) joins instead of
    being refused; over max_connections_per_device the oldest connection is closed.
    It never serves another device's hostname."""
    gw = lib.start_gateway(procs, pki, extra=["--max-connections-per-device", "1"])
    a, b = api("dev1.example"), api("dev2.example")
    old = lib.start_agent(procs, gw.device_port, pki=pki, device="dev1.example", local_port=a.port, connections=1,
                          name="dev1-old")
    lib.start_agent(procs, gw.device_port, pki=pki, device="dev2.example", local_port=b.port, connections=1)
    lib.wait_device(gw, "dev1.example")
    lib.wait_device(gw, "dev2.example")
    lib.start_agent(procs, gw.device_port, pki=pki, device="dev1.example", local_port=a.port, connections=1,
                    name="dev1-new")
    old.wait_log("gateway is going away", timeout=10)
    gw.proc.wait_log("over max_connections_per_device", timeout=10)
    for _ in range(10):
        assert request(gw.public_port, "GET", "/device", "dev1.example").body == b"dev1.example"
        assert request(gw.public_port, "GET", "/device", "dev2.example").body == b"dev2.example"


def test_gateway_sighup_reloads_without_dropping_tunnels(procs, api, pki, tmp_path):
    import signal
    conf = tmp_path / "gateway.conf"
    dport, pport, aport = lib.free_port(), lib.free_port(), lib.free_port()
    base = (f"listen_devices = 127.0.0.1:{dport}\nlisten_public = 127.0.0.1:{pport}\nlisten_admin = 127.0.0.1:{aport}\n"
            f"ca = {pki.ca}\ncert = {pki.gateway_cert}\nkey = {pki.gateway_key}\n")
    conf.write_text(base)
    proc = procs.start("gateway-conf", [lib.gateway_bin(), "--config", conf])
    proc.wait_log("devices on", timeout=10)
    gw = lib.Gateway(proc, dport, pport, admin_port=aport)
    a1, a2 = api("dev1.example"), api("dev2.example")
    ag1 = lib.start_agent(procs, dport, pki=pki, device="dev1.example", local_port=a1.port, connections=1)
    lib.start_agent(procs, dport, pki=pki, device="dev2.example", local_port=a2.port, connections=1)
    lib.wait_device(gw, "dev1.example")
    lib.wait_device(gw, "dev2.example")
    conf.write_text(base + "allow_devices = dev1.*\nresponse_timeout_ms = 2000\n")
    proc.popen.send_signal(signal.SIGHUP)
    proc.wait_log("reload done", timeout=10)
    proc.wait_log("dev2.example is no longer in allow_devices", timeout=10)
    assert request(pport, "GET", "/device", "dev1.example").status == 200
    assert "closed" not in ag1.log(), "dev1's tunnel stays up across the reload"
    conf.write_text(base + "bogus_key = 1\n")
    proc.popen.send_signal(signal.SIGHUP)
    proc.wait_log("reload refused", timeout=10)
    assert request(pport, "GET", "/device", "dev1.example").status == 200


def test_revoked_device_is_refused(procs, api, pki, tmp_path):
    """`pki revoke` lists the certificate in the CRL; a gateway started with --crl
    refuses that device's TLS handshake and still takes the others."""
    import shutil
    import subprocess
    d = tmp_path / "pki"
    shutil.copytree(pki.dir, d)
    subprocess.run([str(lib.gateway_bin()), "pki", "revoke", str(d), "dev2.example"], check=True, capture_output=True)
    assert (d / "crl.pem").exists()
    gw = lib.start_gateway(procs, pki, extra=["--crl", str(d / "crl.pem")])
    a1, a2 = api("dev1.example"), api("dev2.example")
    lib.start_agent(procs, gw.device_port, pki=pki, device="dev1.example", local_port=a1.port, connections=1)
    lib.start_agent(procs, gw.device_port, pki=pki, device="dev2.example", local_port=a2.port, connections=1)
    lib.wait_device(gw, "dev1.example")
    gw.proc.wait_log("certificate revoked", timeout=10)
    assert request(gw.public_port, "GET", "/device", "dev2.example").status == 503


def test_revoking_a_connected_device_cuts_its_tunnel_on_sighup(procs, api, pki, tmp_path):
    import shutil
    import signal
    import subprocess
    d = tmp_path / "pki"
    shutil.copytree(pki.dir, d)
    subprocess.run([str(lib.gateway_bin()), "pki", "crl", str(d)], check=True, capture_output=True)
    conf = tmp_path / "gateway.conf"
    dport, pport, aport = lib.free_port(), lib.free_port(), lib.free_port()
    conf.write_text(f"listen_devices = 127.0.0.1:{dport}\nlisten_public = 127.0.0.1:{pport}\n"
                    f"listen_admin = 127.0.0.1:{aport}\nca = {pki.ca}\ncert = {pki.gateway_cert}\n"
                    f"key = {pki.gateway_key}\ncrl = {d / 'crl.pem'}\n")
    proc = procs.start("gateway-crl", [lib.gateway_bin(), "--config", conf])
    proc.wait_log("devices on", timeout=10)
    gw = lib.Gateway(proc, dport, pport, admin_port=aport)
    a1, a2 = api("dev1.example"), api("dev2.example")
    lib.start_agent(procs, dport, pki=pki, device="dev1.example", local_port=a1.port, connections=1)
    lib.start_agent(procs, dport, pki=pki, device="dev2.example", local_port=a2.port, connections=1)
    lib.wait_device(gw, "dev1.example")
    lib.wait_device(gw, "dev2.example")
    subprocess.run([str(lib.gateway_bin()), "pki", "revoke", str(d), "dev1.example"], check=True, capture_output=True)
    proc.popen.send_signal(signal.SIGHUP)
    proc.wait_log("dev1.example's certificate no longer verifies", timeout=10)
    lib.wait_until(lambda: request(pport, "GET", "/device", "dev1.example").status == 503, 15, "dev1 to be cut")
    assert request(pport, "GET", "/device", "dev2.example").status == 200


def test_hostname_isolation_under_load_to_many_devices(procs, api, pki):
    """Eight devices, 800 concurrent requests spread over them: every answer comes
    from the device its Host named."""
    devices = [f"node{i}.example" for i in range(8)]
    for dev in devices:
        lib.run_pki(["issue", pki.dir, dev, "--force"])
    gw = lib.start_gateway(procs, pki, extra=["--access-log", "false"])
    for dev in devices:
        a = api(dev)
        lib.start_agent(procs, gw.device_port, pki=pki, device=dev, local_port=a.port, connections=2,
                        log_level="warning")
    for dev in devices:
        lib.wait_device(gw, dev)

    def one(i):
        dev = devices[(i * 5 + i // 7) % len(devices)]
        r = request(gw.public_port, "GET", f"/echo?i={i}", dev, timeout=30)
        doc = r.json() if r.status == 200 else {}
        return dev, r.status, r.header("X-Device"), doc.get("device"), doc.get("path")

    with concurrent.futures.ThreadPoolExecutor(max_workers=64) as ex:
        results = list(ex.map(one, range(800)))
    wrong = [(i, r) for i, r in enumerate(results)
             if not (r[1] == 200 and r[2] == r[0] and r[3] == r[0] and r[4] == f"/echo?i={i}")]
    assert not wrong, f"{len(wrong)} of 800 wrong, e.g. {wrong[:3]}"
