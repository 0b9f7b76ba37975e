"""Issue 17: the packaged agent's first boot. On the fresh Debian 12 root (after
test_install.py, which purges what it installed), the amd64 .deb is installed,
the fleet CA is put where the image would have it (/etc/device-agent/ca.crt),
and agent.conf gets only `gateway` and `enroll_token`. The unit's ExecCondition
passes, the agent runs as the service user with the unit's StateDirectory
(created as systemd does: /var/lib/device-agent, 0700, the service user's),
makes its key there, enrolls under the host's name at the packaged gateway on
loopback and comes online. No systemd runs in the root: the agent is started
by hand with the unit's ExecStart, user and UMask."""

from __future__ import annotations

import socket
import stat

import e2e_lib as lib
from conftest import run

AGENT_CONF = "/etc/device-agent/agent.conf"


def test_first_boot_with_only_gateway_and_token(root, debs, tmp_path, monkeypatch):
    run(["dpkg-deb", "-x", debs["fleet-gateway", "amd64"], tmp_path / "gw"])
    monkeypatch.setenv("RH_BIN", str(tmp_path / "gw/usr/bin"))  # e2e_lib's gateway: the packaged one
    pki_dir = tmp_path / "pki"
    lib.run_pki(["init", pki_dir, "--name", "gw.example", "--san", "127.0.0.1", "--issuing-ca"])
    lib.run_pki(["crl", pki_dir])
    pki = lib.PKI(dir=pki_dir, foreign_dir=pki_dir)
    name = socket.gethostname()  # the root shares the host's UTS namespace: the agent's default name
    token = run([lib.gateway_bin(), "pki", "enroll-token", pki_dir, name]).stdout.strip()

    root.apt_install(debs["device-agent", "amd64"])
    # The fleet CA, as a board image would carry it (public, not a secret).
    (root / "tmp/ca.crt").write_bytes((pki_dir / "ca.crt").read_bytes())
    root.run("install", "-m", "0644", "-o", "root", "-g", "device-agent", "/tmp/ca.crt", "/etc/device-agent/ca.crt")

    pm = lib.ProcessManager(tmp_path / "logs")
    try:
        gw = lib.start_gateway(pm, pki, extra=["--pki-dir", pki_dir], log_level="info")
        with open(root / AGENT_CONF, "a") as f:
            f.write(f"gateway = 127.0.0.1:{gw.device_port}\nenroll_token = {token}\n")
        assert "configuration OK" in root.run("device-agent", "--check-config").stderr
        r = root.run("/usr/lib/device-agent/check-configured", user="device-agent", check=False)
        assert r.returncode == 0, r.stdout
        # StateDirectory=device-agent, StateDirectoryMode=0700, as systemd makes it.
        root.run("install", "-d", "-m", "0700", "-o", "device-agent", "-g", "device-agent", "/var/lib/device-agent")
        agent = pm.start("packaged-agent", [
            "chroot", "--userspec=device-agent:device-agent", root.path,
            "/bin/sh", "-c", "umask 0077 && exec /usr/bin/device-agent --config /etc/device-agent/agent.conf"])
        agent.wait_log("new certificate written to /var/lib/device-agent/device.crt", timeout=60)
        agent.wait_log("connected to", timeout=60)
        # Online: the gateway routes to it (the local API is absent: the agent answers 502).
        r = lib.wait_device(gw, name, timeout=30)
        assert r.status in (200, 502), r
        key = root / "var/lib/device-agent/device.key"
        assert stat.S_IMODE(key.stat().st_mode) == 0o600
        assert "BEGIN PRIVATE KEY" in key.read_text()
        assert (root / "var/lib/device-agent/device.crt").read_text().count("BEGIN CERTIFICATE") == 2
        # The token is used up: the enrolled agent restarts on its certificate alone.
        agent.popen.terminate()
        agent.popen.wait(timeout=30)
    finally:
        pm.stop_all()
        root.run("dpkg", "--purge", "device-agent")
        root.run("rm", "-rf", "/var/lib/device-agent")
