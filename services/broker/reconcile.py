"""Reconciliation of what we believe is held with what the broker holds (pure).

The broker's positions are the truth. :func:`plan` compares the contracts the engine holds per option
symbol with the broker's positions and says, per symbol, how many contracts must be added (found at the
broker: adopted, so exits and flatten cover them) or taken off (a fill we never heard of: exits are then
sized to what is really held, never more). Equities (anything that is not an option symbol) and short
option positions are never part of a plan: this service neither closes nor manages them.
"""

from __future__ import annotations

from spx_common import occ


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
