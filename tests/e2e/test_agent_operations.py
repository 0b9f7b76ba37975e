"""The agent as a service: systemd's notify protocol (READY, STATUS, WATCHDOG,
STOPPING), configuration files and their errors, and the private key check."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time

import e2e_lib as lib


class NotifySocket:
    """A stand-in for systemd's $NOTIFY_SOCKET: collects the datagrams."""

    def __init__(self, path):
        self.path = str(path)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.path)
        self.sock.settimeout(0.1)
        self.messages: list[str] = []

    def collect(self, until, timeout: float) -> list[str]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and not until(self.messages):
            try:
                self.messages.append(self.sock.recv(4096).decode())
            except socket.timeout:
                pass
        return self.messages

    def close(self):
        self.sock.close()


def test_notify_ready_status_watchdog_and_stopping(procs, api, pki, tmp_path):
    gw = lib.start_gateway(procs, pki)
    a = api("dev1.example")
    ns = NotifySocket(tmp_path / "notify.sock")
    try:
        args = [lib.agent_bin(), "--gateway", f"127.0.0.1:{gw.device_port}", "--server-name", "gw.example",
                "--ca", pki.ca, "--cert", pki.device_cert("dev1.example"), "--key", pki.device_key("dev1.example"),
                "--local", f"127.0.0.1:{a.port}", "--connections", "1"]
        agent = procs.start("agent-notify", args, env=lib.child_env(
            {"NOTIFY_SOCKET": ns.path, "WATCHDOG_USEC": "400000"}))
        msgs = ns.collect(lambda m: "READY=1" in m and "STATUS=1 of 1 connections up" in m
                          and m.count("WATCHDOG=1") >= 3, timeout=10)
        assert "READY=1" in msgs, msgs
        assert "STATUS=1 of 1 connections up" in msgs, msgs
        assert msgs.count("WATCHDOG=1") >= 3, f"WATCHDOG=1 every 200 ms expected: {msgs}"
        agent.popen.send_signal(signal.SIGTERM)
        msgs = ns.collect(lambda m: "STOPPING=1" in m, timeout=10)
        assert "STOPPING=1" in msgs, msgs
        assert agent.popen.wait(timeout=10) == 0
    finally:
        ns.close()


def test_watchdog_for_another_pid_is_ignored(procs, pki, tmp_path):
    ns = NotifySocket(tmp_path / "notify.sock")
    try:
        port = lib.closed_port()
        agent = procs.start("agent-wd-other", [lib.agent_bin(), "--gateway", f"127.0.0.1:{port}", "--plaintext"],
                            env=lib.child_env({"NOTIFY_SOCKET": ns.path, "WATCHDOG_USEC": "200000",
                                               "WATCHDOG_PID": "1"}))
        msgs = ns.collect(lambda m: False, timeout=0.8)
        assert "READY=1" in msgs and "WATCHDOG=1" not in msgs, msgs
        agent.stop()
    finally:
        ns.close()


def run_agent(args, timeout=10):
    return subprocess.run([str(lib.agent_bin())] + [str(a) for a in args], capture_output=True, text=True,
                          timeout=timeout, env=lib.child_env())


def test_config_file_and_check_config(pki, tmp_path):
    conf = tmp_path / "agent.conf"
    conf.write_text(f"""# device-agent configuration
gateway = gw.example.com:8443
server_name = gw.example
ca = {pki.ca}
cert = {pki.device_cert("dev1.example")}
key = {pki.device_key("dev1.example")}
local = 127.0.0.1:8080
connections = 3   # one more than the default
""")
    r = run_agent(["--config", conf, "--check-config"])
    assert r.returncode == 0, r.stderr
    assert "configuration OK" in r.stderr


def test_config_errors_name_file_and_line(pki, tmp_path):
    conf = tmp_path / "bad.conf"
    conf.write_text("gateway = gw.example.com:8443\nplaintext = true\nconections = 3\n")
    r = run_agent(["--config", conf, "--check-config"])
    assert r.returncode == 2
    assert f"{conf}:3: unknown setting 'conections'" in r.stderr, r.stderr
    conf.write_text("gateway = gw.example.com:8443\nplaintext = true\nconnections = lots\n")
    r = run_agent(["--config", conf, "--check-config"])
    assert r.returncode == 2 and f"{conf}:3: connections must be a whole number" in r.stderr, r.stderr
    r = run_agent(["--config", tmp_path / "missing.conf"])
    assert r.returncode == 2 and "missing.conf: cannot open" in r.stderr, r.stderr
    r = run_agent(["--gateway", "nohostport", "--plaintext"])
    assert r.returncode == 2 and "gateway must be HOST:PORT" in r.stderr, r.stderr


def test_private_key_readable_by_others_is_refused(pki, tmp_path):
    key = tmp_path / "dev1.key"
    shutil.copy(pki.device_key("dev1.example"), key)
    os.chmod(key, 0o644)
    r = run_agent(["--gateway", "127.0.0.1:9", "--server-name", "gw.example", "--ca", pki.ca,
                   "--cert", pki.device_cert("dev1.example"), "--key", key])
    assert r.returncode != 0
    assert "readable by others" in r.stderr and "chmod 600" in r.stderr, r.stderr


def _agent_with_config(procs, conf, name="agent-reload"):
    return procs.start(name, [lib.agent_bin(), "--config", conf, "--log-level", "debug"])


def _write_conf(path, gw, pki, local_port, connections=2, cert=None, key=None):
    path.write_text(f"""gateway = 127.0.0.1:{gw.device_port}
server_name = gw.example
ca = {pki.ca}
cert = {cert or pki.device_cert("dev1.example")}
key = {key or pki.device_key("dev1.example")}
local = 127.0.0.1:{local_port}
connections = {connections}
""")


def test_sighup_rolls_connections_without_failing_requests(procs, api, pki, tmp_path):
    """SIGHUP re-reads the config: here the local API moves to another port. Requests
    in flight on the old connections finish; new ones reach the new local API."""
    import threading
    gw = lib.start_gateway(procs, pki)
    old_api, new_api = api("dev1.example"), api("dev1.example")
    conf = tmp_path / "agent.conf"
    _write_conf(conf, gw, pki, old_api.port)
    agent = _agent_with_config(procs, conf)
    lib.wait_device(gw, "dev1.example")
    results = []

    def slow():
        results.append(lib.request(gw.public_port, "GET", "/sleep/800", "dev1.example", timeout=15).status)
    threads = [threading.Thread(target=slow) for _ in range(4)]
    before = old_api.requests
    for t in threads:
        t.start()
    lib.wait_until(lambda: old_api.requests >= before + 4, 10, "slow requests to reach the old local API", interval=0.01)
    _write_conf(conf, gw, pki, new_api.port, connections=3)
    agent.popen.send_signal(signal.SIGHUP)
    agent.wait_log("reload done", timeout=15)
    for t in threads:
        t.join(15)
    assert results == [200] * 4, results
    served_before = new_api.requests
    for _ in range(6):
        assert lib.request(gw.public_port, "GET", "/device", "dev1.example").status == 200
    assert new_api.requests == served_before + 6, "after the reload, requests go to the new local API"
    assert agent.alive()


def test_sighup_with_a_broken_config_keeps_running(procs, api, pki, tmp_path):
    gw = lib.start_gateway(procs, pki)
    a = api("dev1.example")
    conf = tmp_path / "agent.conf"
    _write_conf(conf, gw, pki, a.port)
    agent = _agent_with_config(procs, conf)
    lib.wait_device(gw, "dev1.example")
    conf.write_text(conf.read_text() + "bogus = 1\n")
    agent.popen.send_signal(signal.SIGHUP)
    agent.wait_log("reload refused", timeout=10)
    assert "unknown setting 'bogus'" in agent.log()
    assert lib.request(gw.public_port, "GET", "/device", "dev1.example").status == 200


def test_sighup_with_a_certificate_the_gateway_refuses_keeps_the_old_connections(procs, api, pki, tmp_path):
    gw = lib.start_gateway(procs, pki)
    a = api("dev1.example")
    conf = tmp_path / "agent.conf"
    _write_conf(conf, gw, pki, a.port)
    agent = _agent_with_config(procs, conf)
    lib.wait_device(gw, "dev1.example")
    text = conf.read_text().replace("connections = 2", "connections = 2\nconnect_timeout_ms = 1500")
    conf.write_text(text.replace(str(pki.device_cert("dev1.example")), str(pki.foreign_device_cert("dev1.example")))
                    .replace(str(pki.device_key("dev1.example")), str(pki.foreign_device_key("dev1.example"))))
    agent.popen.send_signal(signal.SIGHUP)
    agent.wait_log("reload failed", timeout=15)
    assert "keeping the running connections" in agent.log()
    for _ in range(4):
        assert lib.request(gw.public_port, "GET", "/device", "dev1.example").status == 200


def test_non_ascii_config_values_pass_through_byte_exact(procs, api, pki, tmp_path):
    """The Embedded agent has no Unicode tables (EmbeddedRuntime/UnicodeDataShim.swift):
    config values are bytes. Two directories whose names are canonically equivalent
    (U+00E9 and e U+0301) hold different devices' certificates: the agent must open
    the one named, and log its non-ASCII name as written."""
    gw = lib.start_gateway(procs, pki)
    a = api("dev1.example")
    named, other = tmp_path / "ger\u00e4t-cafe\u0301", tmp_path / "ger\u00e4t-caf\u00e9"
    for d, dev in ((named, "dev1.example"), (other, "dev2.example")):
        d.mkdir()
        for src in (pki.device_cert(dev), pki.device_key(dev)):
            shutil.copy(src, d / ("device" + src.suffix))
            os.chmod(d / ("device" + src.suffix), 0o600)
    name = "ger\u00e4t-cafe\u0301 \u2603"
    conf = tmp_path / "agent.conf"
    _write_conf(conf, gw, pki, a.port, connections=1, cert=named / "device.crt", key=named / "device.key")
    conf.write_bytes(conf.read_bytes() + f"name = {name}\n".encode())
    agent = _agent_with_config(procs, conf, name="agent-non-ascii")
    r = lib.wait_device(gw, "dev1.example")
    assert r.status == 200 and r.body == b"dev1.example", r
    assert lib.request(gw.public_port, "GET", "/device", "dev2.example").status == 503
    assert name.encode() in agent.log_path.read_bytes(), agent.tail()
