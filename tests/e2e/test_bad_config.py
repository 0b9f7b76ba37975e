"""Malformed configuration files and command lines (issue 8, "Hostile input"):
each gives one message naming the file and line (or the option), exit status 2,
never a crash (a signal) and never a hang. For fleet-gateway and device-agent,
which share the format (ConfigFormat/ConfigFile.swift).

Elsewhere: test_agent_operations.py::test_config_errors_name_file_and_line,
test_device_sim.py::test_bad_options_are_refused_clearly.
"""

from __future__ import annotations

import subprocess

import pytest

import e2e_lib as lib


def run(prog, args, timeout=20):
    r = subprocess.run([str(prog), *map(str, args)], capture_output=True, timeout=timeout, env=lib.child_env(),
                       stdin=subprocess.DEVNULL)
    return r.returncode, r.stderr.decode(errors="replace")


GOOD = {"gateway": "listen_devices = 127.0.0.1:1\nplaintext_devices = true\n",
        "agent": "gateway = 127.0.0.1:1\nplaintext = true\n"}

# (id, line appended as line 3, text the message must contain after FILE:3:)
BAD_LINES = [
    ("unknown-key", b"no_such_key = 1", "unknown setting"),
    ("no-equals", b"log_level debug", "expected 'key = value'"),
    ("empty-key", b"= 5", ""),
    ("bad-key-chars", b"log level = debug", ""),
    ("number-word", b"drain_timeout_ms = lots", "must be a whole number"),
    ("number-negative", b"drain_timeout_ms = -5", "must be a whole number"),
    ("number-overflow", b"drain_timeout_ms = 99999999999999999999999999", "must be a whole number"),
    ("number-hex", b"drain_timeout_ms = 0x10", "must be a whole number"),
    ("bool", b"plaintext_devices = maybe", "must be true or false"),
    ("log-level", b"log_level = loud", "must be debug"),
    ("tls-min", b"tls_min = 1.1", "must be 1.2 or 1.3"),
    ("nul-byte", b"log_level = de\x00bug", ""),
    ("invalid-utf8", b"log_level = \xff\xfe", ""),
    ("control-chars", b"log_level\x1b[31m = info", ""),
    ("very-long-line", b"log_level = " + b"x" * 1_000_000, ""),
    ("only-spaces-value", b"log_level =    ", ""),
]


@pytest.mark.parametrize("which", ["gateway", "agent"])
@pytest.mark.parametrize("case", BAD_LINES, ids=[c[0] for c in BAD_LINES])
def test_malformed_config_line_names_file_and_line(tmp_path, which, case):
    name, line, message = case
    if which == "gateway" and name == "bool":
        pass
    elif which == "agent":
        line = line.replace(b"drain_timeout_ms", b"drain_timeout_ms").replace(b"plaintext_devices", b"plaintext")
    conf = tmp_path / "bad.conf"
    conf.write_bytes(GOOD[which].encode() + line + b"\n")
    prog = lib.gateway_bin() if which == "gateway" else lib.agent_bin()
    code, err = run(prog, ["--config", conf, "--check-config"])
    assert code == 2, (code, err[-500:])
    assert f"{conf}:3: " in err and message in err, err[-500:]
    assert len(err) < 4096, "the message repeats the whole input"


@pytest.mark.parametrize("which", ["gateway", "agent"])
def test_config_file_that_is_not_a_file(tmp_path, which):
    prog = lib.gateway_bin() if which == "gateway" else lib.agent_bin()
    for path in (tmp_path / "missing.conf", tmp_path, "/dev/null/x"):
        code, err = run(prog, ["--config", path, "--check-config"])
        assert code == 2 and str(path) in err, (path, code, err[-300:])


GATEWAY_ARGS = [
    (["--no-such-option"], "unknown"),
    (["--listen-public"], "listen_public"),
    (["--listen-public", "nohostport"], "HOST:PORT"),
    (["--listen-public", "127.0.0.1:99999"], ""),
    (["--listen-public", "127.0.0.1:-1"], ""),
    (["--max-header-bytes", "0"], "max_header_bytes"),
    (["--max-header-bytes", "184467440737095516160"], "max_header_bytes"),
    (["--public-max-streams", "-1"], "public_max_streams"),
    (["--hostname-template", "devices.example.com"], "hostname_template"),
    (["--hostname-template", "{cn}.*.example.com"], "hostname_template"),
    (["--allow-devices", ""], ""),
    (["--check-status", "600-100"], "check_status"),
]


@pytest.mark.parametrize("args,message", GATEWAY_ARGS, ids=[" ".join(a)[:40] for a, _ in GATEWAY_ARGS])
def test_gateway_bad_command_line(args, message):
    code, err = run(lib.gateway_bin(), ["--plaintext-devices", *args, "--check-config"])
    assert code == 2 and message in err and err.strip(), (code, err[-500:])


AGENT_ARGS = [
    (["--no-such-option"], "unknown"),
    (["--gateway"], "gateway"),
    (["--gateway", "127.0.0.1:0"], "gateway"),
    (["--gateway", "127.0.0.1:1", "--connections", "0"], "connections"),
    (["--gateway", "127.0.0.1:1", "--connections", "65"], "connections"),
    (["--gateway", "127.0.0.1:1", "--local", "localhost"], "local"),
    (["--gateway", "127.0.0.1:1", "--idle-ping-ms", "1e3"], "idle_ping_ms"),
    (["--gateway", "127.0.0.1:1", "--tcp-ports", "22,0"], "tcp_ports"),
    (["--gateway", "127.0.0.1:1", "--tcp-ports", "65536"], "tcp_ports"),
    (["--gateway", "127.0.0.1:1", "--tcp-ports", "22,,80"], "tcp_ports"),
    (["--gateway", "127.0.0.1:1", "--tcp-ports", "ssh"], "tcp_ports"),
]


@pytest.mark.parametrize("args,message", AGENT_ARGS, ids=[" ".join(a)[:40] for a, _ in AGENT_ARGS])
def test_agent_bad_command_line(args, message):
    code, err = run(lib.agent_bin(), ["--plaintext", *args, "--check-config"])
    assert code == 2 and message in err and err.strip(), (code, err[-500:])


def test_gateway_with_missing_certificate_files_names_them():
    """--check-config checks the settings, not the files; the gateway itself, at
    start, names the missing file and exits 1 (before binding anything)."""
    code, err = run(lib.gateway_bin(), ["--ca", "/nonexistent/ca.crt", "--cert", "/nonexistent/c.crt",
                                        "--key", "/nonexistent/c.key", "--listen-devices", f"127.0.0.1:{lib.free_port()}",
                                        "--listen-public", f"127.0.0.1:{lib.free_port()}", "--listen-admin", "off"])
    assert code == 1 and "/nonexistent/" in err, (code, err[-500:])


@pytest.mark.parametrize("which", ["agent", "gateway"])
def test_without_proc_the_command_line_is_an_error_not_empty(which):
    """The programs read their arguments from /proc/self/cmdline (Embedded Swift has
    no CommandLine). Without /proc (a bare chroot) they must say so, not run as if
    given no options."""
    if subprocess.run(["unshare", "--mount", "true"], capture_output=True).returncode != 0:
        pytest.skip("needs unshare --mount (root)")
    binary = lib.agent_bin() if which == "agent" else lib.gateway_bin()
    r = subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c",
                        f"umount -l /proc && exec {binary} --version"],
                       capture_output=True, timeout=30, env=lib.child_env())
    assert r.returncode == 2, r
    assert b"is /proc mounted?" in r.stderr, r.stderr
