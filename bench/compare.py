#!/usr/bin/env python3
"""Side-by-side benchmark (issue 7): the same local API (nginx) reached
  (a) directly, no tunnel;
  (b) through our fleet-gateway + device-agent, plaintext reversed connection;
  (c) the same over mTLS;
  (d, e) through an HAProxy gateway + HAProxy dialer pair, plain and mTLS
         (only when $HAPROXY / --haproxy names an HAProxy >= 3.2);
  (f, g) our mTLS path with access control (issue 13): a 20-rule access_policy
         and every request carrying a token (Authorization: Bearer), or an ES256
         JWT (the same one each time: verified once, then cached), against (c),
         which has no access policy.
Every path has one reversed connection; our programs are single-threaded (one
event loop each) and HAProxy runs with nbthread 1. Per-request logging is off on
both sides (our gateway: access_log=false, log level notice, which logs
connection events only; HAProxy: no `log` lines). Health checks are off on both.

Scenarios, alternating between the paths (the order rotates every round), for
--rounds rounds; medians and min-max are reported:
  - 1 KiB GET, 64 concurrent connections, HTTP/1.1 (wrk): req/s, p50, p99,
    plus CPU seconds per 100k requests and peak resident memory of the tunnel's
    two processes while it runs;
  - 1 KiB GET, 64 concurrent clients, HTTP/2 (h2load; h2c with prior knowledge
    on the public side, HTTP/1.1 to nginx);
  - latency at a fixed moderate rate (wrk, 32 connections, each pausing
    --paced-delay-ms before every request: about 3-4k req/s), p50 and p99;
  - 100 MiB download (curl, a static file from nginx) and 100 MiB upload
    (curl -T, POST /upload: nginx passes the body unbuffered to a sink that
    reads it all, then answers with its length);
  - resident memory of the agent / dialer (and gateways) idle, before any load.

Writes a Markdown table (--md) and the raw figures (--json). Needs wrk, h2load
(nghttp2-client), curl, nginx; `perf` for --profile; python3-cryptography for
the JWT path. The access-control comparison alone:

    python3 bench/compare.py --paths ours_tls,ours_tls_token,ours_tls_jwt --scenarios wrk,h2load

    swift build -c release --product fleet-gateway   # or --scratch-path X, then --gateway-bin X/release/fleet-gateway
    scripts/build                                       # the Embedded device-agent
    HAPROXY=/path/to/haproxy python3 bench/compare.py [--profile bench/results/profile]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Optional

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests" / "e2e"))
import e2e_lib as lib  # noqa: E402

HOST = "dev1.example"
NAMES = {"direct": "no tunnel", "ours_plain": "ours, plain", "ours_tls": "ours, mTLS",
         "ours_tls_token": "ours, mTLS, token + policy", "ours_tls_jwt": "ours, mTLS, JWT + policy",
         "haproxy_plain": "HAProxy pair, plain", "haproxy_tls": "HAProxy pair, mTLS"}
MiB = 1 << 20
BIG = 100 * MiB


# --------------------------------------------------------------------------- process figures


# --------------------------------------------------------------------------- the local API


class UploadSink:
    """HTTP/1.1 server that reads a whole request body (Content-Length or chunked)
    and then answers 200 with the byte count. nginx passes /upload to it."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        self.last_length = -1
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(c,), daemon=True).start()

    def _serve(self, c: socket.socket):
        buf = memoryview(bytearray(MiB))
        f = c.makefile("rb", buffering=MiB)
        try:
            while True:
                line = f.readline(65536)
                if not line:
                    return
                headers = {}
                while True:
                    h = f.readline(65536)
                    if h in (b"\r\n", b"\n", b""):
                        break
                    k, _, v = h.partition(b":")
                    headers[k.strip().lower()] = v.strip()
                n = 0
                if b"chunked" in headers.get(b"transfer-encoding", b"").lower():
                    while True:
                        size = int(f.readline(1024).split(b";")[0].strip(), 16)
                        if size == 0:
                            while f.readline(65536) not in (b"\r\n", b"\n", b""):
                                pass
                            break
                        left = size
                        while left:
                            k = f.readinto(buf[:min(left, len(buf))])
                            if not k:
                                return
                            left -= k
                        n += size
                        f.readline(3)
                else:
                    left = int(headers.get(b"content-length", b"0"))
                    while left:
                        k = f.readinto(buf[:min(left, len(buf))])
                        if not k:
                            return
                        left -= k
                        n += k
                self.last_length = n
                body = b"%d\n" % n
                c.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n\r\n%s"
                          % (len(body), body))
        except (OSError, ValueError):
            pass
        finally:
            c.close()

    def close(self):
        self.sock.close()


NGINX_CONF = """\
worker_processes 1;
pid {dir}/nginx.pid;
error_log stderr warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    sendfile on;
    tcp_nodelay on;
    keepalive_requests 100000000;
    keepalive_timeout 300s;
    default_type application/octet-stream;
    client_body_temp_path {dir}/tmp/body;
    proxy_temp_path {dir}/tmp/proxy;
    fastcgi_temp_path {dir}/tmp/fastcgi;
    uwsgi_temp_path {dir}/tmp/uwsgi;
    scgi_temp_path {dir}/tmp/scgi;
    upstream sink {{ server 127.0.0.1:{sink}; keepalive 8; }}
    server {{
        # nginx 1.22 over HTTP/2 with sendfile waits ~40 ms on every small response
        listen 127.0.0.1:{h2c} http2;
        sendfile off;
        root {dir}/www;
    }}
    server {{
        listen 127.0.0.1:{h1};
        root {dir}/www;
        location = /upload {{
            client_max_body_size 0;
            proxy_pass http://sink;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_request_buffering off;
            proxy_buffering off;
        }}
    }}
}}
"""


def start_nginx(pm: lib.ProcessManager, work: Path, sink: UploadSink) -> tuple:
    d = work / "nginx"
    (d / "www").mkdir(parents=True)
    (d / "tmp").mkdir()
    (d / "www" / "1k").write_bytes(os.urandom(1024))
    with open(d / "www" / "100m", "wb") as f:
        block = os.urandom(MiB)
        for _ in range(BIG // MiB):
            f.write(block)
    for p in (work, d, d / "www", d / "tmp"):
        p.chmod(0o755)  # nginx's worker runs as nobody when started by root
    for p in [d / "www" / "1k", d / "www" / "100m"]:
        p.chmod(0o644)
    h1, h2c = lib.free_port(), lib.free_port()
    while h2c == h1:
        h2c = lib.free_port()
    (d / "nginx.conf").write_text(NGINX_CONF.format(dir=d, sink=sink.port, h1=h1, h2c=h2c))
    p = pm.start("nginx", [shutil.which("nginx") or "/usr/sbin/nginx", "-p", d, "-c", d / "nginx.conf",
                           "-e", "stderr", "-g", "daemon off;"])
    lib.wait_until(lambda: lib.port_open(h1) and lib.port_open(h2c), 10, "nginx to listen")
    return p, h1, h2c


# --------------------------------------------------------------------------- the paths


class Path_:
    """One way to reach the API: public ports plus the tunnel's two processes."""

    def __init__(self, key: str, label: str, h1: int, h2: int, gateway=None, agent=None, auth: str = ""):
        self.key, self.label, self.h1, self.h2 = key, label, h1, h2
        self.gateway, self.agent = gateway, agent  # lib.Proc or None
        self.auth = auth  # an Authorization value every request carries ("" for none)

    def hdr(self, flag: str = "-H") -> list:
        """The Authorization header as command-line arguments of wrk, h2load, curl."""
        return [flag, f"Authorization: {self.auth}"] if self.auth else []

    def pids(self) -> dict:
        return {k: p.pid for k, p in (("gateway", self.gateway), ("agent", self.agent)) if p}


def wait_through(port: int, what: str, procs=(), auth: str = "") -> None:
    def ok():
        r = lib.request(port, "GET", "/1k", HOST, timeout=3, headers={"Authorization": auth} if auth else None)
        return r.status == 200 and len(r.body) == 1024
    try:
        lib.wait_until(ok, 20, what, interval=0.1)
    except AssertionError as e:
        tails = "\n".join(f"--- {p.name}:\n{p.tail()}" for p in procs if p)
        raise AssertionError(f"{e}\n{tails}") from None


# 20 rules: 18 that never match this benchmark's requests (other principals,
# devices, methods, paths, sources), then the two that allow it, last.
BENCH_POLICY = """\
# bench/compare.py: 20 rules, the matching ones last
deny token:intruder-* *
allow token:ops-* lab-*,rack-??
allow token:alice dev2.example,dev3.example
allow token:bench dev9.example methods=GET
deny token:bench * methods=DELETE,PUT
allow user:alice * paths=/admin/,/status
allow user:bob dev1.example methods=POST
allow sub:robot-* dev1.example from=10.0.0.0/8
allow email:*@example.org * methods=GET,HEAD
deny group:contractors dev1.example paths=/admin/
allow group:ops dev1.example from=192.168.0.0/16,10.0.0.0/8
allow group:bench-team dev2.example
deny email:mallory@example.com *
allow authenticated dev4.example paths=/status
allow anyone dev5.example paths=/public/
deny anyone * paths=/secret/
allow token:bench dev1.example paths=/other/
allow group:bench-team dev1.example methods=POST
allow token:bench dev1.example methods=GET
allow group:bench-team dev1.example methods=GET
"""


def access_setup(work: Path, gateway_bin: Path, kind: str) -> tuple[list, str]:
    """Gateway arguments and the Authorization value for an access-control path:
    kind "token" (a token from `fleet-gateway token create`) or "jwt" (ES256,
    signed here with a key made here, its JWKS in a file)."""
    d = work / f"access-{kind}"
    d.mkdir(parents=True, exist_ok=True)
    policy, tokens = d / "policy", d / "tokens"
    policy.write_text(BENCH_POLICY)
    for name, devices in (("alice", "dev2.example"), ("ops-1", "*"), ("bench", HOST)):
        r = subprocess.run([str(gateway_bin), "token", "create", name, "--devices", devices, "--tokens", str(tokens)],
                           capture_output=True, timeout=30, stdin=subprocess.DEVNULL)
        if r.returncode != 0:
            raise SystemExit(f"token create failed: {r.stderr.decode(errors='replace')}")
        secret = r.stdout.decode().strip()
    args = ["--access-policy", policy, "--tokens", tokens]
    if kind == "token":
        return args, "Bearer " + secret
    import access_lib as acc  # python3-cryptography
    key = acc.Key.make("ES256", "bench")
    (d / "jwks.json").write_text(json.dumps(acc.jwks(acc.Key.make("RS256", "other"), key)))
    token = acc.jwt(key, acc.claims("bench-user", email="bench@example.com", groups=["staff", "bench-team"],
                                    exp_in=6 * 3600))
    return args + ["--jwt-jwks", d / "jwks.json", "--jwt-issuer", acc.ISSUER, "--jwt-audience", acc.AUDIENCE], \
        "Bearer " + token


def our_path(pm, pki, gateway_bin: Path, agent_bin: Path, api_port: int, tls: bool, access: str = "",
             work: Optional[Path] = None) -> Path_:
    os.environ["RH_BIN"] = str(gateway_bin.parent)
    common = ["--access-log=false", "--check-interval-ms", "0", "--listen-admin", "off"]
    auth = ""
    if access:
        extra, auth = access_setup(work, gateway_bin, access)
        gw = lib.start_gateway(pm, pki, extra=common + extra, name=f"ours-gw-tls-{access}", log_level="notice")
    elif tls:
        gw = lib.start_gateway(pm, pki, extra=common, name="ours-gw-tls", log_level="notice")
    else:
        gw = lib.start_gateway(pm, None, extra=common, plaintext_name=HOST, name="ours-gw-plain",
                               log_level="notice")
    os.environ["RH_AGENT"] = str(agent_bin)
    agent = lib.start_agent(pm, gw.device_port, pki=pki if tls else None, device=HOST, local_port=api_port,
                            connections=1, plaintext=not tls,
                            name="ours-agent-" + ("tls" if tls else "plain") + (f"-{access}" if access else ""),
                            log_level="notice")
    if access:  # the policy is in force: no credentials, no entry
        r = lib.request(gw.public_port, "GET", "/1k", HOST, timeout=5)
        if r.status not in (401, 503):
            raise SystemExit(f"{access} path: a request without credentials got {r.status}, not 401")
    wait_through(gw.public_port, "our tunnel", (gw.proc, agent), auth=auth)
    key = ("ours_tls" if tls else "ours_plain") + (f"_{access}" if access else "")
    label = NAMES[key]
    return Path_(key, label, gw.public_port, gw.public_port, gw.proc, agent, auth=auth)


HAP_COMMON = """\
global
    nbthread 1
    expose-experimental-directives
defaults
    mode http
    timeout connect 5s
    timeout client  30s
    timeout server  30s
"""

HAP_GW = HAP_COMMON + """\
frontend pub
    bind 127.0.0.1:{pub}
    default_backend be-dev
frontend priv
{priv}
backend be-dev
{server}
"""

HAP_DIALER = HAP_COMMON + """\
frontend rev
    bind rhttp@be-gw/gw nbconn 1
    default_backend app
backend be-gw
{server}
backend app
    server app 127.0.0.1:{api}
"""


def haproxy_path(pm, haproxy: Path, lab: Path, api_port: int, tls: bool) -> Path_:
    """Derived from shared/interop/haproxy (gw-mtls-name.cfg / gw-plain.cfg,
    dialer-mtls.cfg / dialer-plain.cfg): nbthread 1, no logging, no stats socket,
    no health checks, our ports."""
    pub, priv = lib.free_port(), lib.free_port()
    while priv == pub:
        priv = lib.free_port()
    pk = lab / "pki"
    if tls:
        gw_cfg = HAP_GW.format(
            pub=pub,
            priv=f"    bind 127.0.0.1:{priv} ssl crt {pk}/gw.pem ca-file {pk}/ca.crt verify required alpn h2\n"
                 f"    tcp-request session attach-srv be-dev/dev name ssl_c_s_dn(CN)",
            server="    server dev rhttp@ pool-conn-name req.hdr(host),host_only idle-ping 10s")
        d_cfg = HAP_DIALER.format(
            api=api_port,
            server=f"    server gw 127.0.0.1:{priv} ssl crt {pk}/{HOST}.pem ca-file {pk}/ca.crt verify required "
                   f"verifyhost gw.example sni str(gw.example) alpn h2")
    else:
        gw_cfg = HAP_GW.format(pub=pub, priv=f"    bind 127.0.0.1:{priv} proto h2\n"
                                              f"    tcp-request session attach-srv be-dev/dev",
                               server="    server dev rhttp@ idle-ping 10s")
        d_cfg = HAP_DIALER.format(api=api_port, server=f"    server gw 127.0.0.1:{priv} proto h2")
    kind = "tls" if tls else "plain"
    (lab / f"gw-{kind}.cfg").write_text(gw_cfg)
    (lab / f"dialer-{kind}.cfg").write_text(d_cfg)
    gw = pm.start(f"haproxy-gw-{kind}", [haproxy, "-db", "-f", lab / f"gw-{kind}.cfg"])
    lib.wait_until(lambda: (not gw.alive() and "exited") or (lib.port_open(pub) and lib.port_open(priv)), 10,
                   "HAProxy gateway to listen")
    if not gw.alive():
        raise AssertionError(gw.tail())
    dialer = pm.start(f"haproxy-dialer-{kind}", [haproxy, "-db", "-f", lab / f"dialer-{kind}.cfg"])
    wait_through(pub, "the HAProxy tunnel", (gw, dialer))
    return Path_("haproxy_" + kind, "HAProxy pair, " + ("mTLS" if tls else "plain"), pub, pub, gw, dialer)


def haproxy_ok(path: str | None) -> Path | None:
    if not path:
        return None
    try:
        out = subprocess.run([path, "-v"], capture_output=True, timeout=10).stdout.decode(errors="replace")
    except OSError:
        return None
    m = re.search(r"version (\d+)\.(\d+)", out)
    if not m or (int(m.group(1)), int(m.group(2))) < (3, 2):
        print(f"ignoring HAPROXY={path}: not an HAProxy >= 3.2", file=sys.stderr)
        return None
    return Path(path)


# --------------------------------------------------------------------------- load


def _ms(v: str, unit: str) -> float:
    return float(v) * {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3}[unit]


def parse_wrk(out: str) -> dict:
    r: dict = {}
    m = re.search(r"Requests/sec:\s+([\d.]+)", out)
    r["rps"] = float(m.group(1)) if m else 0.0
    m = re.search(r"(\d+) requests in", out)
    r["requests"] = int(m.group(1)) if m else 0
    for pct in ("50", "99"):
        m = re.search(rf"^\s+{pct}(?:\.000)?%\s+([\d.]+)(us|ms|s|m)\s*$", out, re.M)
        r[f"p{pct}_ms"] = _ms(m.group(1), m.group(2)) if m else None
    m = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    r["errors"] = int(m.group(1)) if m else 0
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    if m:
        r["errors"] += sum(int(x) for x in m.groups())
    return r


def parse_h2load(out: str) -> dict:
    r: dict = {}
    m = re.search(r"finished in [\d.]+\w+, ([\d.]+) req/s", out)
    r["rps"] = float(m.group(1)) if m else 0.0
    m = re.search(r"requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, (\d+) failed, (\d+) errored",
                  out)
    r["requests"] = int(m.group(4)) if m else 0
    r["errors"] = (int(m.group(5)) + int(m.group(6))) if m else -1
    m = re.search(r"status codes: (\d+) 2xx", out)
    if m and r["requests"] and int(m.group(1)) < r["requests"]:
        r["errors"] += r["requests"] - int(m.group(1))
    return r


def run(cmd: list, timeout: float) -> str:
    p = subprocess.run([str(c) for c in cmd], capture_output=True, timeout=timeout, stdin=subprocess.DEVNULL)
    return p.stdout.decode(errors="replace") + p.stderr.decode(errors="replace")


class Bench:
    def __init__(self, args, work: Path):
        self.a = args
        self.work = work
        self.pace = work / "paced.lua"
        self.pace.write_text(f"function delay()\n  return {args.paced_delay_ms}\nend\n")
        self.upload_file = work / "upload.bin"
        with open(self.upload_file, "wb") as f:
            block = os.urandom(MiB)
            for _ in range(BIG // MiB):
                f.write(block)

    def _measured(self, p: Path_, fn):
        pids = p.pids()
        cpu0 = {k: lib.cpu_seconds(v) for k, v in pids.items()}
        peak = lib.PeakRSS(pids)
        r = fn()
        rss = peak.stop()
        for k, v in pids.items():
            r[f"{k}_cpu_s"] = lib.cpu_seconds(v) - cpu0[k]
            r[f"{k}_rss_peak_mib"] = rss.get(k)
        return r

    def wrk(self, p: Path_) -> dict:
        d = self.a.duration

        def go():
            out = run(["wrk", f"-t{self.a.client_threads}", "-c64", f"-d{d}s", "--latency", "-H", f"Host: {HOST}",
                       *p.hdr(), f"http://127.0.0.1:{p.h1}/1k"], d + 30)
            r = parse_wrk(out)
            if not r["requests"]:
                r["raw"] = out[-500:]
            return r
        r = self._measured(p, go)
        for k in ("gateway", "agent"):
            if f"{k}_cpu_s" in r and r["requests"]:
                r[f"{k}_cpu_s_per_100k"] = r[f"{k}_cpu_s"] / r["requests"] * 1e5
        return r

    def h2load(self, p: Path_) -> dict:
        d = self.a.duration
        out = run(["h2load", f"-t{self.a.client_threads}", "-c64", "-m1", "-D", str(d), "-H", f":authority: {HOST}",
                   *p.hdr(), f"http://127.0.0.1:{p.h2}/1k"], d + 30)
        r = parse_h2load(out)
        if not r["requests"]:
            r["raw"] = out[-500:]
        return r

    def paced(self, p: Path_) -> dict:
        d = self.a.duration
        out = run(["wrk", "-t1", "-c32", f"-d{d}s", "--latency", "-s", self.pace, "-H", f"Host: {HOST}",
                   *p.hdr(), f"http://127.0.0.1:{p.h1}/1k"], d + 30)
        r = parse_wrk(out)
        if not r["requests"]:
            r["raw"] = out[-500:]
        return r

    def download(self, p: Path_) -> dict:
        def go():
            out = run(["curl", "-sS", "-o", "/dev/null", "-H", f"Host: {HOST}", *p.hdr(),
                       "-w", "%{http_code} %{size_download} %{time_total}",
                       f"http://127.0.0.1:{p.h1}/100m"], 120)
            code, size, t = out.split()[-3:]
            ok = code == "200" and int(size) == BIG
            return {"mib_s": BIG / MiB / float(t) if ok else 0.0, "seconds": float(t), "errors": 0 if ok else 1}
        return self._measured(p, go)

    def upload(self, p: Path_, sink: UploadSink) -> dict:
        def go():
            sink.last_length = -1
            resp = self.work / "upload.answer"
            resp.write_bytes(b"")
            out = run(["curl", "-sS", "-X", "POST", "-T", self.upload_file, "-o", resp, "-H", f"Host: {HOST}", *p.hdr(),
                       "-H", "Expect:", "-H", "Content-Type: application/octet-stream",
                       "-w", "%{http_code} %{size_upload} %{time_total}", f"http://127.0.0.1:{p.h1}/upload"], 120)
            code, size, t = out.split()[-3:]
            body = resp.read_text(errors="replace").strip()
            ok = code == "200" and body == str(BIG) and sink.last_length == BIG
            return {"mib_s": BIG / MiB / float(t) if ok else 0.0, "seconds": float(t), "errors": 0 if ok else 1}
        return self._measured(p, go)


# --------------------------------------------------------------------------- report


def summary(vals: list) -> dict | None:
    vals = [v for v in vals if v is not None]
    if not vals:
        return None
    return {"median": statistics.median(vals), "min": min(vals), "max": max(vals), "n": len(vals)}


def fmt(s: dict | None, digits: int = 0, scale: float = 1.0) -> str:
    if not s:
        return "–"
    f = f"{{:,.{digits}f}}"
    med, lo, hi = (f.format(s[k] * scale) for k in ("median", "min", "max"))
    return med if s["n"] == 1 or lo == hi else f"{med} ({lo}–{hi})"


ROWS = [  # (label, scenario, field, digits, scale, higher_is_better)
    ("1 KiB GET, HTTP/1.1, 64 conns (wrk): req/s", "wrk", "rps", 0, 1, True),
    ("… p50 latency, ms", "wrk", "p50_ms", 2, 1, False),
    ("… p99 latency, ms", "wrk", "p99_ms", 2, 1, False),
    ("1 KiB GET, HTTP/2, 64 clients (h2load): req/s", "h2load", "rps", 0, 1, True),
    ("fixed rate (~{rate} req/s, 32 conns): p50 latency, ms", "paced", "p50_ms", 2, 1, False),
    ("… p99 latency, ms", "paced", "p99_ms", 2, 1, False),
    ("100 MiB download, MiB/s", "download", "mib_s", 0, 1, True),
    ("100 MiB upload, MiB/s", "upload", "mib_s", 0, 1, True),
    ("agent/dialer resident memory idle, MiB", "idle", "agent_rss_mib", 1, 1, False),
    ("agent/dialer peak resident memory, 1 KiB load, MiB", "wrk", "agent_rss_peak_mib", 1, 1, False),
    ("agent/dialer peak resident memory, 100 MiB download, MiB", "download", "agent_rss_peak_mib", 1, 1, False),
    ("agent/dialer peak resident memory, 100 MiB upload, MiB", "upload", "agent_rss_peak_mib", 1, 1, False),
    ("agent/dialer CPU s per 100k requests (wrk)", "wrk", "agent_cpu_s_per_100k", 2, 1, False),
    ("gateway resident memory idle, MiB", "idle", "gateway_rss_mib", 1, 1, False),
    ("gateway peak resident memory, 1 KiB load, MiB", "wrk", "gateway_rss_peak_mib", 1, 1, False),
    ("gateway CPU s per 100k requests (wrk)", "wrk", "gateway_cpu_s_per_100k", 2, 1, False),
]


def ratio(a, b):
    return a / b if a is not None and b else None


def build_report(results: dict, meta: dict, paths: list) -> tuple[str, dict]:
    stats: dict = {}
    for key in paths:
        stats[key] = {}
        for _, scen, field, *_ in ROWS:
            stats[key][f"{scen}.{field}"] = summary([r.get(field) for r in results[key].get(scen, [])])
        for scen in ("wrk", "h2load", "paced", "download", "upload"):
            stats[key][f"{scen}.errors"] = sum(r.get("errors", 0) for r in results[key].get(scen, []))
    rate = summary([r["rps"] for k in paths for r in results[k].get("paced", [])])
    lines = [f"Run {meta['date']} on {meta['cpus']} CPUs; {meta['rounds']} rounds of {meta['duration']} s per load "
             f"scenario, paths alternating (order rotated every round); median (min–max). "
             f"Threads: our gateway and agent are single-threaded (1 thread each), HAProxy nbthread 1; "
             f"one reversed connection; per-request logging off on both sides; "
             f"clients: wrk/h2load with {meta['client_threads']} thread(s); local API: nginx 1 worker. "
             f"Our agent: the Embedded build, 1 connection, local_max_connections 32 (default); "
             f"HAProxy {meta['haproxy_version'] or '(not run)'}: nbconn 1.",
             "", f"`{meta['command']}`", ""]
    names = NAMES
    lines.append("| | " + " | ".join(names[k] for k in paths) + " |")
    lines.append("|---|" + "---|" * len(paths))
    for label, scen, field, digits, scale, _ in ROWS:
        if "{rate}" in label:
            label = label.format(rate=f"{rate['median']:,.0f}" if rate else "?")
        cells = [fmt(stats[k].get(f"{scen}.{field}"), digits, scale) for k in paths]
        if all(c == "–" for c in cells):
            continue
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    errs = {k: {s: stats[k][f"{s}.errors"] for s in ("wrk", "h2load", "paced", "download", "upload")
                if stats[k][f"{s}.errors"]} for k in paths}
    errs = {k: v for k, v in errs.items() if v}
    lines.append("")
    lines.append("Errors (non-2xx, socket errors, failed transfers): " + (json.dumps(errs) if errs else "none"))

    def med(k, name):
        s = stats.get(k, {}).get(name)
        return s["median"] if s else None

    checks = []
    if "haproxy_tls" in paths:
        def add(what, value, target, higher=True):
            if value is None:
                return
            ok = value >= target if higher else value <= target
            checks.append((what, value, target, higher, ok))
        add("req/s (wrk) ours mTLS ÷ HAProxy mTLS", ratio(med("ours_tls", "wrk.rps"), med("haproxy_tls", "wrk.rps")), 1.5)
        add("req/s (h2load) ours mTLS ÷ HAProxy mTLS",
            ratio(med("ours_tls", "h2load.rps"), med("haproxy_tls", "h2load.rps")), 1.5)
        add("p99 at 64 conns (wrk) ours mTLS ÷ HAProxy mTLS",
            ratio(med("ours_tls", "wrk.p99_ms"), med("haproxy_tls", "wrk.p99_ms")), 1.0, False)
        add("p99 at fixed rate ours mTLS ÷ HAProxy mTLS",
            ratio(med("ours_tls", "paced.p99_ms"), med("haproxy_tls", "paced.p99_ms")), 1.0, False)
        for s in ("download", "upload"):
            add(f"100 MiB {s} ours mTLS ÷ HAProxy mTLS",
                ratio(med("ours_tls", f"{s}.mib_s"), med("haproxy_tls", f"{s}.mib_s")), 1.5)
            add(f"100 MiB {s} ours mTLS ÷ no tunnel",
                ratio(med("ours_tls", f"{s}.mib_s"), med("direct", f"{s}.mib_s")), 0.5)
        add("agent RSS idle ÷ HAProxy dialer's",
            ratio(med("ours_tls", "idle.agent_rss_mib"), med("haproxy_tls", "idle.agent_rss_mib")), 0.5, False)
        add("agent peak RSS under 1 KiB load ÷ HAProxy dialer's",
            ratio(med("ours_tls", "wrk.agent_rss_peak_mib"), med("haproxy_tls", "wrk.agent_rss_peak_mib")), 0.5, False)
        for s in ("download", "upload"):
            add(f"agent peak RSS, 100 MiB {s} ÷ HAProxy dialer's",
                ratio(med("ours_tls", f"{s}.agent_rss_peak_mib"), med("haproxy_tls", f"{s}.agent_rss_peak_mib")),
                0.5, False)
    if checks:
        lines += ["", "| target (ratio of medians, same run) | ratio | target | |", "|---|---|---|---|"]
        for what, v, t, higher, ok in checks:
            lines.append(f"| {what} | {v:.2f} | {'≥' if higher else '≤'} {t:g} | {'met' if ok else 'MISSED'} |")
    access = [k for k in ("ours_tls_token", "ours_tls_jwt") if k in paths]
    if access and "ours_tls" in paths:
        lines += ["", "| access control (issue 13), ratio of medians, same run | ratio | target | |", "|---|---|---|---|"]
        for k in access:
            for scen, what in (("wrk", "req/s HTTP/1.1 (wrk)"), ("h2load", "req/s HTTP/2 (h2load)"),
                               ("paced", "p99 at fixed rate")):
                field = "p99_ms" if scen == "paced" else "rps"
                v = ratio(med(k, f"{scen}.{field}"), med("ours_tls", f"{scen}.{field}"))
                if v is None:
                    continue
                higher = field == "rps"
                target = 0.95 if higher else 1.05
                ok = v >= target if higher else v <= target
                checks.append((f"{what} {NAMES[k]} ÷ ours, mTLS", v, target, higher, ok))
                lines.append(f"| {what}: {NAMES[k]} ÷ ours, mTLS (no policy) | {v:.3f} | "
                             f"{'≥' if higher else '≤'} {target:g} | {'met' if ok else 'MISSED'} |")
            # less noisy than req/s on a shared machine: what a request costs the gateway
            v = ratio(med(k, "wrk.gateway_cpu_s_per_100k"), med("ours_tls", "wrk.gateway_cpu_s_per_100k"))
            if v is not None:
                lines.append(f"| gateway CPU per request (wrk): {NAMES[k]} ÷ ours, mTLS (no policy) | {v:.3f} | – | |")
    if "ours_plain" in paths and "haproxy_plain" in paths:
        lines += ["", "Plain (no TLS) ratios, ours ÷ HAProxy: " + ", ".join(
            f"{n} {ratio(med('ours_plain', m), med('haproxy_plain', m)):.2f}"
            for n, m in (("wrk req/s", "wrk.rps"), ("h2load req/s", "h2load.rps"), ("download", "download.mib_s"),
                         ("upload", "upload.mib_s"))
            if ratio(med('ours_plain', m), med('haproxy_plain', m)) is not None)]
    md = "\n".join(lines) + "\n"
    return md, {"meta": meta, "summary": stats, "targets": [
        {"what": w, "ratio": v, "target": t, "higher_is_better": h, "met": ok} for w, v, t, h, ok in checks]}


# --------------------------------------------------------------------------- profiles


def demangle(text: str) -> str:
    swift = shutil.which("swift-demangle") or shutil.which("swift")
    if not swift:
        return text
    cmd = [swift, "--simplified", "--compact"] if swift.endswith("swift-demangle") else \
        [swift, "demangle", "--simplified"]
    try:
        return subprocess.run(cmd, input=text.encode(), capture_output=True, timeout=60).stdout.decode(errors="replace")
    except (OSError, subprocess.TimeoutExpired):
        return text


def profile(p: Path_, bench: Bench, out_dir: Path, seconds: int) -> dict:
    """perf record of the gateway and the agent under the wrk 1 KiB load; the
    flat profile (self time by symbol) of each, demangled."""
    out_dir.mkdir(parents=True, exist_ok=True)
    recs = {}
    for k, pid in p.pids().items():
        data = out_dir / f"{p.key}-{k}.perf.data"
        recs[k] = (data, subprocess.Popen(["perf", "record", "-F", "1999", "-g", "-o", str(data), "-p", str(pid),
                                           "--", "sleep", str(seconds)],
                                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
    d = max(seconds + 2, 4)
    out = run(["wrk", f"-t{bench.a.client_threads}", "-c64", f"-d{d}s", "-H", f"Host: {HOST}", *p.hdr(),
               f"http://127.0.0.1:{p.h1}/1k"], d + 30)
    res = {"wrk_rps": parse_wrk(out)["rps"]}
    for k, (data, proc) in recs.items():
        proc.wait(timeout=60)
        flat = subprocess.run(["perf", "report", "-i", str(data), "--no-children", "--stdio", "--sort", "dso,symbol",
                               "--percent-limit", "0.7", "-g", "none"], capture_output=True, timeout=300)
        text = demangle(flat.stdout.decode(errors="replace"))
        (out_dir / f"{p.key}-{k}.txt").write_text(text)
        top = [re.sub(r"\s+", " ", ln.strip()) for ln in text.splitlines() if re.match(r"\s+\d+\.\d+%", ln)]
        res[k] = top[:15]
    return res


# --------------------------------------------------------------------------- main


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--gateway-bin", default=str(REPO / ".build" / "release" / "fleet-gateway"))
    ap.add_argument("--agent-bin", default=str(REPO / ".build-embedded" / "release" / "device-agent"),
                    help="default: the Embedded release build, unstripped (same code as the shipped stripped "
                         "binary; symbols for --profile)")
    ap.add_argument("--haproxy", default=os.environ.get("HAPROXY"))
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--duration", type=int, default=8, help="seconds per load scenario")
    ap.add_argument("--client-threads", type=int, default=1)
    ap.add_argument("--paced-delay-ms", type=int, default=8)
    ap.add_argument("--scenarios", default="wrk,h2load,paced,download,upload")
    ap.add_argument("--paths", default="direct,ours_plain,ours_tls,ours_tls_token,ours_tls_jwt,haproxy_plain,haproxy_tls")
    ap.add_argument("--profile", metavar="DIR", help="also profile our mTLS gateways and agents with perf (1 KiB wrk), "
                                                     "with and without access control")
    ap.add_argument("--profile-seconds", type=int, default=6)
    ap.add_argument("--md", default="bench/results/compare.md")
    ap.add_argument("--json", default="bench/results/compare.json")
    args = ap.parse_args()

    for tool in ("wrk", "h2load", "curl", "nginx"):
        if not shutil.which(tool) and not (tool == "nginx" and Path("/usr/sbin/nginx").exists()):
            sys.exit(f"{tool} not found (apt-get install wrk nghttp2-client curl nginx-light)")
    gw_bin, agent_bin = Path(args.gateway_bin).resolve(), Path(args.agent_bin).resolve()
    for b in (gw_bin, agent_bin):
        if not b.exists():
            sys.exit(f"{b} not found; build it first (see the README's Benchmarks section)")
    haproxy = haproxy_ok(args.haproxy)
    wanted = args.paths.split(",")
    if not haproxy:
        wanted = [k for k in wanted if not k.startswith("haproxy")]
    scenarios = args.scenarios.split(",")

    signal.signal(signal.SIGTERM, lambda *_: sys.exit("terminated"))  # so the finally below stops every process
    work = Path(tempfile.mkdtemp(prefix="rh-compare-"))
    pm = lib.ProcessManager(work / "logs")
    sink = UploadSink()
    results: dict = {k: {} for k in wanted}
    meta = {"date": time.strftime("%Y-%m-%d %H:%M"), "cpus": os.cpu_count(), "rounds": args.rounds,
            "duration": args.duration, "client_threads": args.client_threads, "gateway_bin": str(gw_bin),
            "agent_bin": str(agent_bin), "haproxy": str(haproxy) if haproxy else None,
            "haproxy_version": run([haproxy, "-v"], 10).splitlines()[0] if haproxy else None,
            "threads": "our gateway and agent: 1 thread each (one event loop); HAProxy nbthread 1",
            "paced_delay_ms": args.paced_delay_ms, "work": str(work),
            "command": " ".join(["python3"] + sys.argv)}
    try:
        _, api_h1, api_h2 = start_nginx(pm, work, sink)
        os.environ["RH_BIN"] = str(gw_bin.parent)
        pki = lib.make_pki(work / "pki")
        paths: dict[str, Path_] = {}
        if "direct" in wanted:
            paths["direct"] = Path_("direct", "no tunnel", api_h1, api_h2)
            wait_through(api_h1, "nginx")
        if "ours_plain" in wanted:
            paths["ours_plain"] = our_path(pm, pki, gw_bin, agent_bin, api_h1, tls=False)
        if "ours_tls" in wanted:
            paths["ours_tls"] = our_path(pm, pki, gw_bin, agent_bin, api_h1, tls=True)
        for access in ("token", "jwt"):
            if f"ours_tls_{access}" in wanted:
                paths[f"ours_tls_{access}"] = our_path(pm, pki, gw_bin, agent_bin, api_h1, tls=True, access=access,
                                                       work=work)
        if haproxy:
            lab = work / "lab"
            (lab / "pki").mkdir(parents=True)
            (lab / "pki" / "ca.crt").write_bytes(pki.ca.read_bytes())
            (lab / "pki" / "gw.pem").write_bytes(pki.gateway_cert.read_bytes() + pki.gateway_key.read_bytes())
            (lab / "pki" / f"{HOST}.pem").write_bytes(pki.device_pem(HOST).read_bytes())
            for kind in ("plain", "tls"):
                if f"haproxy_{kind}" in wanted:
                    paths[f"haproxy_{kind}"] = haproxy_path(pm, haproxy, lab, api_h1, tls=kind == "tls")
        order = [k for k in wanted if k in paths]
        # Idle memory: every tunnel is up and has carried one request; nothing else runs.
        time.sleep(2.0)
        for k in order:
            r = {f"{n}_rss_mib": lib.rss_mib(pid) for n, pid in paths[k].pids().items()}
            if r:
                results[k]["idle"] = [r]
        bench = Bench(args, work)
        for rnd in range(args.rounds):
            rot = order[rnd % len(order):] + order[:rnd % len(order)]
            for scen in scenarios:
                for k in rot:
                    p = paths[k]
                    r = bench.upload(p, sink) if scen == "upload" else getattr(bench, scen)(p)
                    r["round"] = rnd + 1
                    results[k].setdefault(scen, []).append(r)
                    brief = {x: (round(v, 2) if isinstance(v, float) else v) for x, v in r.items()
                             if x in ("rps", "p50_ms", "p99_ms", "mib_s", "errors")}
                    print(f"round {rnd + 1} {scen:8s} {k:14s} {brief}", flush=True)
                    for proc in (p.gateway, p.agent):
                        if proc and not proc.alive():
                            raise SystemExit(f"{proc.name} exited:\n{proc.tail()}")
        profiles = {}
        if args.profile:
            for k in ("ours_tls", "ours_tls_token", "ours_tls_jwt"):
                if k in paths:
                    profiles[k] = profile(paths[k], bench, Path(args.profile), args.profile_seconds)
        md, doc = build_report(results, meta, order)
        if profiles:
            md += "\nProfiles (perf, self time, our mTLS tunnels under the 1 KiB wrk load):\n"
            for k, pr in profiles.items():
                for proc in ("gateway", "agent"):
                    md += f"\n{NAMES[k]}, {proc} (top symbols):\n\n```\n" + "\n".join(pr.get(proc, [])) + "\n```\n"
        doc["raw"] = results
        doc["profiles"] = profiles
        for f, text in ((args.md, md), (args.json, json.dumps(doc, indent=2) + "\n")):
            Path(f).parent.mkdir(parents=True, exist_ok=True)
            Path(f).write_text(text)
        print(md)
    finally:
        pm.stop_all()
        sink.close()
        for big in (work / "nginx" / "www" / "100m", work / "upload.bin"):
            big.unlink(missing_ok=True)


if __name__ == "__main__":
    main()
