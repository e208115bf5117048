#!/usr/bin/env python3
"""Independent TLS clients for codara-agent's HTTPS and wss:// (issue 14), written with
Python's `ssl` and the `websockets` package, not the Rust code under test.

Usage: python3 tests/tls_clients.py MODE PORT SECRET CAFILE [CERT KEY]

Modes:
  stream       submit a task over HTTPS, follow it over wss:// (?subscribe=), check every
               byte of its output arrives, then `completed`
  nocert       (mutual TLS) a client without a certificate is refused: the handshake or
               the first request fails
  withcert     (mutual TLS) a client with CERT/KEY gets /health and a wss:// connection
  fingerprint  prints the SHA-256 of the certificate the server presents (not verified)
  slow         one wss:// client that never reads and one that reads everything, while a
               task prints 24 MiB: the reader must get every byte and `completed`

Prints "OK <mode>" and exits 0 on success; exits 1 on a failed check, 3 if `websockets` is
missing. Loopback only; every wait is bounded.
"""

import hashlib
import json
import socket
import ssl
import sys
import time
import urllib.request

try:
    from websockets.exceptions import WebSocketException
    from websockets.sync.client import connect as ws_connect
except ImportError as e:  # pragma: no cover
    print(f"MISSING: the Python package `websockets` is not installed ({e}); run: pip install websockets")
    sys.exit(3)

HOST = "localhost"


class Fail(Exception):
    pass


def check(cond, msg):
    if not cond:
        raise Fail(msg)


def context(cafile, cert=None, key=None):
    ctx = ssl.create_default_context(cafile=cafile)
    if cert:
        ctx.load_cert_chain(cert, key)
    return ctx


def post(port, secret, ctx, path, body):
    rq = urllib.request.Request(
        f"https://{HOST}:{port}{path}",
        data=json.dumps(body).encode(),
        headers={"X-Cluster-Secret": secret, "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(rq, context=ctx, timeout=30) as r:
        return json.loads(r.read())


def follow(ws, task_id, deadline):
    """Output of task_id (stdout bytes) until its `completed`."""
    out = []
    while True:
        left = deadline - time.time()
        check(left > 0, f"no `completed` for task {task_id} in time ({sum(map(len, out))} bytes)")
        msg = json.loads(ws.recv(timeout=left))
        if msg.get("taskId") != task_id:
            continue
        if msg["event"] == "output":
            check(msg["offset"] == sum(map(len, out)), f"offset {msg['offset']} out of order")
            out.append(msg["data"].encode())
        if msg["event"] == "completed":
            check(msg["data"]["exitCode"] == 0, f"task failed: {msg}")
            return b"".join(out)


def mode_stream(port, secret, ctx):
    # The task starts only after the wss:// client is connected: every event must reach it.
    with ws_connect(f"wss://{HOST}:{port}/", ssl=ctx, additional_headers={"X-Cluster-Secret": secret},
                    open_timeout=30) as ws:
        r = post(port, secret, ctx, "/execute", {"command": "seq", "args": ["1", "50000"]})
        check(r["status"] == "started", f"execute: {r}")
        got = follow(ws, r["taskId"], time.time() + 60)
    want = "".join(f"{i}\n" for i in range(1, 50001)).encode()
    check(got == want, f"output differs: {len(got)} bytes, want {len(want)}")
    t = post(port, secret, ctx, "/execute?wait=true", {"command": "sh", "args": ["-c", "echo over-tls"]})
    check(t["stdout"] == "over-tls\n" and t["status"] == "completed", f"wait=true: {t}")


def mode_nocert(port, secret, ctx):
    try:
        with urllib.request.urlopen(f"https://{HOST}:{port}/health", context=ctx, timeout=30) as r:
            raise Fail(f"a client without a certificate got an answer: {r.status} {r.read()!r}")
    except (ssl.SSLError, ConnectionError, urllib.error.URLError) as e:
        print(f"refused as expected: {e}")
    try:
        with ws_connect(f"wss://{HOST}:{port}/?secret={secret}", ssl=ctx, open_timeout=30):
            raise Fail("a wss:// client without a certificate was let in")
    except (ssl.SSLError, ConnectionError, OSError, EOFError, WebSocketException) as e:
        print(f"wss refused as expected: {type(e).__name__}: {e}")


def mode_withcert(port, secret, ctx):
    with urllib.request.urlopen(f"https://{HOST}:{port}/health", context=ctx, timeout=30) as r:
        check(json.loads(r.read())["status"] == "healthy", "health")
    with ws_connect(f"wss://{HOST}:{port}/?secret={secret}", ssl=ctx, open_timeout=30) as ws:
        r = post(port, secret, ctx, "/execute", {"command": "echo", "args": ["mtls"]})
        check(follow(ws, r["taskId"], time.time() + 30) == b"mtls\n", "mtls task output")


def mode_fingerprint(port):
    pem = ssl.get_server_certificate(("127.0.0.1", port), timeout=30)
    print(hashlib.sha256(ssl.PEM_cert_to_DER_cert(pem)).hexdigest())


def stalled_client(port, secret, ctx):
    """A wss:// client that sends its upgrade, reads the 101, then never reads again."""
    raw = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    raw.settimeout(30)
    raw.connect(("127.0.0.1", port))
    s = ctx.wrap_socket(raw, server_hostname=HOST)
    s.sendall((f"GET / HTTP/1.1\r\nHost: {HOST}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
               f"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
               f"X-Cluster-Secret: {secret}\r\n\r\n").encode())
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = s.recv(1)
        check(chunk, "stalled client: closed before the 101")
        head += chunk
    check(head.startswith(b"HTTP/1.1 101"), f"stalled client: {head!r}")
    return s


def mode_slow(port, secret, ctx):
    stalled = stalled_client(port, secret, ctx)
    size = 24 << 20
    with ws_connect(f"wss://{HOST}:{port}/", ssl=ctx, additional_headers={"X-Cluster-Secret": secret},
                    open_timeout=30, max_size=None) as ws:
        r = post(port, secret, ctx, "/execute", {"command": "sh", "args": ["-c", f"yes aaaaaaa | head -c {size}"]})
        got = follow(ws, r["taskId"], time.time() + 240)
    check(len(got) == size and got == b"aaaaaaa\n" * (size // 8), f"reader got {len(got)} bytes of {size}")
    stalled.close()


def main():
    mode, port, secret, cafile = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
    cert, key = (sys.argv[5], sys.argv[6]) if len(sys.argv) > 6 else (None, None)
    ctx = context(cafile, cert, key)
    try:
        if mode == "stream":
            mode_stream(port, secret, ctx)
        elif mode == "nocert":
            mode_nocert(port, secret, ctx)
        elif mode == "withcert":
            mode_withcert(port, secret, ctx)
        elif mode == "fingerprint":
            mode_fingerprint(port)
            return
        elif mode == "slow":
            mode_slow(port, secret, ctx)
        else:
            raise Fail(f"unknown mode {mode}")
    except Fail as e:
        print(f"FAIL {mode}: {e}")
        sys.exit(1)
    print(f"OK {mode}")


if __name__ == "__main__":
    main()
