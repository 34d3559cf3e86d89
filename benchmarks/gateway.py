"""Websocket fan-out: N concurrent clients on loopback subscribed to price and 1s bars.

    python benchmarks/gateway.py                    # 1,000 clients, 10 s of stream
    python benchmarks/gateway.py --clients 200 --seconds 5
    python benchmarks/gateway.py --attack           # 20 normal clients during an attack; RSS report

The gateway runs as its own process (``python -m services.gateway``, default config: 250 ms price
throttle) in a private run directory. This process publishes real ``tick.SPY`` frames (as the feed)
and ``bar.1s.SPY`` frames (as the aggregator); each tick's ``ts`` is its wall-clock publish time.
Client processes (asyncio ``websockets`` clients) subscribe to ``price:SPY`` and
``microbar:SPY:1s`` and record, for every price update, receipt time minus the tick's ``ts``: the
latency from tick ingest on the bus to client receipt, including the throttle's hold of a trailing
price. Clients also ask for ``latencyMs`` (bus publish to the gateway's socket write) to separate
the gateway's share from the client processes' own scheduling on a small machine. Only updates
received while the stream runs count: after the last tick, the throttle still sends that latest
price when its window ends (up to ``price_throttle_ms`` later), which measures the quiet feed, not
the gateway. Gateway memory per client is the gateway's RSS growth from before the clients connected to
the steady stream, divided by the number of clients. Every wait is bounded.

``--attack`` (issue 22): the gateway holds 600 closed 1 s bars of SPY (a ~290 KB snapshot) and a fake
aggregator answers every ``bars_since`` with no bars. During ``--seconds`` of stream, attackers with no
token run next to ``--clients`` normal clients (price:SPY + microbar:SPY:1s): ``--junk`` connections
subscribe and unsubscribe unique ``microbar:<random>:1s`` names just under the message rate limit;
``--slow`` connections subscribe the big bar channel again and again and never read; ``--flood``
connections send pings far above the rate limit (and reconnect when closed). Reported: the gateway's
RSS before, at its peak during the attack and 5 s after the attackers left, the normal clients'
latency (tick publish -> receipt) during the attack, and why connections were closed.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import multiprocessing as mp
import os
import socket
import sys
import tempfile
import time
import urllib.request

import zmq

from spx_common.bus import Publisher
from spx_common.config import BusConfig, RuntimeConfig
from spx_common.models import MicroBar, Quote, Trade
from spx_testing import ServiceProcess


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _gateway(run_dir: str, port: int, env: dict[str, str]) -> ServiceProcess:
    """``python -m services.gateway`` on ``port``, once ``/healthz`` answers (30 s; its output on failure)."""
    gw = ServiceProcess.service("gateway", run_dir=run_dir, stop_timeout_s=15, env={
        "SPX_GATEWAY_PORT": str(port), "SPX_RUNTIME_LOG_LEVEL": "WARNING", **env}).start()

    def healthy() -> bool:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1).read()
            return True
        except OSError:
            return False

    try:
        gw.wait_ready(healthy, 30, "gateway /healthz", 0.2)
    except BaseException:
        gw.stop()
        raise
    return gw


def _cpu_s(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _bucket_q(metrics: str, q: float, name: str = "handler_latency_ms", label: str = "") -> str:
    """Upper bucket bound holding quantile q of a Prometheus histogram in ``metrics`` text (summed
    over series unless ``label`` selects one)."""
    sums: dict[float, float] = {}
    for line in metrics.splitlines():
        if line.startswith(name + "_bucket{") and label in line:
            le = line.split('le="', 1)[1].split('"', 1)[0]
            key = float("inf") if le == "+Inf" else float(le)
            sums[key] = sums.get(key, 0.0) + float(line.rsplit(" ", 1)[1])
    buckets = sorted(sums.items())
    if not buckets or buckets[-1][1] == 0:
        return "n/a"
    total = buckets[-1][1]
    return next(f"{le:g}" for le, n in buckets if n >= q * total)


def _count(metrics: str, name: str, label: str) -> str:
    return str(int(sum(float(line.rsplit(" ", 1)[1]) for line in metrics.splitlines()
                       if line.startswith(name + "_count") and label in line)))


def _value(metrics: str, name: str) -> str:
    for line in metrics.splitlines():
        if line.startswith(name + " "):
            return line.split()[1]
    return "0"


def _rss_kb(pid: int) -> int:
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def client_proc(url: str, n: int, seconds: float, start_at: float, q: mp.Queue) -> None:
    """n websocket clients in one asyncio loop; put (latencies_ms, price msgs, bar msgs, connected)."""
    import websockets

    lat: list[float] = []
    wlat: list[float] = []  # the gateway's own latencyMs: bus publish -> written to the client's socket
    counts = {"price": 0, "bar": 0, "connected": 0, "errors": 0}

    async def one(i: int) -> None:
        try:
            async with websockets.connect(url, open_timeout=60, compression=None, max_queue=64) as ws:
                await ws.send(json.dumps({"op": "subscribe", "channels": ["price:SPY", "microbar:SPY:1s"],
                                          "latency": True}))
                counts["connected"] += 1
                end = start_at + seconds + 8
                while time.time() < end:
                    try:
                        raw = await asyncio.wait_for(ws.recv(), max(0.05, end - time.time()))
                    except TimeoutError:
                        break
                    now = time.time_ns()
                    # only price messages are parsed: the client's JSON cost is not the gateway's
                    if raw.startswith('{"channel":"price:SPY","type":"update"'):
                        counts["price"] += 1
                        if start_at * 1e9 < now < (start_at + seconds) * 1e9:
                            msg = json.loads(raw)
                            lat.append((now - msg["data"]["ts"]) / 1e6)
                            wlat.append(msg["latencyMs"])
                    elif raw.startswith('{"channel":"microbar:SPY:1s","type":"update"'):
                        counts["bar"] += 1
        except Exception:
            counts["errors"] += 1

    async def main() -> None:
        await asyncio.gather(*(one(i) for i in range(n)))

    asyncio.run(main())
    q.put((lat, counts, wlat))


class RawClient(asyncio.Protocol):
    """A minimal RFC 6455 client (handshake, masked client frames, unmasked server frames, pong): the
    benchmark's clients must cost far less CPU than the gateway on a 2-core machine, and the
    ``websockets`` library's per-message overhead on 500 connections per process does not."""

    def __init__(self, port: int, sub: bytes, on_text, done: asyncio.Future) -> None:
        self.port, self.sub, self.on_text, self.done = port, sub, on_text, done
        self.buf = bytearray()
        self.upgraded = False
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport) -> None:
        self.transport = transport
        key = base64.b64encode(os.urandom(16)).decode()
        transport.write((f"GET /ws HTTP/1.1\r\nHost: 127.0.0.1:{self.port}\r\nUpgrade: websocket\r\n"
                         f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n")
                        .encode())

    def _send(self, opcode: int, payload: bytes) -> None:
        mask = os.urandom(4)
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        n = len(payload)
        head = bytes([0x80 | opcode]) + (bytes([0x80 | n]) if n < 126 else bytes([0xFE]) + n.to_bytes(2, "big"))
        self.transport.write(head + mask + masked)

    def data_received(self, data: bytes) -> None:
        now = time.time_ns()
        self.buf += data
        if not self.upgraded:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                return
            if b" 101 " not in bytes(self.buf[:end].split(b"\r\n", 1)[0]):
                self.transport.close()
                return
            del self.buf[: end + 4]
            self.upgraded = True
            self._send(1, self.sub)
            if not self.done.done():
                self.done.set_result(True)
        buf, pos = self.buf, 0
        while len(buf) - pos >= 2:
            b0, b1 = buf[pos], buf[pos + 1]
            n, hdr = b1 & 0x7F, 2
            if n == 126:
                if len(buf) - pos < 4:
                    break
                n, hdr = int.from_bytes(buf[pos + 2: pos + 4], "big"), 4
            elif n == 127:
                if len(buf) - pos < 10:
                    break
                n, hdr = int.from_bytes(buf[pos + 2: pos + 10], "big"), 10
            if len(buf) - pos < hdr + n:
                break
            payload = bytes(buf[pos + hdr: pos + hdr + n])
            pos += hdr + n
            opcode = b0 & 0x0F
            if opcode == 1:
                self.on_text(payload, now)
            elif opcode == 9:
                self._send(10, payload)
            elif opcode == 8:
                self.transport.close()
        del buf[:pos]

    def connection_lost(self, exc) -> None:
        if not self.done.done():
            self.done.set_result(False)


def raw_client_proc(port: int, n: int, seconds: float, start_at: float, q: mp.Queue) -> None:
    """Like :func:`client_proc` with :class:`RawClient` connections."""
    lat: list[float] = []
    wlat: list[float] = []
    counts = {"price": 0, "bar": 0, "connected": 0, "errors": 0}
    sub = json.dumps({"op": "subscribe", "channels": ["price:SPY", "microbar:SPY:1s"], "latency": True}).encode()
    start_ns, end_ns = start_at * 1e9, (start_at + seconds) * 1e9

    def on_text(payload: bytes, now: int) -> None:
        if payload.startswith(b'{"channel":"price:SPY","type":"update"'):
            counts["price"] += 1
            if start_ns < now < end_ns:  # steady stream only (see the module docstring)
                msg = json.loads(payload)
                lat.append((now - msg["data"]["ts"]) / 1e6)
                wlat.append(msg["latencyMs"])
        elif payload.startswith(b'{"channel":"microbar:SPY:1s","type":"update"'):
            counts["bar"] += 1

    async def run() -> None:
        loop = asyncio.get_running_loop()
        conns = []
        for _ in range(n):
            done = loop.create_future()
            try:
                tr, _ = await loop.create_connection(lambda done=done: RawClient(port, sub, on_text, done), "127.0.0.1", port)
                conns.append(tr)
                if await asyncio.wait_for(done, 30):
                    counts["connected"] += 1
                else:
                    counts["errors"] += 1
            except (TimeoutError, OSError):
                counts["errors"] += 1
        await asyncio.sleep(max(0.0, start_at + seconds + 3 - time.time()))
        for tr in conns:
            tr.close()

    asyncio.run(run())
    q.put((lat, counts, wlat))


def attack_proc(port: int, junk: int, slow: int, flood: int, start_at: float, seconds: float, q: mp.Queue) -> None:
    """The attackers of ``--attack`` (raw sockets, no token); put counts of what they did."""
    import random
    import string

    counts = {"junk_msgs": 0, "slow_msgs": 0, "flood_msgs": 0, "closed": 0, "reconnects": 0}
    end = start_at + seconds

    def frame(payload: bytes) -> bytes:
        mask = os.urandom(4)
        n = len(payload)
        head = bytes([0x81]) + (bytes([0x80 | n]) if n < 126 else bytes([0xFE]) + n.to_bytes(2, "big"))
        return head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))

    async def connect(rcvbuf: int = 0):
        sock = socket.socket()
        if rcvbuf:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
        key = base64.b64encode(os.urandom(16)).decode()
        reader, writer = await asyncio.open_connection(sock=sock)
        writer.write((f"GET /ws HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                      f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n").encode())
        await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
        return reader, writer

    async def drain(reader) -> None:
        try:
            while await reader.read(65536):
                pass
        except (OSError, ConnectionError):
            pass

    async def junk_one() -> None:
        reader, writer = await connect()
        reader_task = asyncio.ensure_future(drain(reader))
        try:
            while time.time() < end:
                names = ["microbar:" + "".join(random.choices(string.ascii_uppercase, k=12)) + ":1s"
                         for _ in range(64)]
                for op in ("subscribe", "unsubscribe"):
                    writer.write(frame(json.dumps({"op": op, "channels": names}).encode()))
                    counts["junk_msgs"] += 1
                    await writer.drain()
                    await asyncio.sleep(0.11)  # ~18 messages/s: under the 20/s limit
        except (OSError, ConnectionError):
            counts["closed"] += 1
        reader_task.cancel()
        writer.close()

    async def slow_one() -> None:
        big = ["microbar:SPY:1s"]
        try:
            reader, writer = await connect(rcvbuf=4096)  # and never reads
            writer.write(frame(json.dumps({"op": "subscribe", "channels": ["price:SPY", "setups", "status"]}).encode()))
            while time.time() < end:
                for op in ("subscribe", "unsubscribe"):
                    writer.write(frame(json.dumps({"op": op, "channels": big}).encode()))
                    counts["slow_msgs"] += 1
                    await asyncio.wait_for(writer.drain(), 5)
                    await asyncio.sleep(0.11)
                if reader.at_eof():
                    raise ConnectionError
        except (TimeoutError, OSError, ConnectionError):
            counts["closed"] += 1
        try:
            writer.close()
        except Exception:
            pass

    async def flood_one() -> None:
        ping = frame(b'{"op":"ping"}')
        while time.time() < end:
            try:
                reader, writer = await connect()
                reader_task = asyncio.ensure_future(drain(reader))
                while time.time() < end and not reader_task.done():
                    writer.write(ping * 50)
                    counts["flood_msgs"] += 50
                    await writer.drain()
                    await asyncio.sleep(0.01)
                counts["closed"] += reader_task.done()
                reader_task.cancel()
                writer.close()
            except (TimeoutError, OSError, ConnectionError):
                counts["closed"] += 1
            counts["reconnects"] += 1
            await asyncio.sleep(0.2)

    async def run() -> None:
        await asyncio.sleep(max(0.0, start_at - time.time()))
        await asyncio.gather(*[junk_one() for _ in range(junk)], *[slow_one() for _ in range(slow)],
                             *[flood_one() for _ in range(flood)], return_exceptions=True)

    asyncio.run(run())
    q.put(counts)


def _fake_aggregator(rt: RuntimeConfig, bus: BusConfig, stop) -> None:
    """A request socket at the aggregator's endpoint answering every bars_since with no bars."""
    import zmq.asyncio

    from spx_common.bus import RpcServer

    async def serve() -> None:
        actx = zmq.asyncio.Context()
        server = RpcServer(actx, bus.rep_endpoint("aggregator", rt, bind=True), linger_ms=0)
        server.register("bars_since", lambda p: {"bars": [], "current": None})
        ev = asyncio.Event()

        async def watch() -> None:
            while not stop.is_set():
                await asyncio.sleep(0.1)
            ev.set()
        task = asyncio.ensure_future(watch())
        await server.serve(ev)
        task.cancel()
        server.close()
        actx.term()

    asyncio.run(serve())


def attack(args) -> None:
    import threading

    run_dir = tempfile.mkdtemp(prefix="spx-bench-gwa-", dir="/tmp")
    port = _free_port()
    env: dict[str, str] = {}
    rt, bus = RuntimeConfig(run_dir=run_dir), BusConfig()
    ctx = zmq.Context()
    feed = Publisher(ctx, bus.pub_endpoint("feed", rt, bind=True), "feed", linger_ms=0)
    agg = Publisher(ctx, bus.pub_endpoint("aggregator", rt, bind=True), "aggregator", linger_ms=0)
    stop = threading.Event()
    fake = threading.Thread(target=_fake_aggregator, args=(rt, bus, stop), daemon=True)
    fake.start()
    gw = _gateway(run_dir, port, env)
    procs: list[mp.Process] = []
    rss: list[tuple[float, int]] = []
    try:
        # 600 closed bars of history (until the gateway has them all: slow joiner)
        bar_start = (int(time.time()) - 700) * 1_000_000_000
        for _ in range(50):
            feed.heartbeat(0)
            agg.heartbeat(0)
            time.sleep(0.1)
        for _i in range(600):
            agg.publish("bar.1s.SPY", "bar", MicroBar(sym="SPY", interval="1s", start_ns=bar_start, open=600.0,
                        high=600.1, low=599.9, close=600.0, volume=1000, trades=10, vwap=600.0, closed=True),
                        time.time_ns())
            bar_start += 1_000_000_000
        time.sleep(2.0)
        rss0 = _rss_kb(gw.pid)
        q: mp.Queue = mp.Queue()
        start_at = time.time() + 4
        p = mp.Process(target=raw_client_proc, args=(port, args.clients, args.seconds, start_at, q), daemon=True)
        p.start()
        procs.append(p)
        qa: mp.Queue = mp.Queue()
        a = mp.Process(target=attack_proc, args=(port, args.junk, args.slow, args.flood, start_at, args.seconds, qa),
                       daemon=True)
        a.start()
        procs.append(a)
        period = 1.0 / args.tick_rate
        t_next = time.time()
        ticks, price = 0, 600.0
        bar_start = int(time.time()) * 1_000_000_000
        end = start_at + args.seconds + 5  # and 5 s after the attackers left
        while time.time() < end:
            now = time.time_ns()
            price = round(price + (0.01 if ticks % 3 else -0.01), 2)
            feed.publish("tick.SPY", "ticks", [Quote(sym="SPY", bid=price - 0.01, ask=price + 0.01, ts=now),
                                               Trade(sym="SPY", price=price, size=100, ts=now)], now)
            ticks += 1
            if now - bar_start >= 1_000_000_000:
                agg.publish("bar.1s.SPY", "bar", MicroBar(sym="SPY", interval="1s", start_ns=bar_start, open=price,
                            high=price + 0.1, low=price - 0.1, close=price, volume=1000, closed=True), now)
                bar_start += 1_000_000_000
            if ticks % max(1, int(args.tick_rate / 5)) == 0:
                rss.append((time.time() - start_at, _rss_kb(gw.pid)))
            t_next += period
            time.sleep(max(0.0, t_next - time.time()))
        rss_after = _rss_kb(gw.pid)
        metrics = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
        normal = q.get(timeout=60)
        attackers = qa.get(timeout=60)
    finally:
        for proc in procs:
            proc.join(10)
            if proc.is_alive():
                proc.terminate()
        gw.stop()
        if gw.hung:
            print("  (the gateway did not stop within 15 s of SIGTERM; killed)")
        stop.set()
        fake.join(5)
        feed.close()
        agg.close()
        ctx.destroy(linger=0)
    lat = sorted(normal[0])
    wlat = sorted(normal[2])
    during = [kb for t, kb in rss if 0 <= t <= args.seconds]

    def pct(p: float, xs: list[float] = lat) -> float:
        return xs[min(len(xs) - 1, int(p / 100 * len(xs)))] if xs else float("nan")

    closed = {line.split('reason="')[1].split('"')[0]: line.rsplit(" ", 1)[1]
              for line in metrics.splitlines() if line.startswith("ws_disconnects_total{")}
    print(f"gateway under attack: {args.seconds:.0f} s, {args.junk} junk-channel + {args.slow} slow-reader + "
          f"{args.flood} flood connections next to {args.clients} normal clients ({normal[1]['connected']} connected)")
    print(f"  attackers sent: {attackers}")
    print(f"  gateway RSS: {rss0 / 1024:.1f} MiB before, peak {max(during, default=0) / 1024:.1f} MiB during the "
          f"attack, {rss_after / 1024:.1f} MiB 5 s after it (target: < 256 MiB throughout)")
    print(f"  normal clients, tick publish -> receipt during the attack: p50 {pct(50):.1f} ms, p99 {pct(99):.1f} ms, "
          f"max {lat[-1] if lat else float('nan'):.1f} ms ({len(lat):,} samples; target p99 < 50 ms)")
    print(f"  of which tick publish -> written to their sockets (gateway latencyMs): p50 {pct(50, wlat):.1f} ms, "
          f"p99 {pct(99, wlat):.1f} ms; the rest is the client process waiting for CPU")
    cpu_line = [line for line in metrics.splitlines() if line.startswith("handler_latency_ms_count")]
    print(f"  gateway frame handler p99 <= {_bucket_q(metrics, 0.99)} ms ({cpu_line[0].rsplit(' ', 1)[1] if cpu_line else 0}"
          f" frames); machine load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    print(f"  connections closed by the gateway, by reason: {closed}; client errors: "
          f"{_value(metrics, 'ws_client_errors_total') if 'ws_client_errors_total ' in metrics else 'see /metrics'}")
    print(f"  series held: {_value(metrics, 'ws_series') if 'ws_series ' in metrics else 'n/a'}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clients", type=int, default=1000)
    ap.add_argument("--procs", type=int, default=2, help="client processes")
    ap.add_argument("--seconds", type=float, default=10.0, help="measured stream duration")
    ap.add_argument("--tick-rate", type=float, default=200.0, help="tick frames per second")
    ap.add_argument("--throttle-ms", type=float, default=250.0, help="[gateway] price_throttle_ms (0: every tick)")
    ap.add_argument("--client", choices=["raw", "websockets"], default="raw",
                    help="raw: minimal RFC 6455 clients (cheap, measure the gateway); websockets: the library")
    ap.add_argument("--attack", action="store_true", help="attack mode (module docstring); --clients defaults to 20")
    ap.add_argument("--junk", type=int, default=20, help="attack: junk-channel connections")
    ap.add_argument("--slow", type=int, default=20, help="attack: slow-reader connections")
    ap.add_argument("--flood", type=int, default=5, help="attack: flooding connections")
    args = ap.parse_args()
    if args.attack:
        if "--clients" not in sys.argv:
            args.clients = 20
        if "--seconds" not in sys.argv:
            args.seconds = 30.0
        attack(args)
        return

    run_dir = tempfile.mkdtemp(prefix="spx-bench-gw-", dir="/tmp")
    port = _free_port()
    env = {"SPX_GATEWAY_MAX_CLIENTS": str(args.clients + 100), "SPX_GATEWAY_PRICE_THROTTLE_MS": str(args.throttle_ms)}
    rt, bus = RuntimeConfig(run_dir=run_dir), BusConfig()
    ctx = zmq.Context()
    feed = Publisher(ctx, bus.pub_endpoint("feed", rt, bind=True), "feed", linger_ms=0)
    agg = Publisher(ctx, bus.pub_endpoint("aggregator", rt, bind=True), "aggregator", linger_ms=0)
    gw = _gateway(run_dir, port, env)
    procs: list[mp.Process] = []
    try:
        time.sleep(1.0)
        rss0 = _rss_kb(gw.pid)
        q: mp.Queue = mp.Queue()
        start_at = time.time() + 5 + args.clients / 250  # time for every client to connect and subscribe
        per = [args.clients // args.procs + (1 if i < args.clients % args.procs else 0) for i in range(args.procs)]
        url = f"ws://127.0.0.1:{port}/ws"
        for n in per:
            if args.client == "raw":
                p = mp.Process(target=raw_client_proc, args=(port, n, args.seconds, start_at, q), daemon=True)
            else:
                p = mp.Process(target=client_proc, args=(url, n, args.seconds, start_at, q), daemon=True)
            p.start()
            procs.append(p)
        period = 1.0 / args.tick_rate
        t_next = time.time()
        bar_i, bar_start, ticks = 0, int(time.time()) * 1_000_000_000, 0
        rss_peak = rss0
        end = start_at + args.seconds
        price = 600.0
        cpu0: float | None = None
        prev_ns, max_gap_ms = 0, 0.0  # publisher stalls make the throttle's latest price older
        while time.time() < end:
            now = time.time_ns()
            if cpu0 is None and now > start_at * 1e9:
                cpu0 = _cpu_s(gw.pid)
            if cpu0 is not None and prev_ns:
                max_gap_ms = max(max_gap_ms, (now - prev_ns) / 1e6)
            prev_ns = now
            price = round(price + (0.01 if ticks % 3 else -0.01), 2)
            feed.publish("tick.SPY", "ticks", [Quote(sym="SPY", bid=price - 0.01, ask=price + 0.01, ts=now),
                                               Trade(sym="SPY", price=price, size=100, ts=now)], now)
            ticks += 1
            if now - bar_start >= 1_000_000_000:
                agg.publish("bar.1s.SPY", "bar", MicroBar(sym="SPY", interval="1s", start_ns=bar_start, open=price,
                            high=price + 0.1, low=price - 0.1, close=price, volume=1000, closed=True), now)
                bar_start += 1_000_000_000
                bar_i += 1
            elif ticks % max(1, int(args.tick_rate / 4)) == 0:  # in-progress bars 4/s ([aggregator] progress_ms=250)
                agg.publish("bar.1s.SPY", "bar", MicroBar(sym="SPY", interval="1s", start_ns=bar_start, open=price,
                            high=price + 0.1, low=price - 0.1, close=price, volume=500, closed=False), now)
            if ticks % 200 == 0:
                rss_peak = max(rss_peak, _rss_kb(gw.pid))
            t_next += period
            time.sleep(max(0.0, t_next - time.time()))
        rss1 = _rss_kb(gw.pid)
        metrics = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
        cpu = (_cpu_s(gw.pid) - (cpu0 or 0.0)) / args.seconds
        results = [q.get(timeout=60 + args.seconds) for _ in procs]
    finally:
        for p in procs:
            p.join(10)
            if p.is_alive():
                p.terminate()
        gw.stop()
        feed.close()
        agg.close()
        ctx.destroy(linger=0)
    lat = sorted(x for r in results for x in r[0])
    wlat = sorted(x for r in results for x in r[2])
    counts = {k: sum(r[1][k] for r in results) for k in results[0][1]}

    def pct(p: float, xs: list[float] = lat) -> float:
        return xs[min(len(xs) - 1, int(p / 100 * len(xs)))] if xs else float("nan")

    print(f"gateway fan-out: {args.clients} {args.client} clients ({counts['connected']} connected, {counts['errors']} errors), "
          f"{args.seconds:.0f} s at {args.tick_rate:.0f} tick frames/s, price throttle {args.throttle_ms:g} ms")
    print(f"  price updates received: {counts['price']:,} ({counts['price'] / max(1, counts['connected']) / args.seconds:.1f}"
          f" per client per s); bar updates: {counts['bar']:,}")
    print(f"  tick publish -> client receipt latency: p50 {pct(50):.1f} ms, p95 {pct(95):.1f} ms, "
          f"p99 {pct(99):.1f} ms, max {lat[-1] if lat else float('nan'):.1f} ms ({len(lat):,} samples)")
    print(f"  of which tick publish -> written to the client socket (gateway latencyMs): p50 {pct(50, wlat):.1f} ms, "
          f"p95 {pct(95, wlat):.1f} ms, p99 {pct(99, wlat):.1f} ms; the rest is client processes waiting for CPU")
    print(f"  longest gap between two published ticks in the window: {max_gap_ms:.1f} ms (a throttled price "
          f"sent at the end of its window is the latest tick, as old as that gap)")
    print(f"  gateway RSS: {rss0 / 1024:.1f} MiB idle -> {rss1 / 1024:.1f} MiB with clients (peak "
          f"{rss_peak / 1024:.1f}); {(rss1 - rss0) / max(1, counts['connected']):.1f} KiB per client")
    print(f"  gateway frame handler (ingest + fan-out to every subscriber): p50 <= {_bucket_q(metrics, 0.5)} ms, "
          f"p99 <= {_bucket_q(metrics, 0.99)} ms; slow handlers (> 250 ms): "
          f"{_value(metrics, 'handler_slow_total')}")
    gen2 = 'generation="2"'
    print(f"  gateway GC pauses: generation 2 max <= {_bucket_q(metrics, 1.0, 'gc_pause_ms', gen2)} ms "
          f"({_count(metrics, 'gc_pause_ms', gen2)} collections), all generations p99 <= "
          f"{_bucket_q(metrics, 0.99, 'gc_pause_ms')} ms")
    print(f"  gateway CPU: {cpu * 100:.0f}% of one core during the measured stream "
          f"(machine: {os.cpu_count()} cores shared with the client processes)")


if __name__ == "__main__":
    main()
