"""User access control at the gateway (issue 13): tokens, user certificates and
JWTs; a policy per device; 401/403/429; what the device sees; reloads.

Two devices, dev1 and dev2 (hostname template {cn}.devices.test), behind an
HTTPS public listener on 127.0.0.1 that asks for (but does not require) a client
certificate. The policy below is evaluated by an independent oracle here
(`expect`), and the gateway must agree with it for every principal × device ×
method × path × source address, over HTTP/1.1, HTTP/2 (curl) and WebSockets.
Source addresses: 127.0.0.1 and 127.0.0.2 (both loopback); tests that send wrong
credentials use addresses of their own (127.0.N.M) so that the failure counter
(429) of one test never touches another.
"""

from __future__ import annotations

import fnmatch
import ipaddress
import itertools
import json
import os
import re
import signal
import socket
import ssl
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import pytest

import e2e_lib as lib
import hostile_lib as hl

try:
    import access_lib as acc
except ImportError as e:  # python3-cryptography missing: say how to get it
    pytest.fail(f"access_lib needs python3-cryptography (scripts/setup-deps installs it): {e}", pytrace=False)

from access_lib import Client, host

DEVICES = ("dev1", "dev2")
METHODS = ("GET", "POST", "DELETE")
PATHS = ("/device", "/echo", "/status/200")
SOURCES = ("127.0.0.1", "127.0.0.2")

# (effect, who, devices, conditions): the policy file is written from this and
# the oracle reads it.
RULES = [
    ("allow", "token:alice", "dev1,dev2", {}),  # alice's token itself is scoped to dev1: 403 on dev2
    ("allow", "token:ops", "*", {}),
    ("deny", "token:ops", "dev2", {"methods": "DELETE"}),
    ("allow", "user:bob", "dev2", {"methods": "GET,HEAD"}),
    ("allow", "email:carol@example.com", "dev1", {"paths": "/device,/echo"}),
    ("allow", "group:admins", "*", {"from": "127.0.0.1/32"}),
    ("deny", "group:contractors", "dev2", {}),
    ("allow", "sub:fr*", "dev?", {"methods": "GET"}),
    ("allow", "anyone", "dev2", {"paths": "/status,/echo"}),
    ("allow", "authenticated", "dev1", {"paths": "/status/", "methods": "GET"}),
    ("deny", "token:ops", "dev1", {"paths": "/admin"}),  # the matrix's paths never touch it: see test_paths_*
]

_sources = itertools.count(1)


def fresh_source() -> str:
    """A loopback address no other test uses (its own failure counter)."""
    n = next(_sources)
    return f"127.0.{10 + n // 250}.{1 + n % 250}"


# --------------------------------------------------------------------------- the oracle


@dataclass
class Who:
    label: str
    kind: str  # none, token, certificate, jwt
    name: str = ""
    email: Optional[str] = None
    groups: tuple = ()
    scope: Optional[str] = None  # token --devices
    client: Optional[Client] = None

    @property
    def display(self) -> Optional[str]:
        if self.kind == "token":
            return "token:" + self.name
        if self.kind == "certificate":
            return "user:" + self.name
        if self.kind == "jwt":
            return self.email or "sub:" + self.name
        return None


def _who_matches(who: str, p: Who) -> bool:
    if who == "anyone":
        return True
    if who == "authenticated":
        return p.kind != "none"
    kind, _, pat = who.partition(":")
    if kind == "token":
        return p.kind == "token" and fnmatch.fnmatchcase(p.name, pat)
    if kind == "user":
        return p.kind == "certificate" and fnmatch.fnmatchcase(p.name, pat)
    if kind == "sub":
        return p.kind == "jwt" and fnmatch.fnmatchcase(p.name, pat)
    if kind == "email":
        return p.kind == "jwt" and p.email is not None and fnmatch.fnmatchcase(p.email, pat)
    if kind == "group":
        return p.kind == "jwt" and any(fnmatch.fnmatchcase(g, pat) for g in p.groups)
    raise ValueError(who)


def _path_matches(prefixes: str, path: str) -> bool:
    path = path.split("?", 1)[0]
    for pre in prefixes.split(","):
        if path == pre or path.startswith(pre if pre.endswith("/") else pre + "/"):
            return True
    return False


def _rule_matches(rule, p: Who, dev: str, method: str, path: str, source: str) -> bool:
    _, who, devs, cond = rule
    if not _who_matches(who, p):
        return False
    if not any(fnmatch.fnmatchcase(dev, g) for g in devs.split(",")):
        return False
    if "methods" in cond and method not in cond["methods"].split(","):
        return False
    if "paths" in cond and not _path_matches(cond["paths"], path):
        return False
    if "from" in cond and not any(ipaddress.ip_address(source) in ipaddress.ip_network(c)
                                  for c in cond["from"].split(",")):
        return False
    return True


def expect(p: Who, dev: str, method: str, path: str, source: str) -> int:
    matching = [r for r in RULES if _rule_matches(r, p, dev, method, path, source)]
    allowed = bool(matching) and not any(r[0] == "deny" for r in matching)
    if allowed and p.scope is not None and not any(fnmatch.fnmatchcase(dev, g) for g in p.scope.split(",")):
        allowed = False
    if allowed:
        return 200
    return 401 if p.kind == "none" else 403


def policy_text(rules=RULES) -> str:
    lines = ["# e2e policy (tests/e2e/test_access_control.py)", ""]
    for effect, who, devs, cond in rules:
        lines.append(" ".join([effect, who, devs] + [f"{k}={v}" for k, v in cond.items()]))
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- the fleet


@dataclass
class Env:
    dir: Path
    pki: lib.PKI
    tokens: Path
    policy: Path
    jwks: Path
    secrets: dict
    keys: dict
    whos: dict
    bob: tuple

    def args(self, *, policy: Optional[Path] = None, tokens: Optional[Path] = None, jwt: bool = True,
             crl: bool = False) -> list:
        # no health checks: they would add to the requests the local APIs count
        a = ["--check-interval-ms", "0", "--hostname-template", "{cn}." + acc.DOMAIN,
             "--access-policy", policy or self.policy, "--tokens", tokens or self.tokens]
        if jwt:
            a += ["--jwt-jwks", self.jwks, "--jwt-issuer", acc.ISSUER, "--jwt-audience", acc.AUDIENCE]
        if crl:
            a += ["--crl", self.pki.dir / "crl.pem"]
        return a

    def bearer(self, name: str) -> Client:
        return Client(f"token:{name}", {"Authorization": "Bearer " + self.secrets[name]})

    def jwt_client(self, alg: str, payload: dict, label: str = "jwt") -> Client:
        return Client(label, {"Authorization": "Bearer " + acc.jwt(self.keys[alg], payload)})


@pytest.fixture(scope="module")
def env(tmp_path_factory) -> Env:
    d = tmp_path_factory.mktemp("access")
    main = d / "pki"
    lib.run_pki(["init", main, "--name", "gw.example", "--san", "127.0.0.1"])
    for dev in DEVICES:
        lib.run_pki(["issue", main, dev])
    bob = acc.issue_user(main, "bob")
    lib.run_pki(["crl", main])
    pki = lib.PKI(dir=main, foreign_dir=main)
    tokens = d / "tokens"
    secrets = {"alice": acc.token_create(tokens, "alice", "dev1"),
               "ops": acc.token_create(tokens, "ops", "*")}
    keys = {alg: acc.Key.make(alg, f"kid-{alg.lower()}") for alg in ("RS256", "ES256", "EdDSA")}
    jwks = d / "jwks.json"
    jwks.write_text(json.dumps(acc.jwks(*keys.values())))
    policy = d / "policy"
    policy.write_text(policy_text())
    e = Env(d, pki, tokens, policy, jwks, secrets, keys, {}, bob)
    whos = [
        Who("anonymous", "none", client=Client("anonymous")),
        Who("alice", "token", "alice", scope="dev1", client=e.bearer("alice")),
        Who("alice-basic", "token", "alice", scope="dev1",
            client=Client("alice-basic", {"Authorization": acc.basic("alice", secrets["alice"])})),
        Who("ops", "token", "ops", scope="*", client=e.bearer("ops")),
        Who("bob", "certificate", "bob", client=Client("bob", cert=bob)),
        Who("carol", "jwt", "carol", email="carol@example.com", groups=("staff",),
            client=e.jwt_client("ES256", acc.claims("carol", email="carol@example.com", groups=["staff"]), "carol")),
        Who("dave", "jwt", "dave", groups=("admins",),
            client=e.jwt_client("RS256", acc.claims("dave", groups=["admins"]), "dave")),
        Who("erin", "jwt", "erin", email="erin@example.com", groups=("admins", "contractors"),
            client=e.jwt_client("EdDSA", acc.claims("erin", email="erin@example.com",
                                                     groups=["admins", "contractors"]), "erin")),
        Who("frank", "jwt", "frank", client=e.jwt_client("ES256", acc.claims("frank"), "frank")),
    ]
    e.whos = {w.label: w for w in whos}
    return e


class Fleet:
    def __init__(self, gw: lib.Gateway, apis: dict, agents: dict, env: Env):
        self.gw, self.apis, self.agents, self.env = gw, apis, agents, env

    @property
    def port(self) -> int:
        return self.gw.public_port

    @property
    def ca(self) -> Path:
        return self.env.pki.ca

    def get(self, dev: str, path: str = "/device", client: Optional[Client] = None, method: str = "GET",
            source: str = "127.0.0.1", headers: Optional[dict] = None) -> lib.Resp:
        return acc.h1(self.port, method, path, host(dev), client=client, source=source, ca=self.ca, headers=headers)

    def device_requests(self) -> int:
        return sum(a.requests for a in self.apis.values())

    def hup(self):
        self.gw.proc.popen.send_signal(signal.SIGHUP)


def start_fleet(procs, api, env: Env, args: Optional[list] = None, devices=DEVICES, public_tls: bool = True,
                ready_client: Optional[Client] = None) -> Fleet:
    """Gateway (`args`: access-control arguments, default env.args()) and agents;
    ready once every device answers ops' token."""
    gw = lib.start_gateway(procs, env.pki, public_tls=public_tls, extra=list(env.args() if args is None else args))
    apis, agents = {}, {}
    for dev in devices:
        apis[dev] = api(dev)
        agents[dev] = lib.start_agent(procs, gw.device_port, pki=env.pki, device=dev, local_port=apis[dev].port,
                                      connections=1)
    f = Fleet(gw, apis, agents, env)
    client = ready_client or env.bearer("ops")
    for dev in devices:
        last = [None]

        def up():
            r = acc.h1(gw.public_port, "GET", "/device", host(dev), client=client,
                       ca=env.pki.ca if public_tls else None, timeout=5)
            last[0] = r
            return r.status == 200 and r.body == dev.encode()
        try:
            lib.wait_until(up, lib.DEVICE_TIMEOUT, f"{dev} to answer ops through the gateway", interval=0.1)
        except AssertionError as e:
            raise AssertionError(f"{e}; last: {last[0]!r}\n--- gateway log:\n{gw.proc.tail()}") from None
    return f


def reload(f: "Fleet", timeout: float = 10.0) -> None:
    """SIGHUP, then wait for the gateway's "reload done"."""
    n = f.gw.log().count("reload done")
    f.hup()
    lib.wait_until(lambda: f.gw.log().count("reload done") > n, timeout, "the gateway to log 'reload done'")


@pytest.fixture(scope="module")
def fleet(module_procs, module_api, env) -> Fleet:
    return start_fleet(module_procs, module_api, env)


def _cases():
    return [(d, m, p, s) for d in DEVICES for m in METHODS for p in PATHS for s in SOURCES]


def _assert_matrix(results: list, what: str):
    wrong = [r for r in results if r[-2] != r[-1]]
    assert not wrong, (f"{what}: {len(wrong)} of {len(results)} answers differ from the policy "
                       f"(who, device, method, path, source, expected, got):\n"
                       + "\n".join(map(str, wrong[:40])))


# --------------------------------------------------------------------------- the matrix


def test_matrix_http1(fleet, env):
    before = fleet.device_requests()
    results, allowed = [], 0
    for who in env.whos.values():
        for dev, method, path, src in _cases():
            want = expect(who, dev, method, path, src)
            r = fleet.get(dev, path, who.client, method, src)
            results.append((who.label, dev, method, path, src, want, r.status))
            allowed += want == 200
            if r.status == 401:
                acc.check_challenges(acc.www_authenticate(r.headers))
            if r.status == 200:
                assert r.header("X-Device") == dev
    _assert_matrix(results, "HTTP/1.1")
    assert fleet.device_requests() - before == allowed, "a denied request reached a device (or an allowed one did not)"


def test_matrix_http2(fleet, env):
    before = fleet.device_requests()
    results, allowed = [], 0
    for who in env.whos.values():
        for dev, method, path, src in _cases():
            want = expect(who, dev, method, path, src)
            status, hdrs, _, version = acc.h2(fleet.port, method, path, host(dev), client=who.client, source=src,
                                             ca=fleet.ca)
            assert version == "2"
            results.append((who.label, dev, method, path, src, want, status))
            allowed += want == 200
            if status == 401:
                acc.check_challenges(acc.www_authenticate(hdrs))
    _assert_matrix(results, "HTTP/2")
    assert fleet.device_requests() - before == allowed, "a denied request reached a device (or an allowed one did not)"


def test_matrix_websocket(fleet, env):
    before = fleet.device_requests()
    results, allowed = [], 0
    for who in env.whos.values():
        for dev in DEVICES:
            for src in SOURCES:
                want = expect(who, dev, "GET", "/ws", src)
                got = acc.websocket(fleet.port, host(dev), client=who.client, source=src, ca=fleet.ca)
                results.append((who.label, dev, "GET", "/ws", src, want, 200 if got == 101 else got))
                allowed += want == 200
    _assert_matrix(results, "WebSocket (101 shown as 200)")
    assert fleet.device_requests() - before == allowed


def test_matrix_websocket_over_http2(fleet, env):
    """Extended CONNECT (RFC 8441) on the user's HTTP/2 connection: the same decisions."""
    before = fleet.device_requests()
    results, allowed = [], 0
    for who in env.whos.values():
        for dev in DEVICES:
            for src in SOURCES:
                want = expect(who, dev, "GET", "/ws", src)
                got = acc.h2_websocket(fleet.port, host(dev), client=who.client, source=src, ca=fleet.ca)
                results.append((who.label, dev, "CONNECT", "/ws", src, want, got))
                allowed += want == 200
    _assert_matrix(results, "WebSocket over HTTP/2")
    assert fleet.device_requests() - before == allowed


def test_credentials_are_per_request_not_per_connection(fleet, env):
    """A connection that carried ops' token once is not ops': the next request on
    it without credentials, or with alice's, is decided on its own."""
    import http.client
    ops, alice = env.secrets["ops"], env.secrets["alice"]
    c = http.client.HTTPSConnection("127.0.0.1", fleet.port, timeout=10, context=acc.tls_context(fleet.ca))
    try:
        got = []
        for hdrs, dev in (({"Authorization": "Bearer " + ops}, "dev2"), ({}, "dev1"),
                          ({"Authorization": "Bearer " + alice}, "dev2"), ({"Authorization": "Bearer " + ops}, "dev2")):
            got.append(lib.request(fleet.port, "GET", "/device", host(dev), headers=hdrs, conn=c).status)
    finally:
        c.close()
    assert got == [200, 401, 403, 200], f"HTTP/1.1 keep-alive: {got}"
    got = acc.h2_statuses(fleet.port, [(host("dev2"), "/device", {"authorization": "Bearer " + ops}),
                                       (host("dev1"), "/device", {}),
                                       (host("dev2"), "/device", {"authorization": "Bearer " + alice}),
                                       (host("dev2"), "/device", {"authorization": "Bearer " + ops})], ca=fleet.ca)
    assert got == [200, 401, 403, 200], f"one HTTP/2 connection: {got}"


def test_unauthenticated_answer_and_wrong_credentials(fleet, env):
    src = fresh_source()
    for client in (None,
                   Client("wrong bearer", {"Authorization": "Bearer " + acc.new_secret()}),
                   Client("right secret, wrong name", {"Authorization": acc.basic("ops", env.secrets["alice"])}),
                   Client("wrong password", {"Authorization": acc.basic("alice", acc.new_secret())}),
                   Client("not a token", {"Authorization": "Bearer hello"})):
        r = fleet.get("dev1", "/device", client, source=src)
        assert r.status == 401, (client, r)
        acc.check_challenges(acc.www_authenticate(r.headers))
        status, hdrs, _, _ = acc.h2(fleet.port, "GET", "/device", host("dev1"), client=client, source=src, ca=fleet.ca)
        assert status == 401, (client, status)
        acc.check_challenges(acc.www_authenticate(hdrs))


def test_denied_uploads_cost_the_device_nothing(fleet, env, tmp_path):
    """An anonymous 256 KiB upload is answered 401 (HTTP/1.1 and HTTP/2; the
    gateway may answer before the body is in, and close) and never reaches the
    device."""
    src = fresh_source()
    before = fleet.device_requests()
    f = tmp_path / "body"
    f.write_bytes(os.urandom(256 * 1024))
    r = subprocess.run(["curl", "-sS", "--http1.1", "-k", "--interface", src, "--resolve",
                        f"{host('dev1')}:{fleet.port}:127.0.0.1", "--data-binary", f"@{f}", "-o", "/dev/null",
                        "-H", "Expect:", "-w", "%{http_code}", f"https://{host('dev1')}:{fleet.port}/upload"],
                       capture_output=True, timeout=30)
    assert r.stdout.decode() == "401", (r.stdout, r.stderr)
    # HTTP/2 with nghttp: the gateway answers 401, then RST_STREAM(NO_ERROR) to stop the
    # upload (RFC 9113 8.1), which curl 7.88 reports as an error (92) although the answer was whole
    r = subprocess.run(["nghttp", "-v", "-d", str(f), "-H", f":authority: {host('dev1')}",
                        f"https://127.0.0.1:{fleet.port}/upload"], capture_output=True, timeout=30)
    out = r.stdout.decode(errors="replace")
    assert re.search(r"recv \(stream_id=\d+\) :status: 401", out), out[-2000:]
    assert fleet.device_requests() == before, "a denied upload reached the device"
    assert fleet.get("dev1", "/device", env.bearer("ops")).status == 200


def test_device_sees_forwarded_user_not_credentials(fleet, env):
    """The device gets X-Forwarded-User (the principal's display name) and never
    the credentials meant for the gateway, nor identity fields the user sent."""
    forged = {"X-Forwarded-User": "token:ops", "X-Forwarded-Email": "root@example.com", "Remote-User": "root",
              "X-Forwarded-Groups": "admins", "X-Auth-Request-User": "root"}
    for label, dev, want in (("ops", "dev1", "token:ops"), ("alice-basic", "dev1", "token:alice"),
                             ("carol", "dev1", "carol@example.com"), ("frank", "dev2", "sub:frank"),
                             ("bob", "dev2", "user:bob"), ("anonymous", "dev2", None)):
        who = env.whos[label]
        r = fleet.get(dev, "/echo", who.client, headers=forged)
        assert r.status == 200, (label, r)
        doc = r.json()
        assert "authorization" not in doc["headers"], (label, doc["headers"])
        for k in forged:
            if k != "X-Forwarded-User":
                assert k.lower() not in doc["headers"], (label, k, doc["headers"])
        assert doc["headers"].get("x-forwarded-user") == want, (label, doc["headers"].get("x-forwarded-user"))
        n = len([k for k, _ in doc["header_list"] if k.lower() == "x-forwarded-user"])
        assert n == (1 if want else 0), (label, doc["header_list"])
        status, _, body, _ = acc.h2(fleet.port, "GET", "/echo", host(dev), client=who.client, ca=fleet.ca,
                                    headers=forged)
        assert status == 200, (label, status)
        seen = json.loads(body)["headers"]
        assert "authorization" not in seen and seen.get("x-forwarded-user") == want, (label, "HTTP/2", seen)


def test_identity_with_control_characters_cannot_inject(fleet, env):
    """A validly signed JWT whose sub or email carries CR LF (an IdP that lets users
    pick them): refused, or passed on with nothing injected into the device's
    request or the access log."""
    es = env.keys["ES256"]
    for claims in (acc.claims("fr\r\nX-Injected: yes"),
                   acc.claims("frank", email="carol@example.com\r\nX-Injected: yes"),
                   acc.claims("fr\nX-Injected: yes"), acc.claims("fr\x00x")):
        src = fresh_source()
        c = Client("crlf", {"Authorization": "Bearer " + acc.jwt(es, claims)})
        r = fleet.get("dev2", "/echo", c, source=src)
        assert r.status in (200, 401, 403), r
        if r.status == 200:
            seen = r.json()
            assert "x-injected" not in seen["headers"], seen
            assert not re.search(r"[\r\n\x00]", seen["headers"].get("x-forwarded-user", "")), seen
    assert not re.search(r"^X-Injected", fleet.gw.log(), re.M), "a user's claim forged a log line"


def test_access_log_metrics_and_last_access(fleet, env):
    src = fresh_source()
    assert fleet.get("dev1", "/device", env.whos["alice"].client, source=src).status == 200
    assert fleet.get("dev1", "/device", None, source=src).status == 401
    assert fleet.get("dev2", "/device", env.whos["alice"].client, source=src).status == 403
    log = fleet.gw.proc
    log.wait_log(r"access .*user=token:alice auth=token decision=allow", regex=True, timeout=5)
    log.wait_log(r"access .*auth=none decision=401", regex=True, timeout=5)
    log.wait_log(r"access .*user=token:alice auth=token decision=403", regex=True, timeout=5)
    log.wait_log(r"access .*user=carol@example.com auth=jwt decision=allow", regex=True, timeout=5)
    import http.client
    c = http.client.HTTPConnection("127.0.0.1", fleet.gw.admin_port, timeout=10)
    c.request("GET", "/metrics")
    metrics = c.getresponse().read().decode()
    c.request("GET", "/devices/dev2")
    r = c.getresponse()
    dev = json.loads(r.read())
    c.close()
    for result, auth in (("allowed", "token"), ("401", "none"), ("403", "token"), ("allowed", "jwt")):
        rx = (r'^rhttp_access_decisions_total\{(?=[^}]*result="%s")(?=[^}]*auth="%s")[^}]*\} (\d+)'
              % (result, auth))
        m = re.search(rx, metrics, re.M)
        assert m and int(m.group(1)) > 0, (result, auth, [ln for ln in metrics.splitlines() if "access" in ln])
    la = dev.get("last_access")
    assert la and la["user"] == "token:alice" and la["status"] == 403 and abs(la["at"] - time.time()) < 60, dev


# --------------------------------------------------------------------------- evasion


# Paths an allow with paths= must not be fooled by (anonymous may reach dev2's
# /status and /echo only), and a deny with paths= must not be dodged by (ops may
# not reach dev1's /admin): dot segments, encoded dots and slashes, doubled
# slashes, encoded letters.
ALLOW_EVASIONS = ["/status/../device", "/status/%2e%2e/device", "/status/%2E%2E/device", "/status/.%2e/device",
                  "/status%2F..%2Fdevice", "/echo/..%2Fdevice", "/status/..\\device", "/status//../device",
                  "/echo/./../device"]
DENY_EVASIONS = ["/admin", "/admin/", "/admin/x", "/admin?x=1", "//admin", "/./admin", "/x/../admin", "/%61dmin",
                 "/%2561dmin", "/admin%2Fx", "/%2Fadmin", "/.%2fadmin", "///admin/x"]


def test_paths_the_policy_cannot_be_fooled_by(fleet, env):
    src = fresh_source()
    anon_got = {p: fleet.get("dev2", p, None, source=src).status for p in ALLOW_EVASIONS}
    ops = env.bearer("ops")
    ops_got = {p: fleet.get("dev1", p, ops).status for p in DENY_EVASIONS}
    h2_anon = {p: acc.h2(fleet.port, "GET", p, host("dev2"), source=src, ca=fleet.ca)[0] for p in ALLOW_EVASIONS}
    h2_ops = {p: acc.h2(fleet.port, "GET", p, host("dev1"), client=ops, ca=fleet.ca)[0] for p in DENY_EVASIONS}
    bad = {f"anonymous {p}": v for p, v in anon_got.items() if v not in (400, 401)}
    bad.update({f"ops {p}": v for p, v in ops_got.items() if v not in (400, 403)})
    bad.update({f"HTTP/2 anonymous {p}": v for p, v in h2_anon.items() if v not in (400, 401)})
    bad.update({f"HTTP/2 ops {p}": v for p, v in h2_ops.items() if v not in (400, 403)})
    assert not bad, f"paths that got past the policy (expected 401/403, or 400): {bad}"


def test_forwarded_for_from_a_stranger_does_not_satisfy_from(fleet, env):
    """dave (group:admins) is allowed from 127.0.0.1 only; from 127.0.0.2 a forged
    X-Forwarded-For or Forwarded naming 127.0.0.1 changes nothing (no trusted_proxies)."""
    dave = env.whos["dave"].client
    for hdrs in ({"X-Forwarded-For": "127.0.0.1"}, {"Forwarded": "for=127.0.0.1"},
                 {"X-Real-IP": "127.0.0.1"}, {"X-Forwarded-For": "127.0.0.1, 127.0.0.1"}):
        assert fleet.get("dev1", "/device", dave, source="127.0.0.2", headers=hdrs).status == 403, hdrs
        status, _, _, _ = acc.h2(fleet.port, "GET", "/device", host("dev1"), client=dave, source="127.0.0.2",
                                 ca=fleet.ca, headers=hdrs)
        assert status == 403, ("HTTP/2", hdrs)
    assert fleet.get("dev1", "/device", dave, source="127.0.0.1").status == 200


def test_the_decision_is_about_the_device_the_request_goes_to(fleet, env):
    """alice's token covers dev1 only. An absolute-form target names dev2 while
    Host names dev1: the request goes to dev2 (RFC 9112 3.2.2), so the decision
    must be about dev2 too."""
    before = fleet.apis["dev2"].requests
    ctx = acc.tls_context(fleet.ca)
    with socket.create_connection(("127.0.0.1", fleet.port), timeout=10) as raw:
        s = ctx.wrap_socket(raw)
        s.sendall(f"GET https://{host('dev2')}/device HTTP/1.1\r\nHost: {host('dev1')}\r\n"
                  f"Authorization: Bearer {env.secrets['alice']}\r\nConnection: close\r\n\r\n".encode())
        data, _ = lib.read_until_close(s, 10)
    status = int(data.split(b" ", 2)[1])
    assert status in (400, 403), data[:300]
    assert fleet.apis["dev2"].requests == before, "alice's request reached dev2"


def test_two_authorization_fields_are_refused(fleet, env):
    src = fresh_source()
    before = fleet.device_requests()
    ctx = acc.tls_context(fleet.ca)
    with socket.create_connection(("127.0.0.1", fleet.port), timeout=10, source_address=(src, 0)) as raw:
        s = ctx.wrap_socket(raw)
        s.sendall(f"GET /device HTTP/1.1\r\nHost: {host('dev2')}\r\n"
                  f"Authorization: Bearer {env.secrets['alice']}\r\nAuthorization: Bearer {env.secrets['ops']}\r\n"
                  f"Connection: close\r\n\r\n".encode())
        data, _ = lib.read_until_close(s, 10)
    status = int(data.split(b" ", 2)[1])
    assert status in (400, 401), data[:300]
    assert fleet.device_requests() == before


# --------------------------------------------------------------------------- tokens


def test_token_cli(tmp_path):
    tokens = tmp_path / "tokens"
    s = acc.token_create(tokens, "t1", "dev1,lab-*", "--expires", "12h")
    assert len(s) == 4 + 43 and re.fullmatch(r"rht_[A-Za-z0-9_-]{43}", s)
    mode = tokens.stat().st_mode & 0o777
    assert mode & 0o137 == 0, f"the tokens file is {oct(mode)}: others must not read it, nobody execute it"
    text = tokens.read_text()
    assert s not in text and acc.hashlib.sha256(s.encode()).hexdigest() in text
    r = acc.token_cli("create", "t1", "--devices", "*", "--tokens", tokens, check=False)
    assert r.returncode != 0 and r.stdout.strip() == b"", "an existing name is refused"
    listed = acc.token_cli("list", "--tokens", tokens).stdout.decode() + \
        acc.token_cli("list", "--tokens", tokens).stderr.decode()
    assert "t1" in listed and "dev1,lab-*" in listed
    assert s not in listed and acc.hashlib.sha256(s.encode()).hexdigest() not in listed
    acc.token_cli("revoke", "t1", "--tokens", tokens)
    assert "t1 " not in tokens.read_text()


def test_revoked_and_expired_tokens(procs, api, env, tmp_path):
    tokens = tmp_path / "tokens"
    tokens.write_bytes(env.tokens.read_bytes())
    expired_secret = acc.new_secret()
    now = int(time.time())
    with open(tokens, "a") as f:
        f.write("# written by hand: expired an hour ago\n")
        f.write(acc.token_line("old", expired_secret, "*", now - 7200, now - 3600))
    tokens.chmod(0o600)
    policy = tmp_path / "policy"
    policy.write_text(policy_text() + "allow token:* *\n")
    s1 = acc.token_create(tokens, "temp1", "*")
    s2 = acc.token_create(tokens, "temp2", "*")
    f = start_fleet(procs, api, env, args=env.args(policy=policy, tokens=tokens), devices=("dev1",))
    src = fresh_source()
    r = f.get("dev1", client=Client("old", {"Authorization": "Bearer " + expired_secret}), source=src)
    assert r.status == 401, ("expired token", r)
    t1 = Client("temp1", {"Authorization": "Bearer " + s1})
    t2 = Client("temp2", {"Authorization": "Bearer " + s2})
    assert f.get("dev1", client=t1).status == 200 and f.get("dev1", client=t2).status == 200
    # revoked, then SIGHUP: refused at once
    acc.token_cli("revoke", "temp1", "--tokens", tokens)
    reload(f)
    lib.wait_until(lambda: f.get("dev1", client=t1, source=src).status == 401, 5, "temp1 refused after SIGHUP",
                   interval=0.5)
    # revoked without SIGHUP: the gateway notices the file changed (stat at most once a second)
    acc.token_cli("revoke", "temp2", "--tokens", tokens)
    lib.wait_until(lambda: f.get("dev1", client=t2, source=src).status == 401, 5,
                   "temp2 refused once the tokens file changed (no SIGHUP)", interval=0.7)
    assert f.get("dev1", client=env.bearer("ops")).status == 200


def test_429_after_ten_failures_from_one_address(fleet, env):
    bad = Client("wrong", {"Authorization": "Bearer " + acc.new_secret()})
    src, other = fresh_source(), fresh_source()
    statuses = [fleet.get("dev1", client=bad, source=src).status for _ in range(10)]
    assert statuses == [401] * 10, statuses
    r = fleet.get("dev1", client=bad, source=src)
    assert r.status == 429, r
    ra = r.header("Retry-After")
    assert ra and ra.isdigit() and 1 <= int(ra) <= 60, ra
    status, hdrs, _, _ = acc.h2(fleet.port, "GET", "/device", host("dev1"), client=bad, source=src, ca=fleet.ca)
    assert status == 429 and hdrs.get("retry-after"), (status, hdrs)
    # another address still gets 401 for wrong credentials and 200 for right ones
    assert fleet.get("dev1", client=bad, source=other).status == 401
    assert fleet.get("dev1", client=env.bearer("ops"), source=other).status == 200
    fleet.gw.proc.wait_log("decision=429", timeout=5)


# --------------------------------------------------------------------------- policy reloads


def _connection_ids(gw: lib.Gateway) -> dict:
    import http.client
    c = http.client.HTTPConnection("127.0.0.1", gw.admin_port, timeout=10)
    c.request("GET", "/devices")
    doc = json.loads(c.getresponse().read())
    c.close()
    return {d["name"]: sorted(x["id"] for x in d["connections"]) for d in doc}


def test_policy_reload_on_sighup_keeps_tunnels(procs, api, env, tmp_path):
    policy = tmp_path / "policy"
    policy.write_text(policy_text())
    f = start_fleet(procs, api, env, args=env.args(policy=policy))
    ids = _connection_ids(f.gw)
    assert all(ids[d] for d in DEVICES), ids
    alice = env.whos["alice"].client
    assert f.get("dev1", client=alice).status == 200
    long = {}

    def slow():
        long["r"] = f.get("dev1", "/sleep/3000", env.bearer("ops"))
    t = threading.Thread(target=slow)
    t.start()
    lib.wait_until(lambda: f.apis["dev1"].active >= 1, 5, "the long request to reach dev1")
    policy.write_text(policy_text([r for r in RULES if r[1] != "token:alice"]))
    reload(f)
    lib.wait_until(lambda: f.get("dev1", client=alice).status == 403, 10, "the new policy (alice removed)",
                   interval=0.2)
    t.join(15)
    assert not t.is_alive() and long["r"].status == 200 and long["r"].body == b"slept\n", long
    assert _connection_ids(f.gw) == ids, "a policy reload dropped a device connection"
    assert f.get("dev2", client=env.bearer("ops")).status == 200


def test_bad_policy_on_reload_is_refused_and_the_old_one_kept(procs, api, env, tmp_path):
    policy = tmp_path / "policy"
    policy.write_text(policy_text())
    f = start_fleet(procs, api, env, args=env.args(policy=policy), devices=("dev1",))
    alice = env.whos["alice"].client
    assert f.get("dev1", client=alice).status == 200
    policy.write_text("# broken\ndeny token:alice *\nallow token:ops dev1 methods=GET frobnicate=1\n")
    f.hup()
    f.gw.proc.wait_log(f"{policy}:3", timeout=10)
    assert f.gw.proc.alive()
    assert f.get("dev1", client=alice).status == 200, "the old policy is kept (not a partial new one)"
    assert f.get("dev1", client=env.bearer("ops"), method="DELETE").status == 200


@pytest.mark.parametrize("bad", ["allow token:ops\n",  # no DEVICES
                                 "permit token:ops *\n",
                                 "allow token:ops * from=300.1.2.3/8\n",
                                 "allow nobody:x *\n"])
def test_bad_policy_at_start_exits_with_file_line(procs, env, tmp_path, bad):
    policy = tmp_path / "policy"
    policy.write_text("# comment\n\nallow token:ops *\n" + bad)
    args = [lib.gateway_bin(), "--listen-devices", f"127.0.0.1:{lib.free_port()}",
            "--listen-public", f"127.0.0.1:{lib.free_port()}", "--listen-admin", "off",
            "--ca", env.pki.ca, "--cert", env.pki.gateway_cert, "--key", env.pki.gateway_key,
            "--access-policy", policy, "--tokens", env.tokens]
    p = procs.start("gateway-bad-policy", args)
    try:
        p.popen.wait(timeout=15)
    except subprocess.TimeoutExpired:
        raise AssertionError(f"the gateway started with a bad policy ({bad!r}):\n{p.tail()}")
    assert p.popen.returncode != 0
    assert f"{policy}:4" in p.log(), p.tail()


# --------------------------------------------------------------------------- secure default


def _start_raw(procs, env, name, *extra) -> lib.Proc:
    args = [lib.gateway_bin(), "--listen-devices", f"127.0.0.1:{lib.free_port()}",
            "--listen-admin", "off", "--ca", env.pki.ca, "--cert", env.pki.gateway_cert,
            "--key", env.pki.gateway_key, *extra]
    return procs.start(name, args)


def test_non_loopback_public_listener_needs_a_policy(procs, env):
    port = lib.free_port()
    p = _start_raw(procs, env, "gateway-open-refused", "--listen-public", f"0.0.0.0:{port}")
    try:
        p.popen.wait(timeout=15)
    except subprocess.TimeoutExpired:
        raise AssertionError("a public listener on 0.0.0.0 without access_policy started:\n" + p.tail())
    assert p.popen.returncode != 0
    assert "access_policy" in p.log() or "public_access" in p.log(), p.tail()
    # with public_access = open it starts, and says so
    port = lib.free_port()
    p = _start_raw(procs, env, "gateway-open", "--listen-public", f"0.0.0.0:{port}", "--public-access", "open")
    lib.wait_until(lambda: not p.alive() or ("devices on" in p.log() and lib.port_open(port)), 15,
                   "the open gateway to listen")
    assert p.alive(), p.tail()
    line = p.wait_log("public_access", timeout=5)
    assert re.search(r"warn", line, re.I), line
    # on [::] too (when the machine has IPv6)
    if socket.has_ipv6:
        try:
            with socket.socket(socket.AF_INET6) as s:
                s.bind(("::", 0))
        except OSError:
            return
        p = _start_raw(procs, env, "gateway-open-v6", "--listen-public", f"[::]:{lib.free_port()}")
        try:
            p.popen.wait(timeout=15)
        except subprocess.TimeoutExpired:
            raise AssertionError("a public listener on [::] without access_policy started:\n" + p.tail())
        assert p.popen.returncode != 0, p.tail()


def test_loopback_public_listener_without_policy_stays_open(procs, api, env):
    gw = lib.start_gateway(procs, env.pki, extra=["--hostname-template", "{cn}." + acc.DOMAIN])
    a = api("dev1")
    lib.start_agent(procs, gw.device_port, pki=env.pki, device="dev1", local_port=a.port, connections=1)
    r = lib.wait_device(gw, host("dev1"))
    assert r.status == 200 and r.body == b"dev1"


# --------------------------------------------------------------------------- JWT


def _jwt_cases(env: Env):
    es, rs = env.keys["ES256"], env.keys["RS256"]
    ok = acc.claims("carol", email="carol@example.com")
    return {
        "expired": (acc.jwt(es, acc.claims("carol", email="carol@example.com", exp_in=-3600)), 401),
        "expired within the leeway": (acc.jwt(es, acc.claims("carol", email="carol@example.com", exp_in=-20)), 200),
        "not yet valid": (acc.jwt(es, acc.claims("carol", email="carol@example.com", nbf_in=3600)), 401),
        "not yet valid within the leeway": (acc.jwt(es, acc.claims("carol", email="carol@example.com", nbf_in=20)),
                                            200),
        "wrong issuer": (acc.jwt(es, acc.claims("carol", email="carol@example.com", iss="https://evil.test/")),
                         401),
        "wrong audience": (acc.jwt(es, acc.claims("carol", email="carol@example.com", aud="someone-else")), 401),
        "audience in a list": (acc.jwt(es, acc.claims("carol", email="carol@example.com",
                                                      aud=["x", acc.AUDIENCE])), 200),
        "alg none": (acc.jwt_alg_none(ok, es.kid), 401),
        "HS256 keyed with the RSA public key": (acc.jwt_hs256_with_public_key(rs, ok), 401),
        "unknown kid": (acc.jwt(acc.Key.make("ES256", "kid-nobody"), ok), 401),
        "known kid, other key": (acc.jwt(acc.Key.make("ES256", es.kid), ok), 401),
        "alg differs from the key's": (acc.jwt(es, ok, alg="RS256"), 401),
        "tampered payload": (_tamper(acc.jwt(es, ok)), 401),
        "no exp": (acc.jwt(es, acc.claims("carol", email="carol@example.com", exp_in=None)), 401),  # exp required
        "RS256": (acc.jwt(rs, ok), 200),
        "ES256": (acc.jwt(es, ok), 200),
        "EdDSA": (acc.jwt(env.keys["EdDSA"], ok), 200),
    }


def _tamper(token: str) -> str:
    h, p, s = token.split(".")
    doc = json.loads(acc.base64.urlsafe_b64decode(p + "=" * (-len(p) % 4)))
    doc["email"] = "admin@example.com"
    return h + "." + acc.b64u(json.dumps(doc).encode()) + "." + s


def test_jwt_cases(fleet, env):
    results = []
    for label, (token, want) in _jwt_cases(env).items():
        src = fresh_source()
        c = Client(label, {"Authorization": "Bearer " + token})
        r = fleet.get("dev1", "/device", c, source=src)
        results.append((label, want, r.status))
        if r.status == 401:
            acc.check_challenges(acc.www_authenticate(r.headers))
    wrong = [x for x in results if x[1] != x[2]]
    assert not wrong, f"(case, expected, got): {wrong}"


def test_jwks_url_rotation_and_refetch_limit(procs, api, env, tmp_path):
    old = acc.Key.make("ES256", "old")
    new = acc.Key.make("EdDSA", "new")
    srv = acc.JWKSServer(acc.jwks(old))
    try:
        extra = ["--check-interval-ms", "0", "--hostname-template", "{cn}." + acc.DOMAIN,
                 "--access-policy", env.policy, "--tokens", env.tokens, "--jwt-jwks-url", srv.url, "--jwt-issuer", acc.ISSUER, "--jwt-audience", acc.AUDIENCE]
        f = start_fleet(procs, api, env, args=extra, devices=("dev1",))
        ok = acc.claims("carol", email="carol@example.com")

        def with_key(k: acc.Key) -> int:  # each from an address of its own: the refusals must not add up to 429
            return f.get("dev1", client=Client(k.kid, {"Authorization": "Bearer " + acc.jwt(k, ok)}),
                         source=fresh_source()).status
        lib.wait_until(lambda: with_key(old) == 200, 10, "a JWT of the first JWKS to be accepted", interval=0.5)
        first = srv.count()
        assert first >= 1
        srv.set(acc.jwks(old, new))  # the IdP rotates: publishes the new key
        # the new kid is unknown: a refetch (at most once a minute: it may wait for the minute to pass)
        t0 = time.monotonic()
        lib.wait_until(lambda: with_key(new) == 200, 75, "the rotated key to be accepted after a refetch",
                       interval=5)
        took = time.monotonic() - t0
        after_rotation = srv.count()
        assert 1 <= after_rotation - first <= 2, (first, after_rotation, took)
        # unknown kids within the minute after that fetch: at most one more fetch, all refused
        unknown = acc.Key.make("ES256", "unknown")
        src2 = fresh_source()
        for _ in range(2):
            r = f.get("dev1", client=Client("unknown", {"Authorization": "Bearer " + acc.jwt(unknown, ok)}),
                      source=src2)
            assert r.status == 401
        # No wait needed: a request with an unknown kid is answered only after the refetch it
        # started (or was refused by the once-a-minute limit), so the count is final here.
        assert srv.count() - after_rotation <= 1, (after_rotation, srv.count())
        # the JWKS server goes away: the keys it gave are kept
        srv.close()
        srv = None
        assert with_key(new) == 200 and with_key(old) == 200
    finally:
        if srv:
            srv.close()


def test_unknown_kid_twice_refetches_once(procs, api, env):
    key = acc.Key.make("ES256", "k1")
    srv = acc.JWKSServer(acc.jwks(key))
    try:
        extra = ["--check-interval-ms", "0", "--hostname-template", "{cn}." + acc.DOMAIN,
                 "--access-policy", env.policy, "--tokens", env.tokens, "--jwt-jwks-url", srv.url, "--jwt-issuer", acc.ISSUER, "--jwt-audience", acc.AUDIENCE]
        f = start_fleet(procs, api, env, args=extra, devices=("dev1",))
        ok = acc.claims("carol", email="carol@example.com")
        src = fresh_source()
        good = Client("k1", {"Authorization": "Bearer " + acc.jwt(key, ok)})
        lib.wait_until(lambda: f.get("dev1", client=good, source=src).status == 200, 10, "the JWKS to be used",
                       interval=0.5)
        base = srv.count()
        unknown = Client("x", {"Authorization": "Bearer " + acc.jwt(acc.Key.make("ES256", "x"), ok)})
        assert f.get("dev1", client=unknown, source=src).status == 401
        assert f.get("dev1", client=unknown, source=src).status == 401
        # Final: the gateway answers an unknown kid only after the refetch it started (if any).
        assert srv.count() - base <= 1, f"an unknown kid twice within a minute fetched {srv.count() - base} times"
    finally:
        srv.close()


def test_jwt_in_an_sso_proxy_header(procs, api, env):
    f = start_fleet(procs, api, env, args=[*env.args(), "--jwt-header", "cf-access-jwt-assertion"],
                    devices=("dev1",))
    token = acc.jwt(env.keys["ES256"], acc.claims("carol", email="carol@example.com"))
    r = f.get("dev1", "/echo", Client("cf", {"Cf-Access-Jwt-Assertion": token}))
    assert r.status == 200, r
    seen = r.json()["headers"]
    assert "cf-access-jwt-assertion" not in seen and seen.get("x-forwarded-user") == "carol@example.com", seen
    # tokens still work beside it
    assert f.get("dev1", "/device", env.bearer("ops")).status == 200
    src = fresh_source()
    r = f.get("dev1", "/device", Client("cf", {"Cf-Access-Jwt-Assertion": "Bearer " + token}), source=src)
    assert r.status == 401, "the whole value is the JWT (no Bearer prefix)"


# --------------------------------------------------------------------------- user certificates


def test_user_certificates_revocation_and_roles(procs, api, env, tmp_path):
    # a PKI of this test's own (revocations must not touch the module's)
    pk = tmp_path / "pki"
    lib.run_pki(["init", pk, "--name", "gw.example", "--san", "127.0.0.1"])
    for dev in DEVICES:
        lib.run_pki(["issue", pk, dev])
    bob = acc.issue_user(pk, "bob")
    lib.run_pki(["crl", pk])
    e2 = Env(env.dir, lib.PKI(pk, pk), env.tokens, env.policy, env.jwks, env.secrets, env.keys, env.whos, bob)
    f = start_fleet(procs, api, e2, args=e2.args(crl=True))
    bobc = Client("bob", cert=bob)
    assert f.get("dev2", client=bobc).status == 200
    f.gw.proc.wait_log(r"access .*user=user:bob auth=certificate decision=allow", regex=True, timeout=5)
    assert f.get("dev2", client=bobc, method="POST").status == 403
    assert f.get("dev1", client=bobc).status == 403
    # a device certificate on the public listener is no user: as if none was sent
    devc = Client("dev1-cert", cert=(e2.pki.device_cert("dev1"), e2.pki.device_key("dev1")))
    src = fresh_source()
    assert f.get("dev1", "/device", devc, source=src).status == 401
    # a user certificate on the device listener is no device
    ctx = hl.device_tls(e2.pki, bob[0], bob[1])
    try:
        sock = hl.dial_device(f.gw, ctx, timeout=5)
        sock.sendall(hl.MAGIC + hl.settings())
        reader = hl.FrameReader(sock)
        fr = reader.next(5)
        sock.close()
        assert fr is None, f"the gateway spoke HTTP/2 to a user certificate on the device listener: {fr!r}"
        assert reader.eof, "the gateway neither refused nor closed a user certificate on the device listener"
    except (ssl.SSLError, ConnectionResetError, BrokenPipeError):
        pass  # refused in the handshake
    assert "bob" not in _connection_ids(f.gw)
    # revoked: refused at the handshake or answered 401
    lib.run_pki(["revoke", pk, "--serial", acc.cert_serial(bob[0])])
    reload(f)

    def refused():
        try:
            st = f.get("dev2", client=bobc, source=src).status
        except (ssl.SSLError, ConnectionError, OSError):
            return "handshake"
        return st == 401 and "401"
    how = lib.wait_until(refused, 10, "bob's revoked certificate to be refused", interval=0.3)
    print("revoked user certificate refused at:", how)
    assert f.get("dev2", client=env.bearer("ops")).status == 200
