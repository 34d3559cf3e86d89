"""One way to run a child process in tests and benchmarks: start, wait until ready, capture its output
live, stop it, and report the first failure with what the process printed.

    with ServiceProcess.service("coach", run_dir=run_dir, env={...}) as coach:
        coach.wait_ready(lambda: ping(), 20, what="coach answers ping")
        ...                      # the test
    # leaving the block: SIGTERM, a bounded wait, SIGKILL to the process group if it hangs;
    # a process that exited with a code other than ``ok_codes`` fails the test with its output

* **Output is read while the process runs** (a reader thread into a bounded buffer: the first
  ``head_bytes`` and the last ``tail_bytes``, with the count of what lay between), so a process that
  prints a lot never blocks on a full pipe and its output is there when it fails, not only after it died.
* **Every wait is bounded** (``wait_ready``, ``wait``, ``stop``); a wait that fails raises
  :class:`ProcessFailed` naming the process, its exit code and its output.
* **The first failure wins.** When the body of a ``with`` block raises, the block stops the processes
  and adds their output to that exception (``add_note``) instead of replacing it with a second failure
  from the teardown. When the body passed, a process that exited badly (or did not stop on SIGTERM)
  is the failure. :class:`Processes` does the same for several processes (stopped in reverse order).
* Each process runs in a session of its own, so a process that does not stop is killed with the
  children it started (the detector's plugin workers, a replay's feed).

No pytest here: benchmarks use it as they are, and it imports nothing of ``tests/``.
"""

from __future__ import annotations

import atexit
import os
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from pathlib import Path
from typing import TypeVar
from collections.abc import Callable, Iterable, Mapping, Sequence

T = TypeVar("T")

#: the project root (``python -m services.<name>`` runs from here)
ROOT = Path(__file__).resolve().parents[1]

#: every process started and not yet stopped: killed with its session when this interpreter exits, so a
#: test run that ends without its teardown (an interrupted run, a forgotten stop) leaves nothing running
_LIVE: set[ServiceProcess] = set()


@atexit.register
def _kill_leftovers() -> None:
    for p in list(_LIVE):
        p._kill_session()


class ProcessFailed(AssertionError):
    """A child process failed: exited early or badly, was not ready in time, or did not stop.

    An ``AssertionError``, so pytest shows it as a test failure with the message (which carries the
    process's name, exit code and captured output)."""

    def __init__(self, proc: ServiceProcess, why: str) -> None:
        self.proc, self.why = proc, why
        super().__init__(f"{proc.name} (pid {proc.pid}): {why}\n{proc.describe()}")


def eventually(cond: Callable[[], T], timeout_s: float = 10.0, interval_s: float = 0.05, what: str = "") -> T:
    """Poll ``cond`` until truthy and return its value, or raise AssertionError after ``timeout_s``
    (never a bare sleep as synchronisation)."""
    deadline = time.monotonic() + timeout_s
    while True:
        last = cond()
        if last:
            return last
        if time.monotonic() >= deadline:
            raise AssertionError(f"condition not met within {timeout_s}s: {what or cond}")
        time.sleep(interval_s)


def free_port() -> int:
    """A TCP port free on loopback right now."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class _Capture:
    """Reads a pipe until EOF into a bounded head + tail buffer."""

    def __init__(self, pipe, head_bytes: int, tail_bytes: int) -> None:
        self.pipe = pipe
        self.head = bytearray()
        self.head_max = head_bytes
        self.tail: deque[bytes] = deque()
        self.tail_len = 0
        self.tail_max = tail_bytes
        self.dropped = 0
        self.lock = threading.Lock()
        self.thread = threading.Thread(target=self._run, name="capture", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        fd = self.pipe.fileno()
        while True:
            try:
                chunk = os.read(fd, 65536)
            except OSError:
                break
            if not chunk:
                break
            with self.lock:
                room = self.head_max - len(self.head)
                if room > 0:
                    self.head += chunk[:room]
                    chunk = chunk[room:]
                if chunk:
                    self.tail.append(chunk)
                    self.tail_len += len(chunk)
                    while self.tail_len - len(self.tail[0]) >= self.tail_max:
                        self.dropped += len(self.tail[0])
                        self.tail_len -= len(self.tail.popleft())
        self.pipe.close()

    def text(self) -> str:
        with self.lock:
            tail = b"".join(self.tail)
            dropped = self.dropped
            if len(tail) > self.tail_max:
                dropped += len(tail) - self.tail_max
                tail = tail[-self.tail_max:]
            head = bytes(self.head)
        gap = f"\n[... {dropped} bytes not kept ...]\n" if dropped else ""
        return (head + gap.encode() + tail).decode("utf-8", "replace")

    def join(self, timeout_s: float) -> None:
        self.thread.join(timeout_s)


class ServiceProcess:
    """A child process with its stdout and stderr captured live (see the module docstring).

    ``argv`` is run as given (no shell); ``env`` is added to this process's environment (``inherit_env``)
    with ``PYTHONUNBUFFERED=1`` so Python children print as they go. ``ok_codes``: exit codes that are
    a clean stop (0 for a service on SIGTERM)."""

    def __init__(self, argv: Sequence[str], *, name: str | None = None, env: Mapping[str, str] | None = None,
                 cwd: str | os.PathLike | None = None, inherit_env: bool = True, ok_codes: Iterable[int] = (0,),
                 head_bytes: int = 16 << 10, tail_bytes: int = 48 << 10, stdin: bool = False,
                 stop_timeout_s: float = 10.0) -> None:
        self.argv = [str(a) for a in argv]
        self.name = name or Path(self.argv[0]).name
        base = dict(os.environ) if inherit_env else {}
        self.env = {**base, "PYTHONUNBUFFERED": "1", **(env or {})}
        self.cwd = str(cwd) if cwd is not None else str(ROOT)
        self.ok_codes = frozenset(ok_codes)
        self.stop_timeout_s = stop_timeout_s
        self._head, self._tail = head_bytes, tail_bytes
        self._stdin = stdin
        self.proc: subprocess.Popen | None = None
        self._capture: _Capture | None = None
        self.hung = False  # did not stop on the stop signal in time: killed by stop()
        self.killed = False  # killed on purpose (kill()): its exit code is not judged

    @classmethod
    def service(cls, module: str, *, run_dir: str | os.PathLike | None = None, env: Mapping[str, str] | None = None,
                args: Sequence[str] = (), **kw) -> ServiceProcess:
        """``python -m services.<module>`` (``module`` may be ``"cli.main"``) in ``run_dir``."""
        extra = {"SPX_RUNTIME_RUN_DIR": str(run_dir)} if run_dir is not None else {}
        return cls([sys.executable, "-m", f"services.{module}", *args], name=kw.pop("name", module),
                   env={**extra, **(env or {})}, **kw)

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> ServiceProcess:
        if self.proc is not None:
            raise RuntimeError(f"{self.name} already started")
        self.proc = subprocess.Popen(self.argv, env=self.env, cwd=self.cwd, start_new_session=True,
                                     stdin=subprocess.PIPE if self._stdin else subprocess.DEVNULL,
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        self._capture = _Capture(self.proc.stdout, self._head, self._tail)
        _LIVE.add(self)
        return self

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    @property
    def stdin(self):
        assert self.proc is not None and self.proc.stdin is not None, "start(stdin=True) first"
        return self.proc.stdin

    @property
    def returncode(self) -> int | None:
        return self.proc.poll() if self.proc is not None else None

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def output(self) -> str:
        """What the process printed so far (bounded: head and tail)."""
        return self._capture.text() if self._capture is not None else ""

    def describe(self) -> str:
        rc = self.returncode
        state = "running" if rc is None else f"exit code {rc}" + (" (hung on stop: killed)" if self.hung else "")
        out = self.output().rstrip()
        return f"--- {self.name}: {state}; output ---\n{out or '(no output)'}\n--- end of {self.name} ---"

    def wait_ready(self, cond: Callable[[], T], timeout_s: float, what: str = "", interval_s: float = 0.05) -> T:
        """Poll ``cond`` until truthy (its value is returned). Fails at once with the output if the process
        exits meanwhile, and with the output after ``timeout_s``."""
        deadline = time.monotonic() + timeout_s
        while True:
            if not self.alive():
                raise ProcessFailed(self, f"exited while waiting for: {what or cond}")
            last = cond()
            if last:
                return last
            if time.monotonic() >= deadline:
                raise ProcessFailed(self, f"not ready within {timeout_s}s: {what or cond}")
            time.sleep(interval_s)

    def wait(self, timeout_s: float) -> int:
        """Wait for the process to exit by itself (bounded); its exit code. On timeout the process is
        killed and :class:`ProcessFailed` raised with its output."""
        assert self.proc is not None, "not started"
        try:
            rc = self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self._kill_session()
            raise ProcessFailed(self, f"did not exit within {timeout_s}s") from None
        self._drain()
        return rc

    def expect_exit(self, timeout_s: float, codes: Iterable[int] = (0,)) -> int:
        """:meth:`wait`, then fail with the output unless the exit code is in ``codes``."""
        rc = self.wait(timeout_s)
        if rc not in set(codes):
            raise ProcessFailed(self, f"exit code {rc}, expected {sorted(set(codes))}")
        return rc

    def send_signal(self, sig: int) -> None:
        if self.alive():
            assert self.proc is not None
            self.proc.send_signal(sig)

    def kill(self) -> None:
        """SIGKILL the process and everything in its session on purpose (a crash test), then reap it."""
        self.killed = True
        self._kill_session()

    def _kill_session(self) -> None:
        if self.proc is None:
            return
        _LIVE.discard(self)
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:  # pragma: no cover - a process SIGKILL cannot end
            pass
        self._drain()

    def stop(self, timeout_s: float | None = None, sig: int = signal.SIGTERM) -> int | None:
        """Send ``sig`` (SIGTERM), wait up to ``timeout_s`` (``stop_timeout_s``), then SIGKILL the session;
        the exit code. Never raises for a bad exit: :meth:`check` (or leaving the ``with`` block) judges it.
        Only the process itself gets ``sig``: children it should have stopped are not cleaned up for it."""
        if self.proc is None:
            return None
        if timeout_s is None:
            timeout_s = self.stop_timeout_s
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            self.proc.send_signal(signal.SIGCONT)  # a test may have stopped it (SIGSTOP)
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.hung = True
                self._kill_session()
        else:  # exited by itself: make sure nothing it started is left behind
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        if self.proc.stdin is not None:
            try:
                self.proc.stdin.close()
            except OSError:
                pass
        _LIVE.discard(self)
        self._drain()
        return self.proc.returncode

    def check(self) -> None:
        """Raise :class:`ProcessFailed` if the process did not stop in time or exited with a code outside
        ``ok_codes`` (a process killed on purpose with :meth:`kill` is not judged)."""
        rc = self.returncode
        if self.hung:
            raise ProcessFailed(self, "did not stop on SIGTERM in time and was killed")
        if not self.killed and rc is not None and rc not in self.ok_codes:
            raise ProcessFailed(self, f"exit code {rc}, expected {sorted(self.ok_codes)}")

    def _drain(self) -> None:
        if self._capture is not None:
            self._capture.join(5)

    def __enter__(self) -> ServiceProcess:
        if self.proc is None:
            self.start()
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.stop()
        if exc is not None:
            if not (isinstance(exc, ProcessFailed) and exc.proc is self):
                exc.add_note(self.describe())
            return
        self.check()

    def __repr__(self) -> str:
        return f"<ServiceProcess {self.name} pid={self.pid} rc={self.returncode}>"


class Processes:
    """Several :class:`ServiceProcess` started together and stopped in reverse order.

    ``with Processes() as ps: agg = ps.service("aggregator", ...)``. Leaving the block stops every
    process whatever happened; when the body raised, each process's output is added to that
    exception; when it passed, the first process (in start order) that exited badly is the failure."""

    def __init__(self) -> None:
        self.procs: list[ServiceProcess] = []

    def add(self, proc: ServiceProcess) -> ServiceProcess:
        self.procs.append(proc)
        if proc.proc is None:
            proc.start()
        return proc

    def service(self, module: str, **kw) -> ServiceProcess:
        return self.add(ServiceProcess.service(module, **kw))

    def run(self, argv: Sequence[str], **kw) -> ServiceProcess:
        return self.add(ServiceProcess(argv, **kw))

    def __getitem__(self, name: str) -> ServiceProcess:
        """The process of that name started last (a restarted service's current process)."""
        return next(p for p in reversed(self.procs) if p.name == name)

    def stop_all(self, timeout_s: float | None = None) -> None:
        for p in reversed(self.procs):
            p.stop(timeout_s)

    def __enter__(self) -> Processes:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.stop_all()
        if exc is not None:
            for p in self.procs:
                if not (isinstance(exc, ProcessFailed) and exc.proc is p):
                    exc.add_note(p.describe())
            return
        for p in self.procs:
            p.check()
