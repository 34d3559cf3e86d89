"""Option symbols: the OCC 21-character form, Tradier's form and Massive's ``O:`` form.

* OCC: root left-justified and padded with spaces to 6 characters, ``YYMMDD``, ``C``/``P``,
  strike x 1000 in 8 digits: ``SPXW  260220C05000000``.
* Tradier: the same without the padding: ``SPXW260220C05000000`` (the root is everything but the
  last 15 characters).
* Massive: the Tradier form prefixed with ``O:``: ``O:SPXW260220C05000000``.

:func:`parse` accepts any of the three and returns an :class:`OptionSymbol`; its ``occ``,
``tradier`` and ``massive`` properties format it back.  Anything that is not a well-formed symbol
raises :class:`OptionSymbolError` naming the symbol and what is wrong with it.
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from spx_common.errors import Refused

__all__ = ["OptionSymbolError", "OptionSymbol", "parse", "build", "to_occ", "to_tradier", "to_massive", "underlying_for_root"]

_ROOT_RE = re.compile(r"^[A-Z][A-Z0-9]{0,5}\Z")
_TAIL_RE = re.compile(r"^(\d{6})([CP])(\d{8})\Z")
_MAX_STRIKE = Decimal("99999.999")

# Index option roots whose orders name a different underlying (Tradier ``symbol`` field).
_ROOT_UNDERLYING = {"SPXW": "SPX", "SPXPM": "SPX", "NDXP": "NDX", "RUTW": "RUT", "VIXW": "VIX", "XSPW": "XSP"}


class OptionSymbolError(Refused, ValueError):
    """A string that is not a valid option symbol in any supported form."""


@dataclass(frozen=True, slots=True)
class OptionSymbol:
    """One listed option: root, expiration, call/put and strike (a Decimal, exact to 1/1000)."""

    root: str
    expiration: dt.date
    right: str  # "C" or "P"
    strike: Decimal

    def __post_init__(self) -> None:
        if not isinstance(self.root, str) or not _ROOT_RE.match(self.root):
            raise OptionSymbolError(f"invalid option root {self.root!r}: 1-6 upper-case letters/digits, starting with a letter")
        if self.right not in ("C", "P"):
            raise OptionSymbolError(f"invalid option right {self.right!r}: expected 'C' or 'P'")
        if not (2000 <= self.expiration.year <= 2099):
            raise OptionSymbolError(f"expiration {self.expiration} outside 2000-2099")
        if self.strike <= 0 or self.strike > _MAX_STRIKE:
            raise OptionSymbolError(f"strike {self.strike} outside (0, {_MAX_STRIKE}]")
        if (self.strike * 1000) != (self.strike * 1000).to_integral_value():
            raise OptionSymbolError(f"strike {self.strike} has more than 3 decimals")

    @property
    def option_type(self) -> str:
        """``"call"`` or ``"put"``."""
        return "call" if self.right == "C" else "put"

    @property
    def underlying(self) -> str:
        """The underlying to name in broker orders (``SPX`` for ``SPXW``)."""
        return underlying_for_root(self.root)

    @property
    def _tail(self) -> str:
        return f"{self.expiration:%y%m%d}{self.right}{int(self.strike * 1000):08d}"

    @property
    def occ(self) -> str:
        """OCC 21-character form, root padded to 6: ``SPXW  260220C05000000``."""
        return f"{self.root:<6}{self._tail}"

    @property
    def tradier(self) -> str:
        """Tradier form, no padding: ``SPXW260220C05000000``."""
        return f"{self.root}{self._tail}"

    @property
    def massive(self) -> str:
        """Massive form: ``O:SPXW260220C05000000``."""
        return f"O:{self.root}{self._tail}"

    def __str__(self) -> str:
        return self.tradier


def underlying_for_root(root: str) -> str:
    """The underlying symbol for an option root (``SPXW`` -> ``SPX``; equity roots map to themselves)."""
    return _ROOT_UNDERLYING.get(root, root)


def parse(symbol: str) -> OptionSymbol:
    """Parse an OCC, Tradier or Massive option symbol; raise :class:`OptionSymbolError` if invalid."""
    if not isinstance(symbol, str):
        raise OptionSymbolError(f"option symbol must be a string, got {type(symbol).__name__}")
    s = symbol
    if s.startswith("O:"):
        s = s[2:]
        if " " in s:
            raise OptionSymbolError(f"invalid Massive option symbol {symbol!r}: no spaces allowed after 'O:'")
    if len(s) < 16:
        raise OptionSymbolError(f"invalid option symbol {symbol!r}: too short (need root + YYMMDD + C/P + 8 strike digits)")
    head, tail = s[:-15], s[-15:]
    if " " in head:
        if len(s) != 21 or head != head.rstrip(" ").ljust(6) or head.startswith(" "):
            raise OptionSymbolError(f"invalid OCC option symbol {symbol!r}: padded form must be exactly 21 characters")
        root = head.rstrip(" ")
    else:
        root = head
    if not _ROOT_RE.match(root):
        raise OptionSymbolError(f"invalid option symbol {symbol!r}: bad root {root!r}")
    m = _TAIL_RE.match(tail)
    if not m:
        raise OptionSymbolError(f"invalid option symbol {symbol!r}: expected YYMMDD, C or P, then 8 strike digits after the root")
    ymd, right, strike_digits = m.groups()
    try:
        expiration = dt.date(2000 + int(ymd[:2]), int(ymd[2:4]), int(ymd[4:6]))
    except ValueError as exc:
        raise OptionSymbolError(f"invalid option symbol {symbol!r}: bad expiration {ymd!r} ({exc})") from None
    strike = Decimal(int(strike_digits)) / 1000
    if strike <= 0:
        raise OptionSymbolError(f"invalid option symbol {symbol!r}: strike must be positive")
    return OptionSymbol(root, expiration, right, strike)


def build(root: str, expiration: dt.date | str, right: str, strike: float | str | Decimal) -> OptionSymbol:
    """Build a symbol from parts; ``right`` may be ``C``/``P``/``call``/``put``, expiration a date or ``YYYY-MM-DD``."""
    if isinstance(expiration, str):
        try:
            expiration = dt.date.fromisoformat(expiration)
        except ValueError:
            raise OptionSymbolError(f"bad expiration {expiration!r}: expected YYYY-MM-DD") from None
    r = {"c": "C", "call": "C", "p": "P", "put": "P"}.get(str(right).lower())
    if r is None:
        raise OptionSymbolError(f"bad option right {right!r}: expected C, P, call or put")
    try:
        k = Decimal(str(strike))
    except (InvalidOperation, ValueError):
        raise OptionSymbolError(f"bad strike {strike!r}") from None
    if not k.is_finite():
        raise OptionSymbolError(f"bad strike {strike!r}")
    return OptionSymbol(str(root).upper(), expiration, r, k)


def to_occ(symbol: str) -> str:
    """Any supported form -> OCC 21-character form."""
    return parse(symbol).occ


def to_tradier(symbol: str) -> str:
    """Any supported form -> Tradier form."""
    return parse(symbol).tradier


def to_massive(symbol: str) -> str:
    """Any supported form -> Massive ``O:`` form."""
    return parse(symbol).massive
