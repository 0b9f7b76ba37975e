"""A real browser logs in (issue 13): headless Chromium opens
http://alice:SECRET@dev1.devices.test:PORT/page (URL credentials: Chromium first
asks without them, gets the gateway's 401 with its Basic challenge, then answers
it with the token's name and secret) and shows the device's page.

Chromium is the Debian package `chromium` (scripts/setup-deps). Without it the
test is skipped, or fails where it is required (RH_REQUIRE_BROWSER=1: scripts/test
sets it, so CI runs it).
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess

import pytest

import e2e_lib as lib

BROWSER_TIMEOUT = 60


def _chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        p = shutil.which(name)
        if p:
            return p
    why = "headless Chromium is not installed (apt-get install chromium; scripts/setup-deps does)"
    if os.environ.get("RH_REQUIRE_BROWSER") == "1":
        pytest.fail("the browser test is required here (RH_REQUIRE_BROWSER=1), but " + why, pytrace=False)
    pytest.skip(why)


def _token(tokens, name, devices) -> str:
    r = subprocess.run([str(lib.gateway_bin()), "token", "create", name, "--devices", devices, "--tokens", str(tokens)],
                       capture_output=True, timeout=30, stdin=subprocess.DEVNULL, env=lib.child_env())
    assert r.returncode == 0, r.stderr.decode(errors="replace")
    return r.stdout.decode().strip()


def _dump_dom(browser: str, url: str, profile) -> tuple[str, str]:
    args = [browser, "--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run",
            "--disable-background-networking", "--disable-extensions", "--disable-sync",
            f"--user-data-dir={profile}", "--host-resolver-rules=MAP *.devices.test 127.0.0.1",
            "--dump-dom", url]
    # its own process group: on a timeout, the browser and all its helpers end together
    p = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
                         start_new_session=True)
    try:
        out, err = p.communicate(timeout=BROWSER_TIMEOUT)
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, signal.SIGKILL)
        out, err = p.communicate(timeout=10)
        raise AssertionError(f"chromium did not finish within {BROWSER_TIMEOUT}s:\n{err.decode(errors='replace')[-2000:]}")
    return out.decode(errors="replace"), err.decode(errors="replace")


def test_chromium_logs_in_with_basic_auth_and_sees_the_device_page(procs, api, tmp_path):
    browser = _chromium()
    main = tmp_path / "pki"
    lib.run_pki(["init", main, "--name", "gw.example", "--san", "127.0.0.1"])
    lib.run_pki(["issue", main, "dev1"])
    own = lib.PKI(main, main)
    tokens = tmp_path / "tokens"
    secret = _token(tokens, "alice", "dev1")
    policy = tmp_path / "policy"
    policy.write_text("# household: alice reaches dev1\nallow token:alice dev1\n")
    gw = lib.start_gateway(procs, own, extra=["--hostname-template", "{cn}.devices.test", "--access-policy", policy,
                                              "--tokens", tokens])
    a = api("dev1")
    lib.start_agent(procs, gw.device_port, pki=own, device="dev1", local_port=a.port, connections=1)
    lib.wait_until(lambda: lib.request(gw.public_port, "GET", "/page", "dev1.devices.test",
                                       headers={"Authorization": "Bearer " + secret}).status == 200,
                   lib.DEVICE_TIMEOUT, "dev1 to answer alice through the gateway", interval=0.1)
    log_from = len(gw.log())
    served = a.requests
    dom, err = _dump_dom(browser, f"http://alice:{secret}@dev1.devices.test:{gw.public_port}/page",
                         tmp_path / "chromium-profile")
    assert 'device page of dev1' in dom and "<h1" in dom, f"DOM:\n{dom[:2000]}\n--- chromium stderr:\n{err[-2000:]}"
    assert a.requests > served
    # the access log: the browser's first try carries no credentials (401), then alice's (200)
    lib.wait_until(lambda: re.search(r"path=/page status=200.*user=token:alice", gw.log()[log_from:]), 5,
                   "the access log line of alice's page")
    lines = [ln for ln in gw.log()[log_from:].splitlines() if "access " in ln and "path=/page" in ln]
    first_401 = next((i for i, ln in enumerate(lines) if "status=401" in ln), None)
    assert first_401 is not None, "no 401 for the browser's first try:\n" + "\n".join(lines)
    ok_200 = next((i for i, ln in enumerate(lines) if i > first_401 and "status=200" in ln
                   and "user=token:alice" in ln), None)
    assert ok_200 is not None, "no 200 for token:alice after the 401:\n" + "\n".join(lines)
    assert "auth=none decision=401" in lines[first_401], lines[first_401]
    assert "user=token:alice auth=token decision=allow" in lines[ok_200], lines[ok_200]
