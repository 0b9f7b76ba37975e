"""Issue 17, the agent side of EST (RFC 7030) on loopback.

- From a one-time token (in a 0600 file) and no certificate, the agent makes its key
  (0600), enrolls at the real fleet-gateway's device listener, writes the
  certificate (leaf + issuing CA, no root), then connects with it and answers.
- Renewal: a tiny EST server in Python (ssl + cryptography, signing with the issuing
  CA of `fleet-gateway pki init --issuing-ca`) issues certificates valid 30 s; the
  agent enrolls there, connects to the real gateway, re-enrolls at about two thirds
  of the life with a new key over a connection showing its certificate, and rolls
  its connections onto the new certificate (awaited in the logs, not slept).
"""

from __future__ import annotations

import base64
import datetime
import http.server
import os
import ssl
import stat
import subprocess
import threading
import time
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.serialization import pkcs7
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

import e2e_lib as lib


def gw(*args) -> str:
    r = subprocess.run([str(lib.gateway_bin())] + [str(a) for a in args], stdin=subprocess.DEVNULL,
                       capture_output=True, timeout=60, env=lib.child_env(), text=True)
    assert r.returncode == 0, f"fleet-gateway {args}: {r.stderr}"
    return r.stdout.strip()


@pytest.fixture
def est_pki(tmp_path) -> lib.PKI:
    d = tmp_path / "pki"
    gw("pki", "init", d, "--name", "gw.example", "--san", "127.0.0.1", "--issuing-ca")
    gw("pki", "crl", d)
    return lib.PKI(dir=d, foreign_dir=d)


def mode(p: Path) -> int:
    return stat.S_IMODE(p.stat().st_mode)


def pem_certs(p: Path) -> list[x509.Certificate]:
    return x509.load_pem_x509_certificates(p.read_bytes())


def enrolling_agent(procs, g_port: int, pki: lib.PKI, tmp_path: Path, name: str, local_port: int, token: str,
                    extra: list | None = None) -> tuple[lib.Proc, Path, Path]:
    dev = tmp_path / "dev"
    dev.mkdir()
    token_file = dev / "enroll.token"
    token_file.write_text(token + "\n")
    token_file.chmod(0o600)
    cert, key = dev / "device.crt", dev / "device.key"
    agent = lib.start_agent(procs, g_port, pki=pki, device=name, local_port=local_port, cert=cert, key=key, connections=2,
                            extra=["--enroll-token-file", token_file] + (extra or []))
    return agent, cert, key


def test_agent_enrolls_with_a_token_then_connects(procs, est_pki, api, tmp_path):
    g = lib.start_gateway(procs, est_pki, extra=["--pki-dir", est_pki.dir])
    token = gw("pki", "enroll-token", est_pki.dir, "dev21.example")
    a = api("dev21.example")
    agent, cert, key = enrolling_agent(procs, g.device_port, est_pki, tmp_path, "dev21.example", a.port, token)
    agent.wait_log("new certificate written", timeout=30)
    r = lib.wait_device(g, "dev21.example")
    assert r.status == 200 and r.body == b"dev21.example"
    assert mode(key) == 0o600
    assert b"BEGIN PRIVATE KEY" in key.read_bytes()
    certs = pem_certs(cert)
    assert len(certs) == 2, "leaf and issuing CA, not the root"
    assert certs[0].subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "dev21.example"
    assert certs[1].subject == certs[0].issuer and certs[1].issuer != certs[1].subject
    assert not list(cert.parent.glob("*.tmp"))
    # Restarted, the agent uses the certificate it has: the token (used up) is not asked for.
    agent.popen.terminate()
    agent.popen.wait(timeout=20)
    a2 = lib.start_agent(procs, g.device_port, pki=est_pki, device="dev21.example", local_port=a.port, cert=cert, key=key,
                         extra=["--enroll-token-file", cert.parent / "enroll.token"], name="dev21.example")
    a2.wait_log("connected to", timeout=30)
    assert "enrolling" not in a2.log()


def test_a_used_token_is_logged_once_and_retried(procs, est_pki, api, tmp_path):
    g = lib.start_gateway(procs, est_pki, extra=["--pki-dir", est_pki.dir])
    a = api("dev22.example")
    agent, cert, _ = enrolling_agent(procs, g.device_port, est_pki, tmp_path, "dev22.example", a.port, "rhe_" + "A" * 43)
    agent.wait_log("again: enrollment failed: /simpleenroll: 401", timeout=30)
    assert agent.log().count("enrollment failed: /simpleenroll: 401") >= 2
    assert agent.log().count("(retrying with backoff)") == 1, "logged once"
    assert agent.log().count("enrolling as dev22.example") == 1
    assert not cert.exists()


# --------------------------------------------------------------------------- a tiny EST server

class ShortLivedEST:
    """RFC 7030 cacerts/simpleenroll/simplereenroll over TLS (ALPN http/1.1), issuing
    certificates valid `seconds` from the PKI's issuing CA."""

    def __init__(self, pki: lib.PKI, token: str, seconds: int, pending: int = 0):
        d = Path(pki.dir)
        self.chain = x509.load_pem_x509_certificates((d / "ca.crt").read_bytes())
        self.ca_cert = self.chain[0]
        self.ca_key = serialization.load_pem_private_key((d / "ca.key").read_bytes(), None)
        self.token, self.seconds, self.pending = token, seconds, pending
        self.requests: list[tuple[str, float]] = []  # (operation, time.monotonic())
        self.issued: list[tuple[str, int]] = []  # (operation, serial)
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(d / "gateway.crt", d / "gateway.key")
        ctx.load_verify_locations(d / "ca.crt")
        ctx.verify_mode = ssl.CERT_OPTIONAL
        ctx.set_alpn_protocols(["http/1.1"])
        est = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def answer(self, status: int, body: bytes, ctype: str = "text/plain", fields=()):
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                for k, v in fields:
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(body)))
                self.send_header("Connection", "close")
                self.end_headers()
                self.wfile.write(body)

            def certs(self, certs):
                body = base64.encodebytes(pkcs7.serialize_certificates(certs, serialization.Encoding.DER))
                self.answer(200, body, "application/pkcs7-mime; smime-type=certs-only", [("Content-Transfer-Encoding", "base64")])

            def do_GET(self):
                if self.path != "/.well-known/est/cacerts":
                    return self.answer(404, b"not found")
                self.certs(est.chain)

            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                op = self.path.rsplit("/", 1)[-1]
                est.requests.append((op, time.monotonic()))
                csr = x509.load_der_x509_csr(base64.b64decode(body))
                assert csr.is_signature_valid
                cn = csr.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value
                if op == "simpleenroll":
                    auth = self.headers.get("Authorization", "")
                    user, _, tok = base64.b64decode(auth.split(" ", 1)[1]).decode().partition(":") if auth else ("", "", "")
                    if tok != est.token or user != cn:
                        return self.answer(401, b"bad token", fields=[("WWW-Authenticate", 'Basic realm="EST"')])
                    if est.pending > 0:  # manual approval: "ask again later"
                        est.pending -= 1
                        return self.answer(202, b"", fields=[("Retry-After", "1")])
                elif op == "simplereenroll":
                    peer = self.connection.getpeercert()
                    if not peer:
                        return self.answer(403, b"no client certificate")
                else:
                    return self.answer(404, b"not found")
                now = datetime.datetime.now(datetime.timezone.utc)
                cert = (x509.CertificateBuilder().subject_name(csr.subject).issuer_name(est.ca_cert.subject)
                        .public_key(csr.public_key()).serial_number(x509.random_serial_number())
                        .not_valid_before(now - datetime.timedelta(seconds=1))
                        .not_valid_after(now + datetime.timedelta(seconds=est.seconds))
                        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
                        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
                        .add_extension(x509.SubjectAlternativeName([x509.DNSName(cn)]), critical=False)
                        .sign(est.ca_key, hashes.SHA256()))
                est.issued.append((op, cert.serial_number))
                self.certs([cert])

        class Server(http.server.ThreadingHTTPServer):
            daemon_threads = True

            def get_request(self):
                sock, addr = self.socket.accept()
                return ctx.wrap_socket(sock, server_side=True), addr

        self.server = Server(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


def test_agent_renews_and_rolls_its_connections(procs, est_pki, api, tmp_path):
    est = ShortLivedEST(est_pki, "rhe_short", seconds=30)
    try:
        g = lib.start_gateway(procs, est_pki, extra=["--pki-dir", est_pki.dir])
        a = api("dev23.example")
        agent, cert, key = enrolling_agent(procs, g.device_port, est_pki, tmp_path, "dev23.example", a.port, "rhe_short",
                                           extra=["--est-server", f"127.0.0.1:{est.port}"])
        agent.wait_log("new certificate written", timeout=30)
        assert lib.wait_device(g, "dev23.example").status == 200
        first_serial = pem_certs(cert)[0].serial_number
        first_key = key.read_bytes()
        # About two thirds of 30 s (±1.5 s) later: a re-enrollment, then the roll.
        agent.wait_log("connections rolled to the renewed certificate", timeout=45)
        assert [op for op, _ in est.issued] == ["simpleenroll", "simplereenroll"]
        assert pem_certs(cert)[0].serial_number == est.issued[1][1] != first_serial
        assert key.read_bytes() != first_key and mode(key) == 0o600
        r = lib.request(g.public_port, "GET", "/device", "dev23.example")
        assert r.status == 200 and r.body == b"dev23.example"
        # The first certificate has expired by the time of the second renewal; the
        # connections on the renewed one keep serving.
        lib.wait_until(lambda: agent.log().count("connections rolled to the renewed certificate") >= 2, 45, "the second roll")
        assert lib.request(g.public_port, "GET", "/device", "dev23.example").status == 200
    finally:
        est.close()


def test_agent_waits_for_approval_then_enrolls(procs, est_pki, api, tmp_path):
    est = ShortLivedEST(est_pki, "rhe_wait", seconds=3600, pending=1)
    try:
        g = lib.start_gateway(procs, est_pki, extra=["--pki-dir", est_pki.dir])
        a = api("dev24.example")
        agent, cert, _ = enrolling_agent(procs, g.device_port, est_pki, tmp_path, "dev24.example", a.port, "rhe_wait",
                                         extra=["--est-server", f"127.0.0.1:{est.port}"])
        agent.wait_log("waiting for approval: asking again every 10 s", timeout=30)
        assert not cert.exists()
        agent.wait_log("new certificate written", timeout=30)
        assert lib.wait_device(g, "dev24.example").status == 200
        (_, t1), (_, t2) = [r for r in est.requests if r[0] == "simpleenroll"]
        assert t2 - t1 >= 9.5, "Retry-After 1 is raised to the 10 s floor"
        # 3600 s certificates: the next renewal is far away, none runs now.
        assert [op for op, _ in est.issued] == ["simpleenroll"]
    finally:
        est.close()
