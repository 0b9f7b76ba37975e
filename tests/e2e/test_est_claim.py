"""Issue 17, the gateway's operations side of EST, with curl and openssl as the client:
claim certificates (`pki claim DIR NAME --devices GLOB`: simpleenroll of a name in the
glob, as AWS IoT fleet provisioning's claims; refused outside it, once revoked, on the
reversed listener and as a user's certificate); each device's certificate expiry and
last renewal on the admin API and in /metrics; enrollments waiting for approval kept
across a gateway restart."""

from __future__ import annotations

import json
import os
import signal
import socket
import ssl
import stat
import subprocess
import time

import e2e_lib as lib
from test_est_gateway import Client, admin, est_pki, gw, start  # noqa: F401  (est_pki: a fixture)


def claim(pki: lib.PKI, tmp_path, name: str, devices: str, *extra) -> tuple:
    out = tmp_path / "claims"
    r = subprocess.run([str(lib.gateway_bin()), "pki", "claim", str(pki.dir), name, "--devices", devices, "--out", str(out), *extra],
                       stdin=subprocess.DEVNULL, capture_output=True, timeout=60, env=lib.child_env(), text=True)
    assert r.returncode == 0, r.stderr
    assert "does nothing else" in r.stderr
    return out / f"{name}.crt", out / f"{name}.key"


def test_claim_enrolls_its_glob_then_the_device_connects(procs, est_pki, api, tmp_path):
    crt, key = claim(est_pki, tmp_path, "factory-a", "lab-*", "--expires", "30d")
    assert stat.S_IMODE(os.stat(key).st_mode) == 0o600
    text = subprocess.run(["openssl", "x509", "-noout", "-subject", "-enddate", "-in", str(crt)], capture_output=True,
                          text=True, check=True).stdout
    assert "OU = reversehttp-claim" in text and "CN = claim:factory-a" in text
    line, = [l for l in (est_pki.dir / "claims.txt").read_text().splitlines() if "\tfactory-a\t" in l]
    assert line.endswith("\tlab-*")
    g = start(procs, est_pki)
    c = Client(g, est_pki, tmp_path / "w")
    # A name in the glob, twice (a claim is not used up); one outside: 403.
    req, devkey = c.csr("lab-1")
    status, _, body = c.post("simpleenroll", req, "--cert", crt, "--key", key)
    assert status == 200, body
    cert = c.save(c.certs(body)[0], "lab-1.crt")
    req2, _ = c.csr("lab-2")
    assert c.post("simpleenroll", req2, "--cert", crt, "--key", key)[0] == 200
    req3, _ = c.csr("dev1.example")
    status, _, body = c.post("simpleenroll", req3, "--cert", crt, "--key", key)
    assert status == 403 and b"claim factory-a is for lab-*" in body
    # A claim does not renew.
    assert c.post("simplereenroll", req2, "--cert", crt, "--key", key)[0] == 403

    # The enrolled certificate is a device's: it connects, and the admin API shows its expiry.
    a = api("lab-1")
    lib.start_agent(procs, g.device_port, pki=est_pki, device="lab-1", local_port=a.port, cert=cert, key=devkey, connections=1)
    r = lib.wait_device(g, "lab-1")
    assert r.status == 200
    st, body = admin(g, "GET", "/devices/lab-1")
    d = json.loads(body)
    not_after = int(subprocess.run(["date", "-d", subject_end(cert), "+%s"], capture_output=True, text=True, check=True).stdout)
    assert st == 200 and d["certificate_not_after"] == not_after, d
    assert d["certificate_expires_in_days"] in (29, 30) and abs(d["last_renewal"] - (time.time() - 300)) < 120, d
    assert d["certificate_serial"] and d["certificate_serial"] in (est_pki.dir / "issued.txt").read_text()
    m = admin(g, "GET", "/metrics")[1].decode()
    days_min = float(m.split("\nrhttp_device_cert_expiry_days_min ")[1].split()[0])
    assert 29.9 < days_min <= 30, m
    assert 'rhttp_device_cert_expiry_days_bucket{le="30"} 1' in m and 'rhttp_device_cert_expiry_days_bucket{le="21"} 0' in m
    assert 'rhttp_est_requests_total{op="simpleenroll",result="ok"} 2' in m
    assert 'rhttp_est_requests_total{op="simpleenroll",result="refused"} 1' in m
    assert 'rhttp_est_requests_total{op="simplereenroll",result="refused"} 1' in m
    assert 'rhttp_est_requests_total{op="simplereenroll",result="ok"} 0' in m

    # Revoked: refused at once (revoked.txt), and after a reload at the handshake (CRL).
    gw("pki", "revoke-claim", est_pki.dir, "factory-a")
    req4, _ = c.csr("lab-4")
    status, _, body = c.post("simpleenroll", req4, "--cert", crt, "--key", key)
    assert status == 403 and b"revoked" in body


def subject_end(cert) -> str:
    out = subprocess.run(["openssl", "x509", "-noout", "-enddate", "-in", str(cert)], capture_output=True, text=True, check=True).stdout
    return out.strip().split("=", 1)[1]


def test_claim_is_never_a_device_nor_a_user(procs, est_pki, api, tmp_path):
    crt, key = claim(est_pki, tmp_path, "factory-b", "*")
    gw("pki", "issue", est_pki.dir, "dev1.example")
    gw("pki", "issue-user", est_pki.dir, "alice")
    policy = tmp_path / "policy"
    policy.write_text("allow user:* *\n")
    g = lib.start_gateway(procs, est_pki, public_tls=True, extra=["--pki-dir", est_pki.dir, "--access-policy", policy])
    # On the reversed listener (ALPN h2), with our agent and with openssl: refused.
    lib.start_agent(procs, g.device_port, pki=est_pki, device="dev1.example", local_port=lib.closed_port(),
                    cert=crt, key=key, connections=1)
    line = g.proc.wait_log("is a claim (OU=reversehttp-claim")
    assert 'CN "claim:factory-b"' in line and "never a device" in line
    before = g.log().count("is a claim")
    subprocess.run(["openssl", "s_client", "-connect", f"127.0.0.1:{g.device_port}", "-alpn", "h2",
                    "-CAfile", str(est_pki.ca), "-cert", str(crt), "-key", str(key)], input=b"", capture_output=True, timeout=30)
    lib.wait_until(lambda: g.log().count("is a claim") > before, 10, "a second refusal")
    assert "device connected" not in g.log()

    # As a user's certificate on the HTTPS public listener: no principal (401); alice's works.
    a = api("dev1.example")
    lib.start_agent(procs, g.device_port, pki=est_pki, device="dev1.example", local_port=a.port, connections=1)
    g.proc.wait_log("device connected")
    url = f"https://127.0.0.1:{g.public_port}/device"
    users = est_pki.dir / "users"

    def curl(*args):
        r = subprocess.run(["curl", "-sS", "--max-time", "10", "-o", "/dev/null", "-w", "%{http_code}", "--cacert", str(est_pki.ca),
                            "-H", "Host: dev1.example", *[str(x) for x in args], url], capture_output=True, text=True, timeout=30)
        return r.stdout

    lib.wait_until(lambda: curl("--cert", users / "alice.crt", "--key", users / "alice.key") == "200", 20, "alice through")
    assert curl("--cert", crt, "--key", key) == "401"
    assert curl() == "401"


def test_pending_enrollment_survives_a_restart(procs, est_pki, tmp_path):
    g = start(procs, est_pki, "--enroll-approval", "manual")
    c = Client(g, est_pki, tmp_path / "w")
    token = gw("pki", "enroll-token", est_pki.dir, "dev20.example")
    req, _ = c.csr("dev20.example")
    assert c.post("simpleenroll", req, "-u", "x:" + token)[0] == 202
    path = est_pki.dir / "enroll-approvals"
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600 and "dev20.example\tpending" in path.read_text()
    g.proc.stop()

    g2 = start(procs, est_pki, "--enroll-approval", "manual")
    c2 = Client(g2, est_pki, tmp_path / "w2")
    entries = json.loads(admin(g2, "GET", "/enrollments")[1])
    assert [(e["name"], e["state"]) for e in entries] == [("dev20.example", "pending")]
    assert c2.post("simpleenroll", req, "-u", "x:" + token)[0] == 202
    assert "rhttp_est_enrollments_pending 1" in admin(g2, "GET", "/metrics")[1].decode()
    assert admin(g2, "POST", "/enrollments/dev20.example/approve")[0] == 200
    g2.proc.stop()

    g3 = start(procs, est_pki, "--enroll-approval", "manual")
    c3 = Client(g3, est_pki, tmp_path / "w3")
    status, _, body = c3.post("simpleenroll", req, "-u", "x:" + token)
    assert status == 200, body
    assert "CN = dev20.example" in subprocess.run(["openssl", "x509", "-noout", "-subject", "-in", str(c3.save(c3.certs(body)[0], "d.crt"))],
                                                   capture_output=True, text=True, check=True).stdout
    assert json.loads(admin(g3, "GET", "/enrollments")[1]) == []


def test_expired_token_is_401_and_a_csr_with_another_cn_is_403(procs, est_pki, tmp_path):
    import re
    g = start(procs, est_pki)
    c = Client(g, est_pki, tmp_path / "w")
    token = gw("pki", "enroll-token", est_pki.dir, "dev30.example")
    # Expired: the file says so (the shortest --expires is a minute; the gateway reads the file each time).
    f = est_pki.dir / "enroll-tokens"
    f.write_text(re.sub(r"expires=\d+", f"expires={int(time.time()) - 10}", f.read_text()))
    req, _ = c.csr("dev30.example")
    status, _, body = c.post("simpleenroll", req, "-u", "x:" + token)
    assert status == 401 and b"expired" in body, body
    # A CSR whose CN is not the token's name: 403, and the token stays usable for its name.
    token = gw("pki", "enroll-token", est_pki.dir, "dev31.example")
    other, _ = c.csr("dev32.example")
    status, _, body = c.post("simpleenroll", other, "-u", "x:" + token)
    assert status == 403 and b"dev31.example" in body
    req, key = c.csr("dev31.example")
    status, _, body = c.post("simpleenroll", req, "-u", "x:" + token)
    assert status == 200, body
    cert = c.save(c.certs(body)[0], "dev31.crt")
    # A renewal must keep the subject: another CN is 403.
    other, _ = c.csr("dev33.example")
    status, _, body = c.post("simplereenroll", other, "--cert", cert, "--key", key)
    assert status == 403, body
