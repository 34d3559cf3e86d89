"""Request/reply: a ROUTER server that turns every failure into one coded reply, and clients that never
wedge.

The client is the ZeroMQ guide's "lazy pirate": a REQ socket with a timeout; after a missed reply the
socket is closed with LINGER 0 and replaced, and the request is retried a bounded number of times, so a
dead server can never wedge it. :class:`PirateCore` is that protocol without I/O (the request's bytes,
the attempts and their timeout, a reply's bytes to a result or an error, the socket's options);
:class:`RpcClient` (blocking) and :class:`AsyncRpcClient` (asyncio) are the two thin loops around it.

Every reply is a :class:`~spx_common.models.Reply`; failures carry one error shape
(:class:`~spx_common.models.ErrorInfo`), made in one place, :meth:`RpcServer.handle`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import msgspec
import zmq
import zmq.asyncio

from spx_common import codec
from spx_common.codec import FrameError
from spx_common.curve import CurveKeys
from spx_common.errors import Fatal, Refused, Retryable, SpxError, kind_of
from spx_common.metrics import Registry
from spx_common.models import ErrorInfo, Reply
from spx_common.sockets import ensure_ipc_dir

log = logging.getLogger("spx.bus")


class RpcError(SpxError, RuntimeError):
    """A request that failed: ``code`` is the reply's error code (bad_request, unknown_method, refused,
    internal, timeout, busy, unavailable, or a method's own). Clients raise it as the subclass of its
    kind in the :mod:`~spx_common.errors` tree (:func:`rpc_error`); a handler may raise it (or any
    :class:`~spx_common.errors.SpxError`) to refuse a request with a code."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}", code=code)
        self.message = message


class RpcUnavailable(RpcError, Retryable):
    """No answer, or "not now" (timeout, busy, unavailable): the same request may succeed later."""


class RpcRefused(RpcError, Refused):
    """The server refused the request (bad_request, a method's own refusal codes)."""


class RpcFatal(RpcError, Fatal):
    """The server failed (internal), does not know the method, or answered what is not a reply."""


_RPC_KINDS: dict[type[SpxError], type[RpcError]] = {Retryable: RpcUnavailable, Refused: RpcRefused, Fatal: RpcFatal}


def rpc_error(code: str, message: str) -> RpcError:
    """The :class:`RpcError` of an error reply, of the kind its code names (:func:`~spx_common.errors.kind_of`)."""
    return _RPC_KINDS[kind_of(code)](code, message)


class RpcTimeout(RpcUnavailable):
    def __init__(self, endpoint: str, method: str, attempts: int, timeout_s: float) -> None:
        super().__init__(
            "timeout", f"no reply from {endpoint} to {method!r} after {attempts} attempt(s) of {timeout_s:.1f}s"
        )


_REPLY_DECODER = msgspec.msgpack.Decoder(Reply)


def encode_request(method: str, params: Any) -> list[bytes]:
    """The frames of a request (``[method, payload]``, after the REQ socket's empty delimiter)."""
    payload = codec.encode_payload("doc", params or {}, src="rpc", session="-", seq=0, event_ns=0)
    return [method.encode(), payload]


def decode_reply(parts: list[bytes]) -> Any:
    """The result of a reply's frames, or the :class:`RpcError` it carries raised."""
    try:
        frame = codec.decode_frames(parts)
        reply: Reply = frame.body()
    except FrameError as exc:
        raise rpc_error("bad_reply", str(exc)) from exc
    if not reply.ok:
        err = reply.error or ErrorInfo(code="internal", message="error without detail")
        raise rpc_error(err.code, err.message)
    return reply.result


def encode_reply(ok: bool, result: Any, code: str = "", message: str = "") -> bytes:
    """A reply's payload: the result, or the one error shape."""
    reply = Reply(ok=ok, result=result, error=None if ok else ErrorInfo(code=code, message=message))
    return codec.encode_payload("reply", reply, src="rpc", session="-", seq=0, event_ns=0)


@dataclass(frozen=True, slots=True)
class Attempt:
    """One call's plan: the request's frames, how many sends, how long to wait for each."""

    method: str
    request: list[bytes]
    attempts: int
    timeout_s: float

    @property
    def timeout_ms(self) -> int:
        return int(self.timeout_s * 1000)


class PirateCore:
    """The lazy-pirate client without I/O, shared by :class:`RpcClient` and :class:`AsyncRpcClient`."""

    def __init__(self, endpoint: str, *, timeout_s: float = 2.0, retries: int = 2, curve: CurveKeys | None = None,
                 peer: str = "") -> None:
        self.endpoint, self.timeout_s, self.retries = endpoint, timeout_s, retries
        self.curve, self.peer = curve, peer

    def plan(self, method: str, params: Any, timeout_s: float | None, retries: int | None) -> Attempt:
        return Attempt(method, encode_request(method, params), 1 + (self.retries if retries is None else retries),
                       self.timeout_s if timeout_s is None else timeout_s)

    def setup(self, sock: zmq.Socket) -> None:
        """A new REQ socket's options (LINGER 0: a closed socket never holds the process) and connection."""
        sock.setsockopt(zmq.LINGER, 0)
        if self.curve is not None:
            self.curve.make_client(sock, self.peer)
        sock.connect(self.endpoint)

    @staticmethod
    def reply(parts: list[bytes]) -> Any:
        return decode_reply(parts)

    def timed_out(self, attempt: Attempt) -> RpcTimeout:
        return RpcTimeout(self.endpoint, attempt.method, attempt.attempts, attempt.timeout_s)


class _PirateSocket:
    """The REQ socket of a lazy-pirate client: made on first use, closed (LINGER 0) after a missed reply."""

    core: PirateCore
    sock: Any = None

    def _socket(self, ctx: zmq.Context) -> Any:
        if self.sock is None:
            self.sock = ctx.socket(zmq.REQ)
            self.core.setup(self.sock)
        return self.sock

    def _reset(self) -> None:
        if self.sock is not None:
            self.sock.close(0)
            self.sock = None

    def close(self) -> None:
        self._reset()

    @property
    def endpoint(self) -> str:
        return self.core.endpoint

    @property
    def timeout_s(self) -> float:
        return self.core.timeout_s

    @property
    def retries(self) -> int:
        return self.core.retries


class RpcClient(_PirateSocket):
    """Blocking lazy-pirate client. One outstanding request at a time."""

    def __init__(self, ctx: zmq.Context, endpoint: str, *, timeout_s: float = 2.0, retries: int = 2,
                 curve: CurveKeys | None = None, peer: str = "") -> None:
        self.ctx = ctx
        self.core = PirateCore(endpoint, timeout_s=timeout_s, retries=retries, curve=curve, peer=peer)
        self.sock: zmq.Socket | None = None

    def call(self, method: str, params: Any = None, *, timeout_s: float | None = None, retries: int | None = None):
        plan = self.core.plan(method, params, timeout_s, retries)
        for _ in range(plan.attempts):
            sock = self._socket(self.ctx)
            sock.send_multipart(plan.request)
            if sock.poll(plan.timeout_ms):
                return self.core.reply(sock.recv_multipart())
            self._reset()
        raise self.core.timed_out(plan)


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


class AsyncRpcClient(_PirateSocket):
    """asyncio lazy-pirate client; concurrent callers are serialized by a lock."""

    def __init__(
        self, actx: zmq.asyncio.Context, endpoint: str, *, timeout_s: float = 2.0, retries: int = 2,
        curve: CurveKeys | None = None, peer: str = "",
    ) -> None:
        self.actx = actx
        self.core = PirateCore(endpoint, timeout_s=timeout_s, retries=retries, curve=curve, peer=peer)
        self.sock: zmq.asyncio.Socket | None = None
        self._lock = asyncio.Lock()

    async def call(self, method: str, params: Any = None, *, timeout_s: float | None = None, retries: int | None = None):
        plan = self.core.plan(method, params, timeout_s, retries)
        async with self._lock:
            for _ in range(plan.attempts):
                sock = self._socket(self.actx)
                await sock.send_multipart(plan.request)
                if await sock.poll(plan.timeout_ms, zmq.POLLIN):
                    return self.core.reply(await sock.recv_multipart())
                self._reset()
        raise self.core.timed_out(plan)


Handler = Callable[[dict], Any] | Callable[[dict], Awaitable[Any]]


class RpcServer:
    """ROUTER socket dispatching ``method -> handler(params)``; every failure becomes a coded reply.

    Handlers receive the request's params (a dict) and return builtins or Structs.  They raise an
    :class:`~spx_common.errors.SpxError` (e.g. :class:`~spx_common.errors.Refused`, :class:`RpcError`)
    for an expected failure: its code and message are the reply's one error document. Any other
    exception is answered as ``internal`` and counted, and the loop goes on. This is the one place an
    exception becomes a reply: a handler never returns an error document inside a successful one.

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
        ensure_ipc_dir(endpoint)
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
            return parts[:1] + [b"", b"reply", encode_reply(False, None, "bad_request", "malformed request")]
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
            out = encode_reply(True, result)
        except SpxError as exc:
            outcome = exc.code
            out = encode_reply(False, None, exc.code, exc.message)
        except Exception as exc:  # the loop never dies on a handler bug
            outcome = "internal"
            log.exception("rpc handler failed", extra={"method": method})
            out = encode_reply(False, None, "internal", f"{type(exc).__name__}: {exc}")
        self.requests.inc(method=method if method in self.handlers else "?", outcome=outcome)
        self.latency.observe((time.perf_counter() - start) * 1000, method=method if method in self.handlers else "?")
        return [ident, b"", b"reply", out]

    async def serve(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            if not await self.sock.poll(200):  # POLLIN, the default
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
            reply = [ident, b"", b"reply", encode_reply(False, None, "busy", f"{method}: {why}; try again")]
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
