"""A plugin package's worker process (started and supervised by ``isolation.IsolatedHost``).

    python -m services.detector.worker      # speaks the worker protocol on stdin/stdout

The protocol (``isolation`` module docstring) runs over the pipes the host made; the plugins' own
prints go to stderr (the detector's log), never into the protocol. The worker loads one plugin
package with the in-process host's loader (same API checks), keeps each symbol's recent bars as the
host sends them, builds the same read-only context the in-process host gives, and calls its plugins
in order. Each call has a CPU-time limit enforced here (``ITIMER_PROF``: the call is interrupted
when it has used ``stop_ms`` of CPU), and the whole process a data-segment limit (``mem_mb``); a
call that blocks without using CPU is the host's to stop (it kills this process).
"""

from __future__ import annotations

import os
import resource
import signal
import sys
import time
from collections import deque
from typing import Any

import msgspec

from services.detector.context import DetectorContext, freeze
from services.detector.host import Limits, PluginHost, normalize
from services.detector.isolation import BarMsg, LoadMsg, StopMsg, read_frame, write_frame


class CpuLimit(BaseException):
    """Raised into a plugin call that used its ``stop_ms`` of CPU (a BaseException: a plugin's
    ``except Exception`` cannot swallow it)."""


def _on_prof(signum, frame) -> None:
    raise CpuLimit()


def _die_with_parent() -> None:
    """Linux: SIGKILL this worker when the detector dies (no orphan survives a kill -9 of the host)."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except Exception:
        pass


class Rss:
    """This process's resident size, MiB: one ``pread`` of ``/proc/self/statm`` kept open (a ``done`` reply
    carries it after every bar), 0.0 where it cannot be read."""

    def __init__(self) -> None:
        self.page_mb = os.sysconf("SC_PAGE_SIZE") / 2**20
        try:
            self.fd: int | None = os.open("/proc/self/statm", os.O_RDONLY)
        except OSError:
            self.fd = None

    def __call__(self) -> float:
        if self.fd is None:
            return 0.0
        try:
            return int(os.pread(self.fd, 128, 0).split()[1]) * self.page_mb
        except (OSError, ValueError, IndexError):
            return 0.0


class Worker:
    def __init__(self, rfd: int, wfd: int) -> None:
        self.rfd, self.wfd = rfd, wfd
        self.host: PluginHost | None = None
        self.config: Any = freeze({})
        self.rings: dict[str, deque] = {}
        self.bars_kept = 600
        self.mem_mb = 0  # the data-segment limit set at load (0: none)
        self.dec = msgspec.msgpack.Decoder(LoadMsg | BarMsg | StopMsg)
        self.rss = Rss()

    def load(self, msg: LoadMsg) -> None:
        self.mem_mb = msg.mem_mb
        if msg.mem_mb > 0:
            limit = msg.mem_mb * 2**20
            try:
                resource.setrlimit(resource.RLIMIT_DATA, (limit, limit))
            except (ValueError, OSError) as exc:
                print(f"worker: could not set the memory limit: {exc!r}", file=sys.stderr)
        self.bars_kept = msg.bars_kept
        self.config = freeze(dict(msg.config))
        host = self.host = PluginHost(limits=msg.limits, defaults=Limits().override(msg.defaults))
        if msg.kind == "entry_point":
            host.load_entry_points(msg.group, only=msg.target)
        else:
            host.load_module(msg.target)
        plugins = [{"name": p.name, "family": p.family, "version": p.version, "source": p.source,
                    "symbols": p.symbols, "on_bar": p.on_bar is not None} for p in host.plugins.values()]
        write_frame(self.wfd, {"op": "loaded", "plugins": plugins, "errors": host.load_errors})

    def bar(self, msg: BarMsg) -> None:
        ring = self.rings.get(msg.sym)
        if ring is None or msg.reset:
            ring = self.rings[msg.sym] = deque(maxlen=self.bars_kept)
        ring.extend(msg.bars)
        bar = ring[-1]
        ctx = DetectorContext(msg.sym, msg.now_ns, tuple(ring), freeze(msg.state), self.config, msg.minutes)
        assert self.host is not None
        last = len(msg.call) - 1
        for i, name in enumerate(msg.call):
            p = self.host.plugins[name]
            stop_s = p.limits.stop_ms / 1000
            error, stopped = "", False
            cpu = time.thread_time
            t0 = cpu()
            try:
                signal.setitimer(signal.ITIMER_PROF, stop_s)
                try:
                    result = p.invoke(ctx, bar)  # type: ignore[misc]  # listed plugins have on_bar
                finally:
                    signal.setitimer(signal.ITIMER_PROF, 0)
            except CpuLimit:
                result, stopped = None, True
                error = f"stopped after {p.limits.stop_ms:g} ms of CPU"
            except MemoryError:
                result, error = None, f"MemoryError (worker limit {self.mem_mb} MiB)"
            except Exception as exc:
                result, error = None, repr(exc)[:300]
            cpu_ms = (cpu() - t0) * 1000
            out = {"op": "out", "seq": msg.seq, "name": name, "out": normalize(result), "error": error,
                   "stopped": stopped, "cpu_ms": cpu_ms}
            if i < last:  # at once: the host times the next call from this answer (hang_ms)
                write_frame(self.wfd, out)
            else:  # the last answer and ``done`` in one write: the host wakes once for both
                write_frame(self.wfd, out, {"op": "done", "seq": msg.seq, "rss_mb": self.rss()})
        if not msg.call:
            write_frame(self.wfd, {"op": "done", "seq": msg.seq, "rss_mb": self.rss()})

    def run(self) -> int:
        while True:
            raw = read_frame(self.rfd)
            if raw is None:
                return 0  # the host closed the pipe: stop
            msg = self.dec.decode(raw)
            if isinstance(msg, BarMsg):
                self.bar(msg)
            elif isinstance(msg, LoadMsg):
                self.load(msg)
            else:
                return 0


def main() -> int:
    _die_with_parent()
    signal.signal(signal.SIGPROF, _on_prof)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the host stops us (pipe closed, or a kill)
    rfd, wfd = os.dup(0), os.dup(1)
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.dup2(2, 1)  # a plugin's print() goes to the log, never into the protocol
    return Worker(rfd, wfd).run()


if __name__ == "__main__":
    sys.exit(main())
