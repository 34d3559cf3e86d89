"""Plugin packages in supervised worker processes: the detector host's default (``[detector]
isolation = "process"``).

One worker process per plugin package (an ``spx.detectors`` entry point, or a module named in
``[detector] plugins``): a plugin package is one author's code, so its detectors share a process
and nobody else's. The host (:class:`IsolatedHost`, same interface as the in-process
:class:`~services.detector.host.PluginHost`) sends each closed bar to the workers whose plugins want
it and waits for their answers in event-time order, so candidates reach the lifecycle in the same
order as in process and results do not depend on which worker answered first.

Budgets (per plugin, ``Limits``): ``cpu_ms`` of CPU per call (an overrun is counted), ``stop_ms`` of
CPU at which the worker interrupts the call (``ITIMER_PROF``), ``hang_ms`` of wall time after which
the host kills the worker (a call blocked in ``sleep``, a lock or C code uses no CPU), ``mem_mb`` of
data segment per worker (``RLIMIT_DATA``; the host also restarts a worker whose resident size passed
90 % of it). A crash (segfault, ``os._exit``), a hang or a failed restart disables the plugin at once;
errors and overruns disable it after ``max_failures`` / ``max_slow``; a disabled plugin is probed
again after its back-off (``health.PluginHealth``). A dead worker is restarted in the background:
the others never wait for its start.

Wire (both directions): a 4-byte big-endian length, then one msgpack map with an ``op`` tag.
host -> worker: ``load`` (the package, plugin config, limits, bars kept), ``bar`` (sequence number,
symbol, the bars the worker has not seen yet or ``reset`` and the whole ring, the market state, the
plugins to call), ``stop``. worker -> host: ``loaded`` (plugin descriptions, load errors), one
``out`` per plugin called (normalized output, error, CPU ms, whether it was stopped), ``done``
(resident MiB).
"""

from __future__ import annotations

import importlib.metadata
import os
import select
import subprocess
import sys
import time
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

import msgspec

from services.detector.host import ENTRY_POINT_GROUP, HostBase, LoadedPlugin, PluginError
from spx_common.models import MicroBar, SetupCandidate

MAX_FRAME = 16 * 2**20  # bytes: a frame larger than this is a protocol error (the worker is killed)


class LoadMsg(msgspec.Struct, tag="load", tag_field="op"):
    kind: str  # "entry_point" | "module"
    target: str
    group: str = ENTRY_POINT_GROUP
    config: dict = {}
    defaults: dict = {}  # Limits fields: the budgets of plugins not named in ``limits``
    limits: dict = {}  # per plugin name: Limits fields
    bars_kept: int = 600
    mem_mb: int = 0


class BarMsg(msgspec.Struct, tag="bar", tag_field="op"):
    seq: int
    sym: str
    reset: bool
    bars: list[MicroBar]
    now_ns: int
    state: Mapping[str, Any]  # sent as the context's read-only state (see _enc_hook), received as a dict
    minutes: float
    call: list[str]


class StopMsg(msgspec.Struct, tag="stop", tag_field="op"):
    pass


class Loaded(msgspec.Struct, tag="loaded", tag_field="op"):
    plugins: list[dict]
    errors: list[str]


class Out(msgspec.Struct, tag="out", tag_field="op"):
    seq: int
    name: str
    out: Any
    error: str
    stopped: bool
    cpu_ms: float


class Done(msgspec.Struct, tag="done", tag_field="op"):
    seq: int
    rss_mb: float


def _enc_hook(obj: Any) -> Any:
    """The plugin context's read-only maps go on the wire as the maps they show (no thawed copy first)."""
    if type(obj) is MappingProxyType:
        return dict(obj)
    # msgspec's enc_hook protocol: NotImplementedError means "not a type this hook encodes"
    raise NotImplementedError(f"cannot encode {type(obj).__name__}")


_ENC = msgspec.msgpack.Encoder(enc_hook=_enc_hook)
_REPLY = msgspec.msgpack.Decoder(Loaded | Out | Done)


def write_frame(fd: int, *docs: Any) -> None:
    """Blocking write of one frame per document, all in one write (the worker's side)."""
    out = bytearray()
    for doc in docs:
        data = _ENC.encode(doc)
        out += len(data).to_bytes(4, "big")
        out += data
    view = memoryview(out)
    while view:
        view = view[os.write(fd, view):]


def read_frame(fd: int) -> bytes | None:
    """Blocking read of one frame (the worker's side); None at end of file."""
    head = _read_exact(fd, 4)
    if head is None:
        return None
    n = int.from_bytes(head, "big")
    if n > MAX_FRAME:
        raise ValueError(f"frame of {n} bytes")
    return _read_exact(fd, n)


def _read_exact(fd: int, n: int) -> bytes | None:
    buf = bytearray()
    while len(buf) < n:
        chunk = os.read(fd, n - len(buf))
        if not chunk:
            return None
        buf += chunk
    return bytes(buf)


def thaw(value: Any) -> Any:
    """The inverse of ``context.freeze`` for the wire: read-only maps -> dicts, tuples -> lists."""
    t = type(value)
    if t is MappingProxyType or t is dict:
        return {k: thaw(v) for k, v in value.items()}
    if t is tuple or t is list:
        return [thaw(v) for v in value]
    return value


class WorkerProc:
    """One worker process and its pipes (the host's side). Never blocks past a deadline."""

    def __init__(self, kind: str, target: str, source: str, python: str, group: str = ENTRY_POINT_GROUP) -> None:
        self.kind, self.target, self.source, self.python, self.group = kind, target, source, python, group
        self.proc: subprocess.Popen | None = None
        self.buf = bytearray()
        self.ready = False  # its ``loaded`` answer has arrived
        self.sent: dict[str, MicroBar] = {}  # per symbol, the newest bar this process has
        self.restarts = 0
        self.exit_note = ""

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self, load: LoadMsg) -> None:
        self.proc = subprocess.Popen([self.python, "-m", "services.detector.worker"], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, close_fds=True)
        os.set_blocking(self.proc.stdout.fileno(), False)  # PIPE above
        os.set_blocking(self.proc.stdin.fileno(), False)
        self.buf.clear()
        self.sent.clear()
        self.ready = False
        self.exit_note = ""
        self.send(load, time.monotonic() + 10.0)

    def send(self, msg: Any, deadline: float) -> bool:
        """Write one frame before ``deadline``; False (and the worker killed) when it cannot."""
        assert self.proc is not None and self.proc.stdin is not None
        data = _ENC.encode(msg)
        view = memoryview(len(data).to_bytes(4, "big") + data)
        fd = self.proc.stdin.fileno()
        while view:
            try:
                view = view[os.write(fd, view):]
                continue
            except BlockingIOError:
                pass
            except (BrokenPipeError, OSError):
                self.kill("its pipe closed")
                return False
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([], [fd], [], left)[1]:
                self.kill("it did not read its input in time")
                return False
        return True

    def poll_replies(self) -> tuple[list[Any], bool]:
        """Replies read so far without blocking, and whether the pipe reached end of file."""
        assert self.proc is not None and self.proc.stdout is not None
        eof = False
        while True:
            try:
                chunk = os.read(self.proc.stdout.fileno(), 1 << 16)
            except BlockingIOError:
                break
            except OSError:
                eof = True
                break
            if not chunk:
                eof = True
                break
            self.buf += chunk
        out = []
        while len(self.buf) >= 4:
            n = int.from_bytes(self.buf[:4], "big")
            if n > MAX_FRAME:
                self.kill(f"it sent a frame of {n} bytes")
                return out, True
            if len(self.buf) < 4 + n:
                break
            try:
                out.append(_REPLY.decode(bytes(self.buf[4:4 + n])))
            except msgspec.DecodeError as exc:
                self.kill(f"it sent a malformed frame ({exc})")
                return out, True
            del self.buf[:4 + n]
        return out, eof

    def kill(self, why: str) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
        self.reap()
        self.exit_note = self.exit_note or why
        self.ready = False

    def reap(self) -> str:
        """Wait for an exited (or killed) process; describe how it ended."""
        if self.proc is None:
            return ""
        try:
            code = self.proc.wait(timeout=2.0)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            code = self.proc.wait()
        for f in (self.proc.stdin, self.proc.stdout):
            try:
                f.close()
            except OSError:
                pass
        note = f"killed by signal {-code}" if code < 0 else f"exit code {code}"
        self.exit_note = self.exit_note or note
        return note

    def close(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            try:
                self.send(StopMsg(), time.monotonic() + 0.5)
                self.proc.stdin.close()
                self.proc.wait(timeout=1.0)
            except (subprocess.TimeoutExpired, OSError, ValueError):
                pass
        self.kill("closed")


class IsolatedHost(HostBase):
    """The plugin host with each plugin package in its own supervised worker process."""

    def __init__(self, *, plugin_config: dict | None = None, bars_kept: int = 600, load_timeout_s: float = 30.0,
                 python: str = sys.executable, **kw: Any) -> None:
        super().__init__(**kw)
        self.plugin_config = dict(plugin_config or {})
        self.bars_kept = bars_kept
        self.load_timeout_s = load_timeout_s
        self.python = python
        self.workers: list[WorkerProc] = []
        self.seq = 0

    # ------------------------------------------------------------------ loading

    def load_entry_points(self, group: str = ENTRY_POINT_GROUP, enabled: list[str] | None = None) -> None:
        """One worker per entry point of ``group`` named in ``enabled`` (None or ``"*"``: all); the
        others are only remembered in :attr:`available`."""
        eps = []
        for ep in importlib.metadata.entry_points(group=group):
            if enabled is not None and "*" not in enabled and ep.name not in enabled:
                self.available.append(f"{ep.name} ({ep.value})")
            else:
                eps.append(ep)
        self._load([WorkerProc("entry_point", ep.name, f"entry point {ep.name} ({ep.value})", self.python, group)
                    for ep in eps])

    def load_module(self, dotted: str) -> None:
        self._load([WorkerProc("module", dotted, f"config {dotted}", self.python)])

    def register(self, obj: Any, source: str) -> None:
        raise PluginError(f"{source}: an isolated host loads plugin packages by entry point or module name, "
                          "not objects (use PluginHost for in-process plugins)")

    def _load_msg(self, w: WorkerProc) -> LoadMsg:
        return LoadMsg(kind=w.kind, target=w.target, group=w.group, config=thaw(self.plugin_config),
                       defaults=dict(self.defaults.__dict__), limits=thaw(self.per_plugin),
                       bars_kept=self.bars_kept, mem_mb=self.limits_of(w.target).mem_mb)

    def _load(self, workers: list[WorkerProc]) -> None:
        """Start the workers together and wait (bounded) for each one's plugin descriptions."""
        for w in workers:
            try:
                w.start(self._load_msg(w))
            except OSError as exc:
                self.load_errors.append(f"{w.target}: worker did not start: {exc!r}")
        deadline = time.monotonic() + self.load_timeout_s
        for w in workers:
            if w.proc is None:
                continue
            loaded = self._await_loaded(w, deadline)
            if loaded is None:
                w.kill("no answer")
                self.load_errors.append(f"{w.target}: worker did not load ({w.exit_note})")
                continue
            self.load_errors.extend(loaded.errors)
            if not loaded.plugins:
                w.close()
                continue
            self.workers.append(w)
            for d in loaded.plugins:
                name = str(d["name"])
                if name in self.plugins:
                    self.load_errors.append(f"{w.source}: a plugin named {name!r} is already loaded "
                                            f"({self.plugins[name].source})")
                    continue
                self.plugins[name] = LoadedPlugin(
                    name=name, family=str(d["family"]), version=str(d["version"]), source=str(d["source"]),
                    impl=None, on_bar=None, symbols=d.get("symbols"), health=self._new_health(),
                    limits=self.limits_of(name), worker=w.target, remote=bool(d.get("on_bar")))

    def _await_loaded(self, w: WorkerProc, deadline: float) -> Loaded | None:
        while True:
            replies, eof = w.poll_replies()
            for r in replies:
                if isinstance(r, Loaded):
                    w.ready = True
                    return r
            if eof:
                w.reap()
                return None
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            select.select([w.proc.stdout], [], [], min(left, 0.5))

    # ------------------------------------------------------------------ calling

    def on_bar(self, ctx, bar, only=None) -> list[SetupCandidate]:
        """Each plugin's candidates for ``bar`` from its worker; ``only``: just the plugins with these names."""
        now = self.clock()
        sym = bar.sym
        running: dict[WorkerProc, tuple[int, list[LoadedPlugin]]] = {}
        for w in self.workers:
            due = [p for p in self.plugins.values()
                   if p.worker == w.target and p.wants(sym) and _due(p, now) and (only is None or p.name in only)]
            if not due or not self._ready(w, now, due):
                continue
            calls = [p for p in due if p.health.should_call(now)]
            if self._dispatch(w, ctx, calls, ctx.state):
                running[w] = (self.seq, calls)
        outs = self._collect(running)
        accepted: list[SetupCandidate] = []
        for p in self.plugins.values():
            if p.name in outs:
                accepted.extend(self._validate(p, outs[p.name], bar))
        return accepted

    def _ready(self, w: WorkerProc, now: float, due: list[LoadedPlugin]) -> bool:
        """Whether ``w`` can take a bar now; a dead worker is restarted in the background."""
        if w.ready and w.alive:
            return True
        if w.proc is None or not w.alive:
            if w.proc is not None:
                w.reap()
            w.restarts += 1
            try:
                w.start(self._load_msg(w))
            except OSError as exc:
                for p in due:
                    self._account(p, now, crash=f"worker did not restart: {exc!r}")
                return False
            return False  # loading: its plugins skip bars until its ``loaded`` answer arrives
        replies, eof = w.poll_replies()
        if any(isinstance(r, Loaded) for r in replies):
            w.ready = True
            return True
        if eof:
            note = w.reap()
            for p in due:
                self._account(p, now, crash=f"worker failed to restart ({note})")
        return False

    def _dispatch(self, w: WorkerProc, ctx, calls: list[LoadedPlugin], state: Mapping[str, Any]) -> bool:
        bars = ctx.bars
        last = w.sent.get(ctx.sym)
        j = len(bars) - 1
        if last is not None:
            while j >= 0 and bars[j] is not last:
                j -= 1
        reset = last is None or j < 0
        delta = list(bars) if reset else list(bars[j + 1:])
        self.seq += 1
        msg = BarMsg(seq=self.seq, sym=ctx.sym, reset=reset, bars=delta, now_ns=ctx.now_ns, state=state,
                     minutes=ctx.minutes_since_open, call=[p.name for p in calls])
        hang = max(p.limits.hang_ms for p in calls) / 1000
        if not w.send(msg, time.monotonic() + hang):
            for p in calls[:1]:
                self._account(p, self.clock(), crash=f"worker {w.exit_note}")
            return False
        if bars:
            w.sent[ctx.sym] = bars[-1]
        return True

    def _collect(self, running: dict[WorkerProc, tuple[int, list[LoadedPlugin]]]) -> dict[str, Any]:
        """Read every running worker's answers to its bar (``seq``) up to its ``done``; a worker silent
        past the pending plugin's ``hang_ms`` is killed (that plugin crashed; the ones after it are not
        called this bar)."""
        outs: dict[str, Any] = {}
        pending = {w: list(calls) for w, (_, calls) in running.items()}
        since = {w: time.monotonic() for w in running}
        while pending:
            now_m = time.monotonic()
            for w in list(pending):
                seq = running[w][0]
                replies, eof = w.poll_replies()
                done = False
                for r in replies:
                    if isinstance(r, Out) and r.seq == seq and pending[w] and r.name == pending[w][0].name:
                        p = pending[w].pop(0)
                        since[w] = now_m
                        if r.stopped:  # interrupted at stop_ms of CPU: an overrun, with no output
                            self._account(p, self.clock(), slow=r.error)
                            continue
                        self._account(p, self.clock(), error=r.error, slow=self._overrun(p, r.cpu_ms))
                        if not r.error:
                            outs[p.name] = r.out
                    elif isinstance(r, Done) and r.seq == seq:
                        done = True
                        limit = self.limits_of(w.target).mem_mb
                        if limit and r.rss_mb > 0.9 * limit:  # a leak: restart it before the limit bites
                            why = f"worker resident {r.rss_mb:.0f} MiB, over 90% of its {limit} MiB limit: restarted"
                            w.kill(why)
                            for q in running[w][1]:
                                self._account(q, self.clock(), crash=why, call=False)
                if done:
                    del pending[w]
                    continue
                p = pending[w][0] if pending[w] else None
                hang_s = (p.limits.hang_ms if p else self.defaults.hang_ms) / 1000
                if eof or not w.alive:
                    note = w.reap()
                    if p is not None:
                        self._account(p, self.clock(), crash=f"worker died during the call ({note})")
                    del pending[w]
                elif now_m - since[w] > hang_s:
                    w.kill(f"no answer in {hang_s * 1000:g} ms")
                    if p is not None:
                        self._account(p, self.clock(), crash=f"no answer in {hang_s * 1000:g} ms of wall time: "
                                      "worker killed")
                    del pending[w]
            if pending:
                fds = [w.proc.stdout for w in pending if w.proc is not None and w.proc.stdout is not None]
                if fds:
                    select.select(fds, [], [], 0.05)
        return outs

    def close(self) -> None:
        for w in self.workers:
            w.close()

    def describe(self) -> list[dict]:
        docs = super().describe()
        pids = {w.target: (w.proc.pid if w.alive and w.proc else None, w.restarts) for w in self.workers}
        for d in docs:
            pid, restarts = pids.get(d["worker"], (None, 0))
            d["pid"], d["worker_restarts"] = pid, restarts
        return docs


def _due(p: LoadedPlugin, now: float) -> bool:
    h = p.health
    return h.status == "active" or (h.status == "disabled" and h.retry_at is not None and now >= h.retry_at)


def build_host(cfg: Any, isolation: str | None = None) -> HostBase:
    """The plugin host ``[detector]`` describes, with its plugins loaded (entry points, then modules)."""
    from services.detector.host import Limits, PluginHost

    kw = dict(max_failures=cfg.max_failures, max_slow=cfg.max_slow, retry_s=cfg.retry_s,
              retry_max_s=cfg.retry_max_s, limits=cfg.plugin_limits,
              defaults=Limits(cpu_ms=cfg.budget_ms, stop_ms=cfg.stop_ms, hang_ms=cfg.hang_ms, mem_mb=cfg.mem_mb))
    host: Any
    if (isolation or cfg.isolation) == "process":
        host = IsolatedHost(plugin_config=cfg.plugin_config, bars_kept=cfg.bars_kept, **kw)
    else:
        host = PluginHost(**kw)
    if cfg.entry_points:
        host.load_entry_points(enabled=cfg.entry_points_enabled)
    for mod in cfg.plugins:
        host.load_module(mod)
    return host

