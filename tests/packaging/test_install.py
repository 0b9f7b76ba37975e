"""Installs the .debs into a fresh Debian 12 root (mmdebstrap, chroot) and
checks files, permissions, the service user, the maintainer scripts (install,
upgrade keeps the configuration, remove, purge), the units (systemd-analyze
verify and security), and that the installed programs run: the amd64 agent
and gateway natively, the arm64 agent under qemu-aarch64-static.

The tests run in file order on one root; each states what it leaves behind."""

from __future__ import annotations

import re
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

from conftest import REPO, run, version

AGENT_CONF = "/etc/device-agent/agent.conf"
GATEWAY_CONF = "/etc/fleet-gateway/gateway.conf"
EXPOSURE_LIMIT = 2.5  # systemd-analyze security: "OK" is below 4.0; ours are lower


def swift_keys(path: str, type_name: str) -> list[str]:
    """The keys a config type accepts (its `static let keys`), less the ones
    that only make sense on a command line."""
    text = (REPO / path).read_text()
    m = re.search(r"static let keys = \[(.*?)\]", text, re.S)
    assert m, f"no keys in {type_name}"
    keys = re.findall(r'"([a-z0-9_]+)"', m.group(1))
    return [k for k in keys if k not in ("config", "check_config", "help", "version")]


def mode(root, path) -> int:
    return stat.S_IMODE((root / path).lstat().st_mode)


def owner(root, path) -> str:
    st = (root / path).lstat()
    users = {int(l.split(":")[2]): l.split(":")[0] for l in (root / "etc/passwd").read_text().splitlines()}
    groups = {int(l.split(":")[2]): l.split(":")[0] for l in (root / "etc/group").read_text().splitlines()}
    return f"{users.get(st.st_uid, st.st_uid)}:{groups.get(st.st_gid, st.st_gid)}"


def passwd(root, user) -> list[str]:
    for line in (root / "etc/passwd").read_text().splitlines():
        if line.split(":")[0] == user:
            return line.split(":")
    return []


def check_conf_all_commented(root, conf: str, keys: list[str]):
    text = (root / conf).read_text()
    live = [l for l in text.splitlines() if l.strip() and not l.lstrip().startswith("#")]
    assert not live, f"{conf} sets values on a fresh install: {live}"
    for k in keys:
        assert re.search(rf"^#{k} = ", text, re.M), f"{conf} does not document key {k}"


def check_installed_service(root, pkg: str, conf: str):
    assert mode(root, f"/usr/bin/{pkg}") == 0o755 and owner(root, f"/usr/bin/{pkg}") == "root:root"
    assert mode(root, f"/lib/systemd/system/{pkg}.service") == 0o644
    assert mode(root, f"/usr/lib/{pkg}/check-configured") == 0o755
    assert (root / f"usr/share/man/man1/{pkg}.1.gz").is_file()
    assert (root / f"usr/share/doc/{pkg}/copyright").is_file()
    # The configuration directory holds keys: root and the service group only.
    assert mode(root, f"/etc/{pkg}") == 0o750 and owner(root, f"/etc/{pkg}") == f"root:{pkg}"
    assert mode(root, conf) == 0o644 and owner(root, conf) == "root:root"
    assert f"root {pkg} 750 /etc/{pkg}" in root.run("dpkg-statoverride", "--list").stdout
    assert conf in root.run("dpkg-query", "-W", "-f=${Conffiles}", pkg).stdout
    # A system user of its own, no login, no home.
    pw = passwd(root, pkg)
    assert pw and int(pw[2]) < 1000 and pw[5] == "/nonexistent" and pw[6] == "/usr/sbin/nologin", pw
    assert pkg in root.run("id", "-Gn", pkg).stdout.split()
    # Enabled (no systemd running in the root, so not started).
    link = root / f"etc/systemd/system/multi-user.target.wants/{pkg}.service"
    assert link.is_symlink() and str(link.readlink()) == f"/lib/systemd/system/{pkg}.service"


def check_unconfigured(root, pkg: str, hint: str):
    """The unit's ExecCondition= as the service user: skip (1) with a message."""
    r = root.run(f"/usr/lib/{pkg}/check-configured", user=pkg, check=False)
    assert r.returncode == 1, r
    assert f"{pkg} is not configured yet:" in r.stdout and f"then: systemctl restart {pkg}" in r.stdout, r.stdout
    assert hint in r.stdout, r.stdout


def test_agent_fresh_install(root, debs):
    root.apt_install(debs["device-agent", "amd64"])
    check_installed_service(root, "device-agent", AGENT_CONF)
    check_conf_all_commented(root, AGENT_CONF, swift_keys("Sources/AgentKit/AgentConfig.swift", "AgentConfig"))
    assert root.run("device-agent", "--version").stderr.strip() == f"device-agent {version()}"
    # The installed agent reads the packaged configuration by default and says what is missing.
    r = root.run("device-agent", "--check-config", check=False)
    assert r.returncode == 2 and "no gateway set" in r.stderr, r
    check_unconfigured(root, "device-agent", "no gateway set")


def test_agent_configured(root):
    """The README's steps: certificate and key in place, gateway set."""
    for name, m in (("ca.crt", "0644"), ("device.crt", "0644"), ("device.key", "0640")):
        (root / "tmp" / name).write_text("-----BEGIN PLACEHOLDER-----\n")
        root.run("install", "-m", m, "-o", "root", "-g", "device-agent", f"/tmp/{name}", f"/etc/device-agent/{name}")
    with open(root / AGENT_CONF, "a") as f:
        f.write("gateway = gw.example.com:8443\nca = /etc/device-agent/ca.crt\n"
                "cert = /etc/device-agent/device.crt\nkey = /etc/device-agent/device.key\n")
    assert "configuration OK" in root.run("device-agent", "--check-config").stderr
    assert root.run("/usr/lib/device-agent/check-configured", user="device-agent").returncode == 0
    # A key the service user cannot read is named, with the command that fixes it.
    root.run("chmod", "0600", "/etc/device-agent/device.key")
    check_unconfigured(root, "device-agent", "key file /etc/device-agent/device.key is missing or not readable by user device-agent")
    root.run("chmod", "0640", "/etc/device-agent/device.key")
    # The key stays out of reach of other users.
    r = root.run("cat", "/etc/device-agent/device.key", user="nobody", check=False)
    assert r.returncode != 0


def test_gateway_install_and_pki(root, debs):
    root.apt_install(debs["fleet-gateway", "amd64"])
    check_installed_service(root, "fleet-gateway", GATEWAY_CONF)
    check_conf_all_commented(root, GATEWAY_CONF, swift_keys("Sources/FleetGatewayKit/GatewayConfig.swift", "GatewayConfig"))
    check_unconfigured(root, "fleet-gateway", "the device listener needs --ca FILE")
    # The README's PKI steps: the CA stays in pki/ (root only), the gateway reads copies.
    root.run("fleet-gateway", "pki", "init", "/etc/fleet-gateway/pki", "--name", "gw.example", "--san", "127.0.0.1")
    root.run("fleet-gateway", "pki", "issue", "/etc/fleet-gateway/pki", "dev1")
    root.run("sh", "-c", "cd /etc/fleet-gateway && install -m 0640 -o root -g fleet-gateway "
             "pki/ca.crt pki/gateway.crt pki/gateway.key .")
    assert mode(root, "/etc/fleet-gateway/pki") == 0o700 and mode(root, "/etc/fleet-gateway/pki/ca.key") == 0o600
    with open(root / GATEWAY_CONF, "a") as f:
        f.write("ca = /etc/fleet-gateway/ca.crt\ncert = /etc/fleet-gateway/gateway.crt\n"
                "key = /etc/fleet-gateway/gateway.key\n")
    assert "configuration OK" in root.run("fleet-gateway", "--config", GATEWAY_CONF, "--check-config").stderr
    assert root.run("/usr/lib/fleet-gateway/check-configured", user="fleet-gateway").returncode == 0
    assert root.run("cat", "/etc/fleet-gateway/pki/ca.key", user="fleet-gateway", check=False).returncode != 0


def test_units_verify_and_security(root, capsys):
    units = ["device-agent.service", "fleet-gateway.service"]
    r = run(["systemd-analyze", "verify", f"--root={root.path}", "--man=no"] + units, check=False)
    assert r.returncode == 0 and not r.stderr.strip() and not r.stdout.strip(), r
    for u in units:
        r = run(["systemd-analyze", "security", "--offline=true", f"--root={root.path}", u])
        m = re.search(r"Overall exposure level for \S+: ([0-9.]+)", r.stdout)
        assert m, r.stdout
        with capsys.disabled():
            print(f"\n  systemd-analyze security {u}: {m.group(1)}")
        assert float(m.group(1)) <= EXPOSURE_LIMIT, r.stdout


def bumped(deb: Path, tmp: Path, new_version: str) -> Path:
    """The same package with a higher version: an upgrade."""
    tree = tmp / "tree"
    run(["dpkg-deb", "-R", deb, tree])
    control = tree / "DEBIAN" / "control"
    control.write_text(re.sub(r"^Version: .*$", f"Version: {new_version}", control.read_text(), flags=re.M))
    out = tmp / deb.name.replace(f"_{version()}_", f"_{new_version}_")
    run(["dpkg-deb", "--root-owner-group", "--build", tree, out])
    return out


def test_agent_upgrade_keeps_configuration(root, debs, tmp_path):
    new = version() + "+upgrade1"
    r = root.apt_install(bumped(debs["device-agent", "amd64"], tmp_path, new))
    assert "Setting up device-agent" in r.stdout
    assert root.run("dpkg-query", "-W", "-f=${Version}", "device-agent").stdout == new
    assert "gateway = gw.example.com:8443" in (root / AGENT_CONF).read_text()
    assert (root / "etc/device-agent/device.key").is_file()
    assert mode(root, "/etc/device-agent") == 0o750 and owner(root, "/etc/device-agent") == "root:device-agent"
    assert mode(root, "/etc/device-agent/device.key") == 0o640
    assert root.run("/usr/lib/device-agent/check-configured", user="device-agent").returncode == 0


@pytest.mark.parametrize("pkg", ["device-agent", "fleet-gateway"])
def test_remove_keeps_configuration_purge_removes_it(root, pkg):
    root.run("dpkg", "--remove", pkg)
    assert not (root / f"usr/bin/{pkg}").exists()
    assert (root / f"etc/{pkg}").is_dir() and passwd(root, pkg)
    root.run("dpkg", "--purge", pkg)
    assert not (root / f"etc/{pkg}").exists()
    assert f"/etc/{pkg}" not in root.run("dpkg-statoverride", "--list", check=False).stdout  # 1: none left
    assert not (root / f"etc/systemd/system/multi-user.target.wants/{pkg}.service").exists()
    assert root.run("dpkg-query", "-W", "-f=${Status}", pkg, check=False).stdout.strip() in ("", "unknown ok not-installed")


def test_arm64_agent_installs_and_runs_under_qemu(root, debs):
    qemu = shutil.which("qemu-aarch64-static")
    assert qemu, "qemu-aarch64-static is missing: run scripts/setup-deps --packaging"
    root.apt_install(debs["device-agent", "arm64"])
    assert root.run("dpkg-query", "-W", "-f=${Architecture}", "device-agent").stdout == "arm64"
    assert mode(root, "/etc/device-agent") == 0o750 and mode(root, "/usr/bin/device-agent") == 0o755
    # The installed binary against the root's arm64 libraries (the ones Depends: pulled in).
    agent = str(root / "usr/bin/device-agent")
    r = run([qemu, "-L", root.path, agent, "--version"])
    assert r.stderr.strip() == f"device-agent {version()}"
    r = run([qemu, "-L", root.path, agent, "--config", root / AGENT_CONF, "--check-config"], check=False)
    assert r.returncode == 2 and "no gateway set" in r.stderr, r
    root.run("dpkg", "--purge", "device-agent")


@pytest.mark.parametrize("arch", ["amd64", "arm64"])
def test_fleet_connect_installs_and_runs(root, debs, arch):
    """The command for users: installed, its man page, and it runs (arm64 under
    qemu); bad options exit 2, an unreachable gateway exits 1 with one line."""
    # Without its Recommends (ca-certificates, openssh-client): Depends: alone must be enough to run.
    deb = debs["fleet-connect", arch]
    shutil.copy(deb, root / "tmp")
    r = root.run("apt-get", "install", "-y", "-q", "--no-install-recommends", "-o", "Dpkg::Use-Pty=0", f"/tmp/{deb.name}")
    assert re.search(r"^0 upgraded, 1 newly installed, 0 to remove", r.stdout, re.M), r.stdout
    assert root.run("dpkg-query", "-W", "-f=${Architecture}", "fleet-connect").stdout == arch
    assert mode(root, "/usr/bin/fleet-connect") == 0o755 and owner(root, "/usr/bin/fleet-connect") == "root:root"
    assert (root / "usr/share/man/man1/fleet-connect.1.gz").is_file()
    binary = str(root / "usr/bin/fleet-connect")
    prefix = [] if arch == "amd64" else [shutil.which("qemu-aarch64-static"), "-L", root.path]
    assert all(prefix), "qemu-aarch64-static is missing: run scripts/setup-deps --packaging"
    env = {"PATH": "/usr/bin:/bin"}
    r = run(prefix + [binary, "--version"], env=env) if prefix else root.run("fleet-connect", "--version")
    assert r.stderr.strip() == f"fleet-connect {version()}"
    r = run(prefix + [binary, "dev1", "22"], check=False, env=env) if prefix else \
        root.run("fleet-connect", "dev1", "22", check=False)
    assert r.returncode == 2 and "--gateway URL is required" in r.stderr, r
    # Nothing listens on port 1 of loopback: refused, exit 1, one line.
    args = ["dev1", "22", "--gateway", "http://127.0.0.1:1"]
    r = run(prefix + [binary] + args, check=False, env=env) if prefix else \
        root.run("fleet-connect", *args, check=False)
    assert r.returncode == 1 and r.stderr.count("\n") == 1 and "refused" in r.stderr, r
    root.run("dpkg", "--purge", "fleet-connect")
    assert not (root / "usr/bin/fleet-connect").exists()
