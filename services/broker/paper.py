"""The paper broker: a local simulated broker that fills against live option quotes.

It takes the very same form payloads as Tradier (and refuses the same things, through
:func:`router.check_payload` with its own positions), and answers with order events shaped like
Tradier's account-events stream (``id, status, exec_quantity, avg_fill_price, ..., tag``), so the
service treats both brokers alike.  Pure and synchronous: quotes and time come in as arguments.

Fill rules (event time = the quote's time):

* buy limit: when the ask is at or below the limit, at ``min(ask + slippage, limit)``;
* sell limit: when the bid is at or above the limit, at ``max(bid - slippage, limit)``;
* sell market: at ``max(bid - slippage, 0.05)`` once a bid exists;
* sell stop / stop_limit: triggers when the bid trades at or below the stop, then fills as a market
  (stop) or as a limit at ``price`` (stop_limit);
* each fill takes at most the displayed size (``ask_size``/``bid_size``; unknown size = all), so
  partial fills happen as in the market.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from services.broker import router

MULTIPLIER = 100
FINAL = ("filled", "canceled", "rejected", "expired")


@dataclass
class PaperOrder:
    id: int
    tag: str
    option_symbol: str
    side: str
    type: str
    quantity: float
    price: float | None
    stop: float | None
    status: str = "open"
    exec_quantity: float = 0.0
    avg_fill_price: float = 0.0
    last_fill_price: float = 0.0
    last_fill_quantity: float = 0.0
    triggered: bool = False
    create_ns: int = 0

    @property
    def remaining(self) -> float:
        return self.quantity - self.exec_quantity

    def event(self, ts: int) -> dict:
        return {"id": self.id, "event": "order", "status": self.status, "type": self.type,
                "price": self.price or 0.0, "stop_price": self.stop or 0.0, "avg_fill_price": self.avg_fill_price,
                "exec_quantity": self.exec_quantity, "last_fill_quantity": self.last_fill_quantity,
                "last_fill_price": self.last_fill_price, "remaining_quantity": self.remaining, "tag": self.tag,
                "option_symbol": self.option_symbol, "side": self.side, "ts": ts}


@dataclass
class PaperBroker:
    """One simulated account (see module docstring)."""

    starting_cash: float = 100_000.0
    slippage: float = 0.0
    cash: float = field(init=False)
    orders: dict[int, PaperOrder] = field(default_factory=dict)
    positions: dict[str, list[float]] = field(default_factory=dict)  # symbol -> [quantity, cost]
    quotes: dict[str, tuple[float, float, float, float]] = field(default_factory=dict)
    _next: int = 0

    def __post_init__(self) -> None:
        self.cash = self.starting_cash
        self._working: dict[str, dict[int, PaperOrder]] = {}  # symbol -> working orders (quotes touch only these)

    def _working_sells(self, symbol: str) -> float:
        return sum(o.remaining for o in self._working.get(symbol, {}).values() if o.side == "sell_to_close")

    def _settle(self, o: PaperOrder) -> None:
        if o.status in FINAL:
            w = self._working.get(o.option_symbol)
            if w is not None:
                w.pop(o.id, None)
                if not w:
                    del self._working[o.option_symbol]

    def place(self, payload: dict[str, str], ts: int) -> tuple[PaperOrder, list[dict]]:
        """Accept an order (raises :class:`router.OrderRefused`) and try to fill it at once."""
        sym = payload.get("option_symbol", "")
        router.check_payload(payload, self.positions.get(sym, [0.0, 0.0])[0], self._working_sells(sym))
        self._next += 1
        o = PaperOrder(self._next, payload.get("tag", ""), sym, payload["side"], payload["type"],
                       float(payload["quantity"]), float(payload["price"]) if "price" in payload else None,
                       float(payload["stop"]) if "stop" in payload else None, create_ns=ts)
        self.orders[o.id] = o
        self._working.setdefault(sym, {})[o.id] = o
        events = [o.event(ts)]
        q = self.quotes.get(sym)
        if q is not None:
            events += self._try_fill(o, q, ts)
        return o, events

    def cancel(self, order_id: int, ts: int) -> list[dict]:
        o = self.orders.get(order_id)
        if o is None:
            raise KeyError(f"paper order {order_id} not found")
        if o.status in FINAL:
            raise ValueError("order already in finalized state")
        o.status = "canceled"
        self._settle(o)
        return [o.event(ts)]

    def modify(self, order_id: int, fields: dict[str, str], ts: int) -> list[dict]:
        o = self.orders.get(order_id)
        if o is None or o.status in FINAL:
            raise ValueError("order already in finalized state")
        if "price" in fields:
            o.price = float(fields["price"])
        if "stop" in fields:
            o.stop = float(fields["stop"])
        q = self.quotes.get(o.option_symbol)
        return [o.event(ts)] + (self._try_fill(o, q, ts) if q else [])

    def on_quote(self, symbol: str, bid: float, ask: float, ts: int, bid_size: float = 0.0,
                 ask_size: float = 0.0) -> list[dict]:
        """A new quote: fill what it crosses; returns the order events (non-finite quotes are ignored)."""
        if not (0 <= bid <= router.MAX_PRICE and 0 <= ask <= router.MAX_PRICE):  # also NaN/inf
            return []
        q = (bid, ask, bid_size, ask_size)
        self.quotes[symbol] = q
        events: list[dict] = []
        for o in list(self._working.get(symbol, {}).values()):
            events += self._try_fill(o, q, ts)
        return events

    def _try_fill(self, o: PaperOrder, q: tuple[float, float, float, float], ts: int) -> list[dict]:
        bid, ask, bid_size, ask_size = q
        price: float | None = None
        if o.side == "buy_to_open":
            if ask > 0 and o.price is not None and ask <= o.price:
                price = min(ask + self.slippage, o.price)
            size = ask_size
        else:
            size = bid_size
            if bid <= 0:
                return []
            kind = o.type
            if kind in ("stop", "stop_limit") and not o.triggered:
                if o.stop is None or bid > o.stop:
                    return []
                o.triggered = True
            if kind in ("market", "stop"):
                price = max(bid - self.slippage, 0.05)
            elif o.price is not None and bid >= o.price:
                price = max(bid - self.slippage, o.price)
        if price is None:
            return []
        qty = o.remaining if size <= 0 else min(o.remaining, float(size))
        if o.side == "sell_to_close":
            qty = min(qty, self.positions.get(o.option_symbol, [0.0, 0.0])[0])
        if qty <= 0:
            return []
        price = round(price, 4)
        o.avg_fill_price = (o.avg_fill_price * o.exec_quantity + price * qty) / (o.exec_quantity + qty)
        o.exec_quantity += qty
        o.last_fill_price, o.last_fill_quantity = price, qty
        o.status = "filled" if o.remaining <= 1e-9 else "partially_filled"
        self._settle(o)
        pos = self.positions.setdefault(o.option_symbol, [0.0, 0.0])
        if o.side == "buy_to_open":
            pos[0] += qty
            pos[1] += qty * price * MULTIPLIER
            self.cash -= qty * price * MULTIPLIER
        else:
            avg = pos[1] / pos[0] if pos[0] else 0.0
            pos[0] -= qty
            pos[1] -= avg * qty
            self.cash += qty * price * MULTIPLIER
            if pos[0] <= 1e-9:
                del self.positions[o.option_symbol]
        return [o.event(ts)]

    def find_by_tag(self, tag: str) -> PaperOrder | None:
        for o in self.orders.values():
            if o.tag == tag:
                return o
        return None

    def position_list(self) -> list[dict]:
        """Positions in Tradier's shape (``symbol, quantity, cost_basis``)."""
        return [{"symbol": s, "quantity": q, "cost_basis": round(c, 2)} for s, (q, c) in self.positions.items()]

    def open_orders(self) -> list[dict]:
        return [o.event(0) for w in self._working.values() for o in w.values()]

    def balances(self) -> dict:
        """Balances in Tradier's shape (margin account, option buying power = cash)."""
        market = 0.0
        for s, (q, c) in self.positions.items():
            bid, ask, _, _ = self.quotes.get(s, (0.0, 0.0, 0.0, 0.0))
            mark = (bid + ask) / 2 if bid > 0 and ask > 0 else (c / q / MULTIPLIER if q else 0.0)
            market += q * mark * MULTIPLIER
        equity = self.cash + market
        return {"account_type": "margin", "total_equity": round(equity, 2), "total_cash": round(self.cash, 2),
                "market_value": round(market, 2), "open_pl": round(market - sum(c for _, c in self.positions.values()), 2),
                "margin": {"option_buying_power": round(self.cash, 2), "stock_buying_power": round(2 * self.cash, 2)}}


class PaperClient:
    """The paper broker as a :class:`services.broker.client.BrokerClient`: the same async calls and event
    shapes as :class:`services.broker.tradier.TradierClient`, answered synchronously by the simulation
    (every answer carries the events the call produced, fills included)."""

    kind = "paper"

    def __init__(self, broker: PaperBroker) -> None:
        self.broker = broker

    async def place_order(self, payload: dict[str, str], *, ts: int = 0) -> dict:
        o, events = self.broker.place(payload, ts)
        return {"id": str(o.id), "status": "ok", "events": events}

    async def cancel_order(self, order_id: str | int, *, ts: int = 0) -> dict:
        try:
            return {"id": str(order_id), "status": "ok", "events": self.broker.cancel(int(order_id), ts)}
        except KeyError as exc:
            raise ValueError(str(exc)) from None

    async def modify_order(self, order_id: str | int, *, ts: int = 0, **fields: str) -> dict:
        return {"id": str(order_id), "status": "ok", "events": self.broker.modify(int(order_id), fields, ts)}

    async def order(self, order_id: str | int) -> dict:
        o = self.broker.orders.get(int(order_id))
        if o is None:
            raise ValueError(f"paper order {order_id} not found")
        return o.event(o.create_ns)

    async def orders(self) -> list[dict]:
        return [o.event(o.create_ns) for o in self.broker.orders.values()]

    async def positions(self) -> list[dict]:
        return self.broker.position_list()

    async def balances(self) -> dict:
        return self.broker.balances()

    async def aclose(self) -> None:
        return None
