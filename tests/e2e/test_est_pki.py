"""Issue 17, the PKI side of enrollment on loopback: `fleet-gateway pki enroll-token`
(a one-time secret shown once, only its hash kept) and `pki init --issuing-ca` (a
root CA whose key can leave, an issuing CA that signs everything): the gateway and
the agent, unchanged, connect with the two-tier files, trusting the chain bundle
(ca.crt) or the root alone."""

from __future__ import annotations

import hashlib
import os
import re
import stat
import subprocess

import e2e_lib as lib

SECRET = re.compile(r"^rhe_[A-Za-z0-9_-]{43}$")


def gw(*args, check: bool = True) -> subprocess.CompletedProcess:
    r = subprocess.run([str(lib.gateway_bin())] + [str(a) for a in args], stdin=subprocess.DEVNULL,
                       capture_output=True, timeout=60, env=lib.child_env(), text=True)
    if check and r.returncode != 0:
        raise AssertionError(f"fleet-gateway {args} failed ({r.returncode}):\n{r.stderr}")
    return r


def test_enroll_token_cli(tmp_path):
    d = tmp_path / "pki"
    gw("pki", "init", d, "--name", "gw.example")
    r = gw("pki", "enroll-token", d, "dev1.example", "--expires", "24h")
    secret = r.stdout.strip()
    assert r.stdout.count("\n") == 1 and SECRET.match(secret), r.stdout
    assert secret not in r.stderr and "works once" in r.stderr
    tokens = d / "enroll-tokens"
    assert stat.S_IMODE(os.stat(tokens).st_mode) == 0o640
    text = tokens.read_text()
    assert secret not in text and secret[4:] not in text
    digest = hashlib.sha256(secret.encode()).hexdigest()
    line = [l for l in text.splitlines() if l.startswith(digest)][0]
    assert " name=dev1.example " in line and line.endswith(" used=-"), line
    created = int(re.search(r"created=(\d+)", line).group(1))
    assert int(re.search(r"expires=(\d+)", line).group(1)) - created == 86400

    r2 = gw("pki", "enroll-token", d, "dev-*")  # default 24h
    assert SECRET.match(r2.stdout.strip()) and r2.stdout.strip() != secret
    assert len(tokens.read_text().splitlines()) == 3  # a comment and two tokens

    for bad, code, why in [(["DEV1.example"], 1, "canonical"), (["10.0.0.1"], 1, "not a device name"),
                           (["dev1", "--expires", "never"], 2, "must expire"),
                           (["dev1", "--expires", "0h"], 2, "--expires")]:
        r = gw("pki", "enroll-token", d, *bad, check=False)
        assert r.returncode == code and why in r.stderr and r.stdout == "", (bad, r.returncode, r.stderr)
    assert len(tokens.read_text().splitlines()) == 3


def test_two_tier_pki_connects_unchanged(procs, api, tmp_path):
    d = tmp_path / "pki"
    gw("pki", "init", d, "--name", "gw.example", "--san", "127.0.0.1", "--issuing-ca")
    gw("pki", "issue", d, "dev1.example")
    gw("pki", "issue", d, "dev2.example")
    gw("pki", "revoke", d, "dev2.example")
    os.remove(d / "root.key")  # the root key leaves the machine: nothing below needs it
    assert (d / "ca.crt").read_text().count("BEGIN CERTIFICATE") == 2
    pki = lib.PKI(dir=d, foreign_dir=d)
    local = api("dev1.example")

    # 1. Trusting the chain bundle (ca.crt), as a single-CA setup is configured.
    g = lib.start_gateway(procs, pki, extra=["--crl", d / "crl.pem"], name="gateway-bundle")
    lib.start_agent(procs, g.device_port, pki=pki, local_port=local.port, name="agent-bundle")
    assert lib.wait_device(g, "dev1.example").status == 200

    # 2. Trusting the root alone: the leaves carry the issuing CA, the CRL is the issuing CA's.
    g2 = lib.start_gateway(procs, pki, extra=["--ca", d / "root.crt", "--crl", d / "crl.pem"], name="gateway-root")
    lib.start_agent(procs, g2.device_port, pki=pki, local_port=local.port, ca=d / "root.crt", name="agent-root")
    assert lib.wait_device(g2, "dev1.example").status == 200

    # The revoked device is refused by both.
    for gateway in (g, g2):
        lib.start_agent(procs, gateway.device_port, pki=pki, device="dev2.example", local_port=local.port,
                        name=f"agent-dev2-{gateway.device_port}", connections=1)
        gateway.proc.wait_log("certificate revoked", timeout=15)
        assert lib.request(gateway.public_port, "GET", "/device", "dev2.example").status == 503
