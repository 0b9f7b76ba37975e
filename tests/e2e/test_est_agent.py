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
import threading
import time
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.serialization import pkcs7
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

import e2e_lib as lib


gw = lib.gateway_cmd


@pytest.fixture
def est_pki(tmp_path) -> lib.PKI:
    return lib.make_est_pki(tmp_path / "pki")


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

    def __init__(self, pki: lib.PKI, token: str, seconds: int, pending: int = 0, late_first: float = 0):
        d = Path(pki.dir)
        self.chain = x509.load_pem_x509_certificates((d / "ca.crt").read_bytes())
        self.ca_cert = self.chain[0]
        self.ca_key = serialization.load_pem_private_key((d / "ca.key").read_bytes(), None)
        self.token, self.seconds, self.pending = token, seconds, pending
        self.requests: list[tuple[str, float]] = []  # (operation, time.monotonic())
        self.issued: list[tuple[str, int]] = []  # (operation, serial)
        self.claims: list[tuple[str, str]] = []  # (claim CN, the CN enrolled under it)
        # late_first: the first /simpleenroll is signed, then answered that many seconds
        # late (after the agent's EST timeout), as a loaded gateway would; the token is
        # then used, and only the same public key gets the same certificate again.
        self.late_first = late_first
        self.cacerts = 0
        self.enroll_keys: list[bytes] = []  # SubjectPublicKeyInfo of each /simpleenroll
        self.used: tuple[bytes, x509.Certificate] | None = None
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
                est.cacerts += 1
                self.certs(est.chain)

            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                op = self.path.rsplit("/", 1)[-1]
                est.requests.append((op, time.monotonic()))
                csr = x509.load_der_x509_csr(base64.b64decode(body))
                assert csr.is_signature_valid
                cn = csr.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value
                if op == "simpleenroll" and not self.headers.get("Authorization") and self.connection.getpeercert():
                    # A claim certificate in TLS instead of a token (the gateway's
                    # rule, simplified: any claim-* certificate of this CA).
                    peer = dict(x[0] for x in self.connection.getpeercert()["subject"])
                    if not peer.get("commonName", "").startswith("claim-"):
                        return self.answer(403, b"not a claim certificate")
                    est.claims.append((peer["commonName"], cn))
                elif op == "simpleenroll":
                    auth = self.headers.get("Authorization", "")
                    user, _, tok = base64.b64decode(auth.split(" ", 1)[1]).decode().partition(":") if auth else ("", "", "")
                    if tok != est.token or user != cn:
                        return self.answer(401, b"bad token", fields=[("WWW-Authenticate", 'Basic realm="EST"')])
                    spki = csr.public_key().public_bytes(serialization.Encoding.DER,
                                                         serialization.PublicFormat.SubjectPublicKeyInfo)
                    est.enroll_keys.append(spki)
                    if est.late_first and est.used is not None:  # the gateway's IssuedReplays, in short
                        if est.used[0] != spki:
                            return self.answer(401, b"enrollment token already used")
                        return self.certs([est.used[1]])
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
                if est.late_first and op == "simpleenroll" and est.used is None:
                    est.used = (csr.public_key().public_bytes(serialization.Encoding.DER,
                                                              serialization.PublicFormat.SubjectPublicKeyInfo), cert)
                    time.sleep(est.late_first)  # the agent has given up on this answer by now
                    try:
                        self.certs([cert])
                    except OSError:
                        pass
                    return
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


def test_a_late_answer_is_retried_with_the_same_key(procs, est_pki, api, tmp_path):
    # The first /simpleenroll is signed (the token used) but answered after the agent's
    # EST timeout (3 x connect_timeout_ms = 1.5 s): the retry carries the same key and
    # gets the certificate; /cacerts is asked once in the run.
    est = ShortLivedEST(est_pki, "rhe_late", seconds=3600, late_first=4)
    try:
        g = lib.start_gateway(procs, est_pki, extra=["--pki-dir", est_pki.dir])
        a = api("dev29.example")
        agent, cert, key = enrolling_agent(procs, g.device_port, est_pki, tmp_path, "dev29.example", a.port, "rhe_late",
                                           extra=["--est-server", f"127.0.0.1:{est.port}", "--connect-timeout-ms", "500"])
        agent.wait_log("new certificate written", timeout=30)
        assert "enrollment failed: /simpleenroll" in agent.log(), "the first answer came too late"
        assert len(est.enroll_keys) >= 2 and len(set(est.enroll_keys)) == 1, "one key across the retries"
        assert est.cacerts == 1, "the chain is kept within the run"
        assert [op for op, _ in est.issued] == ["simpleenroll"], "signed once"
        assert pem_certs(cert)[0].serial_number == est.issued[0][1]
        assert mode(key) == 0o600
        assert lib.wait_device(g, "dev29.example").status == 200
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


def test_renewal_while_requests_are_in_flight_loses_none(procs, est_pki, api, tmp_path):
    """A stream of requests (quick, slow, large uploads, large downloads) runs across a
    renewal and the roll of every connection onto the new certificate: each one is
    answered, and answered right (the old connections drain, none is cut)."""
    import hashlib
    import concurrent.futures
    est = ShortLivedEST(est_pki, "rhe_busy", seconds=24)
    try:
        g = lib.start_gateway(procs, est_pki, extra=["--pki-dir", est_pki.dir])
        a = api("dev25.example")
        agent, cert, _ = enrolling_agent(procs, g.device_port, est_pki, tmp_path, "dev25.example", a.port, "rhe_busy",
                                         extra=["--est-server", f"127.0.0.1:{est.port}"])
        agent.wait_log("new certificate written", timeout=30)
        assert lib.wait_device(g, "dev25.example").status == 200
        upload = os.urandom(2 * 1024 * 1024)
        upload_sha = hashlib.sha256(upload).hexdigest()
        download = lib.det_bytes(3_000_000)
        rolled = threading.Event()

        def one(kind: int) -> str:
            if kind == 0:
                r = lib.request(g.public_port, "GET", "/device", "dev25.example")
                return "" if r.status == 200 and r.body == b"dev25.example" else f"/device: {r.status} {r.body[:80]!r}"
            if kind == 1:
                r = lib.request(g.public_port, "GET", "/sleep/1500", "dev25.example")
                return "" if r.status == 200 and r.body == b"slept\n" else f"/sleep: {r.status} {r.body[:80]!r}"
            if kind == 2:
                r = lib.request(g.public_port, "POST", "/mirror", "dev25.example", body=upload)
                return "" if r.status == 200 and hashlib.sha256(r.body).hexdigest() == upload_sha else f"/mirror: {r.status} {len(r.body)}"
            r = lib.request(g.public_port, "GET", "/bytes/3000000", "dev25.example")
            return "" if r.status == 200 and r.body == download else f"/bytes: {r.status} {len(r.body)}"

        def worker(kind: int) -> tuple[int, int, list]:
            done, after, errors = 0, 0, []
            deadline = time.monotonic() + 90
            while time.monotonic() < deadline and after < 2 and done < 500:
                was_rolled = rolled.is_set()
                try:
                    e = one(kind)
                except Exception as x:  # a cut connection, a timeout
                    e = f"kind {kind}: {x!r}"
                if e:
                    errors.append(e)
                done += 1
                if was_rolled:
                    after += 1  # started after the roll, and answered
            return done, after, errors

        with concurrent.futures.ThreadPoolExecutor(max_workers=8) as pool:
            futures = [pool.submit(worker, k % 4) for k in range(8)]
            agent.wait_log("connections rolled to the renewed certificate", timeout=45)
            rolled.set()
            results = [f.result(timeout=120) for f in futures]
        assert [op for op, _ in est.issued] == ["simpleenroll", "simplereenroll"]
        errors = [e for _, _, es in results for e in es]
        assert not errors, errors[:5]
        assert all(after >= 2 for _, after, _ in results), f"(done, after the roll, errors) per worker: {results}"
        assert sum(done for done, _, _ in results) >= 40, results
    finally:
        est.close()


def test_agent_enrolls_with_a_claim_certificate(procs, est_pki, api, tmp_path):
    """claim_cert/claim_key: the agent shows the claim in TLS to /simpleenroll (no
    token, no Authorization), asks for its own name with a fresh key, then dials
    with the certificate it got, never with the claim."""
    est = ShortLivedEST(est_pki, "rhe_unused", seconds=3600)
    try:
        d = Path(est_pki.dir)
        ca_cert = x509.load_pem_x509_certificates((d / "ca.crt").read_bytes())[0]
        ca_key = serialization.load_pem_private_key((d / "ca.key").read_bytes(), None)
        from cryptography.hazmat.primitives.asymmetric import ec
        claim_key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.timezone.utc)
        claim = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "claim-batch-7")]))
                 .issuer_name(ca_cert.subject).public_key(claim_key.public_key()).serial_number(x509.random_serial_number())
                 .not_valid_before(now - datetime.timedelta(seconds=1)).not_valid_after(now + datetime.timedelta(hours=1))
                 .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
                 .sign(ca_key, hashes.SHA256()))
        claim_dir = tmp_path / "claim"
        claim_dir.mkdir()
        (claim_dir / "claim.crt").write_bytes(claim.public_bytes(serialization.Encoding.PEM))
        (claim_dir / "claim.key").write_bytes(claim_key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                                       serialization.NoEncryption()))
        (claim_dir / "claim.key").chmod(0o600)
        g = lib.start_gateway(procs, est_pki, extra=["--pki-dir", est_pki.dir])
        a = api("dev26.example")
        dev = tmp_path / "dev"
        dev.mkdir()
        cert, key = dev / "device.crt", dev / "device.key"
        agent = lib.start_agent(procs, g.device_port, pki=est_pki, device="dev26.example", local_port=a.port, cert=cert, key=key,
                                extra=["--claim-cert", claim_dir / "claim.crt", "--claim-key", claim_dir / "claim.key",
                                       "--est-server", f"127.0.0.1:{est.port}"], name="dev26.example")
        agent.wait_log("new certificate written", timeout=30)
        assert est.claims == [("claim-batch-7", "dev26.example")]
        r = lib.wait_device(g, "dev26.example")
        assert r.status == 200 and r.body == b"dev26.example"
        leaf = pem_certs(cert)[0]
        assert leaf.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "dev26.example"
        assert leaf.public_key().public_numbers() != claim_key.public_key().public_numbers(), "a fresh key, not the claim's"
        assert mode(key) == 0o600
    finally:
        est.close()


def test_agent_enrolls_with_a_claim_from_pki_claim_at_the_gateway(procs, est_pki, api, tmp_path):
    """The two halves together: `pki claim` at the gateway, the claim in the agent's
    claim_cert/claim_key, no token; the gateway issues a certificate for the agent's
    name (in the claim's glob) and the device comes online. A name outside the glob
    is refused and the agent keeps no certificate."""
    out = tmp_path / "claims"
    gw("pki", "claim", est_pki.dir, "factory-b", "--devices", "lab-*", "--out", out)
    g = lib.start_gateway(procs, est_pki, extra=["--pki-dir", est_pki.dir])
    a = api("lab-7")
    dev = tmp_path / "dev"
    dev.mkdir()
    cert, key = dev / "device.crt", dev / "device.key"
    agent = lib.start_agent(procs, g.device_port, pki=est_pki, device="lab-7", local_port=a.port, cert=cert, key=key,
                            extra=["--claim-cert", out / "factory-b.crt", "--claim-key", out / "factory-b.key"], name="lab-7")
    agent.wait_log("new certificate written", timeout=30)
    r = lib.wait_device(g, "lab-7")
    assert r.status == 200 and r.body == b"lab-7"
    leaf = pem_certs(cert)[0]
    assert leaf.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "lab-7"
    assert mode(key) == 0o600

    other = tmp_path / "other"
    other.mkdir()
    refused = lib.start_agent(procs, g.device_port, pki=est_pki, device="dev27.example", local_port=a.port,
                              cert=other / "device.crt", key=other / "device.key", name="dev27.example",
                              extra=["--claim-cert", out / "factory-b.crt", "--claim-key", out / "factory-b.key"])
    refused.wait_log("enrollment failed: /simpleenroll: 403", timeout=30)
    assert not (other / "device.crt").exists()
