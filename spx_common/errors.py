"""The mesh's one exception tree (drawn after httpx's ``_exceptions.py``: a few kinds a caller acts on, the
vendor- and module-specific classes below them).

::

    SpxError                  every failure raised on purpose: ``code`` (snake_case, the RPC error code), ``message``
    ├── Retryable             the same request may succeed later: timeouts, connections, HTTP 5xx, busy
    │   └── RateLimited       ... after ``retry_after_s`` (None: unknown)
    ├── Refused               understood and refused: bad input, an unknown user, a policy; the same request will fail
    └── Fatal                 nothing of this kind works until an operator acts: configuration, an expired token, a
                              missing key, a bug (``internal``)

What a caller does with each: retry a :class:`Retryable` (with :class:`spx_common.retry.Backoff`), report a
:class:`Refused` to whoever asked, stop and alert on a :class:`Fatal`. ``exc.retryable`` says the same as
``isinstance(exc, Retryable)`` for code that only holds the flag.

Module errors subclass one of these (``RestError``, ``TradierError``, ``RpcError``...), so ``except SpxError``
catches every failure of the mesh and nothing else. Translate at the boundary with ``raise ... from exc``.

Over request/reply, :class:`~spx_common.rpc.RpcServer` is the one place an exception becomes a reply: an
:class:`SpxError` becomes the one error document (:class:`~spx_common.models.ErrorInfo`: ``code``,
``message``), anything else ``internal``; the client raises it again as an
:class:`~spx_common.rpc.RpcError` of the kind its code names (:func:`kind_of`).
"""

from __future__ import annotations


class SpxError(Exception):
    """Root of every failure the mesh raises on purpose."""

    #: the code a reply carries when no instance code is given
    code: str = "error"
    retryable: bool = False

    def __init__(self, *args: object, code: str | None = None) -> None:
        super().__init__(*args)
        if code is not None:
            self.code = code
        #: the text a reply carries (the first argument; subclasses with several set their own)
        self.message = str(args[0]) if args else ""


class Retryable(SpxError):
    """The same request may succeed later (timeout, connection, HTTP 5xx, busy)."""

    code = "unavailable"
    retryable = True


class RateLimited(Retryable):
    """Refused for now by a rate limit: retry after ``retry_after_s`` (None: not said)."""

    code = "rate_limited"
    retry_after_s: float | None = None


class Refused(SpxError):
    """Understood and refused (bad input, unknown user, policy): the same request will fail again."""

    code = "refused"


class Fatal(SpxError):
    """Nothing of this kind works until an operator acts (configuration, credentials, a bug)."""

    code = "fatal"


class Internal(Fatal):
    """A bug: an exception nobody expected, answered as ``internal`` (its text never leaves the process when
    it could hold a secret)."""

    code = "internal"


#: error codes of replies whose request may succeed when sent again
RETRYABLE_CODES = frozenset({"timeout", "busy", "unavailable", "rate_limited"})
#: error codes of replies that no request of the kind will get past until an operator acts
FATAL_CODES = frozenset({"internal", "fatal", "bad_reply", "unknown_method", "no_key"})


def kind_of(code: str) -> type[SpxError]:
    """The kind of failure an error code names (codes not listed are refusals)."""
    if code in RETRYABLE_CODES:
        return Retryable
    if code in FATAL_CODES:
        return Fatal
    return Refused
