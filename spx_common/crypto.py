"""Broker credentials at rest: authenticated encryption with key rotation.

Tokens are AES-256-GCM sealed with a key from a :class:`KeyRing`.  The ring comes from the
environment (``SPX_CREDENTIALS_KEYS``) or a key file (``SPX_CREDENTIALS_KEY_FILE``); both hold
one ``<key id>:<urlsafe base64 of 32 bytes>`` per entry (comma- or newline-separated).  The
FIRST key is the primary: new secrets are sealed with it; every listed key can still open old
ones, so rotation is "put the new key first, run :meth:`KeyRing.rotate` over the stored
secrets, then drop the old key".

A sealed secret is the text ``v1.<key id>.<urlsafe base64(nonce | ciphertext+tag)>``.  The
``context`` (e.g. ``"tradier:alice:access_token"``) is authenticated as associated data, so a
ciphertext copied onto another user or field does not open.  Plaintext is handed out wrapped in
:class:`Secret`, whose ``repr``/``str`` never show the value (safe in logs and status replies).
Where sealed secrets are kept is the caller's business (the broker keeps them in the store's
``broker_credentials`` table: ``services/broker/credentials.py``).
"""

from __future__ import annotations

import base64
import binascii
import os
import secrets
from pathlib import Path
from collections.abc import Mapping

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from spx_common.errors import Fatal

__all__ = ["CryptoError", "Secret", "KeyRing", "generate_key"]

_VERSION = "v1"
_NONCE = 12


class CryptoError(Fatal, ValueError):
    """A key or sealed secret that cannot be used (the message never contains secret material)."""


class Secret:
    """A secret string that does not print itself. ``reveal()`` returns the value."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __bool__(self) -> bool:
        return bool(self._value)

    def __repr__(self) -> str:
        return "Secret('***')" if self._value else "Secret('')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and secrets.compare_digest(self._value, other._value)

    def __hash__(self) -> int:
        return hash(("Secret", len(self._value)))


def generate_key(key_id: str) -> str:
    """A fresh ring entry ``<key id>:<base64 key>`` (32 random bytes)."""
    _check_kid(key_id)
    return f"{key_id}:{base64.urlsafe_b64encode(os.urandom(32)).decode()}"


def _check_kid(kid: str) -> None:
    if not kid or not kid.replace("-", "").replace("_", "").isalnum() or len(kid) > 32:
        raise CryptoError(f"bad key id {kid!r}: 1-32 letters, digits, '-' or '_'")


class KeyRing:
    """Ordered key ids -> AES-256 keys; the first is the primary (used to seal)."""

    def __init__(self, keys: list[tuple[str, bytes]]) -> None:
        if not keys:
            raise CryptoError("empty key ring: set SPX_CREDENTIALS_KEYS or SPX_CREDENTIALS_KEY_FILE")
        seen: dict[str, AESGCM] = {}
        for kid, key in keys:
            _check_kid(kid)
            if len(key) != 32:
                raise CryptoError(f"key {kid!r} is {len(key)} bytes; AES-256 needs 32")
            if kid in seen:
                raise CryptoError(f"key id {kid!r} appears twice")
            seen[kid] = AESGCM(key)
        self.primary = keys[0][0]
        self._keys = seen

    @property
    def key_ids(self) -> list[str]:
        return list(self._keys)

    @classmethod
    def parse(cls, text: str) -> KeyRing:
        """Parse ``id:base64`` entries separated by commas or newlines (``#`` starts a comment)."""
        keys = []
        for raw in text.replace(",", "\n").splitlines():
            entry = raw.split("#", 1)[0].strip()
            if not entry:
                continue
            kid, sep, b64 = entry.partition(":")
            if not sep:
                raise CryptoError("key ring entry without ':' (expected <key id>:<base64 key>)")
            try:
                key = base64.urlsafe_b64decode(b64.strip().encode())
            except (binascii.Error, ValueError):
                raise CryptoError(f"key {kid.strip()!r} is not valid base64") from None
            keys.append((kid.strip(), key))
        return cls(keys)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> KeyRing:
        """From ``SPX_CREDENTIALS_KEYS`` or else the file named by ``SPX_CREDENTIALS_KEY_FILE``."""
        env = os.environ if environ is None else environ
        if env.get("SPX_CREDENTIALS_KEYS"):
            return cls.parse(env["SPX_CREDENTIALS_KEYS"])
        path = env.get("SPX_CREDENTIALS_KEY_FILE")
        if path:
            p = Path(path)
            if not p.is_file():
                raise CryptoError(f"key file {path} does not exist")
            if p.stat().st_mode & 0o077:
                raise CryptoError(f"key file {path} is readable by group/others; chmod 600 it")
            return cls.parse(p.read_text())
        raise CryptoError("no credentials key: set SPX_CREDENTIALS_KEYS or SPX_CREDENTIALS_KEY_FILE")

    def seal(self, plaintext: str | Secret, context: str) -> str:
        """Encrypt and authenticate ``plaintext`` bound to ``context`` with the primary key."""
        value = plaintext.reveal() if isinstance(plaintext, Secret) else plaintext
        nonce = os.urandom(_NONCE)
        ct = self._keys[self.primary].encrypt(nonce, value.encode(), context.encode())
        return f"{_VERSION}.{self.primary}.{base64.urlsafe_b64encode(nonce + ct).decode()}"

    def open(self, token: str, context: str) -> Secret:
        """Decrypt a sealed secret; raise :class:`CryptoError` if it was altered, moved or the key is gone."""
        try:
            version, kid, b64 = token.split(".", 2)
        except (ValueError, AttributeError):
            raise CryptoError("sealed secret is not v1.<key id>.<data>") from None
        if version != _VERSION:
            raise CryptoError(f"sealed secret version {version!r} not supported")
        aead = self._keys.get(kid)
        if aead is None:
            raise CryptoError(f"sealed with key {kid!r}, which is not in the key ring")
        try:
            raw = base64.urlsafe_b64decode(b64.encode())
            return Secret(aead.decrypt(raw[:_NONCE], raw[_NONCE:], context.encode()).decode())
        except (InvalidTag, binascii.Error, ValueError):
            raise CryptoError(f"sealed secret for {context!r} failed authentication (altered, or wrong context)") from None

    def needs_rotation(self, token: str) -> bool:
        return not token.startswith(f"{_VERSION}.{self.primary}.")

    def rotate(self, token: str, context: str) -> str:
        """Re-seal with the primary key (a no-op when already sealed with it)."""
        return token if not self.needs_rotation(token) else self.seal(self.open(token, context), context)
