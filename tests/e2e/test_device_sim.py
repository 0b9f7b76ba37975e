"""device-sim from the command line: its simulated API through a real gateway,
its faults, its report, and its refusals of bad options."""

from __future__ import annotations

import hashlib
import http.client
import json
import socket
import subprocess
import os
import base64
import re

import pytest

import e2e_lib as lib
import fleet_lib


def _sim(procs, gw, pki, *args, name="device-sim"):
    report = procs.log_dir / f"{name}-report.json"
    p = procs.start(name, [fleet_lib.sim_bin(), "--gateway", f"127.0.0.1:{gw.device_port}", "--server-name", "gw.example",
                           "--ca-dir", pki.dir, "--report", report, "--name-pattern", "sim%02d.example", *args])
    return fleet_lib.Sim(p, p.log_path, report)


def _get(port, host, path, method="GET", body=None, headers=None):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        c.request(method, path, body=body, headers={"Host": host, **(headers or {})})
        r = c.getresponse()
        return r.status, r.read(), dict((k.lower(), v) for k, v in r.getheaders())
    finally:
        c.close()


@pytest.fixture
def gw(procs, pki):
    return lib.start_gateway(procs, pki)


def test_simulated_api_through_the_gateway(procs, gw, pki):
    sim = _sim(procs, gw, pki, "--devices", "3", "--connections", "2")
    lib.wait_until(lambda: sim.events("all-connected"), 30, "3 devices")
    status, body, h = _get(gw.public_port, "sim02.example", "/device")
    assert (status, body, h["x-device"]) == (200, b"sim02.example\n", "sim02.example")
    status, body, h = _get(gw.public_port, "sim03.example", "/bytes/300000")
    assert status == 200 and body == bytes(i % 251 for i in range(300000))
    payload = os.urandom(2_000_000)
    status, body, h = _get(gw.public_port, "sim01.example", "/echo?x=1", "PUT", payload, {"X-Test": "yes"})
    assert status == 200 and hashlib.sha256(body).digest() == hashlib.sha256(payload).digest()
    assert (h["x-echo-method"], h["x-echo-path"], h["x-echo-h-x-test"]) == ("PUT", "/echo?x=1", "yes")
    assert _get(gw.public_port, "sim01.example", "/status/418")[0] == 418
    assert _get(gw.public_port, "sim01.example", "/nope")[0] == 404
    status, body, _ = _get(gw.public_port, "sim01.example", "/stream/4?ms=10")
    assert body == b"".join(f"chunk {i}\n".encode() for i in range(4))
    status, body, _ = _get(gw.public_port, "sim01.example", "/sleep/50")
    assert status == 200 and body == b"slept 50 ms\n"
    # The WebSocket echo.
    s = socket.create_connection(("127.0.0.1", gw.public_port), timeout=10)
    key = base64.b64encode(os.urandom(16)).decode()
    s.sendall(f"GET /ws HTTP/1.1\r\nHost: sim03.example\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
              f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n".encode())
    f = s.makefile("rb")
    assert f.readline().startswith(b"HTTP/1.1 101")
    while f.readline() not in (b"\r\n", b""):
        pass
    for payload in [b"hello", os.urandom(70_000)]:
        s.sendall(lib.ws_frame(0x2, payload, mask=True))
        assert lib.ws_read_frame(f) == (0x2, payload)
    s.sendall(lib.ws_frame(0x2, b"not masked", mask=False))  # no client sends that: the stream is reset
    assert f.read(1) == b"", "the gateway closes the user's connection"
    s.close()
    summary = sim.summary()
    assert summary["connected_devices"] == 3 and summary["connections"] == 6
    assert summary["requests_by_status"]["200"] >= 6


def test_faults_are_injected_and_counted(procs, gw, pki):
    sim = _sim(procs, gw, pki, "--devices", "6", "--fault", "wrong-ca@sim01.example", "--fault", "expired@sim02.example",
               "--fault", "garbage@sim03.example", "--fault", "slow@sim04.example,delay=300",
               "--fault", "drop@sim05.example")  # at 0: applied once its connection is up
    lib.wait_until(lambda: sim.events("all-connected"), 30, "the 4 good devices")
    assert _get(gw.public_port, "sim01.example", "/device")[0] == 503, "a device with a foreign certificate is refused"
    assert _get(gw.public_port, "sim02.example", "/device")[0] == 503, "an expired certificate is refused"
    status, body, _ = _get(gw.public_port, "sim03.example", "/device")
    assert status == 502 and b"PROTOCOL_ERROR" in body
    status, body, _ = _get(gw.public_port, "sim04.example", "/device")
    assert (status, body) == (200, b"sim04.example\n")
    # A slow device still takes the whole body that arrives while it waits.
    payload = os.urandom(300_000)
    status, body, _ = _get(gw.public_port, "sim04.example", "/echo", "POST", payload)
    assert status == 200 and body == payload
    # The dropped device (dropped as soon as it was up) re-dials with backoff.
    lib.wait_until(lambda: sim.summary()["reconnects"] >= 1, 30, "sim05 back after the drop", interval=0.2)
    assert _get(gw.public_port, "sim05.example", "/device")[:2] == (200, b"sim05.example\n")
    s = sim.summary()
    assert s["expected_to_connect"] == 4
    assert s["faults_injected"] == {"drop": 1, "expired": 1, "garbage": 1, "slow": 1, "wrong-ca": 1}
    assert s["requests_by_status"]["200"] >= 2
    assert s["reconnects"] == 1
    sim.proc.stop()
    final = json.loads(sim.report.read_text())
    assert final["requests_by_status"]["0"] == 1  # the garbage answer
    assert any(e["event"] == "stopped" for e in map(json.loads, sim.out.read_text().splitlines()))


@pytest.mark.parametrize("args,message", [
    ([], "no gateway set"),
    (["--gateway", "127.0.0.1:1"], "TLS needs --ca-dir"),
    (["--gateway", "127.0.0.1:1", "--plaintext", "--name-pattern", "dev"], "exactly one %d"),
    (["--gateway", "127.0.0.1:1", "--plaintext", "--name-pattern", "dev_%d"], "not a valid device name"),
    (["--gateway", "127.0.0.1:1", "--plaintext", "--fault", "melt@1%"], "KIND one of"),
    (["--gateway", "127.0.0.1:1", "--plaintext", "--fault", "drop@sim99"], "no device named"),
    (["--gateway", "127.0.0.1:1", "--plaintext", "--fault", "expired@1%"], "need --ca-dir"),
    (["--gateway", "127.0.0.1:1", "--plaintext", "--devices", "0"], "devices"),
    (["--gateway", "127.0.0.1:1", "--ca-dir", "/nonexistent"], "fleet CA"),
    (["--gateway", "127.0.0.1:1", "--ca-dir", "/tmp", "--cert-dir", "/tmp"], "exclude each other"),
    (["--gateway", "127.0.0.1:1", "--plaintext", "--fault", "freeze@1%,every=5,for=5"], "shorter than every"),
    (["--gateway", "127.0.0.1:1", "--plaintext", "--report", "/nonexistent/report.json"], "cannot write the report"),
    (["--gateway", "127.0.0.1:1", "--ca", "/etc/hostname", "--cert-dir", "/nonexistent"], "certificate directory"),
])
def test_bad_options_are_refused_clearly(args, message):
    r = subprocess.run([str(fleet_lib.sim_bin()), *args], capture_output=True, timeout=30, env=lib.child_env())
    assert r.returncode != 0
    assert message in r.stderr.decode(), r.stderr.decode()


def test_frozen_corrupt_and_flapping_devices(procs, pki):
    """A frozen device is dropped by the gateway's idle PING and comes back when it
    thaws; a device that writes garbage is cut off (GOAWAY) and re-dials; a
    flapping one keeps coming back. The other devices are not disturbed."""
    gw = lib.start_gateway(procs, pki, extra=["--idle-ping-ms", "300"])
    sim = _sim(procs, gw, pki, "--devices", "5", "--idle-ping-ms", "0",
               "--fault", "freeze@sim01.example,at=1,for=4", "--fault", "corrupt@sim02.example,at=1",
               "--fault", "flap@sim03.example,at=1,up=300,for=2")
    lib.wait_until(lambda: sim.events("all-connected"), 30, "5 devices")
    # The gateway notices the frozen device by its unanswered PING; the device, frozen,
    # does not notice and does not re-dial until it thaws (at 5 s).
    gw.proc.wait_log("device=sim01.example conn=1 device connection closed: peer silent", timeout=10)
    gw.proc.wait_log("device=sim02.example conn=2 device connection closed", timeout=10)
    assert _get(gw.public_port, "sim05.example", "/device")[:2] == (200, b"sim05.example\n")
    # Awaited as events, not as a count of all-connected moments (on a slow machine the
    # faults can begin before the last device's first connection): sim01 connected a
    # second time (after its thaw), and every device up now.
    lib.wait_until(lambda: len(re.findall(r"device=sim01\.example conn=\d+ device connected from", gw.log())) >= 2
                   and sim.summary()["connected_devices"] == 5, 30, "everyone connected again after the thaw")
    for name in ("sim01", "sim02", "sim03", "sim04", "sim05"):
        assert _get(gw.public_port, f"{name}.example", "/device")[:2] == (200, f"{name}.example\n".encode())
    s = sim.summary()
    assert s["faults_injected"]["freeze"] == 1 and s["faults_injected"]["corrupt"] == 1
    assert s["faults_injected"]["flap"] == 1
    assert s["reconnects"] >= 3, s
    # The garbage reads as a frame header with an impossible length.
    assert "device=sim02.example conn=2 closing: the peer broke HTTP/2 (sent GOAWAY FRAME_SIZE_ERROR" in gw.log()
