"""What the .debs say about themselves: version, architecture, Depends (the
agent: libc, OpenSSL, nghttp2 and adduser only; no libsystemd0, since it speaks
the notify and journal protocols itself), the size target, the binaries'
architecture and hardening, conffiles and maintainer scripts."""

from __future__ import annotations

import re
import subprocess

import pytest

from conftest import ALL_DEBS, COMMAND_DEBS, run, version

AGENT_DEB_LIMIT = 150 * 1024  # issue #6: each device-agent .deb <= 150 KB


def field(deb, name) -> str:
    return run(["dpkg-deb", "-f", deb, name]).stdout.strip()


def depends(deb) -> set[str]:
    return {re.sub(r"\s*\(.*\)", "", d.strip()) for d in field(deb, "Depends").split(",")}


@pytest.mark.parametrize("pkg,arch", ALL_DEBS)
def test_control(debs, pkg, arch):
    deb = debs[pkg, arch]
    assert field(deb, "Package") == pkg and field(deb, "Architecture") == arch
    assert field(deb, "Version") == version()
    assert "libsystemd0" not in depends(deb)
    if pkg == "device-agent":
        assert depends(deb) == {"libc6", "libssl3", "libnghttp2-14", "adduser"}, field(deb, "Depends")
        size = deb.stat().st_size
        assert size <= AGENT_DEB_LIMIT, f"{deb.name} is {size} bytes"
    else:
        # Full Swift with the standard library inside: no Swift runtime package exists in Debian.
        assert not any("swift" in d for d in depends(deb)), field(deb, "Depends")
    listing = run(["dpkg-deb", "-c", deb]).stdout
    assert f"./usr/bin/{pkg}" in listing and f"./lib/systemd/system/{pkg}.service" in listing
    ctrl = run(["dpkg-deb", "-I", deb]).stdout
    for script in ("postinst", "prerm", "postrm", "conffiles", "md5sums"):
        assert script in ctrl, f"{deb.name} has no {script}"


@pytest.mark.parametrize("pkg,arch", ALL_DEBS + COMMAND_DEBS)
def test_binary(debs, pkg, arch, tmp_path):
    run(["dpkg-deb", "-x", debs[pkg, arch], tmp_path])
    binary = tmp_path / "usr" / "bin" / pkg
    head = run(["readelf", "-h", "-d", "-l", binary]).stdout
    machine = {"amd64": "Advanced Micro Devices X86-64", "arm64": "AArch64"}[arch]
    assert machine in head
    assert "BIND_NOW" in head and "GNU_RELRO" in head and "PIE" in head  # hardening
    assert "RPATH" not in head and "RUNPATH" not in head
    assert ".symtab" not in run(["readelf", "-S", binary]).stdout  # stripped
    needed = set(re.findall(r"\(NEEDED\)\s+Shared library: \[(.+?)\]", head))
    assert not any("systemd" in n or "swift" in n for n in needed), needed


CONNECT_DEB_LIMIT = 100 * 1024  # fleet-connect: Embedded like the agent, smaller still


@pytest.mark.parametrize("pkg,arch", COMMAND_DEBS)
def test_command_control(debs, pkg, arch):
    """fleet-connect is a command: libc and OpenSSL only (no nghttp2, no adduser),
    no unit, no configuration, no maintainer scripts."""
    deb = debs[pkg, arch]
    assert field(deb, "Package") == pkg and field(deb, "Architecture") == arch
    assert field(deb, "Version") == version()
    assert depends(deb) == {"libc6", "libssl3"}, field(deb, "Depends")
    assert deb.stat().st_size <= CONNECT_DEB_LIMIT, f"{deb.name} is {deb.stat().st_size} bytes"
    listing = run(["dpkg-deb", "-c", deb]).stdout
    assert f"./usr/bin/{pkg}" in listing and f"./usr/share/man/man1/{pkg}.1.gz" in listing
    assert "systemd" not in listing and "./etc/" not in listing
    ctrl = run(["dpkg-deb", "-I", deb]).stdout
    for script in ("postinst", "prerm", "postrm", "conffiles"):
        assert script not in ctrl, f"{deb.name} has {script}"
