"""``BusService``: what every process of the mesh gets for free.

A service subclasses :class:`BusService`, names itself, says which publishers and
topic prefixes it consumes, and registers handlers::

    class Aggregator(BusService):
        name = "aggregator"
        subscriptions = {"feed": ["tick."]}

        def setup(self):
            self.on("tick.", self.handle_ticks)
            self.rpc("last_tick", self.last_tick)

The base gives every process the same behaviour:

* a PUB socket with per-topic sequence numbers and a heartbeat every second;
* a SUB socket that validates every frame (bad ones are counted by reason, written to a
  bounded dead-letter file and skipped), detects loss by sequence gap and tracks peers; a
  service that reads ``ticks`` bodies as bytes (``lazy_ticks``, ``on(..., raw=True)``) validates
  them itself and hands a bad one to :meth:`BusService.refuse`, which counts it the same way;
* a ROUTER socket answering requests, with built-in ``ping``, ``status`` and ``metrics``;
* per-handler time budget (slow handlers are counted and logged) and exception isolation;
* event-time alignment of several input streams (``aligned``): frames of those topics are held until
  every publisher they come from has a watermark past them, then handled in event-time order
  (:mod:`spx_common.align`; the publishers' ``wm.<instance>`` frames, :meth:`BusService.publish_watermark`);
* structured JSON logs, a metrics registry, optional ``/metrics`` over HTTP;
* SIGTERM/SIGINT: stop taking input, run ``drain()``, close sockets with a bounded linger, exit 0.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import signal
import time
from pathlib import Path
from typing import Any, ClassVar
from collections.abc import Awaitable, Callable

import msgspec
import zmq
import zmq.asyncio

from spx_common import codec, health, logs, recordlog
from spx_common.align import FINAL_NS, Aligner
from spx_common.models import bar_end_ns
from pydantic import Field
import sys
import argparse
import msgpack

from spx_common.bus import AsyncRpcClient, AsyncSubscriber, Outbox, Publisher, RpcError, RpcServer, SubscriberCore
from spx_common.codec import Frame, FrameError
from spx_common.config import BusConfig, ConfigError, PROJECT_DIR, RuntimeConfig, Section, load
from spx_common.curve import CurveKeys
from spx_common.flags import FlagStore
from spx_common.metrics import Registry, serve_http
from spx_common.models import Watermark
from spx_common.topics import WATERMARK, watermark_topic

FrameHandler = Callable[[Frame, Any], Any]


class OutboxConfig(Section):
    """Outbox journal of the services that keep records for replay (detector, selector, broker; docs/reliability.md)."""

    # <run_dir>/outbox/<instance>.bin: each kept frame is journalled before it is sent and reloaded
    # into the replay ring at start, so the recorder's catch-up gets what it had not written when
    # both processes died together, and the detector restores its setups from what it published.
    section: ClassVar[str] = "outbox"

    enabled: bool = Field(True, description="Journal kept frames before sending them and reload them at start. "
                          "Off: a record the recorder had not written when it died with its publisher is lost.")
    max_bytes: int = Field(32 << 20, ge=1 << 16, description="Journal size bound in bytes; past it the journal is "
                           "rewritten with the newest kept frames that fit in half of it.")
    max_age_s: float = Field(86_400.0, gt=0, description="Frames older than this (event time) behind the newest "
                             "journalled frame are dropped when the journal is loaded at start.")
    fsync: bool = Field(False, description="Also fsync every record: survives a kernel crash or power loss, not only "
                        "a killed process, at the price of one disk flush per transition, order or fill.")


#: the mode every file the mesh writes gets (umask 077): the database, journals, outboxes, logs and dead
#: letters hold users' orders, fills and positions; no other local account reads them
FILE_UMASK = 0o077


def secure_run_dir(runtime: RuntimeConfig) -> Path:
    """Set the process umask to 077 (files 0600, directories 0700 from now on) and make the run
    directory 0700. Called at every process start (services, ``spx``, ``spx up``)."""
    os.umask(FILE_UMASK)
    run_dir = runtime.path()
    run_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    try:
        if run_dir.stat().st_mode & 0o077:
            run_dir.chmod(0o700)
    except PermissionError:  # someone else's directory: the files inside are still 0600
        pass
    return run_dir


class DeadLetters:
    """Append refused frames to ``run/deadletter/<service>.msgpack``, bounded by size (one rotation, to
    ``<service>.1.msgpack``).

    A :mod:`~spx_common.recordlog` file; each record the msgpack of ``[ns, reason, detail, parts]``
    (:func:`read_dead_letters`). A file of the earlier format (the msgpack documents one after another) is
    rewritten once in the record log's framing when the service starts."""

    def __init__(self, path: Path, max_bytes: int = 5_000_000) -> None:
        self.path = path
        self.rotated = path.with_suffix(".1.msgpack")
        self.max_bytes = max_bytes
        self.count = 0
        path.parent.mkdir(parents=True, exist_ok=True)
        self._log = recordlog.RecordWriter(path)
        for p in (self.path, self.rotated):
            try:
                _migrate_dead_letters(p)
            except OSError:
                logging.getLogger("spx.deadletter").exception("cannot migrate dead letters %s", p)

    def write(self, reason: str, parts: list[bytes], detail: str = "") -> None:
        self.count += 1
        try:
            if self._log.size > self.max_bytes or (not self._log.is_open and self.path.exists()
                                                   and self.path.stat().st_size > self.max_bytes):
                self._log.close()
                self.path.replace(self.rotated)
            self._log.append([msgspec.msgpack.encode([time.time_ns(), reason, detail[:500],
                                                      [p[:65536] for p in parts]])])
        except (OSError, recordlog.LegacyFile):
            logging.getLogger("spx.deadletter").exception("cannot write dead letter")
            self._log.close()

    def close(self) -> None:
        self._log.close()


def _migrate_dead_letters(path: Path) -> None:
    if not recordlog.is_legacy(path):
        return
    letters = [msgspec.msgpack.encode(doc) for doc in _legacy_letters(path)]
    recordlog.rewrite(path, letters)


def _legacy_letters(path: Path) -> list[Any]:
    """The documents of a dead-letter file of the earlier format (bounded: at most ``max_bytes`` and one
    letter); a torn or damaged tail ends the read."""

    out = []
    with path.open("rb") as fh:
        try:
            for doc in msgpack.Unpacker(fh, raw=False, strict_map_key=False, max_buffer_size=64 << 20):
                out.append(doc)
        except (ValueError, msgpack.UnpackException):
            pass
    return out


def read_dead_letters(path: Path | str) -> list[list[Any]]:
    """The letters of a dead-letter file, oldest first: ``[ns, reason, detail, parts]`` each (either format)."""
    path = Path(path)
    if recordlog.is_legacy(path):
        return [list(doc) for doc in _legacy_letters(path)]
    return [msgspec.msgpack.decode(rec) for rec in recordlog.iter_file(path)]


class BusService:
    """Base class of every mesh process (see module docstring)."""

    name: str = "service"
    #: publisher service name -> topic prefixes to subscribe to
    subscriptions: dict[str, list[str]] = {}
    #: handlers slower than this are counted in ``handler_slow_total`` and logged
    handler_budget_ms: float = 50.0
    #: topic prefixes whose newest ``replay_keep`` frames are kept for the ``replay`` request, so a
    #: consumer that restarted or saw a sequence gap can fetch what it missed (records that must not
    #: be lost: transitions, orders, fills); bounded memory
    replayable: tuple[str, ...] = ()
    replay_keep: int = 20_000
    #: ``ticks`` frames are accepted on their header alone, the body left as bytes for raw handlers
    #: (``on(..., raw=True)``) that read it themselves (:class:`~spx_common.bus.SubscriberCore`)
    lazy_ticks: bool = False
    #: outbox settings (default: the ``[outbox]`` section); frames of previous sessions loaded from it
    outbox_config: OutboxConfig | None = None
    outbox_frames: list[tuple[str, bytes]] = []
    #: topic prefixes handled in event-time order across the publishers they come from (docs/protocol.md,
    #: "Event-time alignment"): each frame's body is split into items by :meth:`align_items`, held by an
    #: :class:`~spx_common.align.Aligner` until every such publisher's watermark passed them, then handled
    #: in ``(key, order, publisher, arrival)`` order. Off with ``[bus] align = false``.
    aligned: tuple[str, ...] = ()
    #: this process publishes watermarks (``wm.<instance>``): it announces one at start-up, so aligned
    #: consumers wait for it from the first frame on, and repeats the newest on every heartbeat. With
    #: ``aligned`` too it is a *relay* (docs/protocol.md): its watermark is its aligner's frontier, and
    #: every frame it publishes carries an event time at or after the key of the item being handled
    #: (outside a handler: at or after its own watermark), so the promise holds by construction
    watermarks: bool = False

    def __init__(
        self,
        runtime: RuntimeConfig | None = None,
        bus: BusConfig | None = None,
        *,
        instance: str | None = None,
    ) -> None:
        self.runtime = runtime or load(RuntimeConfig)
        self.bus = bus or load(BusConfig)
        self.instance = instance or self.name
        self.log = logging.getLogger(f"spx.{self.instance}")
        self.insecure_bus = self.bus.check_transport_security()  # ConfigError: unauthenticated tcp refused
        self.metrics = Registry()
        self.started_ns = time.time_ns()
        self.ctx = zmq.Context()
        self.actx = zmq.asyncio.Context.shadow(self.ctx)
        self.stop_event = asyncio.Event()
        self.state = "starting"
        self.detail = ""
        self._handlers: list[tuple[str, FrameHandler, bool]] = []
        self._tasks: list[asyncio.Task] = []
        self._rate_log = logs.RateLimitedLog(self.log)
        self.core = SubscriberCore(self.instance, self.metrics, self.bus.peer_timeout_s, lazy_ticks=self.lazy_ticks)
        self.core.on_peer_change = self._peer_changed
        self.deadletters = DeadLetters(self.runtime.path("deadletter", f"{self.instance}.msgpack"))
        self.handler_errors = self.metrics.counter(
            "handler_errors_total", "Handler exceptions (frame skipped, service kept running).", ["topic"])
        self.handler_slow = self.metrics.counter("handler_slow_total", "Handler calls over the time budget.")
        self.handler_ms = self.metrics.histogram("handler_latency_ms", "Frame handler time.")
        self.gc_ms = self.metrics.histogram("gc_pause_ms", "Cyclic garbage-collector pauses (they stop the whole "
                                            "process: every queued frame waits), by generation.", ["generation"])
        self.flag_store = FlagStore(self.runtime.path("flags.json"))
        self.flag_store.reload()
        self.m_flags_invalid = self.metrics.gauge(
            "flags_invalid", "1 while the flags file is unreadable/invalid/missing: every switch at its safe "
            "value (kill switch ON).")
        self._flags_error: str | None = None
        self._note_flags_error()
        self.aligner: Aligner | None = None
        #: while True, aligned items are held (not released) whatever the watermarks (e.g. during a warm-up)
        self.align_hold = False
        self._wm_out: int | None = None
        #: the key of the aligned item being handled (:attr:`event_key`); a relay's floor for what it publishes
        self._item_key: int | None = None
        self._stream_seen: dict[str, float] = {}  # aligned: publisher -> monotonic time of its last frame
        self._stream_first: dict[str, float] = {}  # ... and of its first
        self._wm_idle = False  # a relay whose inputs send no watermark: it says so (Watermark.idle)
        if self.aligned and self.bus.align:
            self.aligner = Aligner(max_items=self.bus.align_max_items, max_bytes=self.bus.align_max_mb << 20,
                                   splitter=_split_held)
            m = self.metrics
            self.align_held = m.gauge("align_held_items", "Aligned input items held, waiting for watermarks.")
            self.align_late = m.counter("align_late_total", "Aligned items that arrived behind what was already "
                                        "released (handled at once, out of event-time order).")
            self.align_forced = m.counter("align_forced_total", "Aligned items released before the watermarks "
                                          "passed them (hold bounds reached).")
            self.align_wait = m.histogram("align_wait_ms", "Wall time an aligned item was held.")
            self._align_seen = (0, 0)
        self.pub: Publisher | None = None
        self.sub: AsyncSubscriber | None = None
        self.rpc_server: RpcServer | None = None
        self._clients: dict[str, AsyncRpcClient] = {}
        self.curve: CurveKeys | None = None

    # ------------------------------------------------------------------ API for subclasses

    def setup(self) -> None:
        """Register handlers (``on``/``rpc``) and build state. Called once before the loops."""

    async def main(self) -> None:
        """Extra long-running work (vendor connections, timers). Runs until stop; optional."""
        await self.stop_event.wait()

    def periodic(self) -> None:
        """Called about once per second (after the heartbeat): flush, rate stats, timeouts."""

    async def drain(self) -> None:
        """Called on shutdown before sockets close: flush queues and files (bounded by grace)."""

    def on_flags(self, changed: dict[str, Any]) -> None:
        """Called when rollout switches changed at runtime (``spx flags set``); override to react."""

    @property
    def flags(self) -> dict[str, Any]:
        """Current rollout switches (see spx_common/flags.py)."""
        return self.flag_store.snapshot()

    def _note_flags_error(self) -> None:
        err = self.flag_store.error
        if err != self._flags_error:
            self._flags_error = err
            self.m_flags_invalid.set(1.0 if err else 0.0)
            if err:
                self.log.critical("flags file not usable (%s): every switch at its safe value, kill switch ON", err)
            else:
                self.log.warning("flags file valid again: switches as written")

    def reload_flags(self) -> dict[str, Any]:
        changed = self.flag_store.reload()
        self._note_flags_error()
        if changed:
            self.log.info("flags changed", extra={"changed": changed})
            try:
                self.on_flags(changed)
            except Exception:
                self.log.exception("on_flags() failed")
        return changed

    def faults(self) -> list[str]:
        """Why this process cannot keep what it must keep now (a write that fails: disk full, read-only,
        database refusing), one short sentence each; none when healthy. While any is listed the
        heartbeat says ``degraded`` with them as its detail. Subclasses add their own to the base's."""
        out = []
        outbox = self.pub.outbox if self.pub is not None else None
        if outbox is not None and outbox.fault:
            out.append(outbox.fault)
        return out

    _fault_logged: tuple[str, ...] = ()

    def _faults(self) -> list[str]:
        try:
            faults = self.faults()
        except Exception as exc:  # the health report must not stop the heartbeat
            faults = [f"health check failed: {exc!r}"]
        if tuple(faults) != self._fault_logged:
            self._fault_logged = tuple(faults)
            if faults:
                self.log.error("degraded: %s", "; ".join(faults))
            else:
                self.log.warning("no longer degraded")
        return faults

    def on(self, prefix: str, handler: FrameHandler, raw: bool = False) -> None:
        """Call ``handler(frame, body)`` for accepted frames whose topic starts with ``prefix``.

        ``raw``: call ``handler(frame, None)`` without decoding the body; the handler reads it (``frame.body()``
        validates it, ``frame.raw_body()`` is its msgpack) and passes a body that fails validation to
        :meth:`refuse`, which counts it as every refused body is counted."""
        self._handlers.append((prefix, handler, raw))

    def rpc(self, method: str, handler: Callable[[dict], Any], *, concurrent: bool = False) -> None:
        """Answer ``method`` with ``handler``. ``concurrent``: a slow handler (a vendor call) runs as its own
        task, bounded, so ``ping``/``status`` are answered meanwhile (:class:`~spx_common.bus.RpcServer`)."""
        assert self.rpc_server is not None, "register RPC methods in setup()"
        self.rpc_server.register(method, handler, concurrent=concurrent)

    def publish(self, topic: str, type_name: str, body: Any, event_ns: int) -> int:
        assert self.pub is not None
        if self._relay:  # keep our watermark's promise (class docstring of ``watermarks``)
            floor = self._item_key if self._item_key is not None else self._wm_out
            if floor is not None and event_ns < floor:
                event_ns = floor
        return self.pub.publish(topic, type_name, body, event_ns)

    def align_items(self, frame: Frame, body: Any) -> list[tuple]:
        """Split an aligned frame into ``(key_ns, order, body_part)`` items; the handlers get each part as
        the frame's body. Default: the whole body, keyed by the envelope's ``event_ns``. An empty list
        drops the frame (e.g. data this process does not use). A 4th element, the event times of the
        part's events (non-decreasing), makes the item a run, cut where another stream's item falls
        between its events (:mod:`spx_common.align`, "Runs"): :func:`event_runs` builds them.

        Default, one rule for every consumer (the detector refines it): a tick frame's events in runs by
        their own times; a closed bar at its end (an open one is dropped: a bar is a fact once closed); any
        other frame at its envelope's ``event_ns``: what a relay publishes carries the event time at which
        it knew it (a setup formed at its bar's start is known at the bar's end)."""
        t = frame.type
        if t == "ticks":
            return [(first, (), run, times) for first, run, times in event_runs(body)]
        if t == "bar":
            return [(bar_end_ns(body), (), body)] if body.closed else []
        return [(frame.event_ns, (), body)]

    @property
    def event_key(self) -> int | None:
        """The event time of the aligned item being handled (None outside one, or not aligned)."""
        return self._item_key

    def event_time_passed(self, ns: int) -> None:
        """A relay: every aligned item before ``ns`` was handled and the watermark ``ns`` is about to go out;
        what is due in event time before ``ns`` (a session close) must be published now. Override."""

    def publish_watermark(self, ns: int) -> None:
        """Promise subscribers that every frame published from now on carries event times at or after
        ``ns`` (``wm.<instance>``, type ``watermark``). Only forward; repeated on every heartbeat."""
        if self._wm_out is not None and ns <= self._wm_out:
            return
        self._wm_out = ns
        self.publish(watermark_topic(self.instance), "watermark", Watermark(ns=ns), min(ns, FINAL_NS))

    def _replay_rpc(self, p: dict) -> dict:
        """``replay {prefixes?}``: the kept frames (topic, payload as published), oldest first."""
        prefixes = p.get("prefixes") if isinstance(p, dict) else None
        if prefixes is not None and (not isinstance(prefixes, list) or not all(isinstance(x, str) for x in prefixes)):
            raise RpcError("bad_request", "'prefixes' must be a list of topic prefixes")
        frames = self.pub.replay(prefixes)
        return {"session": self.pub.session, "frames": [[t, f] for t, f in frames]}

    def client(self, service: str, *, timeout_s: float | None = None, retries: int | None = None) -> AsyncRpcClient:
        """A lazy-pirate client to another service's request socket (cached per service)."""
        c = self._clients.get(service)
        if c is None:
            c = self._clients[service] = AsyncRpcClient(
                self.actx,
                self.bus.rep_endpoint(service, self.runtime),
                timeout_s=self.bus.rpc_timeout_s if timeout_s is None else timeout_s,
                retries=self.bus.rpc_retries if retries is None else retries,
                curve=self.curve,
                peer=service,
            )
        return c

    def spawn(self, coro: Awaitable[Any], name: str) -> asyncio.Task:
        """Start a named background task whose failure is logged and stops the service."""
        task = asyncio.ensure_future(coro)
        task.set_name(name)
        task.add_done_callback(self._task_done)
        self._tasks.append(task)
        return task

    def status(self) -> dict[str, Any]:
        """The ``status`` RPC answer; subclasses extend it."""
        return {
            "service": self.instance,
            "pid": os.getpid(),
            "session": self.pub.session if self.pub else None,
            "state": self.state,
            "faults": list(self._fault_logged),
            "detail": self.detail,
            "uptime_s": round((time.time_ns() - self.started_ns) / 1e9, 1),
            "peers": {p.service: p.alive for p in self.core.peers.values()},
            "bad_frames": self.core.bad.total(),
            "lost_frames": self.core.lost.total(),
            "dead_letters": self.deadletters.count,
            "flags": self.flags,
            "flags_error": self.flag_store.error,
            **({"align": self.align_status()} if self.aligner is not None else {}),
        }

    def align_status(self) -> dict[str, Any]:
        """The aligner's streams (watermark, idle), what it holds and what it counted."""
        al = self.aligner
        st = al.stats
        return {"streams": {n: {"watermark": s.watermark if s.watermark > -(1 << 63) else None, "idle": s.idle}
                            for n, s in al.streams.items()},
                "frontier": al.frontier, "held": st.held, "held_bytes": st.held_bytes, "released": st.released,
                "late": st.late, "forced": st.forced, "hold": self.align_hold}

    # ------------------------------------------------------------------ machinery

    def _task_done(self, task: asyncio.Task) -> None:
        if task.cancelled():
            return
        exc = task.exception()
        if exc is not None and not self.stop_event.is_set():
            self.log.error("task %s failed: %r; stopping so supervisord restarts us", task.get_name(), exc,
                           exc_info=exc)
            self.exit_code = 1
            self.stop_event.set()

    exit_code = 0

    def _peer_changed(self, peer) -> None:
        self.log.info("peer %s %s", peer.service, "up" if peer.alive else "DOWN",
                      extra={"peer": peer.service, "alive": peer.alive, "session": peer.session})

    def refuse(self, frame: Frame, exc: FrameError) -> None:
        """A frame whose body failed validation: counted in ``bus_bad_frames_total{reason}``, written to
        the dead letters, logged (rate-limited)."""
        topic = frame.topic
        self.core.bad.inc(reason=exc.reason)
        self.deadletters.write(exc.reason, [topic.encode(), frame.payload or msgspec.msgpack.encode(frame.env)],
                               str(exc))
        self._rate_log.warning(f"bad:{exc.reason}", f"refused frame on {topic}: {exc}", topic=topic)

    def dispatch(self, frame: Frame) -> None:
        """Route one accepted frame to its handlers with isolation and a time budget (an aligned frame
        to the aligner, a watermark frame to its stream)."""
        al = self.aligner
        if al is not None:
            topic = frame.topic
            now = self._stream_seen[frame.src] = time.monotonic()
            self._stream_first.setdefault(frame.src, now)
            if topic.startswith(WATERMARK):
                try:
                    wm = frame.body()
                except FrameError as exc:
                    self.refuse(frame, exc)
                    return
                if wm.idle:  # a relay without watermarked inputs: not waited for until it sends one
                    al.idle(frame.src)
                else:
                    al.watermark(frame.src, wm.ns, frame.session)
                return
            if topic.startswith(self.aligned):
                try:
                    body = frame.body()
                except FrameError as exc:
                    self.refuse(frame, exc)
                    return
                items = self.align_items(frame, body)
                if items:
                    nbytes = len(frame.payload) // len(items) + 64
                    now = time.perf_counter()
                    src = frame.src
                    for it in items:
                        key = it[0]
                        al.push(src, key, it[1], (frame, it[2], now, key), nbytes, it[3] if len(it) > 3 else None)
                return
        self._route_frame(frame)

    def release_aligned(self) -> int:
        """Handle the aligned items the watermarks now allow, in event-time order (a relay then sends its
        watermark on); returns how many."""
        al = self.aligner
        if al is None or self.align_hold:
            return 0
        if not len(al):
            if self._relay:
                self._relay_watermark(al)
            return 0
        out = al.release()
        if out:
            now = time.perf_counter()
            wait = self.align_wait
            try:
                for frame, part, t0, key in out:
                    wait.observe((now - t0) * 1000)
                    self._item_key = key
                    self._route_frame(frame, part, True)
            finally:
                self._item_key = None
        if self._relay:
            self._relay_watermark(al)
        st = al.stats
        late, forced = self._align_seen
        if st.late != late:
            self.align_late.inc(st.late - late)
        if st.forced != forced:
            self.align_forced.inc(st.forced - forced)
        self._align_seen = (st.late, st.forced)
        self.align_held.set(st.held)
        return len(out)

    def _relay_watermark(self, al: Aligner) -> None:
        """Send the aligner's frontier on as our watermark (everything before it was handled); idle when
        the publishers we heard for two heartbeats sent no watermark at all (nothing to promise)."""
        f = al.frontier
        if f > FINAL_NS:
            if not self._wm_idle and self._inputs_unaligned(al):
                self._wm_idle = True
                self._send_watermark()
            return
        if len(al) and al.held_min() < f:  # items still to handle (held by ``align_hold``)
            return
        if self._wm_idle:
            self._wm_idle = False
            self._send_watermark()
        if self._wm_out is None or f > self._wm_out:
            try:
                self.event_time_passed(f)
            except Exception:
                self.log.exception("event_time_passed(%d) failed", f)
            self.publish_watermark(f)

    def _inputs_unaligned(self, al: Aligner) -> bool:
        first = self._stream_first
        heard = [n for n in al.streams if n in first]
        return bool(heard) and all(al.streams[n].watermark == -(1 << 63) for n in heard) and \
            time.monotonic() - min(first[n] for n in heard) > 2 * self.bus.heartbeat_s

    def _send_watermark(self) -> None:
        ns = self._wm_out or 0
        self.publish(watermark_topic(self.instance), "watermark", Watermark(ns=ns, idle=self._wm_idle),
                     min(ns, FINAL_NS))

    def _align_idle(self) -> None:
        """Streams whose publisher went silent (``[bus] align_idle_s``) stop holding the others back."""
        al = self.aligner
        if al is None:
            return
        if self.sub is None:
            return
        drained = self.sub.drained_at
        seen = self._stream_seen
        for name, st in al.streams.items():
            if st.idle or st.watermark == -(1 << 63):
                continue
            peer = self.core.peers.get(name)
            last = max(seen.get(name, 0.0), peer.last_seen if peer is not None else 0.0)
            # nothing from it for align_idle_s before a moment our queue was empty: it is silent, not queued
            if drained - last > self.bus.align_idle_s:
                al.idle(name)  # back when it sends a watermark again

    def _route_frame(self, frame: Frame, part: Any = None, decoded: bool = False) -> None:
        topic = frame.topic
        for prefix, handler, raw in self._handlers:
            if not topic.startswith(prefix):
                continue
            if decoded:
                body = part
            elif raw:
                body = None
            else:
                try:
                    body = frame.body()
                except FrameError as exc:
                    self.refuse(frame, exc)
                    return
            t0 = time.perf_counter()
            try:
                handler(frame, body)
            except Exception as exc:
                self.handler_errors.inc(topic=prefix)
                self.deadletters.write("handler", [topic.encode()], repr(exc))
                self._rate_log.warning(f"handler:{prefix}", f"handler for {topic} raised {exc!r}", topic=topic)
            ms = (time.perf_counter() - t0) * 1000
            self.handler_ms.observe(ms)
            if ms > self.handler_budget_ms:
                self.handler_slow.inc()
                self._rate_log.warning("slow", f"handler for {topic} took {ms:.1f} ms", topic=topic)

    async def _sub_loop(self) -> None:
        assert self.sub is not None
        last_error = None
        while not self.stop_event.is_set():
            frames = await self.sub.next_batch(0.2)
            if self.core.last_error is not last_error:
                last_error = self.core.last_error
                if last_error is not None:
                    self._rate_log.warning(f"bad:{last_error.reason}", f"refused frame: {last_error}")
                    self.deadletters.write(last_error.reason, [], str(last_error))
            for frame in frames:
                self.dispatch(frame)
            if self.aligner is not None:
                self.release_aligned()
            if frames:
                self._last_input = time.monotonic()
                self._last_event_ns = newest_event_ns(frames, self._last_event_ns)
                await asyncio.sleep(0)

    async def _heartbeat_loop(self) -> None:
        assert self.pub is not None
        while not self.stop_event.is_set():
            self.core.check_peers()
            self.reload_flags()
            try:
                self.periodic()
            except Exception:
                self.log.exception("periodic() failed")
            state, detail = self.state, self.detail
            faults = self._faults()
            if faults and state == "running":  # e.g. a full disk: 'spx status' exits 1 with the reason
                state, detail = "degraded", "; ".join(faults) + (f" | {detail}" if detail else "")
            self.pub.heartbeat(self.started_ns, state, detail, self._heartbeat_stats(), self.flags)
            if self._wm_out is not None:  # the watermark again: a silent stream still tells where it is
                self._send_watermark()
            if self.aligner is not None:
                self._align_idle()
                self.release_aligned()
            try:
                await asyncio.wait_for(self.stop_event.wait(), self.bus.heartbeat_s)
            except TimeoutError:
                pass

    _last_input: float | None = None
    _last_event_ns: int = 0
    _prev_totals: dict[str, float] = {}
    _prev_at: float = 0.0

    def _heartbeat_stats(self) -> dict[str, float]:
        """Counter totals, their per-second rates since the last beat, and input age."""
        totals = self.metrics.summary()
        now = time.monotonic()
        stats = dict(totals)
        if self._prev_at:
            dt = max(now - self._prev_at, 1e-3)
            for name, value in totals.items():
                stats[f"{name}:rate"] = round((value - self._prev_totals.get(name, 0.0)) / dt, 2)
        self._prev_totals, self._prev_at = totals, now
        if self._last_input is not None:
            stats["last_input_age_s"] = round(now - self._last_input, 3)
            stats["last_event_ns"] = float(self._last_event_ns)
        if self.flag_store.error:
            stats["flags_invalid"] = 1.0  # spx status shows which processes apply the fail-closed switches
        return stats

    def _metrics_rpc(self, params: dict) -> str:
        return self.metrics.render()

    def open_sockets(self) -> None:
        linger = self.bus.linger_ms
        self.curve = None
        if self.bus.curve:
            self.curve = CurveKeys.load(self.bus.curve_keys_dir(self.runtime), self.bus.curve_identity or self.name)
            self._authenticator = self.curve.start_authenticator(self.ctx)
        self.pub = Publisher(self.ctx, self.bus.pub_endpoint(self.instance, self.runtime, bind=True), self.instance,
                             hwm=self.bus.hwm, linger_ms=linger, curve=self.curve)
        self.rpc_server = RpcServer(self.actx, self.bus.rep_endpoint(self.instance, self.runtime, bind=True),
                                    registry=self.metrics, linger_ms=linger, curve=self.curve)
        self.rpc_server.register("ping", lambda p: {"pong": True, "service": self.instance})
        self.rpc_server.register("status", lambda p: self.status())
        self.rpc_server.register("metrics", self._metrics_rpc)
        self.rpc_server.register("flags.reload", lambda p: {"changed": self.reload_flags(), "flags": self.flags})
        if self.replayable:
            self.pub.keep(self.replayable, self.replay_keep)
            self.rpc_server.register("replay", self._replay_rpc)
            ocfg = self.outbox_config or load(OutboxConfig)
            if ocfg.enabled:
                outbox = Outbox(self.runtime.path("outbox", f"{self.instance}.bin"), max_bytes=ocfg.max_bytes,
                                max_age_ns=int(ocfg.max_age_s * 1e9), fsync=ocfg.fsync, registry=self.metrics)
                self.outbox_frames = self.pub.attach_outbox(outbox)
                if self.outbox_frames:
                    self.log.info("outbox: %d frames of previous sessions back in the replay ring",
                                  len(self.outbox_frames))
        endpoints, prefixes, peers = [], [], []
        for service, topics in self.subscriptions.items():
            for instance in self.bus.instances_of(service):
                endpoints.append(self.bus.pub_endpoint(instance, self.runtime))
                peers.append(instance)
            prefixes.extend(topics)
        if self.aligner is not None:
            prefixes.append(WATERMARK)
            for service, topics in self.subscriptions.items():
                if any(t.startswith(self.aligned) or any(a.startswith(t) for a in self.aligned) for t in topics):
                    for instance in self.bus.instances_of(service):
                        self.aligner.add_stream(instance)
        if endpoints:
            self.sub = AsyncSubscriber(self.actx, endpoints, prefixes, self.core, hwm=self.bus.hwm,
                                       curve=self.curve, peers=peers)

    async def run_async(self) -> int:
        codec.check_codec()
        self.open_sockets()
        self.setup()
        # Objects built at start-up (config, plugins, warm-up caches) never become garbage:
        # move them out of the cyclic collector's generations so its passes stay short.
        gc.collect()
        gc.freeze()
        gc.callbacks.append(self._gc_timer)
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                loop.add_signal_handler(sig, self.request_stop)
            except (NotImplementedError, RuntimeError):
                pass
        metrics_port = int(os.environ.get(f"SPX_METRICS_PORT_{self.instance.upper().replace('-', '_')}", "0"))
        http = serve_http(self.metrics, "127.0.0.1", metrics_port) if metrics_port else None
        if self.watermarks and self._wm_out is None:
            self.publish_watermark(0)
        self.state = "running"
        health.clear_fatal(self.runtime.path(), self.instance)
        self.log.info("started", extra={"pub": self.pub.endpoint, "rep": self.rpc_server.endpoint})
        if self.insecure_bus:
            self.log.critical(self.insecure_bus, extra={"rep": self.rpc_server.endpoint})
        assert self.rpc_server is not None
        self.spawn(self.rpc_server.serve(self.stop_event), "rpc")
        self.spawn(self._heartbeat_loop(), "heartbeat")
        if self.sub is not None:
            self.spawn(self._sub_loop(), "subscribe")
        self.spawn(self.main(), "main")
        await self.stop_event.wait()
        self.state = "stopping"
        self.log.info("stopping: draining")
        if self.aligner is not None and not self.align_hold:  # what was held is handled, in order
            for frame, part, _, _ in self.aligner.drain():
                self._route_frame(frame, part, True)
        try:
            await asyncio.wait_for(self.drain(), self.runtime.shutdown_grace_s)
        except TimeoutError:
            self.log.warning("drain did not finish within %.1fs", self.runtime.shutdown_grace_s)
        except Exception:
            self.log.exception("drain failed")
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for c in self._clients.values():
            c.close()
        if self.sub:
            self.sub.close()
        self.rpc_server.close()
        self.pub.close()
        if self.pub.outbox is not None:
            self.pub.outbox.close()
        self.deadletters.close()
        if self.curve is not None:
            self._authenticator.stop()
        if http:
            http.shutdown()
        self.ctx.destroy(linger=self.bus.linger_ms)
        gc.callbacks.remove(self._gc_timer)
        self.log.info("stopped", extra={"exit_code": self.exit_code})
        return self.exit_code

    _gc_t0 = 0.0

    @property
    def _relay(self) -> bool:
        return self.watermarks and self.aligner is not None

    def _gc_timer(self, phase: str, info: dict) -> None:
        """``gc.callbacks`` hook: each collection's pause in ``gc_pause_ms{generation}``."""
        if phase == "start":
            self._gc_t0 = time.perf_counter()
        else:
            self.gc_ms.observe((time.perf_counter() - self._gc_t0) * 1000, generation=str(info["generation"]))

    def request_stop(self) -> None:
        self.stop_event.set()

    @classmethod
    def cli(cls, argv: list[str] | None = None) -> None:
        """Entry point for ``python -m services.<name>``: ``--help``, config errors, exit codes."""


        parser = argparse.ArgumentParser(
            prog=f"python -m services.{cls.name}",
            description=(cls.__doc__ or cls.name).strip().splitlines()[0],
            epilog="Configuration: environment and spx.toml, see docs/config.md.",
        )
        parser.add_argument("--instance", help="instance name (default: the service name)")
        args = parser.parse_args(argv)
        instance = args.instance or cls.name
        runtime = None
        try:
            runtime = load(RuntimeConfig)
            secure_run_dir(runtime)
            logs.setup(instance, runtime.log_level)
            service = cls(runtime, load(BusConfig), instance=args.instance)
            code = asyncio.run(service.run_async())
        except ConfigError as exc:
            # Exit 2 is 'expected' in supervisord.conf (exitcodes=2, autorestart=unexpected): the process
            # stays down, and the fatal record tells spx up/status and the dashboard why.
            print(f"{instance}: {exc}", file=sys.stderr)
            run_dir = runtime.path() if runtime is not None else Path(
                os.environ.get("SPX_RUNTIME_RUN_DIR") or PROJECT_DIR / "run")
            health.record_fatal(run_dir, instance, health.config_reason(str(exc)))
            sys.exit(2)
        sys.exit(code)


def _split_held(item: tuple, i: int, rest_key: int) -> tuple[tuple, tuple]:
    """The aligner's ``splitter`` for held ``(frame, events, t0, key)`` runs."""
    frame, part, t0, key = item
    return (frame, part[:i], t0, key), (frame, part[i:], t0, rest_key)


def event_runs(events: list, key: Callable[[Any], int] = lambda ev: ev.ts) -> list[tuple[int, list, list[int]]]:
    """``events`` as runs of non-decreasing event time: ``(first time, events, times)`` each (a sorted
    batch, e.g. a replay's, is one run)."""
    out: list[tuple[int, list, list[int]]] = []
    times: list[int] = []
    run: list = []
    last = None
    for ev in events:
        t = key(ev)
        if last is not None and t < last:
            out.append((times[0], run, times))
            run, times = [], []
        run.append(ev)
        times.append(t)
        last = t
    if run:
        out.append((times[0], run, times))
    return out


def newest_event_ns(frames, current: int) -> int:
    """Event time of the newest frame that carries one (the heartbeat's ``last_event_ns``, the event lag in
    ``spx status``): a watermark frame at ``FINAL_NS`` marks the end of an input, it is no event time."""
    for frame in reversed(frames):
        if frame.event_ns < FINAL_NS:
            return frame.event_ns
    return current
