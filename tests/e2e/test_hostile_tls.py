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
import os
import shutil
import signal
import ssl
import subprocess
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


# ------------------------------------------------- issue 12: names (findings 4, 9) and suites (14)

NAME_CASES = {
    # id: (subject, the name it must not register as, what the gateway logs)
    "cn-upper-case": ("/CN=DEV9.EXAMPLE", "dev9.example", "not in canonical form"),
    "cn-mixed-case-of-a-connected-device": ("/CN=Dev2.example", "Dev2.example", "not in canonical form"),
    "cn-localhost": ("/CN=localhost", "localhost", "takes the reserved name localhost"),
    "cn-under-localhost": ("/CN=dev9.localhost", "dev9.localhost", "takes the reserved name dev9.localhost"),
    "cn-the-gateways-name": ("/CN=gw.example", "gw.example", "takes the reserved name gw.example"),
}


@pytest.mark.parametrize("case", list(NAME_CASES))
def test_device_certificate_for_a_name_it_must_not_have_is_refused(env, case):
    """A certificate the fleet CA signed (by another tool than `pki issue`) whose CN is not
    in canonical lower-case form, or is one of the gateway's own names: refused with a
    clear log line, never registered, never merged into the device of the same name."""
    subject, name, logged = NAME_CASES[case]
    crt, key = hl.sign_device_cert(env["pki"], env["certs"], subject)
    before = len(env["gw"].proc.log())
    assert_refused(env, hl.device_tls(env["pki"], crt, key), name)
    lib.wait_until(lambda: logged in env["gw"].proc.log()[before:], 5, f"the log line '{logged}'")
    assert registered(env["gw"]) == {"dev2.example"}


def pki_cli(*args) -> subprocess.CompletedProcess:
    return subprocess.run([str(lib.gateway_bin()), "pki", *map(str, args)], capture_output=True, text=True,
                          timeout=60, stdin=subprocess.DEVNULL, env=lib.child_env())


def accepted(gw, ctx: ssl.SSLContext) -> bool:
    """True when the gateway completes the handshake and speaks HTTP/2 (a SETTINGS frame)."""
    try:
        s = hl.dial_device(gw, ctx, timeout=REFUSE_WITHIN_S)
        s.sendall(hl.MAGIC + hl.settings())
        fr = hl.FrameReader(s).next(REFUSE_WITHIN_S)
        s.close()
        return fr is not None and fr[0] == 0x4
    except (ssl.SSLError, ConnectionResetError, BrokenPipeError):
        return False


def test_replaced_certificate_is_refused_after_sighup(procs, tmp_path):
    """`pki issue NAME --force` revokes the certificate it replaces: once the gateway
    reloads the CRL (SIGHUP), the old one (a copy kept elsewhere) no longer attaches,
    and a tunnel up with it is cut."""
    d = tmp_path / "pki"
    r = pki_cli("init", d, "--name", "gw.example", "--san", "127.0.0.1")
    assert r.returncode == 0, r.stderr
    assert pki_cli("issue", d, "dev5.example").returncode == 0
    assert pki_cli("crl", d).returncode == 0
    old_crt, old_key = tmp_path / "old.crt", tmp_path / "old.key"
    shutil.copy(d / "devices" / "dev5.example.crt", old_crt)
    shutil.copy(d / "devices" / "dev5.example.key", old_key)
    os.chmod(old_key, 0o600)

    mine = lib.PKI(dir=d, foreign_dir=d)
    gw = lib.start_gateway(procs, mine, name="gateway-force", log_level="info",
                           extra=["--check-interval-ms", "0", "--crl", d / "crl.pem"])
    old = hl.device_tls(mine, old_crt, old_key)
    assert accepted(gw, old)
    # A tunnel that stays up with the old certificate.
    up = hl.dial_device(gw, old)
    up.sendall(hl.MAGIC + hl.settings())
    reader = hl.FrameReader(up)
    assert reader.next(REFUSE_WITHIN_S) is not None

    r = pki_cli("issue", d, "dev5.example", "--force")
    assert r.returncode == 0, r.stderr
    gw.proc.popen.send_signal(signal.SIGHUP)
    gw.proc.wait_log("reload done", timeout=10)
    assert not accepted(gw, old), "the replaced certificate still attaches"
    new = hl.device_tls(mine, d / "devices" / "dev5.example.crt", d / "devices" / "dev5.example.key")
    assert accepted(gw, new)
    gw.proc.wait_log("dev5.example's certificate no longer verifies", timeout=10)
    lib.wait_until(lambda: reader.until(lambda fr: False, timeout=0.2) is None and reader.eof, 10,
                   "the old certificate's tunnel to close")
    up.close()
    assert "revoked the earlier certificate" in r.stderr and "SIGHUP" in r.stderr, r.stderr

    # revoke by serial, and by name in another case: the new one goes too.
    serial = subprocess.run(["openssl", "x509", "-noout", "-serial", "-in", d / "devices" / "dev5.example.crt"],
                            capture_output=True, text=True, check=True).stdout.strip().split("=")[1]
    r = pki_cli("revoke", d, "--serial", serial)
    assert r.returncode == 0 and "(dev5.example) revoked" in r.stderr, r.stderr
    r = pki_cli("revoke", d, "DEV5.Example")
    assert r.returncode == 0 and "dev5.example revoked already" in r.stderr, r.stderr
    gw.proc.popen.send_signal(signal.SIGHUP)
    lib.wait_until(lambda: gw.proc.log().count("reload done") >= 2, 10, "the second reload")
    assert not accepted(gw, new)


def test_pki_device_names_are_canonical_case_insensitive_and_not_reserved(tmp_path):
    d = tmp_path / "pki"
    assert pki_cli("init", d, "--name", "gw.example", "--san", "127.0.0.1").returncode == 0
    assert pki_cli("issue", d, "dev5.example").returncode == 0
    for refused, why in [("DEV5.EXAMPLE", "canonical"), ("Dev6.example", "canonical"), ("localhost", "reserved"),
                         ("gw.example", "reserved")]:
        r = pki_cli("issue", d, refused)
        assert r.returncode == 1 and why in r.stderr, (refused, r.stderr)
    assert sorted(p.name for p in (d / "devices").iterdir()) == [f"dev5.example.{x}" for x in ("crt", "key", "pem")]
    r = pki_cli("revoke", d, "DEV5.EXAMPLE")
    assert r.returncode == 0 and "dev5.example revoked (serial" in r.stderr, r.stderr


def tls12_device(pki, cipher: str) -> ssl.SSLContext:
    ctx = hl.device_tls(pki, pki.device_cert("dev1.example"), pki.device_key("dev1.example"))
    ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    ctx.set_ciphers(cipher)
    return ctx


def test_tls12_device_listener_accepts_only_ecdhe_aead_suites(procs, pki):
    """tls_min = 1.2: a CBC / SHA-1 suite (RFC 9113 Appendix A) is refused in the
    handshake; ECDHE with AES-GCM or ChaCha20-Poly1305 is accepted. The PKI makes
    EC P-256 keys, hence the ECDSA suites."""
    gw = lib.start_gateway(procs, pki, name="gateway-tls12", log_level="info",
                           extra=["--check-interval-ms", "0", "--tls-min", "1.2"])
    for cipher in ["ECDHE-ECDSA-AES128-SHA", "ECDHE-ECDSA-AES256-SHA", "ECDHE-ECDSA-AES128-SHA256"]:
        assert not accepted(gw, tls12_device(pki, cipher)), cipher
    for cipher in ["ECDHE-ECDSA-AES128-GCM-SHA256", "ECDHE-ECDSA-CHACHA20-POLY1305"]:
        assert accepted(gw, tls12_device(pki, cipher)), cipher
