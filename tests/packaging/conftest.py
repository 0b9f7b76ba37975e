"""Fixtures for the package tests (scripts/test-packages runs them).

Run from the repository root after scripts/package:
    python3 -m pytest tests/packaging -q
$RH_DIST (default <repo>/dist) holds the .debs. The fresh Debian root is made
with mmdebstrap from the host's own apt sources; it needs root (chroot).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
sys.path.insert(0, str(REPO / "tests" / "e2e"))


def version() -> str:
    text = (REPO / "Sources" / "ConfigFormat" / "Version.swift").read_text()
    return re.search(r'reverseHTTPVersion = "([^"]+)"', text).group(1)


def dist() -> Path:
    return Path(os.environ.get("RH_DIST") or REPO / "dist").resolve()


def deb(package: str, arch: str) -> Path:
    return dist() / f"{package}_{version()}_{arch}.deb"


ALL_DEBS = [("device-agent", "amd64"), ("device-agent", "arm64"), ("fleet-gateway", "amd64")]
# Commands for users (no service): checked by test_debs.py's test_command_* and test_install.py.
COMMAND_DEBS = [("fleet-connect", "amd64"), ("fleet-connect", "arm64")]


@pytest.fixture(scope="session", autouse=True)
def debs():
    missing = [str(deb(p, a)) for p, a in ALL_DEBS + COMMAND_DEBS if not deb(p, a).is_file()]
    if missing:
        pytest.fail("packages not found: " + ", ".join(missing) + " (run scripts/package)", pytrace=False)
    return {(p, a): deb(p, a) for p, a in ALL_DEBS + COMMAND_DEBS}


def run(cmd, check=True, timeout=300, **kw) -> subprocess.CompletedProcess:
    r = subprocess.run([str(c) for c in cmd], stdin=subprocess.DEVNULL, capture_output=True, text=True,
                       timeout=timeout, **kw)
    if check and r.returncode != 0:
        raise AssertionError(f"{' '.join(map(str, cmd))} exited {r.returncode}:\n{r.stdout}\n{r.stderr}")
    return r


def host_debian_sources() -> list[str]:
    """The host's apt source files that name Debian's own archive (their URIs
    end in /debian or /debian-security): the fresh root uses the same mirror as
    the host, with no host name written here."""
    files = [Path("/etc/apt/sources.list")] + sorted(Path("/etc/apt/sources.list.d").glob("*.list")) \
        + sorted(Path("/etc/apt/sources.list.d").glob("*.sources"))
    keep = []
    for f in files:
        try:
            text = f.read_text()
        except OSError:
            continue
        if re.search(r"^[^#\n]*(deb |URIs:)[^\n]*/debian(-security)?/?(\s|$)", text, re.M):
            keep.append(str(f))
    return keep


class Root:
    """A fresh Debian 12 root (amd64 with arm64 added), entered with chroot."""

    def __init__(self, path: Path):
        self.path = path

    def __truediv__(self, rel: str) -> Path:
        return self.path / rel.lstrip("/")

    def run(self, *args, user: str | None = None, check=True, timeout=300) -> subprocess.CompletedProcess:
        cmd = ["chroot"] + ([f"--userspec={user}:{user}"] if user else []) + [str(self.path)] + list(args)
        env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LC_ALL": "C.UTF-8", "DEBIAN_FRONTEND": "noninteractive"}
        return run(cmd, check=check, timeout=timeout, env=env)

    def apt_install(self, deb_path: Path) -> subprocess.CompletedProcess:
        """`apt-get install /tmp/X.deb`, as the README has it. The root already
        holds every package that Depends: names, so the deb must be the only
        package installed (nothing fetched, nothing unexpected pulled in)."""
        shutil.copy(deb_path, self / "tmp")
        r = self.run("apt-get", "install", "-y", "-q", "-o", "Dpkg::Use-Pty=0", f"/tmp/{deb_path.name}")
        assert re.search(r"^(0 upgraded, 1 newly installed|1 upgraded, 0 newly installed), 0 to remove", r.stdout, re.M), r.stdout
        return r


@pytest.fixture(scope="session")
def root(tmp_path_factory) -> Root:
    for tool in ("mmdebstrap", "chroot"):
        if not shutil.which(tool):
            pytest.fail(f"{tool} is missing: run scripts/setup-deps --packaging", pytrace=False)
    if os.geteuid() != 0:
        pytest.fail("the install test needs root (chroot)", pytrace=False)
    sources = host_debian_sources()
    if not sources:
        pytest.fail("no Debian apt sources on this host to make a root from", pytrace=False)
    path = tmp_path_factory.mktemp("debian-root") / "root"
    # What a Debian 12 board has (systemd, procps for /bin/kill, adduser) plus
    # the libraries the packages depend on, for both architectures; the
    # package lists are kept so that `apt-get install ./x.deb` resolves offline.
    include = ["adduser", "systemd", "procps", "libssl3", "libnghttp2-14", "libstdc++6", "libgcc-s1",
               "libc6:arm64", "libssl3:arm64", "libnghttp2-14:arm64"]
    run(["mmdebstrap", "--variant=apt", "--architectures=amd64,arm64", "--include=" + ",".join(include),
         "--skip=cleanup/apt/lists", "--aptopt=Acquire::Check-Valid-Until \"false\"",
         "bookworm", path] + sources, timeout=900)
    # The programs read their arguments from /proc/self/cmdline (Embedded Swift
    # has no CommandLine): a root without /proc would run them with none.
    run(["mount", "-t", "proc", "proc", path / "proc"])
    try:
        yield Root(path)
    finally:
        run(["umount", path / "proc"], check=False)
