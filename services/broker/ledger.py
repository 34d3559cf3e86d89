"""The internal ledger: orders, fills and positions per user, P&L and realized slippage (pure).

The service publishes what the ledger returns on ``order.<user>``, ``fill.<user>`` and
``position.<user>``; the recorder persists those frames (that is how the ledger reaches the store).
Fills are derived from cumulative executed quantities, so a repeated or re-ordered broker event
never double counts: a fill is only the positive difference to what the ledger already had.

Slippage: every order remembers the option mid at decision time; each fill adds
``(fill - mid)`` for buys and ``(mid - fill)`` for sells, in dollars per contract (positive = cost),
to a bounded rolling window; :meth:`Ledger.slippage_stats` summarizes it for the optimizer.
"""

from __future__ import annotations

from typing import Any
import statistics
from collections import OrderedDict, deque
from dataclasses import dataclass

import msgspec

from spx_common.models import Fill, Order, Position

MAX_ORDERS = 5000
MULTIPLIER = 100


@dataclass
class _Pos:
    quantity: float = 0.0
    avg_price: float = 0.0
    realized: float = 0.0
    mark: float | None = None


@dataclass
class _OrderRec:
    order: Order
    decision_mid: float | None
    filled: float = 0.0
    avg_price: float = 0.0


class Ledger:
    """Orders, fills, positions and slippage for every user of this broker process."""

    def __init__(self, slippage_window: int = 200) -> None:
        self.orders: OrderedDict[str, _OrderRec] = OrderedDict()
        self.positions: dict[tuple[str, str], _Pos] = {}
        self._users_by_symbol: dict[str, set[str]] = {}
        self.fills: deque[Fill] = deque(maxlen=1000)
        self.slippage: deque[float] = deque(maxlen=slippage_window)
        self.fill_count = 0

    def record_order(self, order: Order, decision_mid: float | None = None, filled: float = 0.0,
                     avg_price: float = 0.0) -> Order:
        """Remember an order; ``filled``/``avg_price``: what an order taken over from the broker had
        executed already (its later cumulative events add only what is new)."""
        self.orders[order.order_id] = _OrderRec(order, decision_mid, filled, avg_price)
        while len(self.orders) > MAX_ORDERS:
            self.orders.popitem(last=False)
        return order

    def get(self, order_id: str) -> Order | None:
        rec = self.orders.get(order_id)
        return rec.order if rec else None

    def update_order(self, order_id: str, **changes: Any) -> Order | None:
        rec = self.orders.get(order_id)
        if rec is None:
            return None
        rec.order = msgspec.structs.replace(rec.order, **changes)
        return rec.order

    def apply_event(self, order_id: str, status: str, exec_qty: float, avg_price: float, ts: int,
                    broker_id: str | None = None) -> tuple[Order | None, Fill | None, Position | None]:
        """Apply a broker update; returns the changed order, the new fill and the changed position."""
        rec = self.orders.get(order_id)
        if rec is None:
            return None, None, None
        changes: dict[str, Any] = {}
        if status and status != rec.order.status:
            changes["status"] = status
        if broker_id and broker_id != rec.order.broker_id:
            changes["broker_id"] = broker_id
        fill = position = None
        delta = exec_qty - rec.filled
        if delta > 1e-9:
            price = (avg_price * exec_qty - rec.avg_price * rec.filled) / delta
            price = max(round(price, 4), 0.0)
            rec.filled, rec.avg_price = exec_qty, avg_price
            o = rec.order
            self.fill_count += 1
            fill = Fill(order_id=order_id, user=o.user, option_symbol=o.option_symbol, side=o.side, quantity=delta,
                        price=price, ts=ts, fill_id=f"{order_id}-{self.fill_count}", broker_id=broker_id or o.broker_id)
            self.fills.append(fill)
            if rec.decision_mid is not None:
                sign = 1 if o.side.startswith("buy") else -1
                self.slippage.append(sign * (price - rec.decision_mid))
            position = self._apply_fill(fill)
        order = None
        if changes:
            rec.order = msgspec.structs.replace(rec.order, **changes)
            order = rec.order
        return order, fill, position

    def adopt(self, user: str, symbol: str, quantity: float, avg_price: float, ts: int,
              realized: float = 0.0) -> Position:
        """Take over a position found at the broker or in the store (restart): no fill history."""
        self.positions[(user, symbol)] = _Pos(quantity=quantity, avg_price=avg_price, realized=realized)
        self._users_by_symbol.setdefault(symbol, set()).add(user)
        return self.position(user, symbol, ts)

    def align(self, user: str, symbol: str, delta: float, avg_price: float, ts: int) -> Position:
        """The broker holds ``delta`` more (or fewer, negative) contracts than this ledger: take its word
        (flatten reconciles first). Found contracts are blended in at ``avg_price``; realized P&L stays."""
        p = self.positions.setdefault((user, symbol), _Pos())
        self._users_by_symbol.setdefault(symbol, set()).add(user)
        total = max(p.quantity + delta, 0.0)
        if delta > 0 and total > 0:
            p.avg_price = (p.avg_price * p.quantity + avg_price * delta) / total
        p.quantity = total
        return self.position(user, symbol, ts)

    def _apply_fill(self, f: Fill) -> Position:
        p = self.positions.setdefault((f.user, f.option_symbol), _Pos())
        self._users_by_symbol.setdefault(f.option_symbol, set()).add(f.user)
        if f.side.startswith("buy"):
            total = p.quantity + f.quantity
            p.avg_price = (p.avg_price * p.quantity + f.price * f.quantity) / total if total else 0.0
            p.quantity = total
        else:
            closed = min(f.quantity, p.quantity)
            p.realized += (f.price - p.avg_price) * closed * MULTIPLIER
            p.quantity -= f.quantity
            if abs(p.quantity) < 1e-9:
                p.quantity = 0.0
        return self.position(f.user, f.option_symbol, f.ts)

    def mark(self, symbol: str, bid: float, ask: float, ts: int) -> list[Position]:
        """Mark open positions on ``symbol`` at the mid; returns the positions whose P&L changed."""
        if bid <= 0 or ask <= 0:
            return []
        users = self._users_by_symbol.get(symbol)
        if not users:
            return []
        mid = (bid + ask) / 2
        out = []
        for user in users:
            p = self.positions[(user, symbol)]
            if p.quantity and p.mark != mid:
                p.mark = mid
                out.append(self.position(user, symbol, ts))
        return out

    def position(self, user: str, symbol: str, ts: int) -> Position:
        p = self.positions.get((user, symbol), _Pos())
        unreal = None if p.mark is None or not p.quantity else round((p.mark - p.avg_price) * p.quantity * MULTIPLIER, 2)
        return Position(user=user, option_symbol=symbol, quantity=p.quantity, avg_price=round(p.avg_price, 4),
                        realized_pnl=round(p.realized, 2), unrealized_pnl=unreal, ts=ts,
                        mark=None if p.mark is None or not p.quantity else round(p.mark, 4))

    def open_positions(self, user: str | None = None) -> dict[str, float]:
        """symbol -> quantity of non-flat positions (of one user, or summed over users)."""
        out: dict[str, float] = {}
        for (u, sym), p in self.positions.items():
            if p.quantity and (user is None or u == user):
                out[sym] = out.get(sym, 0.0) + p.quantity
        return out

    def working_orders(self, user: str | None = None) -> list[Order]:
        final = ("filled", "canceled", "rejected", "expired", "error", "refused")
        return [r.order for r in self.orders.values()
                if r.order.status not in final and (user is None or r.order.user == user)]

    def pnl(self, user: str) -> dict[str, float]:
        realized = sum(p.realized for (u, _), p in self.positions.items() if u == user)
        unreal = sum((p.mark - p.avg_price) * p.quantity * MULTIPLIER for (u, _), p in self.positions.items()
                     if u == user and p.mark is not None and p.quantity)
        return {"realized": round(realized, 2), "unrealized": round(unreal, 2)}

    def slippage_stats(self) -> dict[str, float | int | None]:
        """Rolling realized slippage per contract (fill vs mid at decision; positive = cost)."""
        xs = list(self.slippage)
        if not xs:
            return {"count": 0, "mean": None, "median": None, "p90": None, "max": None}
        ordered = sorted(xs)
        return {"count": len(xs), "mean": round(statistics.fmean(xs), 4), "median": round(statistics.median(xs), 4),
                "p90": round(ordered[min(len(xs) - 1, int(0.9 * len(xs)))], 4), "max": round(ordered[-1], 4)}

    def snapshot(self, user: str | None = None) -> dict[str, Any]:
        users = sorted({u for u, _ in self.positions} | {r.order.user for r in self.orders.values()})
        if user is not None:
            users = [u for u in users if u == user]
        return {
            u: {
                "positions": [msgspec.to_builtins(self.position(u, s, 0)) for (uu, s), p in self.positions.items()
                              if uu == u and p.quantity],
                "working_orders": [msgspec.to_builtins(o) for o in self.working_orders(u)],
                "fills": [msgspec.to_builtins(f) for f in self.fills if f.user == u][-50:],
                "pnl": self.pnl(u),
            }
            for u in users
        }
