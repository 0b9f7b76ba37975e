"""device-sim devices that enroll over EST (issue 17): they start without
certificates, get them from the real gateway's EST with one-time tokens (the
agent's Enrollment), then dial with them; the same tokens a second time are
refused (a token works once)."""

from __future__ import annotations

import shutil
import stat
import subprocess
from pathlib import Path

import pytest

import e2e_lib as lib
import fleet_lib

DEVICES = 50


gw = lib.gateway_cmd


@pytest.fixture
def est_pki(tmp_path) -> lib.PKI:
    return lib.make_est_pki(tmp_path / "pki")


def enrolling_sim(procs, g, tokens: Path, *args, name: str) -> fleet_lib.Sim:
    report = procs.log_dir / f"{name}-report.json"
    p = procs.start(name, [fleet_lib.sim_bin(), "--gateway", f"127.0.0.1:{g.device_port}", "--server-name", "gw.example",
                           "--enroll-token-dir", tokens, "--report", report, "--name-pattern", "est%02d.example",
                           "--devices", str(DEVICES), "--log-level", "warning", *args])
    return fleet_lib.Sim(p, p.log_path, report)


def test_devices_enroll_with_tokens_then_connect_and_the_tokens_work_once(procs, est_pki, tmp_path):
    g = lib.start_gateway(procs, est_pki, extra=["--pki-dir", est_pki.dir])
    tokens = tmp_path / "tokens"
    sim = enrolling_sim(procs, g, tokens, "--mint-tokens", est_pki.dir, name="sim-enroll")
    lib.wait_until(lambda: sim.events("all-connected"), 120, f"{DEVICES} devices enrolled and connected")
    [enrolled] = sim.events("all-enrolled")
    assert enrolled["enrolled"] == DEVICES
    e = sim.summary()["enrollment"]
    assert (e["enrolled"], e["tokens_minted"], e["failed_attempts"], e["certified_before"]) == (DEVICES, DEVICES, 0, 0)
    assert 0 < e["p50_ms"] <= e["p99_ms"] <= e["max_ms"]
    # Each device wrote its own key (0600) and certificate (leaf + issuing CA), and
    # answers through the gateway on the certificate it was issued.
    for n in (1, DEVICES):
        name = f"est{n:02d}.example"
        assert stat.S_IMODE((tokens / f"{name}.key").stat().st_mode) == 0o600
        assert stat.S_IMODE((tokens / f"{name}.token").stat().st_mode) == 0o600
        assert (tokens / f"{name}.crt").read_text().count("BEGIN CERTIFICATE") == 2
        r = lib.wait_device(g, name)
        assert (r.status, r.body) == (200, f"{name}\n".encode())
    sim.proc.stop()

    # The same tokens again, without the certificates: every one is refused, and
    # no device connects. Awaited on the counters, not slept.
    again = tmp_path / "again"
    again.mkdir()
    for t in tokens.glob("*.token"):
        shutil.copy2(t, again / t.name)
    sim2 = enrolling_sim(procs, g, again, "--ca", est_pki.ca, name="sim-reuse")
    sim2.proc.wait_log("enrollment failed: /simpleenroll: 401 enrollment token already used", timeout=60)  # running: SIGUSR1 is handled
    lib.wait_until(lambda: sim2.summary()["enrollment"]["devices_failed"] == DEVICES, 120,
                   "every reused token refused", interval=0.3)
    s = sim2.summary()
    assert s["connected_devices"] == 0 and s["enrollment"]["enrolled"] == 0
    assert "401 enrollment token already used" in s["enrollment"]["last_error"]
    assert not list(again.glob("*.crt"))


def test_a_device_with_a_certificate_dials_without_enrolling(procs, est_pki, tmp_path):
    """A second run in the same directory: the certificates are there, no token is
    used and every device connects (as a board's agent after a reboot)."""
    g = lib.start_gateway(procs, est_pki, extra=["--pki-dir", est_pki.dir])
    tokens = tmp_path / "tokens"
    args = ("--devices", "3", "--mint-tokens", est_pki.dir)
    sim = enrolling_sim(procs, g, tokens, *args, name="sim-first")
    lib.wait_until(lambda: sim.events("all-connected"), 60, "3 devices enrolled")
    sim.proc.stop()
    sim = enrolling_sim(procs, g, tokens, *args, name="sim-second")
    lib.wait_until(lambda: sim.events("all-connected"), 60, "3 devices back on their certificates")
    e = sim.summary()["enrollment"]
    assert (e["certified_before"], e["enrolled"], e["tokens_minted"], e["failed_attempts"]) == (3, 0, 0, 0)


@pytest.mark.parametrize("args,message", [
    (["--plaintext", "--enroll-token-dir", "/tmp"], "needs TLS"),
    (["--enroll-token-dir", "/tmp", "--ca-dir", "/tmp"], "excludes --ca-dir"),
    (["--enroll-token-dir", "/tmp"], "needs the CA that signed the gateway"),
    (["--plaintext", "--mint-tokens", "/tmp"], "goes with --enroll-token-dir"),
    (["--enroll-token-dir", "/nonexistent/x/y", "--ca", "/etc/hostname"], "cannot create the token directory"),
])
def test_bad_enrollment_options_are_refused_clearly(args, message):
    r = subprocess.run([str(fleet_lib.sim_bin()), "--gateway", "127.0.0.1:1", *args], capture_output=True, timeout=30,
                       env=lib.child_env())
    assert r.returncode != 0
    assert message in r.stderr.decode(), r.stderr.decode()


def test_a_missing_token_is_named(tmp_path):
    r = subprocess.run([str(fleet_lib.sim_bin()), "--gateway", "127.0.0.1:1", "--enroll-token-dir", tmp_path, "--ca",
                        "/etc/hostname", "--name-pattern", "est%02d.example"], capture_output=True, timeout=30,
                       env=lib.child_env())
    assert r.returncode != 0
    assert f"no token {tmp_path}/est01.example.token" in r.stderr.decode(), r.stderr.decode()


def test_enrolled_devices_renew_and_roll_their_connections(procs, est_pki, tmp_path):
    """Certificates valid 30 s from a short-lived EST server (the agent tests' one):
    each simulated device renews at about two thirds of the life over a connection
    showing its certificate, and rolls its gateway connection onto the new one."""
    from test_est_agent import ShortLivedEST

    est = ShortLivedEST(est_pki, "rhe_short", seconds=30)
    try:
        g = lib.start_gateway(procs, est_pki, extra=["--pki-dir", est_pki.dir])
        tokens = tmp_path / "tokens"
        tokens.mkdir()
        for n in range(1, 4):
            (tokens / f"est{n:02d}.example.token").write_text("rhe_short\n")
        sim = enrolling_sim(procs, g, tokens, "--devices", "3", "--ca", est_pki.ca, "--est-server", f"127.0.0.1:{est.port}",
                            name="sim-renew")
        lib.wait_until(lambda: sim.events("all-connected"), 60, "3 devices enrolled")
        lib.wait_until(lambda: sim.summary()["enrollment"]["renewals"] >= 3, 60, "every device renewed", interval=0.5)
        assert [op for op, _ in est.issued].count("simplereenroll") >= 3
        s = sim.summary()
        assert s["connected_devices"] == 3
        assert s["reconnects"] >= 3  # the rolls: one new connection per device
        for n in range(1, 4):
            r = lib.wait_device(g, f"est{n:02d}.example")
            assert r.status == 200
    finally:
        est.close()
