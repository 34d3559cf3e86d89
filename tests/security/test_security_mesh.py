"""Attacks on one real mesh under supervisord (``spx up``'s code path), shared by the module.

Each test is one attack from issue 22 and the behaviour that must hold (docs/reliability.md,
"Attacks"): secrets only in the programs that need them, a private run directory, no traceback
and a kept connection for malformed input, and a token that stops working for good when it expires.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import signal
import socket
import stat
import tempfile
import time
from pathlib import Path

import pytest

from services.cli import supervise
from services.gateway import auth
from spx_common.config import RuntimeConfig
from spx_testing import rawws
from tests.conftest import eventually, free_port
from tests.gateway.harness import WsClient

pytestmark = pytest.mark.mesh

SECRET = "security-test-token-secret-0123"
KEYRING = "k1:" + base64.urlsafe_b64encode(bytes(range(32))).decode()
MASSIVE_KEY = "massive-key-only-for-the-feed"


@pytest.fixture(scope="module")
def mesh():
    run_dir = Path(tempfile.mkdtemp(prefix="spx-sec-", dir="/tmp"))
    run_dir.chmod(0o755)  # readable by everyone before start: the mesh must close it
    port = free_port()
    env = {"SPX_GATEWAY_PORT": str(port), "SPX_FEED_SOURCE": "synthetic", "SPX_FEED_REPLAY_SPEED": "60",
           "SPX_CREDENTIALS_KEYS": KEYRING, "SPX_TOKEN_SECRET": SECRET, "MASSIVE_API_KEY": MASSIVE_KEY,
           "SPX_GATEWAY_QUEUE_MAX_BYTES": str(1 << 20), "SPX_CONFIG": ""}
    runtime = RuntimeConfig(run_dir=run_dir)
    old_umask = os.umask(0o022)  # an ordinary operator's umask: the mesh must not depend on it
    try:
        supervise.start(runtime, env)
    finally:
        os.umask(old_umask)
    try:
        supervise.wait_running(runtime, 60)

        def listening() -> bool:
            with socket.socket() as sock:
                sock.settimeout(0.5)
                return sock.connect_ex(("127.0.0.1", port)) == 0
        eventually(listening, 30, what="gateway port listening")
        yield runtime, port
    finally:
        supervise.stop(runtime, 30)
        shutil.rmtree(run_dir, ignore_errors=True)


def _environ(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes()
    return dict(item.split("=", 1) for item in raw.decode(errors="replace").split("\0") if "=" in item)


def test_each_program_holds_only_its_own_secrets(mesh):
    """Issue 22 item 7: SPX_CREDENTIALS_KEYS and vendor keys were in all 8 processes."""
    runtime, _ = mesh
    secrets = {"SPX_CREDENTIALS_KEYS": KEYRING, "SPX_TOKEN_SECRET": SECRET, "MASSIVE_API_KEY": MASSIVE_KEY}
    wanted = {"broker": {"SPX_CREDENTIALS_KEYS"}, "gateway": {"SPX_TOKEN_SECRET"}, "feed": {"MASSIVE_API_KEY"}}
    procs = {p["name"]: p["pid"] for p in supervise.processes(runtime)}
    assert len(procs) == 8
    for name, pid in procs.items():
        env = _environ(pid)
        held = {k for k, v in secrets.items() if env.get(k) == v}
        assert held == wanted.get(name, set()), (name, held)
        assert not set(env) & (supervise.SECRET_NAMES - wanted.get(name, set())), name
    sup = _environ(supervise.pid(runtime))
    assert not set(sup) & supervise.SECRET_NAMES, "supervisord itself must hold no secret"
    conf = runtime.path("supervisord.conf")
    assert stat.S_IMODE(conf.stat().st_mode) == 0o600  # the rendered configuration holds them


def _loose(root: Path) -> list[str]:
    """Paths under ``root`` (itself included) that a group or other account could read or enter."""
    bad = []
    for path in [root, *root.rglob("*")]:
        try:
            st = path.lstat()
        except FileNotFoundError:  # rotated or replaced meanwhile
            continue
        if (stat.S_ISREG(st.st_mode) or stat.S_ISDIR(st.st_mode)) and st.st_mode & 0o077:
            bad.append(f"{path} {oct(stat.S_IMODE(st.st_mode))}")
    return bad


def test_run_dir_is_private_and_files_stay_0600_after_a_rewrite(mesh):
    """Issue 22 item 6: the database, outboxes, logs and dead letters were 0644 (the outbox's 0600 was
    lost when it was rewritten at load)."""
    runtime, _ = mesh
    outbox = runtime.path("outbox", "detector.bin")
    for path in (runtime.path("spx.sqlite3"), outbox, runtime.path("logs", "gateway.log")):
        eventually(path.exists, 30, what=f"{path} written")
    assert stat.S_IMODE(runtime.path().stat().st_mode) == 0o700
    assert _loose(runtime.path()) == []
    # the detector reloads and rewrites its outbox when it starts again
    before = {p["name"]: p["pid"] for p in supervise.processes(runtime)}
    inode = outbox.stat().st_ino
    os.kill(before["detector"], signal.SIGKILL)
    eventually(lambda: outbox.stat().st_ino != inode, 30, what="outbox rewritten by the restarted detector")
    eventually(lambda: {p["name"]: p["statename"] for p in supervise.processes(runtime)}["detector"] == "RUNNING",
               30, what="detector running again")
    assert stat.S_IMODE(outbox.stat().st_mode) == 0o600
    assert _loose(runtime.path()) == []


def _http(port: int, request: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(request)
        out = b""
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                return out
            out += chunk


def _metric(port: int, name: str) -> float:
    body = _http(port, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n").split(b"\r\n\r\n", 1)[1].decode()
    return sum(float(line.rsplit(" ", 1)[1]) for line in body.splitlines() if line.startswith(name))


def test_malformed_input_gets_a_clear_error_and_no_traceback(mesh):
    """Issue 22 item 8: a 4,000-deep [[[...]]] closed the websocket with 1011 (RecursionError); a NUL in
    the path or two Origin headers gave 500 with a traceback; price:SPY\\n was a valid channel."""
    runtime, port = mesh
    url = f"ws://127.0.0.1:{port}/ws"
    c = WsClient(url)
    for depth in (2000, 9):  # 4,000 bytes, and one level past the bound
        c.send("[" * depth + "]" * depth)
        err = c.until(lambda m: m["type"] == "error")
        assert err["data"]["code"] == "bad_json" and "deeper" in err["data"]["message"]
    c.send({"op": "subscribe", "channels": [[[["x"]]]]})
    assert c.until(lambda m: m["type"] == "error")["data"]["code"] == "bad_request"
    c.send({"op": "subscribe", "channels": ["price:SPY\n"]})
    err = c.until(lambda m: m["type"] == "error")
    assert err["data"]["code"] == "bad_channel" and err["channel"] == "price:SPY\n"
    assert c.until(lambda m: m["type"] == "subscribed")["data"]["channels"] == []
    c.send({"op": "ping", "id": "still-here"})  # the connection is kept
    assert c.until(lambda m: m["type"] == "pong")["data"]["id"] == "still-here"
    c.close()

    for request in (b"GET /static/a\x00b HTTP/1.1\r\nHost: x\r\n\r\n",
                    b"GET /\x00 HTTP/1.1\r\nHost: x\r\n\r\n",
                    b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
                    b"Origin: http://127.0.0.1\r\nOrigin: http://evil.example\r\n\r\n"):
        status = _http(port, request).split(b"\r\n", 1)[0]
        assert status.startswith(b"HTTP/1.1 400"), (request, status)
    assert _metric(port, 'http_requests_total{status="500"}') == 0
    assert _metric(port, 'http_requests_total{status="400"}') >= 3
    log = runtime.path("logs", "gateway.log").read_text(errors="replace")
    assert "Traceback" not in log and "RecursionError" not in log


def test_an_expired_token_drops_the_user_for_good_on_that_connection(mesh):
    """Issue 22 item 2: after the token_expired drop, subscribing again brought the user's orders,
    positions, fills and coach back: the connection kept the user."""
    _, port = mesh
    url = f"ws://127.0.0.1:{port}/ws"
    c = WsClient(url, token=auth.mint("alice", SECRET.encode(), int(time.time()) + 2))
    assert c.welcome["data"]["user"] == "alice"
    assert c.subscribe("orders", "fills")["data"]["channels"] == ["orders", "fills"]
    err = c.until(lambda m: m["type"] == "error", 8)
    assert err["data"]["code"] == "token_expired" and "orders" in err["data"]["message"]
    for channel in ("orders", "positions", "fills", "coach"):
        c.send({"op": "subscribe", "channels": [channel]})
        assert c.until(lambda m: m["type"] == "error")["data"]["code"] == "unauthorized", channel
        assert c.until(lambda m: m["type"] == "subscribed")["data"]["channels"] == []
    c.send({"op": "credentials.status", "id": "s"})
    assert c.until(lambda m: m["type"] == "error")["data"]["code"] == "unauthorized"
    c.send({"op": "auth", "token": auth.mint("alice", SECRET.encode(), int(time.time()) - 1), "id": "old"})
    assert c.until(lambda m: m["type"] == "error")["data"]["code"] == "token_expired"
    c.send({"op": "auth", "token": "v1.alice.9999999999.forged", "id": "forged"})
    assert c.until(lambda m: m["type"] == "error")["data"]["code"] == "bad_token"
    c.send({"op": "subscribe", "channels": ["orders"]})
    assert c.until(lambda m: m["type"] == "error")["data"]["code"] == "unauthorized"
    fresh = int(time.time()) + 600
    c.send({"op": "auth", "token": auth.mint("alice", SECRET.encode(), fresh), "id": "new"})
    ok = c.until(lambda m: m["type"] == "authenticated")
    assert ok["data"] == {"user": "alice", "expiresAt": fresh, "id": "new"}
    assert c.subscribe("orders")["data"]["channels"] == ["orders"]
    c.close()


def _raw_ws(port: int, rcvbuf: int = 4096) -> socket.socket:
    """A websocket that will never read what it is sent (a slow reader), after the handshake."""
    return rawws.connect(port, rcvbuf=rcvbuf)


def _frame(doc: dict) -> bytes:
    return rawws.client_frame(json.dumps(doc).encode())


def test_junk_channels_and_slow_readers_cost_bounded_memory(mesh):
    """Issue 22 item 3: unique microbar:<random>:1s names grew the series map without bound; slow readers
    that never read grew the gateway's memory without bound (queues bounded by count, not bytes)."""
    _, port = mesh
    url = f"ws://127.0.0.1:{port}/ws"
    eventually(lambda: _metric(port, "ws_series ") > 0, 30, what="the gateway holds real bar series")
    series, channels = _metric(port, "ws_series "), _metric(port, "ws_channels ")
    junk = WsClient(url)
    for round_ in range(5):
        names = [f"microbar:JUNK{round_}X{i}:1s" for i in range(64)]
        assert len(junk.subscribe(*names)["data"]["channels"]) == 64
        junk.send({"op": "unsubscribe", "channels": names})
        junk.until(lambda m: m["type"] == "unsubscribed")
        time.sleep(0.7)  # within [gateway] client_channels_per_s (100 names a second)
    for _ in range(4):  # past it: refused before any snapshot is made
        junk.send({"op": "subscribe", "channels": [f"microbar:FLOOD{i}:1s" for i in range(64)]})
    err = junk.until(lambda m: m["type"] == "error" and m["data"]["code"] == "rate_limited")
    assert "channel subscriptions/s" in err["data"]["message"]
    junk.close()
    time.sleep(1.5)  # the gauges are set once a second
    # 320 junk names would be 320 more of each; real symbols of the replay may appear meanwhile
    assert _metric(port, "ws_series ") < series + 32
    assert _metric(port, "ws_channels ") < channels + 160

    overflowed = _metric(port, 'ws_disconnects_total{reason="overflow"}')
    slow = _raw_ws(port)
    try:
        deadline = time.monotonic() + 30
        while _metric(port, 'ws_disconnects_total{reason="overflow"}') == overflowed:
            assert time.monotonic() < deadline, "a reader that never reads was not disconnected"
            for op in ("subscribe", "unsubscribe"):  # a bar snapshot each time, within the rate limit
                try:
                    slow.sendall(_frame({"op": op, "channels": ["microbar:SPY:1s", "setups", "status"]}))
                except OSError:
                    break
                time.sleep(0.06)
    finally:
        slow.close()
    eventually(lambda: _metric(port, "ws_queued_bytes ") < 1 << 20, 10, what="its queue given back")
