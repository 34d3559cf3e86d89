"""The broker's ``credentials.*`` RPC methods: the gateway forwards an authenticated user's requests here.

The broker owns the key ring: a token arrives in ``credentials.set`` (over the loopback REQ/REP
socket), is sealed into the store at once and is never part of a reply, a log line or an error text.
Every method acts on the ``user`` the caller names - the gateway passes the user of the verified
websocket token, never a user id from the browser.

Replies are maps with ``ok: true``; a refusal is the RPC's one error reply (``Reply.error``, made by
:class:`~spx_common.rpc.RpcServer` from :class:`Refused`), never a document inside a successful reply,
with a code of ``no_store`` (the database is not reachable), ``no_user`` (no such record, ``spx users add``),
``bad_request`` (token or account id malformed), ``no_key`` (``SPX_CREDENTIALS_KEYS`` missing) or
``test_failed`` (the balances call failed; the message names the error class and HTTP status only).
Refusals are counted in ``broker_credentials_requests_total{method,outcome}``.

A stored token is used by the broker's account runner from its next start (``spx users`` says the
same), except for an account stopped by an expired token: it resumes with the new token at once
(``BrokerService.on_credentials_stored``); ``credentials.status`` reports what the running broker
would do with the record now.
"""

from __future__ import annotations

import asyncio
import re
import time

from services.broker import credentials as creds
from spx_common import errors
from spx_common.crypto import CryptoError, KeyRing

ACCOUNT = re.compile(r"^[A-Za-z0-9_-]{1,32}\Z")
TOKEN_MAX = 512
#: the longest a ``credentials.test`` may hold the broker's RPC loop (no retries, no rate waits)
TEST_BOUND_S = 8.0


class Refused(errors.Refused):
    """A ``credentials.*`` request refused with ``code`` (answered as the RPC's error reply)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message, code=code)


def register(svc) -> None:
    """Register ``credentials.set|test|remove|status`` on a running broker (``svc``: BrokerService)."""
    counter = svc.metrics.counter("broker_credentials_requests_total",
                                  "credentials.* requests (gateway), by method and outcome.", ["method", "outcome"])

    def wrap(method: str, fn):
        async def handler(params: dict) -> dict:
            try:
                user = params.get("user")
                if not isinstance(user, str) or not user:
                    raise Refused("bad_request", "no user")
                out = await fn(svc, user, params)
                counter.inc(method=method, outcome="ok")
                return {"ok": True, **out}
            except errors.SpxError as exc:
                counter.inc(method=method, outcome=exc.code)
                raise
            except Exception as exc:  # noqa: BLE001 - never let an exception text (it could hold the token) out
                counter.inc(method=method, outcome="internal")
                svc.log.error("credentials.%s for %s failed: %s", method.split(".")[-1], params.get("user"),
                              type(exc).__name__)
                raise errors.Internal(f"internal error ({type(exc).__name__})") from None
        return handler

    for name, fn in (("credentials.set", _set), ("credentials.test", _test), ("credentials.remove", _remove),
                     ("credentials.status", _status)):
        # off the request loop (a test waits up to TEST_BOUND_S for Tradier): status keeps answering
        svc.rpc(name, wrap(name, fn), concurrent=True)


def _store(svc):
    store = getattr(svc, "_store", None) or getattr(svc, "_credentials_store", None)
    if store is None:
        raise Refused("no_store", "the broker has no store connection (database down or not configured)")
    return store


async def _open_store(svc):
    """The broker's store, or one opened on first use (a broker that trades without reading users)."""
    if getattr(svc, "_store", None) is None and getattr(svc, "_credentials_store", None) is None:
        try:
            svc._credentials_store = await asyncio.to_thread(creds.open_for_cli, svc.runtime)
        except Exception as exc:  # noqa: BLE001 - the database is optional for trading
            raise Refused("no_store", f"the store cannot be opened ({type(exc).__name__})") from None
    return _store(svc)


async def _record(svc, user: str) -> dict:
    store = await _open_store(svc)
    try:
        row = await asyncio.to_thread(store.user, user)
    except Exception as exc:  # noqa: BLE001
        raise Refused("no_store", f"store not readable ({type(exc).__name__})") from None
    if row is None:
        raise Refused("no_user", f"no user record for {user!r} (an operator adds it with 'spx users add')")
    return row


def _ring() -> KeyRing:
    try:
        return KeyRing.from_env()
    except CryptoError as exc:
        raise Refused("no_key", f"the broker has no credentials key ring: {exc}") from None


async def _set(svc, user: str, p: dict) -> dict:
    token, account = p.get("token"), p.get("account_id")
    if not isinstance(token, str) or not 8 <= len(token) <= TOKEN_MAX or any(c.isspace() or not c.isprintable()
                                                                             for c in token):
        raise Refused("bad_request", f"token: 8-{TOKEN_MAX} printable characters without spaces")
    if not isinstance(account, str) or not ACCOUNT.match(account):
        raise Refused("bad_request", "account_id: 1-32 letters, digits, '_' or '-'")
    await _record(svc, user)
    ring = _ring()
    await asyncio.to_thread(creds.save, _store(svc), ring, user, token, account)
    svc.log.info("credentials of %s sealed (account %s, key %s)", user, account, ring.primary)
    hook = getattr(svc, "on_credentials_stored", None)
    if hook is not None:  # an account stopped by an expired token resumes with the new one
        await hook(user)
    return {"user": user, "account_id": account, "stored": True}


async def _remove(svc, user: str, p: dict) -> dict:
    await _record(svc, user)
    gone = await asyncio.to_thread(_store(svc).delete_credentials, user, creds.BROKER)
    svc.log.info("credentials of %s %s", user, "removed" if gone else "not stored (remove asked)")
    return {"user": user, "removed": bool(gone)}


async def _status(svc, user: str, p: dict) -> dict:
    row = await _record(svc, user)
    st = await asyncio.to_thread(creds.status, _store(svc), row, svc.cfg, dict(svc.flags))
    return {k: st.get(k) for k in ("user", "broker", "environment", "token_stored", "account_id", "last_ok_ns",
                                   "last_error", "execution_allowed", "reason")}


async def _test(svc, user: str, p: dict) -> dict:
    await _record(svc, user)
    ring = _ring()
    cfg = svc.cfg.model_copy(update={"max_retries": 0, "max_rate_wait_s": 0.5,
                                     "request_timeout_s": min(svc.cfg.request_timeout_s, TEST_BOUND_S / 2)})
    start = time.monotonic()
    try:
        res = await asyncio.wait_for(asyncio.to_thread(creds.test, _store(svc), ring, user, cfg), TEST_BOUND_S)
    except TimeoutError:
        raise Refused("test_failed", f"no answer from the broker's API within {TEST_BOUND_S:g} s") from None
    if not res.get("ok"):
        raise Refused("test_failed", f"{res.get('environment')}: {res.get('error')}")
    return {"user": user, "environment": res.get("environment"), "account_id": res.get("account_id"),
            "account_type": res.get("account_type"), "option_buying_power": res.get("option_buying_power"),
            "total_equity": res.get("total_equity"), "elapsed_ms": round((time.monotonic() - start) * 1000, 1)}
