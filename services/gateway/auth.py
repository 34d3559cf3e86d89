"""HMAC user tokens with expiry: ``v1.<user>.<expires_s>.<signature>``.

The signature is base64url(HMAC-SHA256(secret, "v1.<user>.<expires_s>")). Tokens are minted by
``spx token USER`` and given at websocket connect (``/ws?token=...``); they unlock the user-scoped
channels (``coach``, ``positions``, ``orders``, ``fills``) of that user only. Pure functions: the
caller supplies the time.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import re
import secrets
from pathlib import Path
from spx_common.errors import Refused

USER_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}\Z")
VERSION = "v1"


class TokenError(Refused, ValueError):
    """A token that cannot be accepted; ``code`` is ``bad_token`` or ``token_expired``."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


def _sign(secret: bytes, payload: str) -> str:
    mac = hmac.new(secret, payload.encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(mac).rstrip(b"=").decode()


def mint(user: str, secret: bytes, expires_s: int) -> str:
    """A token for ``user`` valid until ``expires_s`` (Unix seconds)."""
    if not USER_RE.match(user):
        raise ValueError(f"user must match {USER_RE.pattern}, got {user!r}")
    payload = f"{VERSION}.{user}.{int(expires_s)}"
    return f"{payload}.{_sign(secret, payload)}"


def verify(token: str, secret: bytes, now_s: float) -> tuple[str, int]:
    """Return ``(user, expires_s)`` or raise :class:`TokenError`."""
    if not isinstance(token, str) or len(token) > 512:
        raise TokenError("bad_token", "token must be a string of at most 512 characters")
    parts = token.split(".")
    if len(parts) != 4 or parts[0] != VERSION:
        raise TokenError("bad_token", "token is not of the form v1.<user>.<expires>.<signature>")
    _, user, expires, sig = parts
    if not USER_RE.match(user) or not expires.isdigit():
        raise TokenError("bad_token", "token user or expiry is malformed")
    if not hmac.compare_digest(sig, _sign(secret, f"{VERSION}.{user}.{expires}")):
        raise TokenError("bad_token", "token signature does not match")
    if int(expires) <= now_s:
        raise TokenError("token_expired", "token has expired; mint a new one with 'spx token USER'")
    return user, int(expires)


def load_secret(configured: str, path: Path) -> bytes:
    """The configured secret, else the one in ``path`` (created with 32 random bytes, mode 0600)."""
    if configured:
        return configured.encode()
    try:
        data = path.read_bytes().strip()
        if data:
            return data
    except FileNotFoundError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    value = secrets.token_urlsafe(32).encode()
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:  # another process created it first
        return path.read_bytes().strip()
    try:
        os.write(fd, value)
    finally:
        os.close(fd)
    return value
