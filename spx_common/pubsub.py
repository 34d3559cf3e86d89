"""Publish/subscribe: PUB/SUB with loss detection and heartbeats.

Topology: every service binds one PUB socket at the endpoint :class:`~spx_common.config.BusConfig`
derives from its name; subscribers connect to the publishers they need. No central broker, so each
process fails alone.

Loss: ZeroMQ drops silently past a high-water mark. We set the mark deliberately
(``[bus] hwm``) and number every frame per (publisher session, topic), so a subscriber
counts every lost frame (``bus_frames_lost_total``) and every duplicate; a publisher
restart is seen as a new ``session`` and resets the numbering without a false alarm.
:class:`SubscriberCore` is that logic without I/O (raw multipart in, frames out); the sync and
asyncio subscribers wrap it.

Liveness: every publisher sends a :class:`~spx_common.models.Heartbeat` on
``hb.<service>`` each second; subscribers always listen to ``hb.`` and report a peer
down after ``peer_timeout_s`` (3 s by default).

Replay: a publisher of records that must not be lost keeps the newest frames of some topics for
consumers that missed them, journalled first to its :class:`~spx_common.outbox.Outbox`.
"""

from __future__ import annotations

import os
import time
import uuid
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import zmq
import zmq.asyncio

from spx_common import codec
from spx_common.codec import Frame, FrameError
from spx_common.curve import CurveKeys
from spx_common.metrics import Registry
from spx_common.models import Heartbeat, ServiceState
from spx_common.outbox import Outbox
from spx_common.sockets import ensure_ipc_dir, prep
from spx_common.topics import HEARTBEAT

HEARTBEAT_PREFIX = HEARTBEAT
MAX_TRACKED_STREAMS = 100_000
_SNDMORE = int(zmq.SNDMORE)


def new_session() -> str:
    return uuid.uuid4().hex[:12]


class Publisher:
    """A bound PUB socket that stamps every frame with a per-topic sequence number.

    ``send`` never blocks: past the high-water mark ZeroMQ drops the frame and the
    subscriber's sequence check reports it.  Safe to call from a sync or asyncio loop,
    but from one thread only.
    """

    def __init__(
        self,
        ctx: zmq.Context,
        endpoint: str,
        service: str,
        *,
        session: str | None = None,
        hwm: int = 500_000,
        linger_ms: int = 200,
        curve: CurveKeys | None = None,
    ) -> None:
        self.service = service
        self.session = session or new_session()
        self.endpoint = endpoint
        self.frames_out = 0
        self._seq: dict[str, int] = {}
        #: frames of these topic prefixes are also kept, newest ``kept.maxlen``, for ``replay``
        self.keep_prefixes: tuple[str, ...] = ()
        self.kept: deque[tuple[str, bytes]] = deque(maxlen=0)
        #: kept frames are journalled here before they are sent (see :meth:`attach_outbox`)
        self.outbox: Outbox | None = None
        ensure_ipc_dir(endpoint)
        self.sock = ctx.socket(zmq.PUB)
        prep(self.sock, hwm, linger_ms)
        if curve is not None:
            curve.make_server(self.sock)
        self.sock.bind(endpoint)
        # A bound tcp port 0 resolves to the real one.
        self.endpoint = self.sock.getsockopt_string(zmq.LAST_ENDPOINT)

    def publish(self, topic: str, type_name: str, body: Any, event_ns: int) -> int:
        seq = self._seq.get(topic, 0) + 1
        self._seq[topic] = seq
        payload = codec.encode_payload(
            type_name, body, src=self.service, session=self.session, seq=seq, event_ns=event_ns
        )
        if self.keep_prefixes and topic.startswith(self.keep_prefixes):
            # journalled before it is sent: a frame a subscriber saw is always in the outbox
            if self.outbox is not None:
                self.outbox.append(topic, payload, event_ns, self.kept)
            self.kept.append((topic, payload))
        # two sends, not send_multipart (its checks and flag arithmetic cost ~1.5 us a frame, 4x the
        # sends); copy=False only at or above pyzmq's copy_threshold: below it pyzmq copies anyway
        sock = self.sock
        sock.send(topic.encode(), _SNDMORE)
        sock.send(payload, 0, copy=len(payload) < sock.copy_threshold)
        self.frames_out += 1
        return seq

    def keep(self, prefixes: tuple[str, ...], max_frames: int) -> None:
        """Keep the newest ``max_frames`` frames of ``prefixes`` (bounded) for consumers that missed them."""
        self.keep_prefixes = tuple(prefixes)
        self.kept = deque(self.kept, maxlen=max_frames)

    def attach_outbox(self, outbox: Outbox) -> list[tuple[str, bytes]]:
        """Journal every kept frame to ``outbox`` from now on, after loading the previous sessions'
        frames from it into the replay ring (call after :meth:`keep`). Returns the loaded frames
        (oldest first), e.g. for a service restoring its own state from what it published."""
        loaded = [(t, p) for t, p in outbox.load() if t.startswith(self.keep_prefixes)]
        self.kept = deque([*loaded, *self.kept], maxlen=self.kept.maxlen)
        self.outbox = outbox
        return loaded

    def replay(self, prefixes: list[str] | None = None, after_event_ns: int = 0) -> list[tuple[str, bytes]]:
        """Kept frames (oldest first) whose topic starts with one of ``prefixes``, as sent."""
        pre = tuple(prefixes) if prefixes else self.keep_prefixes
        out = []
        for topic, payload in self.kept:
            if topic.startswith(pre):
                out.append((topic, payload))
        if after_event_ns:
            out = [(t, p) for t, p in out if codec.decode_frames([t.encode(), p]).event_ns > after_event_ns]
        return out

    def heartbeat(self, started_ns: int, state: ServiceState = "running", detail: str = "", stats=None,
                  flags=None) -> None:

        now = time.time_ns()
        hb = Heartbeat(
            service=self.service,
            session=self.session,
            pid=os.getpid(),
            started_ns=started_ns,
            ts=now,
            frames_out=self.frames_out,
            state=state,
            detail=detail,
            stats=stats or {},
            flags=flags or {},
        )
        self.publish(HEARTBEAT_PREFIX + self.service, "heartbeat", hb, now)

    def last_seq(self, topic: str) -> int:
        return self._seq.get(topic, 0)

    def close(self) -> None:
        self.sock.close()


@dataclass(slots=True)
class Peer:
    service: str
    session: str
    last_seen: float
    heartbeat: Heartbeat | None = None
    alive: bool = True


class SubscriberCore:
    """Sans-I/O subscriber logic: raw multipart in, validated :class:`Frame` out.

    Counts bad frames by reason, lost and duplicate frames by sequence, tracks peers
    from heartbeats.  Both the sync and asyncio subscribers wrap this.

    ``lazy_ticks``: ``ticks`` frames are accepted on their header alone, the body left as bytes
    (:func:`spx_common.codec.decode_frames`); whoever reads it validates it with ``frame.body()``.
    """

    def __init__(self, service: str, registry: Registry | None = None, peer_timeout_s: float = 3.0, *,
                 lazy_ticks: bool = False) -> None:
        self.service = service
        self.lazy_ticks = lazy_ticks
        self.metrics = registry or Registry()
        self.peer_timeout_s = peer_timeout_s
        self._last: OrderedDict[tuple[str, str], int] = OrderedDict()
        self.peers: dict[str, Peer] = {}
        self.bad = self.metrics.counter("bus_bad_frames_total", "Frames refused at ingress, by reason.", ["reason"])
        self.lost = self.metrics.counter("bus_frames_lost_total", "Frames missing by sequence gap, by publisher.", ["src"])
        self.dups = self.metrics.counter("bus_frames_duplicate_total", "Frames repeated or out of order.", ["src"])
        self.frames_in = self.metrics.counter("bus_frames_in_total", "Frames accepted.")
        self.restarts = self.metrics.counter("bus_peer_restarts_total", "Publisher restarts seen.", ["src"])
        self.last_error: FrameError | None = None
        self.on_peer_change: Callable[[Peer], None] | None = None

    def accept(self, parts: list[bytes]) -> Frame | None:
        """Return the frame, or None when it is refused (counted) or is a heartbeat (absorbed)."""
        try:
            frame = codec.decode_frames(parts, self.lazy_ticks)
        except FrameError as exc:
            self.bad.inc(reason=exc.reason)
            self.last_error = exc
            return None
        env = frame.env
        key = (env.session, frame.topic)
        last = self._last.get(key)
        if last is None:
            if len(self._last) >= MAX_TRACKED_STREAMS:
                self._last.popitem(last=False)
            self._last[key] = env.seq
        elif env.seq == last + 1:
            self._last[key] = env.seq
        elif env.seq > last + 1:
            self.lost.inc(env.seq - last - 1, src=env.src)
            self._last[key] = env.seq
        else:
            self.dups.inc(src=env.src)
            return None
        self.frames_in.inc()
        if frame.topic.startswith(HEARTBEAT_PREFIX):
            self._heartbeat(frame)
            return frame if self.pass_heartbeats else None
        return frame

    pass_heartbeats = False

    def _heartbeat(self, frame: Frame) -> None:
        try:
            hb: Heartbeat = frame.body()
        except FrameError as exc:
            self.bad.inc(reason=exc.reason)
            self.last_error = exc
            return
        now = time.monotonic()
        peer = self.peers.get(hb.service)
        if peer is None:
            peer = self.peers[hb.service] = Peer(hb.service, hb.session, now, hb)
            changed = True
        else:
            changed = not peer.alive
            if peer.session != hb.session:
                self.restarts.inc(src=hb.service)
                self._forget_session(peer.session)
                changed = True
            peer.session, peer.last_seen, peer.heartbeat, peer.alive = hb.session, now, hb, True
        if changed and self.on_peer_change:
            self.on_peer_change(peer)

    def _forget_session(self, session: str) -> None:
        for key in [k for k in self._last if k[0] == session]:
            del self._last[key]

    def check_peers(self) -> list[Peer]:
        """Mark peers silent for longer than the timeout as down; return those newly down."""
        now = time.monotonic()
        down = []
        for peer in self.peers.values():
            if peer.alive and now - peer.last_seen > self.peer_timeout_s:
                peer.alive = False
                down.append(peer)
                if self.on_peer_change:
                    self.on_peer_change(peer)
        return down

    def peer_alive(self, service: str) -> bool:
        peer = self.peers.get(service)
        return bool(peer and peer.alive and time.monotonic() - peer.last_seen <= self.peer_timeout_s)


def _sub_socket(ctx: zmq.Context, endpoints: list[str], prefixes: list[str], hwm: int, linger_ms: int,
                curve: CurveKeys | None = None, peers: list[str] | None = None):
    sock = ctx.socket(zmq.SUB)
    prep(sock, hwm, linger_ms)
    for prefix in {*prefixes, HEARTBEAT_PREFIX}:
        sock.setsockopt(zmq.SUBSCRIBE, prefix.encode())
    for i, ep in enumerate(endpoints):
        if curve is not None:
            if peers is None:
                raise ValueError("CURVE subscriptions need the peer name of every endpoint")
            curve.make_client(sock, peers[i])  # the server key applies to the next connect
        sock.connect(ep)
    return sock


class Subscriber:
    """Blocking subscriber for tools, tests and benchmarks (``spx tail``)."""

    def __init__(
        self,
        ctx: zmq.Context,
        endpoints: list[str],
        prefixes: list[str],
        *,
        service: str = "client",
        hwm: int = 500_000,
        linger_ms: int = 0,
        registry: Registry | None = None,
        heartbeats: bool = False,
        curve: CurveKeys | None = None,
        peers: list[str] | None = None,
    ) -> None:
        self.core = SubscriberCore(service, registry)
        self.core.pass_heartbeats = heartbeats
        self.sock = _sub_socket(ctx, endpoints, prefixes, hwm, linger_ms, curve, peers)

    def recv(self, timeout_s: float) -> Frame | None:
        """Next accepted frame, or None when ``timeout_s`` passes without one."""
        deadline = time.monotonic() + timeout_s
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not self.sock.poll(int(remaining * 1000) + 1):
                return None
            frame = self.core.accept(self.sock.recv_multipart())
            if frame is not None:
                return frame

    def close(self) -> None:
        self.sock.close(0)


class AsyncSubscriber:
    """asyncio subscriber: ``await next_batch()`` returns up to ``max_batch`` accepted frames.

    After one awaited poll it drains what is already queued without yielding to the
    loop per frame; this is what lets a Python process sustain ~10^6 ticks/s batched.
    """

    def __init__(
        self,
        actx: zmq.asyncio.Context,
        endpoints: list[str],
        prefixes: list[str],
        core: SubscriberCore,
        *,
        hwm: int = 500_000,
        linger_ms: int = 0,
        max_batch: int = 1000,
        curve: CurveKeys | None = None,
        peers: list[str] | None = None,
    ) -> None:
        self.core = core
        self.asock = _sub_socket(actx, endpoints, prefixes, hwm, linger_ms, curve, peers)
        self.sync: zmq.Socket[bytes] = zmq.Socket.shadow(self.asock.underlying)
        self.max_batch = max_batch

    def subscribe(self, prefix: str) -> None:
        self.asock.setsockopt(zmq.SUBSCRIBE, prefix.encode())

    def connect(self, endpoint: str) -> None:
        self.asock.connect(endpoint)

    #: monotonic time the receive queue was last seen empty: a publisher with nothing received before it
    #: had nothing queued for us (an aligned consumer tells a silent publisher from a lagging queue by it)
    drained_at: float = 0.0

    async def next_batch(self, timeout_s: float = 1.0) -> list[Frame]:
        if not await self.asock.poll(int(timeout_s * 1000), zmq.POLLIN):
            self.drained_at = time.monotonic()
            return []
        out: list[Frame] = []
        accept, recv = self.core.accept, self.sync.recv_multipart
        for _ in range(self.max_batch):
            try:
                parts = recv(zmq.NOBLOCK)
            except zmq.Again:
                self.drained_at = time.monotonic()
                break
            frame = accept(parts)
            if frame is not None:
                out.append(frame)
        return out

    def close(self) -> None:
        self.asock.close(0)
