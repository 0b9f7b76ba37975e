"""Issue 17, the gateway side of EST (RFC 7030) on the device listener, with curl and
openssl as an independent EST client: /cacerts, /simpleenroll with a one-time token
(once; a name the token does not allow is 403), /simplereenroll with the issued
certificate and a new key (the old key refused), manual approval on the admin API,
and the isolation of the two kinds of connections: a client without a certificate
reaches EST and nothing else. The certificate EST issued then connects with the
agent and answers through the gateway. Also: the ALPN our agent and HAProxy's rhttp
dialer offer (h2 alone), which is what tells a reversed connection from EST."""

from __future__ import annotations

import base64
import http.client
import json
import os
import signal
import socket
import ssl
import subprocess
import threading
from pathlib import Path

import pytest

import e2e_lib as lib

EST = "/.well-known/est/"


gw = lib.gateway_cmd


@pytest.fixture
def est_pki(tmp_path) -> lib.PKI:
    return lib.make_est_pki(tmp_path / "pki")


def start(procs, pki: lib.PKI, *extra) -> lib.Gateway:
    return lib.start_gateway(procs, pki, extra=["--pki-dir", pki.dir, *extra])


class Client:
    """curl + openssl against one gateway, files in `work`."""

    def __init__(self, g: lib.Gateway, pki: lib.PKI, work: Path):
        self.g, self.pki, self.work = g, pki, work
        work.mkdir(exist_ok=True)
        self.n = 0

    def curl(self, op: str, *args, http11: bool = True, fails: bool = False) -> tuple[int, dict, bytes]:
        self.n += 1
        out, hdr = self.work / f"out{self.n}", self.work / f"hdr{self.n}"
        cmd = ["curl", "-sS", "--max-time", "20", "--cacert", self.pki.ca, "--resolve", f"gw.example:{self.g.device_port}:127.0.0.1",
               "-o", out, "-D", hdr] + (["--http1.1"] if http11 else []) + list(args) + [f"https://gw.example:{self.g.device_port}{EST}{op}"]
        r = subprocess.run([str(c) for c in cmd], capture_output=True, timeout=30, text=True)
        if fails:
            assert r.returncode != 0, "curl succeeded"
            return 0, {}, r.stderr.encode()
        assert r.returncode == 0, r.stderr
        lines = hdr.read_text().splitlines()
        status = int(lines[0].split()[1])
        headers = {l.split(":", 1)[0].lower(): l.split(":", 1)[1].strip() for l in lines[1:] if ":" in l}
        return status, headers, out.read_bytes()

    def csr(self, cn: str, key: Path | None = None) -> tuple[Path, Path]:
        """A PKCS#10 request (base64 of DER, in lines) for `cn`, with `key` or a new P-256 key."""
        self.n += 1
        der, b64 = self.work / f"req{self.n}.der", self.work / f"req{self.n}.b64"
        if key is None:
            key = self.work / f"key{self.n}.pem"
            args = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-keyout", str(key)]
        else:
            args = ["-key", str(key)]
        subprocess.run(["openssl", "req", "-new", *args, "-subj", f"/CN={cn}", "-outform", "DER", "-out", str(der)],
                       check=True, capture_output=True, timeout=30)
        b64.write_bytes(base64.encodebytes(der.read_bytes()))
        return b64, key

    def post(self, op: str, body: Path, *args, fails: bool = False) -> tuple[int, dict, bytes]:
        return self.curl(op, "--data-binary", f"@{body}", "-H", "Content-Type: application/pkcs10", *args, fails=fails)

    def certs(self, body: bytes) -> list[str]:
        """The PEM certificates of a base64 certs-only PKCS#7."""
        der = base64.b64decode(body)
        r = subprocess.run(["openssl", "pkcs7", "-inform", "DER", "-print_certs"], input=der, capture_output=True, timeout=30)
        assert r.returncode == 0, r.stderr
        text = r.stdout.decode()
        return ["-----BEGIN CERTIFICATE-----" + c.split("-----END CERTIFICATE-----")[0] + "-----END CERTIFICATE-----\n"
                for c in text.split("-----BEGIN CERTIFICATE-----")[1:]]

    def save(self, pem: str, name: str) -> Path:
        p = self.work / name
        p.write_text(pem)
        return p


def subject(pem_path: Path) -> str:
    return subprocess.run(["openssl", "x509", "-noout", "-subject", "-issuer", "-enddate", "-in", str(pem_path)],
                          capture_output=True, text=True, check=True).stdout


def admin(g: lib.Gateway, method: str, path: str) -> tuple[int, bytes]:
    c = http.client.HTTPConnection("127.0.0.1", g.admin_port, timeout=10)
    try:
        c.request(method, path)
        r = c.getresponse()
        return r.status, r.read()
    finally:
        c.close()


def test_cacerts_with_and_without_h2_offered(procs, est_pki, tmp_path):
    g = start(procs, est_pki)
    c = Client(g, est_pki, tmp_path / "w")
    for http11 in (True, False):  # curl's default offers h2 and http/1.1: EST all the same
        status, h, body = c.curl("cacerts", http11=http11)
        assert status == 200, body
        assert h["content-type"] == "application/pkcs7-mime" and h["content-transfer-encoding"] == "base64"
        chain = c.certs(body)
        assert len(chain) == 2
        assert "Issuing CA" in subject(c.save(chain[0], "0.pem")) and "Root CA" in subject(c.save(chain[1], "1.pem"))
    assert "device connected" not in g.log()


def test_enroll_once_reenroll_then_connect_as_device(procs, est_pki, api, tmp_path):
    g = start(procs, est_pki)
    c = Client(g, est_pki, tmp_path / "w")
    token = gw("pki", "enroll-token", est_pki.dir, "dev9.example")

    # No token, a wrong one: 401 with a challenge.
    req, key = c.csr("dev9.example")
    status, h, _ = c.post("simpleenroll", req)
    assert status == 401 and h["www-authenticate"].startswith("Basic")
    status, _, _ = c.post("simpleenroll", req, "-u", "dev9.example:rhe_" + "A" * 43)
    assert status == 401
    # A request that is not PKCS#10: 400, and the token is not used up.
    status, _, body = c.curl("simpleenroll", "--data-binary", "bm90IGEgcmVxdWVzdA==", "-H", "Content-Type: application/pkcs10",
                             "-u", "x:" + token)
    assert status == 400 and b"PKCS#10" in body

    status, h, body = c.post("simpleenroll", req, "-u", "dev9.example:" + token)
    assert status == 200, body
    assert h["content-type"] == "application/pkcs7-mime; smime-type=certs-only"
    leaf, = c.certs(body)
    cert = c.save(leaf, "dev9.crt")
    text = subject(cert)
    assert "CN = dev9.example" in text and "Issuing CA" in text.split("issuer=")[1]
    assert "dev9.example" in (est_pki.dir / "issued.txt").read_text()

    # The token worked once.
    req2, _ = c.csr("dev9.example")
    status, _, body = c.post("simpleenroll", req2, "-u", "dev9.example:" + token)
    assert status == 401 and b"already used" in body

    # Re-enrollment: the issued certificate and a new key; the old key is refused, and
    # no certificate at all is refused.
    same, _ = c.csr("dev9.example", key=key)
    status, _, body = c.post("simplereenroll", same, "--cert", cert, "--key", key)
    assert status == 409 and b"new key" in body
    status, _, _ = c.post("simplereenroll", req2)
    assert status == 403
    req3, key3 = c.csr("dev9.example")
    status, _, body = c.post("simplereenroll", req3, "--cert", cert, "--key", key)
    assert status == 200, body
    renewed, = c.certs(body)
    cert3 = c.save(renewed, "dev9-renewed.crt")
    assert "CN = dev9.example" in subject(cert3)

    # The renewed certificate is a device's: the agent connects with it and answers.
    a = api("dev9.example")
    lib.start_agent(procs, g.device_port, pki=est_pki, device="dev9.example", local_port=a.port,
                    cert=cert3, key=key3, connections=1)
    r = lib.wait_device(g, "dev9.example")
    assert r.status == 200 and r.body == b"dev9.example"

    st, metrics = admin(g, "GET", "/metrics")
    m = metrics.decode()
    assert 'rhttp_est_requests_total{op="simpleenroll",result="ok"} 1' in m
    assert 'rhttp_est_requests_total{op="simpleenroll",result="unauthorized"} 3' in m
    assert 'rhttp_est_requests_total{op="simplereenroll",result="ok"} 1' in m
    assert 'rhttp_est_requests_total{op="simplereenroll",result="conflict"} 1' in m
    assert "rhttp_crl_expiry_seconds " in m

    # Revoked (pki revoke, then SIGHUP): the certificate cannot re-enroll (the TLS
    # handshake refuses it), and its tunnel is cut.
    gw("pki", "revoke", est_pki.dir, "dev9.example")
    g.proc.popen.send_signal(signal.SIGHUP)
    g.proc.wait_log("reload done")
    req4, _ = c.csr("dev9.example")
    c.post("simplereenroll", req4, "--cert", cert3, "--key", key3, fails=True)
    assert "rhttp_est_requests_total{op=\"simplereenroll\",result=\"ok\"} 1" in admin(g, "GET", "/metrics")[1].decode()


def test_token_for_another_name_is_403_and_stays_usable(procs, est_pki, tmp_path):
    g = start(procs, est_pki)
    c = Client(g, est_pki, tmp_path / "w")
    token = gw("pki", "enroll-token", est_pki.dir, "dev10.example")
    req, _ = c.csr("dev11.example")
    status, _, body = c.post("simpleenroll", req, "-u", "dev11.example:" + token)
    assert status == 403 and b"dev10.example" in body
    glob = gw("pki", "enroll-token", est_pki.dir, "lab-*")
    status, _, body = c.post("simpleenroll", req, "-u", "x:" + glob)
    assert status == 403
    # The refusals used nothing up: the right names enroll.
    req, _ = c.csr("dev10.example")
    assert c.post("simpleenroll", req, "-u", "dev10.example:" + token)[0] == 200
    req, _ = c.csr("lab-7")
    status, _, body = c.post("simpleenroll", req, "-u", "anything:" + glob)
    assert status == 200
    assert "CN = lab-7" in subject(c.save(c.certs(body)[0], "lab7.crt"))
    # A name that holds a live certificate is not taken by a glob token.
    again = gw("pki", "enroll-token", est_pki.dir, "lab-*")
    req, _ = c.csr("lab-7")
    assert c.post("simpleenroll", req, "-u", "x:" + again)[0] == 409


def test_manual_approval(procs, est_pki, tmp_path):
    g = start(procs, est_pki, "--enroll-approval", "manual")
    c = Client(g, est_pki, tmp_path / "w")
    token = gw("pki", "enroll-token", est_pki.dir, "dev12.example")
    req, _ = c.csr("dev12.example")
    status, h, _ = c.post("simpleenroll", req, "-u", "dev12.example:" + token)
    assert status == 202 and int(h["retry-after"]) > 0
    assert c.post("simpleenroll", req, "-u", "dev12.example:" + token)[0] == 202
    st, body = admin(g, "GET", "/enrollments")
    entries = json.loads(body)
    assert st == 200 and entries[0]["name"] == "dev12.example" and entries[0]["state"] == "pending"
    assert admin(g, "POST", "/enrollments/nobody.example/approve")[0] == 404
    assert admin(g, "POST", "/enrollments/dev12.example/approve")[0] == 200
    status, _, body = c.post("simpleenroll", req, "-u", "dev12.example:" + token)
    assert status == 200
    assert "CN = dev12.example" in subject(c.save(c.certs(body)[0], "dev12.crt"))
    # Handed out once; a new key with the used token is 401.
    other, _ = c.csr("dev12.example")
    assert c.post("simpleenroll", other, "-u", "dev12.example:" + token)[0] == 401
    # Deny.
    t2 = gw("pki", "enroll-token", est_pki.dir, "dev13.example")
    req, _ = c.csr("dev13.example")
    assert c.post("simpleenroll", req, "-u", "x:" + t2)[0] == 202
    assert admin(g, "POST", "/enrollments/dev13.example/deny")[0] == 200
    assert c.post("simpleenroll", req, "-u", "x:" + t2)[0] == 403


def test_without_the_ca_key_enroll_is_503_and_cacerts_works(procs, est_pki, tmp_path):
    os.rename(est_pki.dir / "ca.key", tmp_path / "ca.key.offline")
    g = start(procs, est_pki)
    c = Client(g, est_pki, tmp_path / "w")
    assert c.curl("cacerts")[0] == 200
    req, _ = c.csr("dev9.example")
    status, _, body = c.post("simpleenroll", req, "-u", "x:rhe_" + "A" * 43)
    assert status == 503 and b"pki_dir" in body


def test_a_connection_without_certificate_reaches_only_est(procs, est_pki):
    g = start(procs, est_pki, "--request-timeout-ms", "1000")
    ctx = ssl.create_default_context(cafile=str(est_pki.ca))
    # Offering h2 (a reversed connection's ALPN) without a certificate: the handshake fails.
    ctx.set_alpn_protocols(["h2"])
    with pytest.raises((ssl.SSLError, ConnectionError)):
        with socket.create_connection(("127.0.0.1", g.device_port), timeout=10) as raw:
            with ctx.wrap_socket(raw, server_hostname="gw.example") as s:
                s.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
                if not s.recv(100):
                    raise ConnectionError("closed")
    # Without ALPN: EST's HTTP/1.1, whatever is sent. The HTTP/2 client magic is a bad request.
    ctx2 = ssl.create_default_context(cafile=str(est_pki.ca))
    for payload, want in [(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", b"HTTP/1.1 400"),
                          (b"GET /device HTTP/1.1\r\nHost: dev1.example\r\n\r\n", b"HTTP/1.1 404"),
                          (b"GET /devices HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n", b"HTTP/1.1 404")]:
        with socket.create_connection(("127.0.0.1", g.device_port), timeout=10) as raw:
            with ctx2.wrap_socket(raw, server_hostname="gw.example") as s:
                assert s.selected_alpn_protocol() is None
                s.sendall(payload)
                data, _ = lib.read_until_close(s, 10) if want == b"HTTP/1.1 400" else (s.recv(4096), None)
                assert data.startswith(want), data[:200]
    # A body over the limit: 413 before it is read whole.
    with socket.create_connection(("127.0.0.1", g.device_port), timeout=10) as raw:
        with ctx2.wrap_socket(raw, server_hostname="gw.example") as s:
            s.sendall(b"POST " + EST.encode() + b"simpleenroll HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000\r\n\r\n")
            data, _ = lib.read_until_close(s, 10)
            assert data.startswith(b"HTTP/1.1 413"), data[:100]
    # A client that sends nothing is closed after request_timeout_ms.
    with socket.create_connection(("127.0.0.1", g.device_port), timeout=10) as raw:
        with ctx2.wrap_socket(raw, server_hostname="gw.example") as s:
            data, closed = lib.read_until_close(s, 8)
            assert data == b"" and closed
    # At most a few requests a connection.
    with socket.create_connection(("127.0.0.1", g.device_port), timeout=10) as raw:
        with ctx2.wrap_socket(raw, server_hostname="gw.example") as s:
            s.sendall((b"GET " + EST.encode() + b"cacerts HTTP/1.1\r\nHost: x\r\n\r\n") * 6)
            data, _ = lib.read_until_close(s, 10)
            assert data.count(b"HTTP/1.1 200") == 4 and b"Connection: close" in data
    assert "device connected" not in g.log()


def test_a_connect_on_est_is_answered_and_closed(procs, est_pki):
    """Review 19: after a CONNECT request HTTP1RequestParser keeps every later byte
    unparsed (a tunnel's), and ESTConnection kept reading: a stranger without a
    certificate could send CONNECT and then any amount of bytes, all held in memory
    until request_timeout_ms. EST has no tunnel: the answer closes the connection."""
    g = start(procs, est_pki, "--request-timeout-ms", "30000")
    ctx = ssl.create_default_context(cafile=str(est_pki.ca))
    with socket.create_connection(("127.0.0.1", g.device_port), timeout=10) as raw:
        with ctx.wrap_socket(raw, server_hostname="gw.example") as s:
            s.sendall(b"CONNECT dev1.example:22 HTTP/1.1\r\nHost: dev1.example:22\r\n\r\n")
            data, closed = lib.read_until_close(s, 5)
            assert data.startswith(b"HTTP/1.1 4") and b"Connection: close" in data, data[:200]
            assert closed, "closed after the answer, not after request_timeout_ms"


# --------------------------------------------------------------------------- what dialers offer


def _client_hello_alpn(conn: socket.socket) -> list[str] | None:
    """The ALPN list of the ClientHello on `conn` (None without the extension)."""
    data = b""
    conn.settimeout(10)
    while len(data) < 5 or len(data) < 5 + int.from_bytes(data[3:5], "big"):
        chunk = conn.recv(65536)
        if not chunk:
            break
        data += chunk
    assert data[0] == 22, "not a TLS handshake record"
    hello = data[5:5 + int.from_bytes(data[3:5], "big")]
    assert hello[0] == 1, "not a ClientHello"
    p = 4 + 2 + 32
    p += 1 + hello[p]                                 # session id
    p += 2 + int.from_bytes(hello[p:p + 2], "big")    # cipher suites
    p += 1 + hello[p]                                 # compression methods
    end = p + 2 + int.from_bytes(hello[p:p + 2], "big")
    p += 2
    while p < end:
        typ, ln = int.from_bytes(hello[p:p + 2], "big"), int.from_bytes(hello[p + 2:p + 4], "big")
        body = hello[p + 4:p + 4 + ln]
        if typ == 16:
            out, q = [], 2
            while q < len(body):
                out.append(body[q + 1:q + 1 + body[q]].decode())
                q += 1 + body[q]
            return out
        p += 4 + ln
    return None


def _capture_alpn(start_dialer) -> list[str] | None:
    srv = socket.create_server(("127.0.0.1", 0))
    got: dict = {}

    def accept():
        conn, _ = srv.accept()
        with conn:
            got["alpn"] = _client_hello_alpn(conn)

    t = threading.Thread(target=accept, daemon=True)
    t.start()
    start_dialer(srv.getsockname()[1])
    t.join(30)
    srv.close()
    assert "alpn" in got, "no ClientHello arrived"
    return got["alpn"]


def test_our_agent_offers_h2_alone(procs, pki):
    alpn = _capture_alpn(lambda port: lib.start_agent(procs, port, pki=pki, device="dev1.example",
                                                      local_port=lib.closed_port(), connections=1))
    assert alpn == ["h2"]


def test_haproxy_rhttp_dialer_offers_h2_alone(procs, pki, tmp_path):
    haproxy = os.environ.get("HAPROXY")
    if not haproxy or not os.access(haproxy, os.X_OK):
        pytest.skip("HAPROXY is not set (path to an HAProxy >= 3.2 binary)")
    shared = Path(os.environ.get("RH_SHARED") or (lib.REPO.parent / "shared")) / "interop" / "haproxy" / "dialer-mtls.cfg"
    if not shared.is_file():
        pytest.skip(f"{shared} not found")
    lab = tmp_path / "lab"
    (lab / "pki").mkdir(parents=True)
    (lab / "run").mkdir()
    (lab / "pki" / "ca.crt").write_bytes(pki.ca.read_bytes())
    (lab / "pki" / "dev1.pem").write_bytes(pki.device_cert("dev1.example").read_bytes() + pki.device_key("dev1.example").read_bytes())

    def dial(port):
        env = dict(os.environ, LAB=str(lab), DEV="dev1", NBCONN="1", DIALER_NBTHREAD="1", DIALER_TCLIENT="30s",
                   APP_PORT=str(lib.closed_port()), GW_PRIV_PORT=str(port), DIALER_CERT="dev1")
        procs.start("haproxy-dialer", [haproxy, "-f", str(shared), "-db"], env=env)

    assert _capture_alpn(dial) == ["h2"]
