"""One exception tree (spx_common/errors.py): every module's errors are kinds of ``SpxError`` (retryable,
refused, fatal), and ``RpcServer`` is the one place an exception becomes a reply (one error document), which
the client raises again as the kind its code names. The credentials RPC refuses with that error reply, never
with an error document inside a successful one."""

from __future__ import annotations

import asyncio
import logging

import pytest
import zmq
import zmq.asyncio

from spx_common import errors
from spx_common.errors import Fatal, Internal, RateLimited, Refused, Retryable, SpxError
from spx_common.metrics import Registry
from spx_common.rpc import (AsyncRpcClient, RpcError, RpcFatal, RpcRefused, RpcServer, RpcTimeout, RpcUnavailable,
                            rpc_error)


def test_the_tree_and_the_kinds_of_the_modules_errors():
    from services.broker import tradier as t
    from services.feed.rest import RestError, RestFatal, RestRetryable

    for cls in (Retryable, RateLimited, Refused, Fatal, Internal, RpcError, RestError, t.TradierError):
        assert issubclass(cls, SpxError)
    assert Retryable.retryable and RateLimited.retryable and not Refused.retryable and not Fatal.retryable
    assert SpxError("x", code="mine").code == "mine" and Refused("no").code == "refused"
    # RestError(kind=...) is now two kinds of the tree; .kind still says which
    r, f = RestRetryable(503, "down", "u"), RestFatal(403, "not entitled", "u")
    assert isinstance(r, Retryable) and r.kind == "retryable" and r.retryable and r.status == 503
    assert isinstance(f, Fatal) and f.kind == "fatal" and not f.retryable and "403" in str(f)
    # TradierError.retryable is now the kind: unchanged flags
    retryable = {t.TradierTransportError, t.TradierRateLimited, t.TradierServerError}
    for cls in (t.TradierError, t.TradierTransportError, t.TradierHTTPError, t.TradierBadRequest,
                t.TradierAuthError, t.TradierTokenExpired, t.TradierNotFound, t.TradierRateLimited,
                t.TradierServerError, t.TradierRejected, t.TradierBadResponse, t.PlacementUnresolved):
        assert cls.retryable is (cls in retryable) and issubclass(cls, Retryable) is (cls in retryable), cls
    assert issubclass(t.TradierTokenExpired, Fatal) and issubclass(t.TradierRejected, Refused)
    assert issubclass(t.TradierRateLimited, RateLimited)
    # an error reply's code names its kind
    for code, kind in (("timeout", RpcUnavailable), ("busy", RpcUnavailable), ("bad_request", RpcRefused),
                       ("no_user", RpcRefused), ("internal", RpcFatal), ("unknown_method", RpcFatal),
                       ("no_key", RpcFatal)):
        exc = rpc_error(code, "m")
        assert type(exc) is kind and exc.code == code and exc.message == "m" and str(exc) == f"{code}: m"
    assert isinstance(RpcTimeout("e", "m", 1, 1.0), Retryable) and errors.kind_of("whatever") is Refused


def test_rpc_server_is_the_one_place_an_error_becomes_a_reply(run_dir):
    async def scenario():
        actx = zmq.asyncio.Context()
        stop = asyncio.Event()
        srv = RpcServer(actx, f"ipc://{run_dir}/e.rep")

        def raiser(exc):
            def handler(p):
                raise exc
            return handler

        srv.register("refuse", raiser(Refused("not you", code="no_user")))
        srv.register("later", raiser(Retryable("database down")))
        srv.register("fatal", raiser(Fatal("no key ring", code="no_key")))
        srv.register("bug", raiser(KeyError("secret-ish text")))
        task = asyncio.ensure_future(srv.serve(stop))
        c = AsyncRpcClient(actx, srv.endpoint, timeout_s=2, retries=0)
        got = {}
        for method in ("refuse", "later", "fatal", "bug"):
            with pytest.raises(RpcError) as exc:
                await c.call(method)
            got[method] = (type(exc.value), exc.value.code, exc.value.message)
        assert got == {"refuse": (RpcRefused, "no_user", "not you"),
                       "later": (RpcUnavailable, "unavailable", "database down"),
                       "fatal": (RpcFatal, "no_key", "no key ring"),
                       "bug": (RpcFatal, "internal", "KeyError: 'secret-ish text'")}
        assert srv.requests.value(method="refuse", outcome="no_user") == 1
        stop.set()
        await task
        c.close()
        srv.close()
        actx.term()

    asyncio.run(scenario())


class _FakeBroker:
    """What ``credentials_rpc.register`` uses of the broker: its metrics, log and RPC registration."""

    def __init__(self, server: RpcServer) -> None:
        self.metrics = Registry()
        self.log = logging.getLogger("test.broker")
        self.server = server
        self._store = None
        self._credentials_store = None

    def rpc(self, name, handler, *, concurrent=False) -> None:
        self.server.register(name, handler, concurrent=concurrent)


def test_credentials_refusals_are_error_replies_not_documents_in_a_successful_reply(run_dir):
    from services.broker import credentials_rpc

    async def scenario():
        actx = zmq.asyncio.Context()
        stop = asyncio.Event()
        srv = RpcServer(actx, f"ipc://{run_dir}/c.rep")
        broker = _FakeBroker(srv)
        broker._credentials_store = object()  # a store is there: the request is refused before it is used
        credentials_rpc.register(broker)
        task = asyncio.ensure_future(srv.serve(stop))
        c = AsyncRpcClient(actx, srv.endpoint, timeout_s=2, retries=0)
        with pytest.raises(RpcRefused) as exc:
            await c.call("credentials.set", {"user": "", "token": "x"})
        assert exc.value.code == "bad_request" and exc.value.message == "no user"
        with pytest.raises(RpcRefused) as exc:
            await c.call("credentials.set", {"user": "alice", "token": "short", "account_id": "A1"})
        assert exc.value.code == "bad_request" and "token" in exc.value.message
        with pytest.raises(RpcRefused) as exc:  # the store fails: said by class name only
            await c.call("credentials.status", {"user": "alice"})
        assert (exc.value.code, exc.value.message) == ("no_store", "store not readable (AttributeError)")
        counter = broker.metrics.render()
        assert 'broker_credentials_requests_total{method="credentials.set",outcome="bad_request"} 2' in counter
        assert 'outcome="no_store"} 1' in counter
        stop.set()
        await task
        c.close()
        srv.close()
        actx.term()

    asyncio.run(scenario())


def test_no_one_off_exception_roots_in_the_mesh():
    """Every exception class of spx_common and services is a kind of SpxError (directly or through another
    one), so ``except SpxError`` catches every deliberate failure and a new error picks its kind. The one
    exception: a BaseException the detector's worker raises to stop a plugin's CPU hog (it must get past
    ``except Exception``)."""
    import ast
    import importlib
    import inspect
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    allowed = {"services.detector.worker.CpuLimit"}
    builtin_roots = {"Exception", "ValueError", "RuntimeError", "KeyError", "TypeError", "OSError", "LookupError",
                     "BaseException", "ArithmeticError", "IOError"}
    loose = []
    for pkg in ("spx_common", "services"):
        for path in sorted((root / pkg).rglob("*.py")):
            tree = ast.parse(path.read_text())
            mod = ".".join(path.relative_to(root).with_suffix("").parts)
            for node in tree.body:
                if isinstance(node, ast.ClassDef) and any(isinstance(b, ast.Name) and b.id in builtin_roots
                                                           for b in node.bases):
                    name = f"{mod}.{node.name}"
                    if name in allowed:
                        continue
                    cls = getattr(importlib.import_module(mod), node.name)
                    if inspect.isclass(cls) and issubclass(cls, BaseException) and not issubclass(cls, SpxError):
                        loose.append(name)
    assert not loose, f"exception classes outside the SpxError tree (pick Retryable, Refused or Fatal): {loose}"
