#!/usr/bin/env python3
"""Independent WebSocket client for codara-agent (CONTRACT.md §3), written against the
contract with the Python `websockets` package (not the Rust code under test).

Usage: python3 tests/ws_independent.py <port> <secret>

Prints "OK <check>" for each check and "ALL OK" at the end; exit 0 on success, 1 on a
failed check, 3 if the `websockets` package is missing (pip install websockets).
Loopback only; every wait is bounded.
"""

import json
import sys
import time
import urllib.error
import urllib.request

try:
    import websockets
    from websockets.exceptions import InvalidStatus
    from websockets.sync.client import connect as ws_connect
except ImportError as e:  # pragma: no cover
    print(f"MISSING: the Python package `websockets` is not installed ({e}); run: pip install websockets")
    sys.exit(3)

HOST = "127.0.0.1"


class Fail(Exception):
    pass


def check(cond, msg):
    if not cond:
        raise Fail(msg)


def now_ms():
    return int(time.time() * 1000)


def http(port, secret, method, path, body=None):
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(f"http://{HOST}:{port}{path}", data=data, method=method)
    req.add_header("X-Cluster-Secret", secret)
    if data is not None:
        req.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, json.loads(r.read().decode())
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode(errors="replace")


def run(port, secret, command, args):
    st, body = http(port, secret, "POST", "/execute", {"command": command, "args": args})
    check(st == 200 and body.get("status") == "started", f"POST /execute: {st} {body}")
    tid = body["taskId"]
    check(type(tid) is int, f"taskId not an int: {body}")
    return tid


def wait_task(port, secret, tid, timeout=120):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        st, t = http(port, secret, "GET", f"/task/{tid}")
        check(st == 200, f"GET /task/{tid}: {st} {t}")
        if t["status"] != "running":
            return t
        time.sleep(0.05)
    raise Fail(f"task {tid} still running after {timeout} s")


def connect(port, secret, **kw):
    return ws_connect(
        f"ws://{HOST}:{port}/",
        additional_headers={"X-Cluster-Secret": secret},
        max_size=None,
        open_timeout=30,
        close_timeout=5,
        **kw,
    )


def collect(ws, stop, timeout, what):
    """Receives JSON messages until stop(msg) is true (included); bounded in time."""
    deadline = time.monotonic() + timeout
    msgs = []
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            raise Fail(f"no {what} within {timeout} s; got {len(msgs)} messages, last: {msgs[-3:]}")
        try:
            raw = ws.recv(timeout=min(left, 5))
        except TimeoutError:
            continue
        check(isinstance(raw, str), f"binary message from the server: {raw[:80]!r}")
        m = json.loads(raw)
        msgs.append(m)
        if stop(m):
            return msgs


def until_completed(ws, tid, timeout=120):
    return collect(ws, lambda m: m.get("taskId") == tid and m.get("event") == "completed", timeout,
                   f"`completed` of task {tid}")


def quiet(ws, seconds):
    """Messages that arrive within `seconds`."""
    deadline = time.monotonic() + seconds
    got = []
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            return got
        try:
            got.append(json.loads(ws.recv(timeout=left)))
        except TimeoutError:
            return got


def is_int(v):
    return type(v) is int


def check_shape(m, t0):
    check(m.get("type") == "task_update", f"type: {m}")
    check(is_int(m.get("taskId")), f"taskId int: {m}")
    ev = m.get("event")
    check(ev in ("started", "output", "error", "failed", "completed"), f"event: {m}")
    check("data" in m, f"data: {m}")
    ts = m.get("timestamp")
    check(is_int(ts) and t0 - 5000 <= ts <= now_ms() + 5000, f"timestamp ms near now: {m}")
    d = m["data"]
    if ev == "started":
        check(isinstance(d, dict) and d.get("id") == m["taskId"] and d.get("status") == "running", f"started: {m}")
        for k in ("command", "args", "cwd", "env", "startedAt"):
            check(k in d, f"started task object lacks {k}: {m}")
    elif ev == "output":
        check(isinstance(d, str), f"output data str: {m}")
        check(is_int(m.get("offset")), f"output offset int: {m}")
    elif ev == "error":
        check(isinstance(d, str), f"error data str (stderr chunk): {m}")
    elif ev == "failed":
        check(isinstance(d, dict) and isinstance(d.get("error"), str) and d["error"], f"failed data: {m}")
    elif ev == "completed":
        check(isinstance(d, dict), f"completed data: {m}")
        for k in ("status", "exitCode", "signal", "duration"):
            check(k in d, f"completed data lacks {k}: {m}")
        check(d["status"] in ("completed", "failed", "cancelled"), f"completed status: {m}")
        check(d["exitCode"] is None or is_int(d["exitCode"]), f"exitCode: {m}")
        check(d["signal"] is None or isinstance(d["signal"], str), f"signal: {m}")
        check(is_int(d["duration"]), f"duration: {m}")


def task_view(msgs, tid, t0, live, start=(0, 0)):
    """Per-task checks; returns (stdout, stderr, out_chunks, completed_data, events)."""
    mine = [m for m in msgs if m.get("taskId") == tid]
    for m in mine:
        check_shape(m, t0)
    events = [m["event"] for m in mine]
    check(events.count("completed") == 1 and events[-1] == "completed",
          f"task {tid}: completed exactly once and last: {events[:5]}...{events[-5:]}")
    if live:
        check(events[0] == "started" and events.count("started") == 1, f"task {tid}: started first: {events[:5]}")
    out_pos, err_pos = start
    out, err, chunks = [], [], []
    for m in mine:
        if m["event"] == "output":
            check(m["offset"] == out_pos, f"task {tid}: offset {m['offset']} != {out_pos} bytes before it")
            b = m["data"].encode()
            out_pos += len(b)
            out.append(m["data"])
            chunks.append((m["offset"], m["data"]))
        elif m["event"] == "error":
            if "offset" in m:
                check(m["offset"] == err_pos, f"task {tid}: error offset {m['offset']} != {err_pos}")
            err_pos += len(m["data"].encode())
            err.append(m["data"])
    return "".join(out), "".join(err), chunks, mine[-1]["data"], events


def seq_text(a, b):
    return "".join(f"{i}\n" for i in range(a, b + 1))


def live_checks(ws, port, secret, t0):
    """Shapes, seq 1 300000, order of concurrent tasks, on one connection."""
    # --- shapes
    tid = run(port, secret, "sh", ["-c", "echo hello; echo oops >&2"])
    msgs = until_completed(ws, tid)
    out, err, _, done, events = task_view(msgs, tid, t0, True)
    check(out == "hello\n" and err == "oops\n", f"shapes task: {out!r} {err!r}")
    check(done["status"] == "completed" and done["exitCode"] == 0 and done["signal"] is None, f"{done}")
    print("OK shapes", flush=True)

    # --- seq 1 300000
    tid = seq_id = run(port, secret, "seq", ["1", "300000"])
    msgs = until_completed(ws, tid, timeout=180)
    out, err, chunks, done, _ = task_view(msgs, tid, t0, True)
    seq_chunks, seq_done = chunks, done
    expected = seq_text(1, 300000)
    check(out == expected, f"seq reassembled: {len(out)} chars, expected {len(expected)}")
    check(err == "", "seq stderr")
    for i, (off, c) in enumerate(chunks[:-1]):
        check(c.endswith("\n"), f"chunk {i} at {off} does not end at a line end")
    check(len(chunks) < 30000, f"{len(chunks)} output messages for 300000 lines")
    check(done["status"] == "completed" and done["exitCode"] == 0, f"{done}")
    print(f"OK seq ({len(chunks)} output messages)", flush=True)

    # --- order: concurrent tasks
    ids = []
    for k in range(4):
        script = f'i=0; while [ $i -lt 200 ]; do echo "t{k} o $i"; echo "t{k} e $i" >&2; i=$((i+1)); done'
        ids.append((k, run(port, secret, "sh", ["-c", script])))
    pending = {tid for _, tid in ids}

    def all_done(m):
        if m.get("event") == "completed":
            pending.discard(m.get("taskId"))
        return not pending

    msgs = collect(ws, all_done, 120, "`completed` of 4 concurrent tasks")
    for k, tid in ids:
        out, err, _, done, _ = task_view(msgs, tid, t0, True)
        check(out == "".join(f"t{k} o {i}\n" for i in range(200)), f"task {tid} stdout")
        check(err == "".join(f"t{k} e {i}\n" for i in range(200)), f"task {tid} stderr")
        check(done["status"] == "completed", f"{done}")
    extra = quiet(ws, 0.7)
    check(not extra, f"messages after all completed: {extra[:3]}")
    print("OK order", flush=True)
    return seq_id, seq_chunks, seq_done, expected


def main():
    port, secret = int(sys.argv[1]), sys.argv[2]
    t0 = now_ms()
    print(f"websockets {websockets.__version__}", flush=True)

    # --- handshake
    for hdrs, what in (({}, "no secret"), ({"X-Cluster-Secret": "wrong-secret-0123456789"}, "wrong secret")):
        try:
            with ws_connect(f"ws://{HOST}:{port}/", additional_headers=hdrs, open_timeout=30):
                pass
            raise Fail(f"handshake with {what} was accepted")
        except InvalidStatus as e:
            check(e.response.status_code == 403, f"{what}: status {e.response.status_code}, expected 403")
    with connect(port, secret) as ws:
        check(ws.ping().wait(20), "no pong to a ping within 20 s")
        print("OK handshake", flush=True)
        # Wait until the agent demonstrably streams to this connection (a `true` task's
        # `completed` arrives) before checking tasks started after it.
        until_completed(ws, run(port, secret, "true", []), timeout=30)
        seq_id, seq_chunks, seq_done, expected = live_checks(ws, port, secret, t0)

    # --- replay after the end
    wait_task(port, secret, seq_id)
    mid = seq_chunks[len(seq_chunks) // 2][0] if len(seq_chunks) >= 2 else 0
    for offset in (0, mid):
        with connect(port, secret) as r:
            r.send(json.dumps({"type": "subscribe", "taskId": seq_id, "offset": offset}))
            msgs = until_completed(r, seq_id)
            extra = quiet(r, 0.7)
        check(all(m.get("taskId") == seq_id for m in msgs), "replay sent other tasks")
        out, err, chunks, done, events = task_view(msgs, seq_id, t0, False, (offset, 0))
        check("started" not in events, f"replay resent started: {events[:3]}")
        check(out == expected[offset:], f"replay from {offset}: {len(out)} chars, expected {len(expected) - offset}")
        check(not chunks or chunks[0][0] == offset, f"replay from {offset}: first chunk at {chunks[0][0]}")
        check(done == seq_done, f"replayed completed {done} != live {seq_done}")
        check(not extra, f"messages after replayed completed: {extra[:3]}")
    print(f"OK replay (offsets 0 and {mid})", flush=True)

    print("ALL OK", flush=True)


if __name__ == "__main__":
    try:
        main()
    except Fail as e:
        print(f"FAIL: {e}", flush=True)
        sys.exit(1)
    except Exception as e:  # unexpected: still a failure, with its type
        print(f"FAIL: {type(e).__name__}: {e}", flush=True)
        sys.exit(1)
