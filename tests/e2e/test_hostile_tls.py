"""Hostile TLS on the device listener (issue 8, "Hostile input").

A device must present a certificate from the fleet CA, valid now, usable for
TLS client authentication, whose CN is one hostname. Each case here dials the
device listener with such a flaw and checks: the gateway never speaks HTTP/2 to
it (no SETTINGS), closes the connection within a bounded time, never registers
the name, and keeps serving a real device (dev2.example).

Elsewhere: a device from another CA (test_tunnel.py::test_device_cert_from_foreign_ca_is_refused,
EngineTests/TLSTests), a revoked one (test_gateway_fleet.py::test_revoked_device_is_refused),
a gateway certificate for another name (test_tunnel.py::test_agent_refuses_gateway_cert_with_wrong_name).
"""

from __future__ import annotations

import json
import http.client
import ssl
import time

import pytest

import e2e_lib as lib
import hostile_lib as hl

REFUSE_WITHIN_S = 5.0
RSS_TOLERANCE_MIB = 16.0
FD_TOLERANCE = 4


@pytest.fixture(scope="module")
def env(module_procs, module_api, pki, tmp_path_factory):
    gw = lib.start_gateway(module_procs, pki, name="gateway-hostile-tls", log_level="info",
                           extra=["--check-interval-ms", "0", "--handshake-timeout-ms", "3000"])
    a2 = module_api("dev2.example")
    lib.start_agent(module_procs, gw.device_port, pki=pki, device="dev2.example", local_port=a2.port,
                    connections=1, log_level="info")
    assert lib.wait_device(gw, "dev2.example").status == 200
    certs = tmp_path_factory.mktemp("bad-certs")
    return {"gw": gw, "pki": pki, "certs": certs, "rss": lib.rss_mib(gw.proc.pid), "fds": hl.fd_count(gw.proc.pid)}


def registered(gw) -> set:
    c = http.client.HTTPConnection("127.0.0.1", gw.admin_port, timeout=10)
    try:
        c.request("GET", "/devices")
        return {d["name"] for d in json.loads(c.getresponse().read())}
    finally:
        c.close()


def assert_refused(env, ctx: ssl.SSLContext, name: str):
    gw = env["gw"]
    t0 = time.monotonic()
    got = b""
    try:
        s = hl.dial_device(gw, ctx, timeout=REFUSE_WITHIN_S)
        s.sendall(hl.MAGIC + hl.settings())
        r = hl.FrameReader(s)
        fr = r.next(REFUSE_WITHIN_S)
        got = repr(fr).encode() if fr else b""
        closed = r.eof
        s.close()
    except (ssl.SSLError, ConnectionResetError, BrokenPipeError):
        closed = True  # refused in the handshake: a TLS alert
    dt = time.monotonic() - t0
    assert not got, f"the gateway spoke HTTP/2 to a device it must refuse: {got[:200]!r}"
    assert closed and dt < REFUSE_WITHIN_S, f"not closed within {REFUSE_WITHIN_S}s (closed={closed}, {dt:.1f}s)"
    assert name not in registered(gw)
    r = lib.request(gw.public_port, "GET", "/device", "dev2.example")
    assert r.status == 200 and r.body == b"dev2.example"


CASES = {
    # id: (subject, extensions, start, end)
    "expired": ("/CN=dev9.example", "client", "20200101000000Z", "20200201000000Z"),
    "not-yet-valid": ("/CN=dev9.example", "client", "20990101000000Z", "20991231000000Z"),
    "server-auth-only": ("/CN=dev9.example", "server_only", None, None),
    "no-digital-signature": ("/CN=dev9.example", "no_signature", None, None),
    "cn-not-a-hostname": ("/CN=dev_9 example!", "client", None, None),
    "cn-wildcard": ("/CN=*.example", "client", None, None),
    "cn-trailing-dot": ("/CN=dev9.example.", "client", None, None),
    "cn-ip-address": ("/CN=127.0.0.1", "client", None, None),
    "two-cns": ("/CN=dev9.example/CN=dev2.example", "client", None, None),
    "no-cn": ("/O=fleet", "client", None, None),
}


@pytest.mark.parametrize("case", list(CASES))
def test_flawed_device_certificate_is_refused(env, case):
    subject, ext, start, end = CASES[case]
    crt, key = hl.sign_device_cert(env["pki"], env["certs"], subject, extensions=ext, start=start, end=end)
    assert_refused(env, hl.device_tls(env["pki"], crt, key), "dev9.example")


def test_no_client_certificate_is_refused(env):
    assert_refused(env, hl.device_tls(env["pki"], None, None), "dev9.example")


def test_certificate_from_another_ca_is_refused(env):
    pki = env["pki"]
    assert_refused(env, hl.device_tls(pki, pki.foreign_device_cert("dev1.example"),
                                      pki.foreign_device_key("dev1.example")), "dev1.example")


def test_silent_tls_client_is_dropped_at_the_handshake_timeout(env):
    """A client that connects and never sends a ClientHello (or stops mid-handshake)
    holds its descriptor no longer than handshake_timeout_ms."""
    import socket
    gw = env["gw"]
    t0 = time.monotonic()
    s = socket.create_connection(("127.0.0.1", gw.device_port), timeout=10)
    data, closed = lib.read_until_close(s, 10)
    s.close()
    dt = time.monotonic() - t0
    assert closed and dt < 3.0 + 2, f"closed={closed} after {dt:.1f}s"


def test_resources_after_the_refusals(env):
    """Last: 20 more refused handshakes of each kind, then memory and fds."""
    pki = env["pki"]
    crt, key = hl.sign_device_cert(pki, env["certs"], "/CN=dev9.example", start="20200101000000Z",
                                   end="20200201000000Z")
    contexts = [hl.device_tls(pki, crt, key), hl.device_tls(pki, None, None)]
    for _ in range(20):
        for ctx in contexts:
            try:
                s = hl.dial_device(env["gw"], ctx)
                s.sendall(hl.MAGIC)
                s.recv(10)
                s.close()
            except (ssl.SSLError, OSError):
                pass
    pid = env["gw"].proc.pid
    fds = hl.wait_fds_at_most(pid, env["fds"] + FD_TOLERANCE, 10)
    rss = lib.rss_mib(pid)
    print(f"\nhostile TLS: gateway RSS {env['rss']:.1f} -> {rss:.1f} MiB, fds {env['fds']} -> {fds}")
    assert rss - env["rss"] < RSS_TOLERANCE_MIB
