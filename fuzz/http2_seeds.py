#!/usr/bin/env python3
"""Writes the seeds of fuzz-http2 into fuzz/corpus/http2/ (committed; run again after
changing this file). Each seed: one mode byte (fuzz/targets/http2/FuzzHTTP2.swift:
0 server, 1 reversed server, 2 reversed client; +3 small limits), then the peer's
frames after its preface. Literal HPACK only, except the dynamic-table references
of the bombs."""
import struct
from pathlib import Path

DATA, HEADERS, PRIORITY, RST_STREAM, SETTINGS, PUSH_PROMISE, PING, GOAWAY, WINDOW_UPDATE, CONTINUATION = range(10)
END_STREAM, ACK, END_HEADERS = 0x1, 0x1, 0x4
SERVER, REVERSED_SERVER, REVERSED_CLIENT, SMALL = 0, 1, 2, 3


def frame(t, flags, stream, payload=b""):
    return struct.pack(">I", len(payload))[1:] + bytes([t, flags]) + struct.pack(">I", stream) + payload


def hint(v, prefix, first=0):
    limit = (1 << prefix) - 1
    if v < limit:
        return bytes([first | v])
    out, v = [first | limit], v - limit
    while v >= 128:
        out.append((v & 0x7F) | 0x80)
        v >>= 7
    return bytes(out + [v])


def lit(fields, first=0x00):
    return b"".join(bytes([first]) + hint(len(n), 7) + n.encode() + hint(len(v), 7) + v.encode() for n, v in fields)


def headers(stream, fields, end_stream=False, raw=None):
    block = raw if raw is not None else lit(fields)
    out, chunks = b"", [block[i:i + 4000] for i in range(0, len(block), 4000)] or [b""]
    for i, c in enumerate(chunks):
        flags = (END_HEADERS if i == len(chunks) - 1 else 0) | (END_STREAM if i == 0 and end_stream else 0)
        out += frame(HEADERS if i == 0 else CONTINUATION, flags, stream, c)
    return out


SETTINGS0 = frame(SETTINGS, 0, 0)
GET = [(":method", "GET"), (":scheme", "https"), (":path", "/"), (":authority", "dev1.example")]
POST = [(":method", "POST"), (":scheme", "https"), (":path", "/up"), (":authority", "dev1.example"),
        ("content-length", "5")]


def bomb(prefix_fields, size, refs):
    return lit(prefix_fields) + lit([("x-big", "a" * size)], first=0x40) + b"\xbe" * refs


seeds = {
    "server-get": bytes([SERVER]) + SETTINGS0 + headers(1, GET, True),
    "server-post-trailers": bytes([SERVER]) + SETTINGS0 + headers(1, POST) + frame(DATA, 0, 1, b"hello")
    + headers(1, [("x-sum", "1")], True),
    "server-bomb": bytes([SERVER]) + SETTINGS0 + headers(1, [], True, raw=bomb(GET, 1000, 2000)) + headers(3, GET, True),
    "server-small-many-fields": bytes([SERVER + SMALL]) + SETTINGS0
    + headers(1, GET + [("x-f", str(i)) for i in range(10)], True) + headers(3, GET, True),
    "server-small-paced": bytes([SERVER + SMALL]) + SETTINGS0
    + headers(1, [], True, raw=bomb(GET[:3], 40, 1))
    + b"".join(headers(3 + 2 * i, [], True, raw=lit(GET[:3]) + b"\xbe\xbe") for i in range(15)),
    "server-control": bytes([SERVER]) + SETTINGS0 + frame(SETTINGS, ACK, 0) + frame(PING, 0, 0, b"12345678")
    + frame(WINDOW_UPDATE, 0, 0, struct.pack(">I", 1000)) + headers(1, GET) + frame(RST_STREAM, 0, 1, struct.pack(">I", 8))
    + frame(PRIORITY, 0, 3, struct.pack(">IB", 0, 16)) + frame(GOAWAY, 0, 0, struct.pack(">II", 0, 0)),
    "reversed-server-get": bytes([REVERSED_SERVER]) + SETTINGS0 + headers(1, GET, True) + headers(3, POST)
    + frame(DATA, END_STREAM, 3, b"hello"),
    "client-responses": bytes([REVERSED_CLIENT]) + SETTINGS0
    + headers(1, [(":status", "200"), ("content-length", "2")]) + frame(DATA, END_STREAM, 1, b"ok")
    + headers(3, [(":status", "103"), ("link", "</a>")]) + headers(3, [(":status", "200")])
    + frame(DATA, 0, 3, b"abc") + headers(3, [("x-t", "1")], True)
    + frame(RST_STREAM, 0, 5, struct.pack(">I", 7)),
    "client-bomb": bytes([REVERSED_CLIENT]) + SETTINGS0 + headers(1, [], raw=bomb([(":status", "200")], 4000, 3000))
    + headers(3, [(":status", "204")], True),
    "client-small-trailers-too-large": bytes([REVERSED_CLIENT + SMALL]) + SETTINGS0 + headers(1, [(":status", "200")])
    + frame(DATA, 0, 1, b"x") + headers(1, [("x-t", "t" * 400)], True) + headers(5, [(":status", "200")], True),
}

out = Path(__file__).resolve().parent / "corpus" / "http2"
out.mkdir(parents=True, exist_ok=True)
for name, data in seeds.items():
    assert len(data) <= 8192, name
    (out / name).write_bytes(data)
print(f"{len(seeds)} seeds in {out}")
