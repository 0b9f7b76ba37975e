"""Issue 13, tokens and user certificates on loopback: `fleet-gateway token
create|list|revoke`, `pki issue-user`, the HTTPS public listener that asks for a
client certificate without requiring one, and the device listener that refuses a
user's certificate."""

from __future__ import annotations

import os
import re
import stat
import subprocess

import e2e_lib as lib

SECRET = re.compile(r"^rht_[A-Za-z0-9_-]{43}$")


def gw(*args, check: bool = True) -> subprocess.CompletedProcess:
    r = subprocess.run([str(lib.gateway_bin())] + [str(a) for a in args], stdin=subprocess.DEVNULL,
                       capture_output=True, timeout=60, env=lib.child_env(), text=True)
    if check and r.returncode != 0:
        raise AssertionError(f"fleet-gateway {args} failed ({r.returncode}):\n{r.stderr}")
    return r


def curl(*args) -> subprocess.CompletedProcess:
    return subprocess.run(["curl", "-sS", "--max-time", "10"] + [str(a) for a in args], stdin=subprocess.DEVNULL,
                          capture_output=True, timeout=30, text=True)


def test_token_create_list_revoke(tmp_path):
    tokens = tmp_path / "tokens.txt"
    r = gw("token", "create", "ci", "--devices", "dev-*,lab.example", "--tokens", tokens)
    secret = r.stdout.strip()
    assert r.stdout.count("\n") == 1 and SECRET.match(secret), r.stdout
    assert "ci" in r.stderr and secret not in r.stderr
    assert stat.S_IMODE(os.stat(tokens).st_mode) == 0o640  # the directory's group may read it: hashes, no secrets
    text = tokens.read_text()
    assert secret not in text and secret[4:] not in text
    line = [l for l in text.splitlines() if l.startswith("ci ")][0]
    assert re.match(r"^ci [0-9a-f]{64} devices=dev-\*,lab\.example created=\d+ expires=\d+$", line), line
    created, expires = (int(v) for v in re.findall(r"(?:created|expires)=(\d+)", line))
    assert expires - created == 90 * 86400  # the default expiry
    digest = line.split()[1]

    gw("token", "create", "forever", "--devices", "*", "--expires", "never", "--tokens", tokens)
    r = gw("token", "create", "ci", "--devices", "*", "--tokens", tokens, check=False)
    assert r.returncode == 1 and "exists already" in r.stderr and r.stdout == ""
    r = gw("token", "create", "bad/name", "--devices", "*", "--tokens", tokens, check=False)
    assert r.returncode != 0 and "invalid token name" in r.stderr and r.stdout == ""
    r = gw("token", "create", "x", "--devices", "*", "--expires", "1y", "--tokens", tokens, check=False)
    assert r.returncode != 0 and "--expires" in r.stderr

    # list, through the gateway's config file's `tokens` key too.
    conf = tmp_path / "gateway.conf"
    conf.write_text(f"tokens = {tokens}\n")
    for where in (["--tokens", tokens], ["--config", conf]):
        listing = gw("token", "list", *where).stdout
        assert re.search(r"^ci\s+dev-\*,lab\.example\s+\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ\s+\d{4}-", listing, re.M), listing
        assert re.search(r"^forever\s+\*\s+\S+\s+never$", listing, re.M), listing
        assert secret not in listing and digest not in listing

    gw("token", "revoke", "ci", "--config", conf)
    assert "ci " not in tokens.read_text() and "forever " in tokens.read_text()
    assert "ci" not in gw("token", "list", "--tokens", tokens).stdout.split()
    r = gw("token", "revoke", "ci", "--tokens", tokens, check=False)
    assert r.returncode == 1 and "no token named" in r.stderr
    assert sorted(os.listdir(tmp_path)) == ["gateway.conf", "tokens.txt"]  # no temporary file left


def test_pki_issue_user(tmp_path):
    d = tmp_path / "pki"
    lib.run_pki(["init", d, "--name", "gw.example"])
    r = gw("pki", "issue-user", d, "alice@example.com")
    assert "user certificate for alice@example.com" in r.stderr and "users/alice@example.com.crt" in r.stderr
    crt, key = d / "users" / "alice@example.com.crt", d / "users" / "alice@example.com.key"
    assert stat.S_IMODE(os.stat(key).st_mode) == 0o600
    out = subprocess.run(["openssl", "x509", "-in", crt, "-noout", "-subject", "-ext", "extendedKeyUsage,subjectAltName"],
                         capture_output=True, text=True, check=True).stdout
    assert "OU = reversehttp-user, CN = alice@example.com" in out and "TLS Web Client Authentication" in out
    assert "DNS:" not in out
    r = gw("pki", "issue-user", d, "alice@example.com", check=False)
    assert r.returncode == 1 and "--force" in r.stderr
    r = gw("pki", "issue-user", d, "alice@example.com", "--force")
    assert "revoked the earlier certificate" in r.stderr
    r = gw("pki", "revoke-user", d, "alice@example.com")
    assert "user alice@example.com revoked (serial " in r.stderr
    assert "\tuser:alice@example.com" in (d / "revoked.txt").read_text()
    r = gw("pki", "issue-user", d, "../evil", check=False)
    assert r.returncode == 1 and "invalid user name" in r.stderr


def test_https_public_listener_with_and_without_user_certificates(procs, api, tmp_path):
    pki = lib.make_pki(tmp_path)
    gw("pki", "issue-user", pki.dir, "alice")
    gw("pki", "issue-user", pki.dir, "mallory")
    serial = [l.split("\t")[0] for l in (pki.dir / "issued.txt").read_text().splitlines() if l.endswith("\tuser:mallory")][0]
    gw("pki", "revoke", pki.dir, "--serial", serial)
    g = lib.start_gateway(procs, pki, public_tls=True, extra=["--crl", pki.dir / "crl.pem"])
    a = api("dev1.example")
    lib.start_agent(procs, g.device_port, pki=pki, device="dev1.example", local_port=a.port)
    import ssl
    lib.wait_device(g, "dev1.example", ssl_ctx=ssl.create_default_context(cafile=str(pki.ca)))
    url = f"https://127.0.0.1:{g.public_port}/device"
    # No client certificate: routed as before (no access policy here).
    r = curl("--cacert", pki.ca, "-H", "Host: dev1.example", url)
    assert r.returncode == 0 and r.stdout == "dev1.example", r.stderr
    r = curl("--http1.1", "--cacert", pki.ca, "-H", "Host: dev1.example", url)
    assert r.returncode == 0 and r.stdout == "dev1.example", r.stderr
    # A user's certificate: accepted.
    users = pki.dir / "users"
    r = curl("--cacert", pki.ca, "--cert", users / "alice.crt", "--key", users / "alice.key", "-H", "Host: dev1.example", url)
    assert r.returncode == 0 and r.stdout == "dev1.example", r.stderr
    # A revoked user's certificate: the handshake fails.
    r = curl("--cacert", pki.ca, "--cert", users / "mallory.crt", "--key", users / "mallory.key", "-H", "Host: dev1.example", url)
    assert r.returncode != 0 and r.stdout == "", r.stdout
    # The gateway still serves the others.
    r = curl("--cacert", pki.ca, "-H", "Host: dev1.example", url)
    assert r.returncode == 0 and r.stdout == "dev1.example", r.stderr


def test_device_listener_refuses_a_user_certificate(procs, tmp_path):
    pki = lib.make_pki(tmp_path)
    # A user named like a device: its certificate chains to the fleet CA all the same.
    gw("pki", "issue-user", pki.dir, "dev3.example")
    g = lib.start_gateway(procs, pki)
    users = pki.dir / "users"
    lib.start_agent(procs, g.device_port, pki=pki, device="dev3.example", local_port=lib.closed_port(),
                    cert=users / "dev3.example.crt", key=users / "dev3.example.key", connections=1)
    line = g.proc.wait_log("is a user's (OU=reversehttp-user")
    assert 'CN "dev3.example"' in line and "refused on the device listener" in line
    assert "device connected" not in g.log()
    # openssl s_client with the same certificate: refused too, with the same line.
    before = g.log().count("is a user's")
    subprocess.run(["openssl", "s_client", "-connect", f"127.0.0.1:{g.device_port}", "-alpn", "h2",
                    "-CAfile", pki.ca, "-cert", users / "dev3.example.crt", "-key", users / "dev3.example.key"],
                   input=b"", capture_output=True, timeout=30)
    lib.wait_until(lambda: g.log().count("is a user's") > before, 10, "a second refusal")
