"""Interoperability with HAProxy's Reverse HTTP (rhttp), the other implementation.

  A. HAProxy is the gateway (gw-mtls-name.cfg), our device-agent dials it.
  B. HAProxy is the dialer (dialer-mtls.cfg), our fleet-gateway accepts it.
  plus the plain-TCP variants of both (gw-plain.cfg, dialer-plain.cfg); the mTLS ones
  run with a single CA and with a two-tier PKI (root + issuing CA, `pki init --issuing-ca`).

Needs $HAPROXY -> an HAProxy >= 3.2 binary, and the shared configurations in
$RH_SHARED/interop/haproxy (default <repo>/../shared). Skipped otherwise, or
failed when RH_REQUIRE_HAPROXY=1 (scripts/test sets it: CI must run them).
The HAProxy gateway configurations listen on fixed ports (19000/19443 for mTLS,
18000/18443 plain), so these tests must not run in parallel with each other.
"""

from __future__ import annotations

import concurrent.futures
import os
import re
import subprocess
import time
from pathlib import Path

import pytest

import e2e_lib as lib
from e2e_lib import request

pytestmark = pytest.mark.haproxy


# --------------------------------------------------------------------------- environment


def _unavailable(why: str):
    """Skips the interop tests, or fails them where they are required (RH_REQUIRE_HAPROXY=1)."""
    if os.environ.get("RH_REQUIRE_HAPROXY") == "1":
        pytest.fail("HAProxy interop is required here, but " + why, pytrace=False)
    pytest.skip(why)


def _haproxy_or_skip() -> Path:
    path = os.environ.get("HAPROXY")
    if not path:
        _unavailable("HAPROXY is not set (path to an HAProxy >= 3.2 binary, which has Reverse HTTP)")
    p = Path(path)
    if not (p.is_file() and os.access(p, os.X_OK)):
        _unavailable(f"HAPROXY={path} is not an executable file")
    try:
        out = subprocess.run([str(p), "-v"], capture_output=True, timeout=10, stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired) as e:
        _unavailable(f"HAPROXY={path} does not run: {e}")
    text = out.stdout.decode(errors="replace")
    m = re.search(r"version (\d+)\.(\d+)", text)
    if not m:
        _unavailable(f"cannot read the version of HAPROXY={path}: {text[:200]!r}")
    if (int(m.group(1)), int(m.group(2))) < (3, 2):
        _unavailable(f"HAProxy {m.group(1)}.{m.group(2)} has no usable Reverse HTTP; need >= 3.2")
    return p


def _configs_or_skip() -> Path:
    shared = Path(os.environ.get("RH_SHARED") or (lib.REPO.parent / "shared"))
    cfg = shared / "interop" / "haproxy"
    if not (cfg / "gw-mtls-name.cfg").is_file():
        _unavailable(f"HAProxy interop configurations not found in {cfg} (set RH_SHARED)")
    return cfg


@pytest.fixture(scope="module")
def haproxy() -> Path:
    return _haproxy_or_skip()


@pytest.fixture(scope="module")
def configs() -> Path:
    return _configs_or_skip()


@pytest.fixture(scope="module")
def two_tier_pki(tmp_path_factory) -> lib.PKI:
    """`pki init --issuing-ca`: a root whose key has left the machine and an issuing CA
    that signs everything; ca.crt is the chain (issue 17: chains work with HAProxy too)."""
    d = tmp_path_factory.mktemp("pki2") / "pki"
    lib.run_pki(["init", d, "--name", "gw.example", "--san", "127.0.0.1", "--issuing-ca"])
    for dev in ("dev1.example", "dev2.example"):
        lib.run_pki(["issue", d, dev])
    os.remove(d / "root.key")
    assert (d / "ca.crt").read_text().count("BEGIN CERTIFICATE") == 2
    return lib.PKI(dir=d, foreign_dir=d)


@pytest.fixture(params=["one-tier", "two-tier"])
def tiers(request, pki, two_tier_pki) -> lib.PKI:
    """The PKI of an mTLS test: a single CA, or a root + issuing CA."""
    return pki if request.param == "one-tier" else two_tier_pki


def _make_lab(tmp_path: Path, pki: lib.PKI) -> Path:
    lab = tmp_path / "lab"
    (lab / "pki").mkdir(parents=True)
    (lab / "run").mkdir()
    (lab / "pki" / "ca.crt").write_bytes(pki.ca.read_bytes())
    (lab / "pki" / "gw.pem").write_bytes(pki.gateway_cert.read_bytes() + pki.gateway_key.read_bytes())
    for dev in ("dev1.example", "dev2.example"):
        (lab / "pki" / f"{dev}.pem").write_bytes(pki.device_pem(dev).read_bytes())
    return lab


@pytest.fixture
def tiered_lab(tmp_path, tiers) -> Path:
    return _make_lab(tmp_path, tiers)


@pytest.fixture
def lab(tmp_path, pki) -> Path:
    """LAB folder: pki/ (ca.crt, gw.pem = cert + key, <device>.pem) and run/."""
    return _make_lab(tmp_path, pki)


def _haproxy_env(lab: Path, **kw) -> dict:
    env = {"LAB": str(lab), "GW_NBTHREAD": "1", "GW_IDLE_PING": "10s", "DIALER_NBTHREAD": "1",
           "DIALER_TCLIENT": "30s"}
    env.update({k: str(v) for k, v in kw.items()})
    return lib.child_env(env)


def _start_haproxy(procs, haproxy: Path, cfg: Path, env: dict, name: str, wait_ports=()) -> lib.Proc:
    for port in wait_ports:
        lib.wait_until(lambda: lib.port_free(port), 10, f"fixed port {port} to be free for HAProxy")
    p = procs.start(name, [haproxy, "-db", "-f", cfg], env=env)

    def up():
        if not p.alive():
            raise AssertionError(f"{name} exited ({p.popen.returncode}):\n{p.tail()}")
        return all(lib.port_open(port) for port in wait_ports)

    if wait_ports:
        lib.wait_until(up, lib.STARTUP_TIMEOUT, f"{name} to listen on {list(wait_ports)}")
    return p


# --------------------------------------------------------------------------- checks


def _wait_through(port: int, host: str, what: str, proc: lib.Proc) -> lib.Resp:
    last = [None]

    def probe():
        r = request(port, "GET", "/device", host, timeout=5)
        last[0] = r
        return r if r.status != 503 else None

    try:
        return lib.wait_until(probe, lib.DEVICE_TIMEOUT, what, interval=0.1)
    except AssertionError as e:
        raise AssertionError(f"{e}; last: {last[0]!r}\n--- {proc.name}:\n{proc.tail()}") from None


def _exercise(port: int, host: str = "dev1.example", device: str = "dev1.example") -> None:
    """The same checks in every direction: identity, 1 MiB download (Content-Length
    and chunked), POST bodies (Content-Length and chunked), headers, concurrency."""
    r = request(port, "GET", "/device", host)
    assert r.status == 200, r
    assert r.body == device.encode()
    assert r.header("X-Device") == device

    n = 1024 * 1024
    r = request(port, "GET", f"/bytes/{n}", host, timeout=lib.BIG_TIMEOUT)
    assert r.status == 200 and len(r.body) == n
    assert lib.sha256(r.body) == lib.sha256(lib.det_bytes(n))

    r = request(port, "GET", f"/chunked/{n + 17}", host, timeout=lib.BIG_TIMEOUT)
    assert r.status == 200 and lib.sha256(r.body) == lib.sha256(lib.det_bytes(n + 17))

    body = lib.det_bytes(2 * 1024 * 1024 + 3)
    r = request(port, "POST", "/upload", host, body=body, timeout=lib.BIG_TIMEOUT)
    assert r.status == 200, r
    doc = r.json()
    assert doc["length"] == len(body) and doc["sha256"] == lib.sha256(body)

    parts = [body[off:off + 40_000] for off in range(0, 300_000, 40_000)]
    r = request(port, "POST", "/upload", host, body=iter(parts), encode_chunked=True, timeout=lib.BIG_TIMEOUT)
    assert r.status == 200, r
    doc = r.json()
    assert doc["length"] == sum(map(len, parts)) and doc["sha256"] == lib.sha256(b"".join(parts))

    r = request(port, "POST", "/echo?q=1", host, body=b"x=1&y=2",
                headers={"Content-Type": "application/x-www-form-urlencoded", "X-Custom": "v"})
    assert r.status == 200
    doc = r.json()
    assert doc["method"] == "POST" and doc["path"] == "/echo?q=1"
    assert doc["body_len"] == 7 and doc["body_sha256"] == lib.sha256(b"x=1&y=2")
    assert doc["headers"]["x-custom"] == "v"
    assert doc["headers"]["host"].split(":")[0] == host

    def one(i):
        r = request(port, "GET", f"/echo?n={i}", host, timeout=30)
        return r.status == 200 and r.json()["path"] == f"/echo?n={i}"

    with concurrent.futures.ThreadPoolExecutor(max_workers=16) as ex:
        ok = list(ex.map(one, range(60)))
    assert all(ok), f"{ok.count(False)} of 60 concurrent requests failed"


# --------------------------------------------------------------------------- A: HAProxy gateway


def test_A_our_agent_against_haproxy_gateway_mtls(haproxy, configs, tiered_lab, procs, api, tiers):
    hap = _start_haproxy(procs, haproxy, configs / "gw-mtls-name.cfg", _haproxy_env(tiered_lab), "haproxy-gw-mtls",
                         wait_ports=(19000, 19443))
    a = api("dev1.example")
    agent = lib.start_agent(procs, 19443, pki=tiers, device="dev1.example", local_port=a.port,
                            server_name="gw.example")
    agent.wait_log("connected to", timeout=15)
    r = _wait_through(19000, "dev1.example", "dev1.example through the HAProxy gateway", hap)
    assert r.status == 200, f"{r}\n{hap.tail()}"
    _exercise(19000)
    # HAProxy routes by Host = certificate CN: another host has no connection.
    assert request(19000, "GET", "/device", "dev2.example").status == 503
    assert agent.alive() and hap.alive()


def test_A_plain_our_agent_against_haproxy_gateway(haproxy, configs, lab, procs, api):
    hap = _start_haproxy(procs, haproxy, configs / "gw-plain.cfg", _haproxy_env(lab), "haproxy-gw-plain",
                         wait_ports=(18000, 18443))
    a = api("dev1.example")
    agent = lib.start_agent(procs, 18443, plaintext=True, device="dev1.example", local_port=a.port)
    agent.wait_log("connected to", timeout=15)
    _wait_through(18000, "dev1.example", "dev1.example through the plain HAProxy gateway", hap)
    _exercise(18000)
    assert "INSECURE" in agent.log()


def test_A_perdev_health_checks_and_idle_ping(haproxy, configs, lab, procs, api, pki):
    """gw-mtls-perdev.cfg: one rhttp@ server per device, HAProxy health checks
    (GET /health over the reversed connection every 500 ms) and a 1 s idle-ping:
    our agent must answer both, and stay attached while idle."""
    hap = _start_haproxy(procs, haproxy, configs / "gw-mtls-perdev.cfg",
                         _haproxy_env(lab, GW_CHECK="500ms", GW_IDLE_PING="1s"), "haproxy-gw-perdev",
                         wait_ports=(19000, 19443))
    agents, apis = {}, {}
    for dev in ("dev1.example", "dev2.example"):
        apis[dev] = api(dev)
        agents[dev] = lib.start_agent(procs, 19443, pki=pki, device=dev, local_port=apis[dev].port)
    for dev in agents:
        agents[dev].wait_log("connected to", timeout=15)
        r = _wait_through(19000, dev, f"{dev} through the per-device HAProxy gateway", hap)
        assert r.status == 200 and r.body == dev.encode(), r
    assert request(19000, "GET", "/device", "dev3.example").status == 404  # the config's own answer
    health_before = {d: apis[d].requests for d in agents}
    time.sleep(3.0)  # idle: several idle-pings and health checks
    for dev in agents:
        assert apis[dev].requests > health_before[dev], f"no health checks reached {dev}"
        assert "connection closed" not in agents[dev].log(), agents[dev].log()
        r = request(19000, "GET", "/device", dev)
        assert r.status == 200 and r.body == dev.encode(), r
    _exercise(19000, "dev2.example", "dev2.example")


# --------------------------------------------------------------------------- B: HAProxy dialer


def test_B_haproxy_dialer_against_our_gateway_mtls(haproxy, configs, tiered_lab, procs, api, tiers):
    gw = lib.start_gateway(procs, tiers)
    a = api("dev1.example")
    env = _haproxy_env(tiered_lab, DEV="dev1.example", DIALER_CERT="dev1.example", NBCONN=2, APP_PORT=a.port,
                       GW_PRIV_PORT=gw.device_port, DIALER_IDLE_PING="1s")
    hap = _start_haproxy(procs, haproxy, configs / "dialer-mtls.cfg", env, "haproxy-dialer-mtls")
    r = _wait_through(gw.public_port, "dev1.example", "the HAProxy dialer through our gateway", hap)
    assert r.status == 200, f"{r}\n{gw.proc.tail()}\n{hap.tail()}"
    assert r.header("X-Served-By") == "dev1.example"  # set by the HAProxy dialer
    gw.proc.wait_log("device connected from", timeout=5)
    _exercise(gw.public_port)
    # Our gateway's forwarding headers went through HAProxy to the app.
    h = request(gw.public_port, "GET", "/echo", "dev1.example").json()["headers"]
    assert h.get("x-forwarded-for") == "127.0.0.1" and h.get("x-forwarded-proto") == "http", h
    assert request(gw.public_port, "GET", "/device", "dev2.example").status == 503
    # nbconn 2: both reversed connections registered.
    lib.wait_until(lambda: gw.log().count("device connected from") >= 2, 10, "2 reversed connections from HAProxy")
    # Idle for a while: HAProxy's idle-ping (1 s) must be answered; nothing is closed.
    time.sleep(2.5)
    assert "device connection closed" not in gw.log(), gw.proc.tail()
    assert request(gw.public_port, "GET", "/device", "dev1.example").status == 200


def test_B_plain_haproxy_dialer_against_our_gateway(haproxy, configs, lab, procs, api):
    gw = lib.start_gateway(procs, None, plaintext_name="dev1.example")
    a = api("dev1.example")
    env = _haproxy_env(lab, DEV="dev1.example", DIALER_CERT="dev1.example", NBCONN=2, APP_PORT=a.port,
                       GW_PRIV_PORT=gw.device_port)
    hap = _start_haproxy(procs, haproxy, configs / "dialer-plain.cfg", env, "haproxy-dialer-plain")
    r = _wait_through(gw.public_port, "dev1.example", "the plain HAProxy dialer through our gateway", hap)
    assert r.status == 200, f"{r}\n{gw.proc.tail()}\n{hap.tail()}"
    assert r.header("X-Served-By") == "dev1.example"
    _exercise(gw.public_port)
