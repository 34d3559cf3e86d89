"""Reconciliation of what we believe is held with what the broker holds (pure).

The broker's positions are the truth. :func:`plan` compares the contracts the engine holds per option
symbol with the broker's positions and says, per symbol, how many contracts must be added (found at the
broker: adopted, so exits and flatten cover them) or taken off (a fill we never heard of: exits are then
sized to what is really held, never more). Equities (anything that is not an option symbol) and short
option positions are never part of a plan: this service neither closes nor manages them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any

from spx_common import occ

#: Tradier statuses of an order that may still execute (services/broker/tradier.py OPEN_STATUSES)
WORKING_AT_BROKER = ("open", "partially_filled", "pending", "calculated", "accepted_for_bidding", "held", "submitted")
MAX_PRICE = 100_000.0


def is_option(symbol: str) -> bool:
    """True for an OCC/Tradier option symbol (``SPXW260220C05000000``), False for ``SPY`` and the like."""
    try:
        occ.parse(symbol)
    except (occ.OptionSymbolError, ValueError, TypeError):
        return False
    return True


def plan(held: dict[str, float], broker: dict[str, float]) -> dict[str, float]:
    """``{symbol: broker long - held}`` for every option symbol where they differ (``+`` adopt, ``-`` take
    off); a short at the broker counts as 0 long."""
    out: dict[str, float] = {}
    for sym in sorted(set(held) | set(broker)):
        if not is_option(sym):
            continue
        delta = max(broker.get(sym, 0.0), 0.0) - max(held.get(sym, 0.0), 0.0)
        if abs(delta) > 1e-9:
            out[sym] = delta
    return out


def _num(value: Any) -> float | None:
    try:
        d = Decimal(str(value))
    except (InvalidOperation, ValueError, TypeError):
        return None
    return float(d) if d.is_finite() and abs(d) < 10**12 else None


def _price(value: Any) -> float | None:
    v = _num(value) if value not in (None, "", "null") else None
    return v if v is not None and 0 < v <= MAX_PRICE else None


@dataclass(frozen=True)
class TakeOver:
    """A working order at the broker this process did not place, to manage from now on."""

    broker_id: str
    user: str
    symbol: str
    side: str
    type: str
    quantity: float
    filled: float
    avg_price: float
    price: float | None
    stop: float | None
    exiting: bool  # one of our exits (tag ``-exit-``): the position was being closed


def takeovers(orders: Iterable[dict[str, Any]], users: list[str], owner: str, known: Callable[[str, str], bool],
              tag_prefix: Callable[[str], str]) -> list[TakeOver]:
    """The broker's working option orders to take over after a restart (pure): every working
    ``sell_to_close`` (a resting stop stays the position's stop; any other sell counts as a working sell)
    and our own ``buy_to_open`` entries (tag ``tag_prefix(user)``); an entry placed by hand is not ours.
    ``known(broker_id, tag)``: the order is already this process's. The user is the one whose tag prefix
    the order carries, else ``owner``."""
    out: list[TakeOver] = []
    for o in orders:
        bid, tag = str(o.get("id", "")), str(o.get("tag") or "")
        sym, side = str(o.get("option_symbol") or ""), str(o.get("side") or "")
        if o.get("status") not in WORKING_AT_BROKER or not is_option(sym) or known(bid, tag) or \
                side not in ("buy_to_open", "sell_to_close"):
            continue
        user = next((u for u in users if tag.startswith(tag_prefix(u) + "-")), None)
        if side == "buy_to_open" and user is None:
            continue
        qty = _num(o.get("quantity")) or 0.0
        done = _num(o.get("exec_quantity", o.get("executed_quantity"))) or 0.0
        out.append(TakeOver(bid, user or owner, sym, side, str(o.get("type") or ""), qty, done,
                            _num(o.get("avg_fill_price")) or 0.0, _price(o.get("price")), _price(o.get("stop_price")),
                            user is not None and "-exit-" in tag))
    return out


def alignment(changes: dict[str, float], broker: dict[str, float],
              rows: list[dict[str, Any]], multiplier: Callable[[dict[str, Any]], float]) -> list[tuple[str, float, float]]:
    """``(symbol, delta, avg_price)`` for each change of :func:`plan` (pure): a positive ``delta`` is
    adopted at the broker row's ``cost_basis / (quantity x multiplier)`` (0 when unknown), a negative
    one is taken off (avg 0)."""
    by_sym = {str(r.get("symbol")): r for r in rows}
    out = []
    for sym, delta in changes.items():
        avg = 0.0
        if delta > 0:
            row = by_sym.get(sym) or {"symbol": sym}
            cost, qty = _num(row.get("cost_basis")) if row.get("cost_basis") is not None else None, broker.get(sym)
            avg = cost / (qty * multiplier(row)) if cost is not None and qty else 0.0
        out.append((sym, delta, avg))
    return out
