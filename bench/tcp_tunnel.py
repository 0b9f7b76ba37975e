#!/usr/bin/env python3
"""SSH through the gateway (issue 14), against the ways it is done without it. Not a test: it prints numbers.

    swift build -c release --product fleet-gateway --product fleet-connect
    (and the agent: swift build -c release --product device-agent, or RH_AGENT=.build-embedded/release/device-agent)
    python3 bench/tcp_tunnel.py [--size-mib 100] [--rounds 200] [--sessions 20]

In one run, on 127.0.0.1, with one OpenSSH server (the "device", on a free port)
and a second one as a jump host:
  direct   ssh -p P user@127.0.0.1                          (the floor)
  jump     ssh -J user@127.0.0.1:J -p P user@127.0.0.1       (OpenSSH's own way through a jump host)
  tunnel   ssh -o ProxyCommand='fleet-connect %h %p --gateway https://...' -p P user@dev1.example
           (fleet-connect -> fleet-gateway over TLS -> the agent's reversed HTTP/2 -> sshd)
For each: scp throughput of --size-mib up and down (MiB/s, SHA-256 checked),
and the interactive round trip (a 64-byte line through `cat` in one session,
--rounds times: median and p99 in ms). Then the agent's resident memory with
--sessions ssh sessions open through the tunnel, against none.

The tunnel needs the gateway and agent of issue 14 (CONNECT): without them
that mode is reported as skipped and the others still run. Set RH_BIN / RH_AGENT
/ RH_CONNECT to pick builds (default: .build/release).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests" / "e2e"))
os.environ.setdefault("RH_BIN", str(REPO / ".build" / "release"))
import access_lib as acc  # noqa: E402
import e2e_lib as lib  # noqa: E402
import ssh_lib  # noqa: E402

DEVICE = "dev1.example"


class Mode:
    def __init__(self, name: str, sshd: ssh_lib.Sshd, host: str, port: int, extra: list[str]):
        self.name, self.sshd, self.host, self.port, self.extra = name, sshd, host, port, extra

    def ssh_args(self) -> list[str]:
        return ["ssh"] + self.sshd.ssh_options(alias=DEVICE) + self.extra + ["-p", str(self.port)]

    def scp_args(self) -> list[str]:
        return ["scp", "-q"] + self.sshd.ssh_options(alias=DEVICE) + self.extra + ["-P", str(self.port)]

    def target(self) -> str:
        return f"{self.sshd.user}@{self.host}"


def scp_rate(mode: Mode, src: Path, digest: str, work: Path) -> tuple[float, float]:
    remote = work / f"remote-{mode.name}.bin"
    back = work / f"back-{mode.name}.bin"
    size_mib = src.stat().st_size / (1 << 20)
    t0 = time.monotonic()
    subprocess.run(mode.scp_args() + [str(src), f"{mode.target()}:{remote}"], check=True, timeout=600,
                   stdin=subprocess.DEVNULL, capture_output=True)
    up = size_mib / (time.monotonic() - t0)
    t0 = time.monotonic()
    subprocess.run(mode.scp_args() + [f"{mode.target()}:{remote}", str(back)], check=True, timeout=600,
                   stdin=subprocess.DEVNULL, capture_output=True)
    down = size_mib / (time.monotonic() - t0)
    assert ssh_lib.file_sha256(remote) == digest and ssh_lib.file_sha256(back) == digest, mode.name
    remote.unlink()
    back.unlink()
    return up, down


def round_trips(mode: Mode, rounds: int) -> tuple[float, float]:
    p = subprocess.Popen(mode.ssh_args() + ["-T", mode.target(), "cat"], stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        line = b"x" * 63 + b"\n"
        p.stdin.write(line)
        p.stdin.flush()
        assert p.stdout.readline() == line, p.stderr.read1(4096) if p.poll() is not None else "no echo"
        times = []
        for _ in range(rounds):
            t0 = time.perf_counter()
            p.stdin.write(line)
            p.stdin.flush()
            assert p.stdout.readline() == line
            times.append((time.perf_counter() - t0) * 1000)
        times.sort()
        return statistics.median(times), times[min(len(times) - 1, int(len(times) * 0.99))]
    finally:
        p.stdin.close()
        p.wait(timeout=20)


def agent_rss_with_sessions(mode: Mode, agent: lib.Proc, sessions: int) -> tuple[float, float]:
    before = lib.rss_mib(agent.pid)
    procs = []
    try:
        for _ in range(sessions):
            p = subprocess.Popen(mode.ssh_args() + ["-T", mode.target(), "cat"], stdin=subprocess.PIPE,
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE)
            procs.append(p)
        for p in procs:
            p.stdin.write(b"up\n")
            p.stdin.flush()
            assert p.stdout.readline() == b"up\n"
        time.sleep(1.0)  # let the agent settle after the handshakes
        return before, lib.rss_mib(agent.pid)
    finally:
        for p in procs:
            p.stdin.close()
        for p in procs:
            p.wait(timeout=20)


def start_tunnel(pm: lib.ProcessManager, base: Path, sshd: ssh_lib.Sshd):
    """Gateway (HTTPS public listener, a token allowed ports=P) and agent (tcp_ports=P);
    None with the reason when this build does not carry CONNECT."""
    pki = lib.make_pki(base / "pki")
    store = base / "tokens"
    secret = acc.token_create(store, "bench", "*")
    token = base / "token"
    token.write_text(secret + "\n")
    token.chmod(0o600)
    policy = base / "policy"
    policy.write_text(f"allow token:bench {DEVICE} ports={sshd.port}\n")
    gw = lib.start_gateway(pm, pki, public_tls=True, log_level="info",
                           extra=["--check-interval-ms", "0", "--access-policy", policy, "--tokens", store])
    status = ssh_lib.connect_status(gw.public_port, f"{DEVICE}:{sshd.port}", token=secret, ca=pki.ca)
    if status in (405, 501):
        return None, f"the gateway answers CONNECT with {status}"
    agent = lib.start_agent(pm, gw.device_port, pki=pki, device=DEVICE, local_port=lib.closed_port(),
                            log_level="info", extra=["--tcp-ports", str(sshd.port)])
    lib.wait_until(lambda: ssh_lib.connect_status(gw.public_port, f"{DEVICE}:{sshd.port}", token=secret,
                                                  ca=pki.ca) == 200 or not agent.alive(),
                   lib.DEVICE_TIMEOUT, "the device to take CONNECT")
    if not agent.alive():
        return None, "the agent exited: " + agent.tail(3)
    proxy = ssh_lib.proxy_command(f"https://127.0.0.1:{gw.public_port}", token_file=token, ca=pki.ca)
    return (gw, agent, proxy), ""


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size-mib", type=int, default=100)
    ap.add_argument("--rounds", type=int, default=200)
    ap.add_argument("--sessions", type=int, default=20)
    args = ap.parse_args()
    if not ssh_lib.have_openssh():
        print("needs openssh-server and openssh-client")
        return 1
    with tempfile.TemporaryDirectory(prefix="rh-bench-tcp-") as tmp:
        work = Path(tmp)
        pm = lib.ProcessManager(work / "logs")
        try:
            sshd = ssh_lib.start_sshd(pm, work / "sshd", name="sshd-device")
            jump = ssh_lib.start_sshd(pm, work / "jump", name="sshd-jump")
            jump_opts = " ".join(jump.ssh_options(alias=DEVICE))
            modes = [
                Mode("direct", sshd, "127.0.0.1", sshd.port, []),
                # ProxyJump with the jump host's own options (its port, the same pinned key).
                Mode("jump", sshd, "127.0.0.1", sshd.port,
                     ["-o", f"ProxyCommand=ssh {jump_opts} -p {jump.port} -W %h:%p {jump.user}@127.0.0.1"]),
            ]
            tunnel, why = start_tunnel(pm, work, sshd)
            if tunnel:
                modes.append(Mode("tunnel", sshd, DEVICE, sshd.port, ["-o", f"ProxyCommand={tunnel[2]}"]))
            src = work / "payload.bin"
            digest = ssh_lib.write_random_file(src, args.size_mib << 20)
            print(f"scp {args.size_mib} MiB each way, {args.rounds} interactive round trips of 64 bytes")
            print(f"{'mode':8} {'scp up MiB/s':>13} {'scp down MiB/s':>15} {'rtt median ms':>14} {'rtt p99 ms':>11}")
            for m in modes:
                up, down = scp_rate(m, src, digest, work)
                med, p99 = round_trips(m, args.rounds)
                print(f"{m.name:8} {up:13.1f} {down:15.1f} {med:14.3f} {p99:11.3f}", flush=True)
            if not tunnel:
                print(f"tunnel   skipped: {why}")
                return 0
            before, during = agent_rss_with_sessions(modes[-1], tunnel[1], args.sessions)
            print(f"agent RSS: {before:.1f} MiB with no session, {during:.1f} MiB with {args.sessions} ssh sessions open "
                  f"({(during - before) * 1024 / args.sessions:.0f} KiB per session)")
            return 0
        finally:
            pm.stop_all()


if __name__ == "__main__":
    sys.exit(main())
