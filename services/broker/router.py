"""Order payloads for Tradier (form fields), the SPX tick grid and the short-option guard.

Everything here is pure.  Payloads are ``dict[str, str]`` exactly as they are form-encoded to
``POST /accounts/{id}/orders``; the paper broker consumes the same dicts, so both brokers see the
same orders.  :func:`check_payload` is the last gate before any broker (it is called by the
Tradier client and the paper broker themselves, whatever the caller asks):

* only single-leg ``class=option`` orders;
* ``sell_to_open`` is refused, always;
* ``buy_to_close`` is refused (we never hold shorts, so there is nothing to close);
* a ``sell_to_close`` (limit, stop, stop_limit or market) is refused when its quantity plus the
  quantity of other working sell orders on the symbol exceeds the long quantity held: the fill
  of every working order together can never leave a short option.
"""

from __future__ import annotations

import re
from decimal import ROUND_CEILING, ROUND_FLOOR, ROUND_HALF_UP, Decimal

from spx_common.errors import Refused
from spx_common import occ

TICK_SMALL = Decimal("0.05")
TICK_LARGE = Decimal("0.10")
TICK_BREAK = Decimal("3.00")
MAX_PRICE = 100_000.0  # no SPX option premium comes near this; anything above is bad input
_TAG_RE = re.compile(r"^[A-Za-z0-9-]{1,255}\Z")
SIDES_ALLOWED = ("buy_to_open", "sell_to_close")
TYPES = ("market", "limit", "stop", "stop_limit")


class OrderRefused(Refused, ValueError):
    """An order that must not be sent; ``reason`` is a short label (published and counted)."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


def tick_for(price: Decimal) -> Decimal:
    """The SPX option tick: $0.05 below $3.00, $0.10 at or above."""
    return TICK_SMALL if price < TICK_BREAK else TICK_LARGE


def round_to_tick(price: float | str | Decimal, direction: str = "nearest") -> Decimal:
    """Round a premium onto the SPX tick grid.

    ``direction``: ``nearest`` (half up), ``down`` (never above the input: sells, stops) or ``up``
    (never below: marketable buys).  The result is at least one tick ($0.05).
    """
    p = Decimal(str(price))
    if not p.is_finite() or p < 0 or p > Decimal(MAX_PRICE):
        raise OrderRefused("bad_price", f"price {price!r} is not a finite number in [0, {MAX_PRICE:g}]")
    mode = {"nearest": ROUND_HALF_UP, "down": ROUND_FLOOR, "up": ROUND_CEILING}[direction]
    tick = tick_for(p)
    out = (p / tick).to_integral_value(rounding=mode) * tick
    # crossing the $3.00 break can change the grid: re-snap on the grid of the result
    tick2 = tick_for(out)
    if tick2 != tick:
        out = (p / tick2).to_integral_value(rounding=mode) * tick2
        if direction == "down" and out < TICK_BREAK and p >= TICK_BREAK:
            out = TICK_BREAK
    return max(out, TICK_SMALL).quantize(Decimal("0.01"))


def on_grid(price: Decimal) -> bool:
    return price > 0 and (price % tick_for(price)) == 0


def make_tag(*parts: str) -> str:
    """A Tradier ``tag`` (our idempotency key): letters, digits and ``-`` only, at most 255 chars."""
    raw = "-".join(parts)
    tag = re.sub(r"[^A-Za-z0-9-]+", "-", raw).strip("-")[:255]
    if not tag:
        raise OrderRefused("bad_tag", f"cannot make a tag from {parts!r}")
    return tag


def _base(option_symbol: str, side: str, quantity: int, type_: str, tag: str) -> dict[str, str]:
    sym = occ.parse(option_symbol)
    if isinstance(quantity, bool) or not isinstance(quantity, int) or quantity <= 0:
        raise OrderRefused("bad_quantity", f"quantity must be a positive integer, got {quantity!r}")
    if not _TAG_RE.match(tag):
        raise OrderRefused("bad_tag", f"tag {tag!r}: letters, digits and '-' only, 1-255 chars")
    return {
        "class": "option",
        "symbol": sym.underlying,
        "option_symbol": sym.tradier,
        "side": side,
        "quantity": str(quantity),
        "type": type_,
        "duration": "day",
        "tag": tag,
    }


def entry_payload(option_symbol: str, quantity: int, limit: float | Decimal, tag: str) -> dict[str, str]:
    """Entry: ``buy_to_open`` limit (price rounded to the nearest tick)."""
    p = _base(option_symbol, "buy_to_open", quantity, "limit", tag)
    p["price"] = str(round_to_tick(limit, "nearest"))
    return p


def scale_out_payload(option_symbol: str, quantity: int, limit: float | Decimal, tag: str) -> dict[str, str]:
    """T1 scale-out: ``sell_to_close`` limit for part of the position (price rounded down)."""
    p = _base(option_symbol, "sell_to_close", quantity, "limit", tag)
    p["price"] = str(round_to_tick(limit, "down"))
    return p


def stop_payload(option_symbol: str, quantity: int, stop: float | Decimal, tag: str,
                 limit: float | Decimal | None = None) -> dict[str, str]:
    """Runner stop: ``sell_to_close`` ``stop`` (or ``stop_limit`` with a limit at or below the stop)."""
    p = _base(option_symbol, "sell_to_close", quantity, "stop" if limit is None else "stop_limit", tag)
    p["stop"] = str(round_to_tick(stop, "down"))
    if limit is not None:
        lim = round_to_tick(limit, "down")
        if lim > Decimal(p["stop"]):
            raise OrderRefused("bad_price", f"stop_limit limit {lim} above stop {p['stop']}")
        p["price"] = str(lim)
    return p


def exit_payload(option_symbol: str, quantity: int, tag: str, limit: float | Decimal | None = None) -> dict[str, str]:
    """Terminal exit: ``sell_to_close`` limit at/below ``limit``, or market when no price is known."""
    p = _base(option_symbol, "sell_to_close", quantity, "market" if limit is None else "limit", tag)
    if limit is not None:
        p["price"] = str(round_to_tick(limit, "down"))
    return p


def check_payload(payload: dict[str, str], long_qty: float, working_sell_qty: float) -> None:
    """Refuse anything that is not a safe single-leg long option order (see module docstring).

    ``long_qty`` is the quantity held on ``option_symbol`` (negative if, somehow, short) and
    ``working_sell_qty`` the unfilled quantity of other working sell orders on it.
    """
    cls = payload.get("class")
    if cls != "option" or any("[" in k for k in payload):
        raise OrderRefused("order_class", f"only single-leg class=option orders are allowed, got {cls!r}")
    side = payload.get("side")
    if side == "sell_to_open":
        raise OrderRefused("sell_to_open", "sell_to_open would open a short option")
    if side not in SIDES_ALLOWED:
        raise OrderRefused("side", f"side {side!r} is not allowed (only {', '.join(SIDES_ALLOWED)})")
    try:
        sym = occ.parse(payload.get("option_symbol", ""))
    except occ.OptionSymbolError as exc:
        raise OrderRefused("bad_symbol", str(exc)) from None
    if payload.get("symbol") != sym.underlying:
        raise OrderRefused("bad_symbol", f"symbol {payload.get('symbol')!r} does not match {sym.tradier}")
    try:
        qty = int(payload.get("quantity", ""))
    except ValueError:
        raise OrderRefused("bad_quantity", f"quantity {payload.get('quantity')!r}") from None
    if qty <= 0:
        raise OrderRefused("bad_quantity", f"quantity {qty} must be positive")
    typ = payload.get("type")
    if typ not in TYPES:
        raise OrderRefused("order_type", f"type {typ!r}")
    for key in ("price", "stop"):
        if key in payload:
            try:
                value = Decimal(payload[key])
            except ArithmeticError:
                raise OrderRefused("bad_price", f"{key} {payload[key]!r}") from None
            if not on_grid(value):
                raise OrderRefused("off_grid", f"{key} {value} is not on the SPX tick grid")
    if typ in ("limit", "stop_limit") and "price" not in payload:
        raise OrderRefused("bad_price", f"{typ} order without price")
    if typ in ("stop", "stop_limit") and "stop" not in payload:
        raise OrderRefused("bad_price", f"{typ} order without stop")
    if side == "buy_to_open" and typ not in ("limit",):
        raise OrderRefused("order_type", "entries must be limit orders")
    if side == "sell_to_close":
        if long_qty <= 0:
            raise OrderRefused("would_short", f"sell_to_close {qty} {sym.tradier} with no long position")
        if qty + working_sell_qty > long_qty:
            raise OrderRefused(
                "would_short",
                f"sell_to_close {qty} + working sells {working_sell_qty:g} > long {long_qty:g} on {sym.tradier}")
