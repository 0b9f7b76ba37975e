"""The arm64 agent from its .deb, run under qemu-aarch64-static, completes
requests through the fleet-gateway from its .deb, on loopback only: a
throw-away PKI from `fleet-gateway pki`, a local API, then curl (and an upload)
through the gateway's public port. Reuses tests/e2e's helpers."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess

import pytest

import e2e_lib as lib
from conftest import run


@pytest.fixture(scope="module")
def packaged(debs, tmp_path_factory):
    """The two programs as shipped: extracted from the .debs."""
    base = tmp_path_factory.mktemp("extracted")
    run(["dpkg-deb", "-x", debs["fleet-gateway", "amd64"], base / "gateway"])
    run(["dpkg-deb", "-x", debs["device-agent", "arm64"], base / "agent-arm64"])
    return base / "gateway" / "usr" / "bin" / "fleet-gateway", base / "agent-arm64" / "usr" / "bin" / "device-agent"


def test_arm64_agent_serves_requests_through_packaged_gateway(packaged, tmp_path, monkeypatch):
    gateway, agent = packaged
    qemu = shutil.which("qemu-aarch64-static")
    assert qemu, "qemu-aarch64-static is missing: run scripts/setup-deps --packaging"
    assert os.path.exists("/usr/lib/aarch64-linux-gnu/libnghttp2.so.14"), \
        "arm64 libraries are missing: run scripts/setup-deps --packaging"
    monkeypatch.setenv("RH_BIN", str(gateway.parent))  # e2e_lib's programs: the packaged gateway
    assert lib.gateway_bin() == gateway

    pki_dir = tmp_path / "pki"
    lib.run_pki(["init", pki_dir, "--name", "gw.example", "--san", "127.0.0.1"])
    lib.run_pki(["issue", pki_dir, "dev1.example"])
    pki = lib.PKI(dir=pki_dir, foreign_dir=tmp_path / "unused")

    pm = lib.ProcessManager(tmp_path / "logs")
    api = lib.LocalAPI("dev1.example")
    try:
        gw = lib.start_gateway(pm, pki)
        # The arm64 binary with Debian's arm64 libraries (multiarch, -L /);
        # --config /dev/null: never this host's /etc/device-agent/agent.conf.
        proc = pm.start("agent-arm64-qemu", [
            qemu, "-L", "/", agent, "--config", "/dev/null",
            "--gateway", f"127.0.0.1:{gw.device_port}", "--server-name", "gw.example",
            "--ca", pki.ca, "--cert", pki.device_cert("dev1.example"), "--key", pki.device_key("dev1.example"),
            "--local", f"127.0.0.1:{api.port}", "--connections", "2", "--name", "dev1-arm64", "--log-level", "debug"])
        r = lib.wait_device(gw, "dev1.example", timeout=60)
        assert r.status == 200 and r.body == b"dev1.example", r

        # curl, as a user would, through the gateway's public port.
        out = subprocess.run(["curl", "-sS", "--max-time", "20", "-H", "Host: dev1.example",
                              f"http://127.0.0.1:{gw.public_port}/echo?via=curl"],
                             capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL)
        assert out.returncode == 0, out.stderr
        doc = json.loads(out.stdout)
        assert doc["device"] == "dev1.example" and doc["path"] == "/echo?via=curl", doc

        # A request body and a larger response, across the TLS + HTTP/2 tunnel.
        body = os.urandom(256 * 1024)
        r = lib.request(gw.public_port, "POST", "/upload", "dev1.example", body=body, timeout=60)
        assert r.status == 200 and r.json()["sha256"] == hashlib.sha256(body).hexdigest(), r
        r = lib.request(gw.public_port, "GET", "/bytes/1000000", "dev1.example", timeout=60)
        assert r.status == 200 and r.body == lib.det_bytes(1_000_000)

        # Both connections up, then a clean stop (GOAWAY, exit 0) under qemu too.
        lib.wait_until(lambda: proc.log().count("connected to 127.0.0.1") >= 2, 30, "both connections of the arm64 agent")
        proc.stop(grace=15)
        assert proc.popen.returncode == 0, proc.tail()
    finally:
        pm.stop_all()
        api.close()
