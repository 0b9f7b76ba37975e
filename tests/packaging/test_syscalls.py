"""The units' SystemCallFilter= (@system-service less @privileged and
@resources, EPERM for the rest) against what the programs really call: the
packaged amd64 agent and gateway run under strace through start-up, a request,
a reload (SIGHUP) and a stop (SIGTERM), on loopback. No systemd runs here to
apply the filter itself, so this is how a blocked call would be noticed."""

from __future__ import annotations

import os
import re
import shutil
import signal

import pytest

import e2e_lib as lib
from conftest import REPO, run

UNITS = {"device-agent": REPO / "packaging/device-agent/device-agent.service",
         "fleet-gateway": REPO / "packaging/fleet-gateway/fleet-gateway.service"}


def allowed_syscalls(unit) -> set[str]:
    """The unit's SystemCallFilter= lines expanded with systemd-analyze's own groups."""
    text = run(["systemd-analyze", "syscall-filter"]).stdout
    groups: dict[str, list[str]] = {}
    cur = None
    for line in text.splitlines():
        if re.match(r"^@\S+", line):
            cur = line.split()[0]
            groups[cur] = []
        elif cur and line.strip() and not line.strip().startswith("#"):
            groups[cur].append(line.strip())

    def expand(items) -> set[str]:
        out = set()
        for x in items:
            out |= expand(groups[x]) if x.startswith("@") else {x}
        return out

    allow: set[str] = set()
    for line in unit.read_text().splitlines():
        if line.startswith("SystemCallFilter="):
            v = line.split("=", 1)[1]
            if v.startswith("~"):
                allow -= expand(v[1:].split())
            else:
                allow |= expand(v.split())
    assert allow, f"no SystemCallFilter= in {unit}"
    return allow


def traced(log) -> set[str]:
    names = set()
    for line in log.read_text().splitlines():
        m = re.match(r"^\d+\s+(?:<\.\.\. )?([a-z0-9_]+)[( ]", line)
        if m and m.group(1) not in ("exited", "killed", "resumed"):
            names.add(m.group(1))
    return names


def test_programs_stay_within_the_units_syscall_filter(debs, tmp_path, monkeypatch):
    strace = shutil.which("strace")
    assert strace, "strace is missing: run scripts/setup-deps --packaging"
    run(["dpkg-deb", "-x", debs["fleet-gateway", "amd64"], tmp_path / "gw"])
    run(["dpkg-deb", "-x", debs["device-agent", "amd64"], tmp_path / "agent"])
    monkeypatch.setenv("RH_BIN", str(tmp_path / "gw/usr/bin"))
    lib.run_pki(["init", tmp_path / "pki", "--name", "gw.example", "--san", "127.0.0.1"])
    lib.run_pki(["issue", tmp_path / "pki", "dev1.example"])
    pki = lib.PKI(dir=tmp_path / "pki", foreign_dir=tmp_path / "unused")

    pm = lib.ProcessManager(tmp_path / "logs")
    api = lib.LocalAPI("dev1.example")
    traces = {"fleet-gateway": tmp_path / "gw.strace", "device-agent": tmp_path / "agent.strace"}
    try:
        # The gateway under strace: e2e_lib starts whatever gateway_bin() is, so
        # point RH_BIN at a wrapper that execs strace on the packaged binary.
        wrapper = tmp_path / "wrap" / "fleet-gateway"
        wrapper.parent.mkdir()
        wrapper.write_text(f"#!/bin/sh\nexec {strace} -f -qq -o {traces['fleet-gateway']} "
                           f"{tmp_path}/gw/usr/bin/fleet-gateway \"$@\"\n")
        wrapper.chmod(0o755)
        monkeypatch.setenv("RH_BIN", str(wrapper.parent))
        gw = lib.start_gateway(pm, pki, log_level="info")
        agent = pm.start("agent", [
            strace, "-f", "-qq", "-o", traces["device-agent"], tmp_path / "agent/usr/bin/device-agent",
            "--config", "/dev/null", "--gateway", f"127.0.0.1:{gw.device_port}", "--server-name", "gw.example",
            "--ca", pki.ca, "--cert", pki.device_cert("dev1.example"), "--key", pki.device_key("dev1.example"),
            "--local", f"127.0.0.1:{api.port}"])
        r = lib.wait_device(gw, "dev1.example", timeout=30)
        assert r.status == 200
        body = b"x" * 100_000
        assert lib.request(gw.public_port, "POST", "/upload", "dev1.example", body=body).status == 200
        # Reload, then stop, both: signals go to the traced programs (strace's children).
        children = {p: int(run(["pgrep", "-P", str(p.pid)]).stdout.split()[0]) for p in (agent, gw.proc)}
        for proc, pid in children.items():
            os.kill(pid, signal.SIGHUP)
            proc.wait_log("reload done", timeout=15)
        assert lib.wait_device(gw, "dev1.example", timeout=30).status == 200
        for proc, pid in children.items():
            os.kill(pid, signal.SIGTERM)
            assert proc.popen.wait(timeout=30) == 0, proc.tail()
    finally:
        # strace leaves its tracee running when it is stopped itself: end the
        # traced programs first, by pid (strace's children only).
        for p in pm.procs:
            if p.alive():
                for pid in run(["pgrep", "-P", str(p.pid)], check=False).stdout.split():
                    try:
                        os.kill(int(pid), signal.SIGKILL)
                    except ProcessLookupError:
                        pass
        pm.stop_all()
        api.close()
    for program, log in traces.items():
        used = traced(log)
        assert len(used) > 20, f"strace saw too little of {program}: {sorted(used)}"
        blocked = used - allowed_syscalls(UNITS[program])
        assert not blocked, f"{program} calls what its unit's SystemCallFilter= refuses: {sorted(blocked)}"


def test_enrolling_agent_stays_within_its_units_syscall_filter(debs, tmp_path, monkeypatch):
    """Issue 17: the packaged agent under strace while it enrolls over EST (key
    generation, the atomic writes of key and certificate with fchmod, fsync and
    rename), then connects and serves. Only the agent is traced: the gateway here
    is the packaged one as is (its EST side is checked on its own)."""
    strace = shutil.which("strace")
    assert strace, "strace is missing: run scripts/setup-deps --packaging"
    run(["dpkg-deb", "-x", debs["fleet-gateway", "amd64"], tmp_path / "gw"])
    run(["dpkg-deb", "-x", debs["device-agent", "amd64"], tmp_path / "agent"])
    monkeypatch.setenv("RH_BIN", str(tmp_path / "gw/usr/bin"))
    lib.run_pki(["init", tmp_path / "pki", "--name", "gw.example", "--san", "127.0.0.1", "--issuing-ca"])
    lib.run_pki(["crl", tmp_path / "pki"])
    pki = lib.PKI(dir=tmp_path / "pki", foreign_dir=tmp_path / "unused")
    token = run([tmp_path / "gw/usr/bin/fleet-gateway", "pki", "enroll-token", tmp_path / "pki", "dev1.example"]).stdout.strip()
    (tmp_path / "token").write_text(token + "\n")
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    pm = lib.ProcessManager(tmp_path / "logs")
    api = lib.LocalAPI("dev1.example")
    trace = tmp_path / "agent.strace"
    try:
        gw = lib.start_gateway(pm, pki, extra=["--pki-dir", tmp_path / "pki"], log_level="info")
        agent = pm.start("agent", [
            strace, "-f", "-qq", "-o", trace, tmp_path / "agent/usr/bin/device-agent",
            "--config", "/dev/null", "--gateway", f"127.0.0.1:{gw.device_port}", "--server-name", "gw.example",
            "--ca", pki.ca, "--cert", state / "device.crt", "--key", state / "device.key",
            "--enroll-token-file", tmp_path / "token", "--name", "dev1.example", "--local", f"127.0.0.1:{api.port}"])
        agent.wait_log("new certificate written", timeout=60)
        assert lib.wait_device(gw, "dev1.example", timeout=30).status == 200
        child = int(run(["pgrep", "-P", str(agent.pid)]).stdout.split()[0])
        os.kill(child, signal.SIGTERM)
        assert agent.popen.wait(timeout=30) == 0, agent.tail()
    finally:
        for p in pm.procs:
            if p.alive():
                for pid in run(["pgrep", "-P", str(p.pid)], check=False).stdout.split():
                    try:
                        os.kill(int(pid), signal.SIGKILL)
                    except ProcessLookupError:
                        pass
        pm.stop_all()
        api.close()
    used = traced(trace)
    assert {"rename", "fsync", "fchmod"} <= used, f"strace did not see the enrollment's writes: {sorted(used)}"
    blocked = used - allowed_syscalls(UNITS["device-agent"])
    assert not blocked, f"device-agent calls what its unit's SystemCallFilter= refuses: {sorted(blocked)}"
