"""Bus helpers: PUB/SUB with loss detection and heartbeats, REQ/REP that never wedges.

Topology: every service binds one PUB socket and one ROUTER (request) socket at the
endpoints :class:`~spx_common.config.BusConfig` derives from its name; subscribers
connect to the publishers they need. No central broker, so each process fails alone.

Loss: ZeroMQ drops silently past a high-water mark. We set the mark deliberately
(``[bus] hwm``) and number every frame per (publisher session, topic), so a subscriber
counts every lost frame (``bus_frames_lost_total``) and every duplicate; a publisher
restart is seen as a new ``session`` and resets the numbering without a false alarm.

Liveness: every publisher sends a :class:`~spx_common.models.Heartbeat` on
``hb.<service>`` each second; subscribers always listen to ``hb.`` and report a peer
down after ``peer_timeout_s`` (3 s by default).

Outbox: a publisher of records that must not be lost (transitions, orders, fills) appends each
kept frame to a local journal (:class:`Outbox`) *before* sending it, and reloads the journal's
tail into its replay ring at start, so a consumer that missed frames (the recorder, dead at the
same moment) fetches them from the next session.

Requests: the client is the ZeroMQ guide's "lazy pirate": a REQ socket with a
timeout; after a missed reply the socket is closed with LINGER 0 and replaced, and
the request is retried a bounded number of times, so a dead server can never wedge it.
Every reply is a :class:`~spx_common.models.Reply`; failures carry one error shape.
"""

from __future__ import annotations

from collections import deque

import asyncio
import logging
import os
import time
import uuid
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from collections.abc import Awaitable, Callable

import msgspec
import zmq
import zmq.asyncio

from spx_common import codec, recordlog
from spx_common.codec import Frame, FrameError
from spx_common.curve import CurveKeys
from spx_common.metrics import Registry
from spx_common.models import ErrorInfo, Heartbeat, Reply

log = logging.getLogger("spx.bus")

HEARTBEAT_PREFIX = "hb."
MAX_TRACKED_STREAMS = 100_000
_SNDMORE = int(zmq.SNDMORE)


def new_session() -> str:
    return uuid.uuid4().hex[:12]


def _prep(sock: zmq.Socket, hwm: int, linger_ms: int) -> None:
    sock.setsockopt(zmq.LINGER, linger_ms)
    sock.setsockopt(zmq.SNDHWM, hwm)
    sock.setsockopt(zmq.RCVHWM, hwm)


def _ensure_ipc_dir(endpoint: str) -> None:
    if endpoint.startswith("ipc://"):
        from pathlib import Path

        Path(endpoint[6:]).parent.mkdir(parents=True, exist_ok=True)


# ----------------------------------------------------------------------------- publish


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
        _ensure_ipc_dir(endpoint)
        self.sock = ctx.socket(zmq.PUB)
        _prep(self.sock, hwm, linger_ms)
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

    def heartbeat(self, started_ns: int, state: str = "running", detail: str = "", stats=None, flags=None) -> None:

        now = time.time_ns()
        hb = Heartbeat(
            service=self.service,
            session=self.session,
            pid=os.getpid(),
            started_ns=started_ns,
            ts=now,
            frames_out=self.frames_out,
            state=state,  # type: ignore[arg-type]
            detail=detail,
            stats=stats or {},
            flags=flags or {},
        )
        self.publish(HEARTBEAT_PREFIX + self.service, "heartbeat", hb, now)

    def last_seq(self, topic: str) -> int:
        return self._seq.get(topic, 0)

    def close(self) -> None:
        self.sock.close()


# ----------------------------------------------------------------------------- outbox

#: framing bytes of an outbox record: the record log's head and the topic length
_REC_HEAD = recordlog.CURRENT.head_size + 2


class Outbox:
    """A bounded, append-only local journal of the frames a publisher keeps for replay.

    Each kept frame is appended (one ``write(2)`` on an ``O_APPEND`` descriptor) before it is
    sent, so a SIGKILL right after the send cannot lose it: the bytes are in the kernel's page
    cache and reach the file whatever happens to the process. (A kernel crash or power loss can
    lose the unsynced tail; ``fsync=True`` closes that too, at the price of one disk flush per
    record.) At start :meth:`load` reads the previous sessions' frames back (the publisher puts
    them into its replay ring, so a consumer's catch-up fetches them) and rewrites the file
    without a torn or corrupt tail (a file of the framing before :mod:`spx_common.recordlog` is
    read and rewritten in the current one: the migration happens once, at the first start).

    A :mod:`~spx_common.recordlog` file; each record ``<u16 topic length><topic><payload>`` (the
    payload exactly as published). Bounds: the file never grows past ``max_bytes``; when it would,
    it is compacted to the newest kept frames that fit in half of it (written to a temporary file,
    then renamed over, so a kill during compaction leaves the old file whole; a failed compaction
    is retried after ``RETRY_S``, not on every frame); frames older than ``max_age_ns`` of *event
    time* behind the newest one are dropped at load. Failures to write are counted and logged,
    never raised: the frame is still sent (the live path to the recorder is untouched; only the
    crash guarantee is lost, visibly).
    """

    RETRY_S = 10.0

    def __init__(self, path: Path, *, max_bytes: int = 32 << 20, max_age_ns: int = 86_400 * 10**9,
                 fsync: bool = False, registry: Registry | None = None) -> None:
        self.path = Path(path)
        self.max_bytes = max_bytes
        self.max_age_ns = max_age_ns
        self.fsync = fsync
        self.newest_ns = 0
        self._log = recordlog.RecordWriter(self.path, fsync=fsync)
        #: why the last write failed, until one succeeds again (the owner reports itself degraded)
        self.fault: str | None = None
        metrics = registry or Registry()
        self.m_written = metrics.counter("outbox_frames_written_total", "Kept frames journalled before sending.")
        self.m_errors = metrics.counter("outbox_write_errors_total",
                                        "Outbox writes, opens or compactions that failed (frames are sent anyway).")
        self.m_loaded = metrics.counter("outbox_frames_loaded_total",
                                        "Frames of previous sessions reloaded into the replay ring at start.")
        self.m_refused = metrics.counter("outbox_frames_refused_total",
                                         "Journal records refused at load, by reason.", ["reason"])
        self.m_compactions = metrics.counter("outbox_compactions_total", "Journal rewrites to stay within bounds.")
        self.m_bytes = metrics.gauge("outbox_bytes", "Size of the outbox journal.")

    @property
    def size(self) -> int:
        return self._log.size

    # ---------------------------------------------------------------- read
    def load(self) -> list[tuple[str, bytes]]:
        """The valid frames of the journal, oldest first (bounded by age and size), after which the
        file holds exactly those; opens the journal for appending."""
        frames: list[tuple[str, bytes, int]] = []
        stats = recordlog.ScanStats()
        try:
            records = list(recordlog.iter_file(self.path, recordlog.LEGACY_OUTBOX, stats))
        except OSError as exc:  # left as it is (not rewritten): appending goes on if it can
            log.error("outbox %s unreadable (%r): nothing reloaded", self.path, exc)
            self.m_refused.inc(reason="unreadable")
            try:
                self._log.open()
            except (OSError, recordlog.LegacyFile) as exc2:
                self._failed(exc2)
            return []
        if stats.corrupt:
            self.m_refused.inc(stats.corrupt, reason="crc")  # contents damaged: that record skipped
        if stats.torn:
            self.m_refused.inc(stats.torn, reason="torn")  # a record cut short: the end of what was written
        for rec in records:
            tlen = int.from_bytes(rec[:2], "little")
            if len(rec) < 2 + tlen:
                self.m_refused.inc(reason="torn")
                continue
            payload = rec[2 + tlen:]
            try:
                frame = codec.decode_frames([rec[2:2 + tlen], payload])
            except FrameError as exc:
                self.m_refused.inc(reason=exc.reason)
                continue
            frames.append((frame.topic, payload, frame.env.event_ns))
        if frames:
            self.newest_ns = max(ns for _, _, ns in frames)
        kept = self._bounded(frames)
        self.m_loaded.inc(len(kept))
        self._rewrite(kept)
        return [(t, p) for t, p, _ in kept]

    def _bounded(self, frames: list[tuple[str, bytes, int]]) -> list[tuple[str, bytes, int]]:
        """The newest frames within the age bound whose records fit in half of ``max_bytes``."""
        floor = self.newest_ns - self.max_age_ns
        budget, out = self.max_bytes // 2, []
        for t, p, ns in reversed(frames):
            if ns < floor:
                continue
            n = _REC_HEAD + len(t.encode()) + len(p)
            if n > budget:
                break  # a contiguous newest tail: every later frame of a record's history stays
            budget -= n
            out.append((t, p, ns))
        return out[::-1]

    # ---------------------------------------------------------------- write
    @staticmethod
    def _record(topic: str, payload: bytes) -> bytes:
        tb = topic.encode()
        return len(tb).to_bytes(2, "little") + tb + payload

    def append(self, topic: str, payload: bytes, event_ns: int, ring=None) -> None:
        """Journal one frame (before it is sent). ``ring`` (the publisher's kept frames, this one
        not yet among them) is what a compaction keeps when the file reaches ``max_bytes``."""
        rec = self._record(topic, payload)
        if event_ns > self.newest_ns:
            self.newest_ns = event_ns
        try:
            if not self._log.is_open:
                self._log.open()
            if (self.size + len(rec) + _REC_HEAD - 2 > self.max_bytes
                    and time.monotonic() >= self._compact_retry_at):
                self.compact(list(ring or ()))
            self._log.append([rec])
        except (OSError, recordlog.LegacyFile) as exc:
            self._failed(exc)
            return
        self.fault = None
        self.m_written.inc()
        self.m_bytes.set(self.size)

    def compact(self, ring: list[tuple[str, bytes]]) -> None:
        """Rewrite the journal as the newest of ``ring`` that fit in half of ``max_bytes`` (atomic
        rename). The age bound is left to the next :meth:`load` (no frame is decoded here)."""
        if self._rewrite(self._bounded([(t, p, self.newest_ns) for t, p in ring])):
            self.m_compactions.inc()
        else:
            self._compact_retry_at = time.monotonic() + self.RETRY_S
            if not self._log.is_open:
                self._log.open()  # keep appending to the old journal meanwhile

    _compact_retry_at = 0.0

    def _rewrite(self, frames: list[tuple[str, bytes, int]]) -> bool:
        self.close()
        try:
            recordlog.rewrite(self.path, (self._record(t, p) for t, p, _ in frames), fsync=self.fsync)
            self._log.open(check=False)
        except OSError as exc:
            self._failed(exc)
            return False
        finally:
            self.m_bytes.set(self.size)
        return True

    _last_error_log = 0.0

    def _failed(self, exc: Exception) -> None:
        self.m_errors.inc()
        self.fault = f"outbox {self.path.name} not written: {getattr(exc, 'strerror', None) or exc}"
        now = time.monotonic()
        if now - self._last_error_log > 10:
            self._last_error_log = now
            log.error("outbox %s not written (%r): frames are still sent, but not kept across a crash",
                      self.path, exc)
        self.close()

    def close(self) -> None:
        try:
            self._log.close()
        except OSError:
            pass


# ----------------------------------------------------------------------------- subscribe


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
    _prep(sock, hwm, linger_ms)
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
        self.sync = zmq.Socket.shadow(self.asock.underlying)
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


# ----------------------------------------------------------------------------- request / reply


class RpcError(RuntimeError):
    """A request that failed: ``code`` is one of bad_request, unknown_method, refused,
    internal, timeout, unavailable."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


class RpcTimeout(RpcError):
    def __init__(self, endpoint: str, method: str, attempts: int, timeout_s: float) -> None:
        super().__init__(
            "timeout", f"no reply from {endpoint} to {method!r} after {attempts} attempt(s) of {timeout_s:.1f}s"
        )


_REPLY_DECODER = msgspec.msgpack.Decoder(Reply)


def _encode_request(method: str, params: Any) -> list[bytes]:
    payload = codec.encode_payload("doc", params or {}, src="rpc", session="-", seq=0, event_ns=0)
    return [method.encode(), payload]


def _decode_reply(parts: list[bytes]) -> Any:
    try:
        frame = codec.decode_frames(parts)
        reply: Reply = frame.body()
    except FrameError as exc:
        raise RpcError("bad_reply", str(exc)) from exc
    if not reply.ok:
        err = reply.error or ErrorInfo(code="internal", message="error without detail")
        raise RpcError(err.code, err.message)
    return reply.result


class RpcClient:
    """Blocking lazy-pirate client. One outstanding request at a time."""

    def __init__(self, ctx: zmq.Context, endpoint: str, *, timeout_s: float = 2.0, retries: int = 2,
                 curve: CurveKeys | None = None, peer: str = "") -> None:
        self.ctx, self.endpoint, self.timeout_s, self.retries = ctx, endpoint, timeout_s, retries
        self.curve, self.peer = curve, peer
        self.sock: zmq.Socket | None = None

    def _socket(self) -> zmq.Socket:
        if self.sock is None:
            self.sock = self.ctx.socket(zmq.REQ)
            self.sock.setsockopt(zmq.LINGER, 0)
            if self.curve is not None:
                self.curve.make_client(self.sock, self.peer)
            self.sock.connect(self.endpoint)
        return self.sock

    def _reset(self) -> None:
        if self.sock is not None:
            self.sock.close(0)
            self.sock = None

    def call(self, method: str, params: Any = None, *, timeout_s: float | None = None, retries: int | None = None):
        timeout = self.timeout_s if timeout_s is None else timeout_s
        attempts = 1 + (self.retries if retries is None else retries)
        request = _encode_request(method, params)
        for _ in range(attempts):
            sock = self._socket()
            sock.send_multipart(request)
            if sock.poll(int(timeout * 1000)):
                return _decode_reply(sock.recv_multipart())
            self._reset()
        raise RpcTimeout(self.endpoint, method, attempts, timeout)

    def close(self) -> None:
        self._reset()


def call_once(ctx: zmq.Context, endpoint: str, method: str, params: Any = None, *, timeout_s: float = 1.0) -> Any:
    """One request, no retry, on a socket closed after it: the answer, or None when there was none or it was
    an error (probes of tools, benchmarks and tests that poll a service until it answers)."""
    rpc = RpcClient(ctx, endpoint, timeout_s=timeout_s, retries=0)
    try:
        return rpc.call(method, params or {})
    except RpcError:
        return None
    finally:
        rpc.close()


class AsyncRpcClient:
    """asyncio lazy-pirate client; concurrent callers are serialized by a lock."""

    def __init__(
        self, actx: zmq.asyncio.Context, endpoint: str, *, timeout_s: float = 2.0, retries: int = 2,
        curve: CurveKeys | None = None, peer: str = "",
    ) -> None:
        self.actx, self.endpoint, self.timeout_s, self.retries = actx, endpoint, timeout_s, retries
        self.curve, self.peer = curve, peer
        self.sock: zmq.asyncio.Socket | None = None
        self._lock = asyncio.Lock()

    def _socket(self) -> zmq.asyncio.Socket:
        if self.sock is None:
            self.sock = self.actx.socket(zmq.REQ)
            self.sock.setsockopt(zmq.LINGER, 0)
            if self.curve is not None:
                self.curve.make_client(self.sock, self.peer)
            self.sock.connect(self.endpoint)
        return self.sock

    def _reset(self) -> None:
        if self.sock is not None:
            self.sock.close(0)
            self.sock = None

    async def call(self, method: str, params: Any = None, *, timeout_s: float | None = None, retries: int | None = None):
        timeout = self.timeout_s if timeout_s is None else timeout_s
        attempts = 1 + (self.retries if retries is None else retries)
        request = _encode_request(method, params)
        async with self._lock:
            for _ in range(attempts):
                sock = self._socket()
                await sock.send_multipart(request)
                if await sock.poll(int(timeout * 1000), zmq.POLLIN):
                    return _decode_reply(await sock.recv_multipart())
                self._reset()
        raise RpcTimeout(self.endpoint, method, attempts, timeout)

    def close(self) -> None:
        self._reset()


Handler = Callable[[dict], Any] | Callable[[dict], Awaitable[Any]]


class RpcServer:
    """ROUTER socket dispatching ``method -> handler(params)``; every failure becomes a coded reply.

    Handlers receive the request's params (a dict) and return builtins or Structs.  They
    raise :class:`RpcError` for an expected refusal (its code is kept); any other
    exception is answered as ``internal`` and counted, and the loop goes on.

    Requests are answered one at a time, in order, except those of methods registered
    ``concurrent=True`` (slow work such as a vendor call): each runs as its own task, so the loop
    goes on answering ``ping``/``status`` meanwhile. At most ``max_concurrent`` of them run at
    once, and ``per_caller`` per client socket; past either bound a request is answered ``busy``
    at once (``rpc_busy_total``).
    """

    def __init__(
        self, actx: zmq.asyncio.Context, endpoint: str, *, registry: Registry | None = None, linger_ms: int = 200,
        curve: CurveKeys | None = None, max_concurrent: int = 8, per_caller: int = 2,
    ) -> None:
        _ensure_ipc_dir(endpoint)
        self.sock = actx.socket(zmq.ROUTER)
        self.sock.setsockopt(zmq.LINGER, linger_ms)
        if curve is not None:
            curve.make_server(self.sock)
        self.sock.bind(endpoint)
        self.endpoint = self.sock.getsockopt_string(zmq.LAST_ENDPOINT)
        self.handlers: dict[str, Handler] = {}
        self.metrics = registry or Registry()
        self.requests = self.metrics.counter("rpc_requests_total", "Requests answered, by method and outcome.",
                                             ["method", "outcome"])
        self.latency = self.metrics.histogram("rpc_latency_ms", "Request handling time.", ["method"])
        self.busy = self.metrics.counter("rpc_busy_total", "Requests of concurrent methods refused at once "
                                         "(max_concurrent in flight, or per_caller for one client), by method.",
                                         ["method"])
        self.concurrent: set[str] = set()
        self.max_concurrent, self.per_caller = max_concurrent, per_caller
        self._inflight: dict[bytes, int] = {}
        self._running: set[asyncio.Task] = set()
        self._replies: set[asyncio.Future] = set()

    def register(self, method: str, handler: Handler, *, concurrent: bool = False) -> None:
        self.handlers[method] = handler
        if concurrent:
            self.concurrent.add(method)

    async def handle(self, parts: list[bytes]) -> list[bytes]:
        """Answer one request (ROUTER framing ``[id, b'', method, payload]``)."""
        if len(parts) < 4:
            return parts[:1] + [b"", b"reply", self._encode_reply(False, None, "bad_request", "malformed request")]
        ident, method_b, payload = parts[0], parts[-2], parts[-1]
        method = method_b.decode(errors="replace")
        start = time.perf_counter()
        outcome = "ok"
        try:
            handler = self.handlers.get(method)
            if handler is None:
                raise RpcError("unknown_method", f"no method {method!r}; known: {sorted(self.handlers)}")
            try:
                params = codec.decode_frames([method_b, payload]).body()
            except FrameError as exc:
                raise RpcError("bad_request", str(exc)) from exc
            if not isinstance(params, dict):
                raise RpcError("bad_request", "params must be a map")
            result = handler(params)
            if asyncio.iscoroutine(result):
                result = await result
            out = self._encode_reply(True, result)
        except RpcError as exc:
            outcome = exc.code
            out = self._encode_reply(False, None, exc.code, exc.message)
        except Exception as exc:  # the loop never dies on a handler bug
            outcome = "internal"
            log.exception("rpc handler failed", extra={"method": method})
            out = self._encode_reply(False, None, "internal", f"{type(exc).__name__}: {exc}")
        self.requests.inc(method=method if method in self.handlers else "?", outcome=outcome)
        self.latency.observe((time.perf_counter() - start) * 1000, method=method if method in self.handlers else "?")
        return [ident, b"", b"reply", out]

    @staticmethod
    def _encode_reply(ok: bool, result: Any, code: str = "", message: str = "") -> bytes:
        reply = Reply(ok=ok, result=result, error=None if ok else ErrorInfo(code=code, message=message))
        return codec.encode_payload("reply", reply, src="rpc", session="-", seq=0, event_ns=0)

    async def serve(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            if not await self.sock.poll(200, zmq.POLLIN):
                continue
            parts = await self.sock.recv_multipart()
            method = parts[-2].decode(errors="replace") if len(parts) >= 4 else ""
            if method in self.concurrent:
                self._start(parts, method)
                continue
            await self.sock.send_multipart(await self.handle(parts))
        for task in list(self._running):
            task.cancel()

    def _start(self, parts: list[bytes], method: str) -> None:
        ident = parts[0]
        if len(self._running) >= self.max_concurrent or self._inflight.get(ident, 0) >= self.per_caller:
            self.busy.inc(method=method)
            self.requests.inc(method=method, outcome="busy")
            why = (f"{len(self._running)} requests of this kind running (at most {self.max_concurrent})"
                   if len(self._running) >= self.max_concurrent else
                   f"at most {self.per_caller} at once per caller")
            reply = [ident, b"", b"reply", self._encode_reply(False, None, "busy", f"{method}: {why}; try again")]
            send = asyncio.ensure_future(self.sock.send_multipart(reply))
            self._replies.add(send)  # held until sent: the loop keeps only a weak reference to a task
            send.add_done_callback(self._replies.discard)
            return
        self._inflight[ident] = self._inflight.get(ident, 0) + 1
        task = asyncio.ensure_future(self._answer(parts, ident))
        self._running.add(task)
        task.add_done_callback(self._running.discard)

    async def _answer(self, parts: list[bytes], ident: bytes) -> None:
        try:
            await self.sock.send_multipart(await self.handle(parts))
        except zmq.ZMQError as exc:  # the socket closed while the handler ran (shutdown)
            log.debug("reply not sent: %r", exc)
        finally:
            left = self._inflight.pop(ident, 1) - 1
            if left > 0:
                self._inflight[ident] = left

    def close(self) -> None:
        for task in list(self._running):
            task.cancel()
        self.sock.close()
