"""The execution engine: a pure decision core (event time in, intents out, no I/O).

Inputs (each method returns the intents it decided):

* :meth:`Engine.on_transition` -- ``setup.transition``: ``triggered`` arms an entry; ``stopped``,
  ``invalidated`` and ``expired`` close what a setup still holds;
* :meth:`Engine.on_recommendation` -- ``reco.<setup_id>``: the contract and size of the selector;
  an entry is decided when a setup is both triggered and has an ``ok`` recommendation (either order);
* :meth:`Engine.on_advice` -- ``exit.<setup_id>``: ``scale_out`` (T1, a fraction), ``move_stop``
  (protective stop at breakeven on the rest), ``trail_stop`` (raise that stop towards the bid),
  ``exit_all``; ``hold`` does nothing;
* :meth:`Engine.on_quote` -- option quotes (``tick.O:...``), for exit limit prices and the mid;
* :meth:`Engine.on_order_event` -- broker order status/fills (cumulative executed quantity);
* :meth:`Engine.flatten` -- close everything (late-day flatten, ``spx broker flatten``).

Outputs: :class:`Place`, :class:`Modify`, :class:`Cancel` and :class:`Block` (a refusal with a reason,
published on ``block.broker`` and counted by the service).

Safety, by construction:

* only ``buy_to_open`` entries and ``sell_to_close`` exits are ever produced, and every sell is sized
  so that all working sells together never exceed the quantity held (a fill can never go short);
  the same payload is checked again by :func:`router.check_payload` at the broker boundary;
* two gates, decided by the service: ``Gates.allowed(user)`` (entries: the execution flags, the
  auto-execution switch, the user's opt-in) and ``Gates.send(user)`` (anything at all may be sent:
  ``TRADIER_EXECUTION_ENABLED``, credentials). The kill switch, the auto-execution switch, opt-in and
  the daily limits stop *entries* only: exits, stop maintenance, entry-timeout cancels, the late-day
  flatten and the operator's flatten need only ``send`` (an emergency never blocks the exit);
* contracts per order are capped; orders per day and open risk are refused past their limits.
"""

from __future__ import annotations

from typing import Any, Literal, TypeVar, cast
import datetime as dt
import math
from collections import OrderedDict
from dataclasses import dataclass, field
from collections.abc import Callable

from spx_common.calendar import ET
from services.broker import router
from services.broker.entry_size import EntryRisk, resizable, size_entry
from spx_common.sizing import DEFAULT_MIN_RISK
from spx_common.models import (ContractRecommendation, ExitAdvice, Order, OrderSide, OrderType, SetupTransition,
                               SizingBreakdown)
from spx_common import occ

MAX_TRACKED = 2000  # bounded memory for triggers, recommendations, quotes and finished trades
CLOSING_STATES = ("stopped", "invalidated", "expired")
REPRICE_NS = 2_000_000_000  # exit limits follow the bid at most every 2 s per order (Tradier: 60 trading calls/min)
MAX_EXIT_ATTEMPTS = 5  # exit orders per trade before giving up until the next flatten (no retry storm)
MAX_STOP_REJECTS = 3  # protective stops refused by the broker per trade before giving up (published)
WORKING = ("new", "open", "partially_filled", "pending", "unknown", "accepted_for_bidding", "held", "calculated")


@dataclass(frozen=True)
class Limits:
    max_contracts_per_order: int = 10
    max_orders_per_day: int = 20
    max_open_risk: float = 5000.0
    trail_fraction: float = 0.25  # trail_stop: stop at bid * (1 - trail_fraction), never lowered
    entry_timeout_s: float = 60.0  # an entry not (fully) filled this long after it was sent is cancelled
    #: risk budget: dollars lost per entry if the stop is hit, spread included (a user record's setting;
    #: ``[broker] max_risk_per_trade`` for the config users). Entries are sized from it (services/broker/entry_size.py)
    max_risk_per_trade: float = 500.0
    daily_loss_limit: float = math.inf  # dollars of loss today past which no new entry is sent
    max_premium_per_trade: float | None = None  # premium cap per entry; None = 4 x max_risk_per_trade
    min_risk_per_contract: float = DEFAULT_MIN_RISK  # a loss to the stop at or below this is refused
    dtbp_floor: float = 0.0  # day-trade buying power a 0DTE entry must leave
    pdt_policy: str = "alert"  # alert | block (0DTE entries of a non-PDT-qualified account) | off
    pdt_min_equity: float = 25_000.0
    rate: float = 0.04  # risk-free rate for repricing to the stop
    #: protective stop resting after every entry fill: "advisor" (the option's value at the setup's stop,
    #: from the recommendation's sizing; else premium_pct), "premium_pct" (average fill x (1 - pct)), or
    #: None (no automatic stop: only for engine unit tests; the service always sets one)
    protective_stop: str | None = None
    protective_stop_pct: float = 0.5

    def entry_risk(self) -> EntryRisk:
        return EntryRisk(self.max_risk_per_trade, self.max_contracts_per_order, self.max_premium_per_trade,
                         self.min_risk_per_contract, self.dtbp_floor, self.pdt_policy, self.pdt_min_equity, self.rate)


@dataclass
class Gates:
    """What the service allows. ``allowed(user) -> (ok, reason)`` gates entries; ``send(user)`` gates
    everything else (exits, stops, cancels, flatten; ``allowed`` when not given); the kill switch stops
    entries only."""

    allowed: Callable[[str], tuple[bool, str]]
    kill_switch: bool = False
    #: the user's synced balances (``portfolio.summarize_balances`` shape: option_buying_power,
    #: day_trade_buying_power, total_equity, account_type), None until synced: entries are sized from them
    balances: Callable[[str], dict[str, Any] | None] = lambda user: None
    #: dollars lost today by the user (realized + unrealized, positive = loss); entries stop at the daily limit
    loss_today: Callable[[str], float] = lambda user: 0.0
    #: whether anything at all may be sent for the user (exits need only this); None = ``allowed``
    send: Callable[[str], tuple[bool, str]] | None = None

    def can_send(self, user: str) -> tuple[bool, str]:
        return (self.send or self.allowed)(user)


@dataclass(frozen=True)
class Place:
    order: Order
    payload: dict[str, str]
    role: str  # entry | scale | stop | exit
    decision_mid: float | None = None


@dataclass(frozen=True)
class Modify:
    user: str
    order_id: str
    fields: dict[str, str]


@dataclass(frozen=True)
class Cancel:
    user: str
    order_id: str
    reason: str


@dataclass(frozen=True)
class Block:
    user: str
    reason: str
    subject: str
    detail: str = ""


Intent = Place | Modify | Cancel | Block


@dataclass
class OrderState:
    order_id: str
    user: str
    setup_id: str
    symbol: str
    side: str
    role: str
    quantity: int
    price: float | None
    stop: float | None = None
    filled: float = 0.0
    repriced_ns: int = 0
    created_ns: int = 0
    avg_price: float = 0.0
    status: str = "new"
    cancel_sent: bool = False  # a protective-stop resize cancel is on its way (sent once)

    @property
    def working(self) -> bool:
        return self.status in WORKING

    @property
    def remaining(self) -> float:
        return max(self.quantity - self.filled, 0.0) if self.working else 0.0


@dataclass
class TradeState:
    user: str
    setup_id: str
    symbol: str
    held: float = 0.0
    avg_price: float = 0.0
    orders: list[str] = field(default_factory=list)
    exiting: bool = False
    stop_price: float | None = None
    pending_scale: tuple[int, float | None] | None = None  # (qty, limit) waiting for a stop cancel
    closed: bool = False
    exit_attempts: int = 0
    advice_seen: set[Any] = field(default_factory=set)  # scale-outs already acted on (republished advice is ignored)
    stop_value: float | None = None  # the option's value at the setup's stop (recommendation sizing), per share
    stop_rejects: int = 0  # protective stops the broker refused


#: the order types an Order records, by the broker's name (anything else is recorded as a limit)
_ORDER_TYPES: dict[str, OrderType] = {"market": "market", "limit": "limit", "stop": "stop", "stop_limit": "stop_limit"}

K = TypeVar("K")
V = TypeVar("V")


def _stop_value(*breakdowns: SizingBreakdown | None) -> float | None:
    """The option's value per share at the setup's stop: from the first sizing breakdown that has one (the
    user's own entry sizing, then the recommendation's); None if unknown."""
    for b in breakdowns:
        v = b.valueAtStop if b is not None else None
        if v is not None and math.isfinite(v) and 0 < v <= router.MAX_PRICE:
            return float(v)
    return None


def et_day(ts_ns: int) -> dt.date:
    return dt.datetime.fromtimestamp(ts_ns / 1e9, ET).date()


class Engine:
    """Decision core for a set of users (see module docstring)."""

    def __init__(self, users: list[str], limits: Limits, gates: Gates, *, entry_price: str = "ask",
                 session: str = "", user_limits: dict[str, Limits] | None = None) -> None:
        self.users = list(users)
        self.session = session  # makes order ids (Tradier tags) unique across restarts
        self.limits = limits
        self.user_limits = dict(user_limits or {})  # per-user records; ``limits`` for the others
        self.gates = gates
        self.entry_price = entry_price
        self.triggered: OrderedDict[str, SetupTransition] = OrderedDict()
        self.recos: OrderedDict[str, ContractRecommendation] = OrderedDict()
        self.quotes: OrderedDict[str, tuple[float, float]] = OrderedDict()  # tradier symbol -> (bid, ask)
        self.trades: dict[tuple[str, str], TradeState] = {}  # open trades only
        self.done: OrderedDict[tuple[str, str], float] = OrderedDict()  # closed today -> realized premium
        self.orders: dict[str, OrderState] = {}
        self._exits: dict[str, set[str]] = {}  # symbol -> working exit limit orders (repriced on quotes)
        self._entries: set[str] = set()  # working entries (cancelled after entry_timeout_s)
        self.entries_today: dict[str, int] = {}
        self.day: dt.date | None = None
        self._seq = 0

    # ------------------------------------------------------------------ helpers

    def lim(self, user: str) -> Limits:
        """The limits of ``user`` (their record's, else the shared ones)."""
        return self.user_limits.get(user, self.limits)

    @staticmethod
    def _remember(store: OrderedDict[K, V], key: K, value: V) -> None:
        store[key] = value
        store.move_to_end(key)
        while len(store) > MAX_TRACKED:
            store.popitem(last=False)

    def _roll_day(self, ts: int) -> None:
        d = et_day(ts)
        if d != self.day:
            self.day = d
            self.entries_today = {}
            self.done.clear()
            for oid in [o for o, s in self.orders.items() if not s.working]:
                del self.orders[oid]

    def _close(self, trade: TradeState) -> None:
        """A flat trade with nothing working: forget its orders, remember it (no re-entry today)."""
        trade.closed = True
        self.trades.pop((trade.user, trade.setup_id), None)
        for oid in trade.orders:
            self.orders.pop(oid, None)
        self._remember(self.done, (trade.user, trade.setup_id), trade.avg_price)

    def _new_id(self, user: str, setup_id: str, role: str) -> str:
        self._seq += 1
        return router.make_tag("spx", user, setup_id[-40:], role, str(self._seq), self.session)

    def open_risk(self, user: str) -> float:
        risk = sum(t.held * t.avg_price * 100 for t in self.trades.values() if t.user == user and not t.closed)
        risk += sum(o.remaining * (o.price or 0) * 100 for o in self.orders.values()
                    if o.user == user and o.role == "entry" and o.working)
        return risk

    def committed_since(self, user: str, ts: int | None) -> float:
        """Premium of ``user``'s entries sent at or after event time ``ts`` (their balances' read time):
        buying power those balances do not show yet (all of it when ``ts`` is unknown)."""
        since = ts if isinstance(ts, int) else 0
        return sum(o.quantity * (o.price or 0.0) * 100 for o in self.orders.values()
                   if o.user == user and o.role == "entry" and o.created_ns >= since and o.status != "rejected")

    def working_sells(self, trade: TradeState) -> float:
        return sum(self.orders[o].remaining for o in trade.orders
                   if o in self.orders and self.orders[o].side == "sell_to_close" and self.orders[o].working)

    def _mid(self, symbol: str) -> float | None:
        q = self.quotes.get(symbol)
        return None if q is None or q[0] <= 0 or q[1] <= 0 else (q[0] + q[1]) / 2

    def _place(self, trade: TradeState, role: str, side: OrderSide, qty: int, payload: dict[str, str], ts: int,
               reason: str) -> Place:
        oid = payload["tag"]
        price = float(payload["price"]) if "price" in payload else None
        stop = float(payload["stop"]) if "stop" in payload else None
        self.orders[oid] = OrderState(oid, trade.user, trade.setup_id, trade.symbol, side, role, qty, price, stop,
                                      created_ns=ts)
        if role == "entry":
            self._entries.add(oid)
        trade.orders.append(oid)
        order = Order(order_id=oid, user=trade.user, setup_id=trade.setup_id, option_symbol=trade.symbol, side=side,
                      quantity=qty, type=cast(OrderType, payload["type"]), price=price, stop=stop, status="new", reason=reason, ts=ts)
        return Place(order, payload, role, self._mid(trade.symbol))

    # ------------------------------------------------------------------ inputs

    def on_quote(self, symbol: str, bid: float, ask: float, ts: int = 0) -> list[Intent]:
        """Remember the latest quote of an option (Tradier form symbol); chase working exits.

        A working exit (``exit_all``, closing states, flatten) must get out: when the bid falls below
        its limit, the limit follows the bid down (rounded down), at most once per ``REPRICE_NS`` per
        order. Scale-outs are targets and are left alone.
        """
        if not (0 <= bid <= router.MAX_PRICE and 0 <= ask <= router.MAX_PRICE):  # also NaN/inf
            return []
        self._remember(self.quotes, symbol, (bid, ask))
        ids = self._exits.get(symbol)
        if not ids or bid <= 0:
            return []
        out: list[Intent] = []
        for oid in list(ids):
            o = self.orders.get(oid)
            if o is None or not o.working:
                ids.discard(oid)
                continue
            if o.price is None or ts - o.repriced_ns < REPRICE_NS:
                continue
            new = float(router.round_to_tick(bid, "down"))
            if new >= o.price or not self.gates.can_send(o.user)[0]:
                continue
            o.price, o.repriced_ns = new, ts
            out.append(Modify(o.user, oid, {"price": f"{new:.2f}"}))
        if not ids:
            self._exits.pop(symbol, None)
        return out

    def adopt(self, user: str, symbol: str, quantity: float, avg_price: float, ts: int,
              stop_price: float | None = None) -> None:
        """Manage a long position found at the broker (after a restart) like a trade of setup
        ``adopted-<symbol>``: exits, flatten and the late-day flatten cover it. Nothing is sent here:
        :meth:`protect` then rests its protective stop, at ``stop_price`` (the level the stop of the
        setup rested at before the restart) when known, else at :meth:`protective_level`."""
        self._roll_day(ts)
        key = (user, f"adopted-{symbol}")
        if quantity <= 0:
            return
        trade = self.trades.get(key)
        if trade is None:
            trade = self.trades[key] = TradeState(user, key[1], symbol, held=float(quantity), avg_price=avg_price)
        elif not trade.closed:  # more found at the broker (flatten reconciles first): add it
            total = trade.held + quantity
            trade.avg_price = (trade.avg_price * trade.held + avg_price * quantity) / total
            trade.held = total
        if stop_price is not None and math.isfinite(stop_price) and 0 < stop_price <= router.MAX_PRICE \
                and not trade.closed:
            trade.stop_price = max(trade.stop_price or 0.0, float(router.round_to_tick(stop_price, "down")))

    def take_over(self, user: str, symbol: str, side: str, type_: str, quantity: float, filled: float,
                  avg_price: float, price: float | None, stop: float | None, ts: int,
                  exiting: bool = False) -> Order | None:
        """A working order found at the broker that this process did not place (sent before a restart):
        manage it as an order of the ``adopted-<symbol>`` trade, so its fills move the held quantity and
        it counts among the trade's working sells (a ``stop``/``stop_limit`` sell as its protective stop,
        which :meth:`protect` then keeps equal to the open quantity; an entry as a working entry,
        cancelled after ``entry_timeout_s`` like any). ``exiting``: the order is an exit (its tag says so):
        the trade is being closed, as before the restart (a refused exit is retried, no stop re-rested).
        Returns the order to record, None if refused."""
        if side not in ("buy_to_open", "sell_to_close") or not quantity > filled >= 0 or \
                not (math.isfinite(quantity) and math.isfinite(filled)):
            return None
        self._roll_day(ts)
        key = (user, f"adopted-{symbol}")
        trade = self.trades.get(key)
        if trade is None or trade.closed:
            if side == "sell_to_close":
                return None  # a sell for nothing this process holds: left alone (flatten cancels it)
            trade = self.trades[key] = TradeState(user, key[1], symbol)
        side_: Literal["buy_to_open", "sell_to_close"] = "buy_to_open" if side == "buy_to_open" else "sell_to_close"
        kind = _ORDER_TYPES.get(type_, "limit")
        role = "entry" if side == "buy_to_open" else ("stop" if type_ in ("stop", "stop_limit") else "exit")
        if exiting and role == "exit":
            trade.exiting = True
        qty = int(math.ceil(quantity - 1e-9))
        oid = self._new_id(user, key[1], role)
        o = OrderState(oid, user, key[1], symbol, side, role, qty, price, stop, filled=float(filled),
                       avg_price=avg_price, created_ns=ts, status="open")
        self.orders[oid] = o
        trade.orders.append(oid)
        if role == "entry":
            self._entries.add(oid)
        if role == "stop" and stop is not None and 0 < stop <= router.MAX_PRICE:
            trade.stop_price = max(trade.stop_price or 0.0, float(stop))
        return Order(order_id=oid, user=user, setup_id=key[1], option_symbol=symbol, side=side_, quantity=qty,
                     type=kind, price=price,
                     stop=stop, status="open", reason="working at the broker before a restart: taken over", ts=ts)

    def protect(self, ts: int, users: list[str] | None = None) -> list[Intent]:
        """Rest a protective stop for every open trade (of ``users``) that has none for its open quantity:
        positions adopted or restored after a restart, and any trade whose stop could not be sent at its
        fill (sending was not allowed then). Idempotent: a trade already covered gets nothing."""
        out: list[Intent] = []
        for trade in list(self.trades.values()):
            if self.lim(trade.user).protective_stop is None:
                continue
            if trade.closed or trade.exiting or trade.pending_scale is not None or trade.held < 1 or \
                    (users is not None and trade.user not in users) or not self.gates.can_send(trade.user)[0]:
                continue
            out += self._ensure_stop(trade, ts)
        return out

    def held_by_symbol(self, users: list[str] | None = None) -> dict[str, float]:
        """Contracts the engine believes are held, per symbol (of ``users``, or everyone)."""
        out: dict[str, float] = {}
        for t in self.trades.values():
            if not t.closed and t.held > 0 and (users is None or t.user in users):
                out[t.symbol] = out.get(t.symbol, 0.0) + t.held
        return out

    def trim(self, users: list[str], symbol: str, excess: float) -> float:
        """The broker holds ``excess`` fewer contracts of ``symbol`` than the engine believes (a fill we
        missed): take them off the trades (adopted first, then the newest), so exits are sized to what
        is really held. Returns what was taken off."""
        taken = 0.0
        trades = [t for t in self.trades.values() if t.symbol == symbol and t.user in users and not t.closed
                  and t.held > 0][::-1]  # newest first
        trades.sort(key=lambda t: not t.setup_id.startswith("adopted-"))  # stable: adopted ones first
        for t in trades:
            if excess - taken <= 1e-9:
                break
            cut = min(t.held, excess - taken)
            t.held -= cut
            taken += cut
        return taken

    def seed_entries(self, user: str, count: int, ts: int) -> None:
        """Entries already sent today (found at the broker after a restart) count against the daily limit."""
        self._roll_day(ts)
        self.entries_today[user] = max(self.entries_today.get(user, 0), count)

    def expire_entries(self, ts: int) -> list[Intent]:
        """Cancel entries still working ``entry_timeout_s`` after they were sent (event time).

        A 0DTE entry that did not fill at its price is stale; the filled part stays and is managed
        like any position.
        """
        out: list[Intent] = []
        limit_ns = int(self.limits.entry_timeout_s * 1e9)
        for oid in list(self._entries):
            o = self.orders.get(oid)
            if o is None or not o.working:
                self._entries.discard(oid)
                continue
            if ts - o.created_ns >= limit_ns:
                if not self.gates.can_send(o.user)[0]:
                    continue
                self._entries.discard(oid)  # one cancel; the broker's answer settles the order
                out.append(Cancel(o.user, oid, f"entry not filled within {self.limits.entry_timeout_s:g}s"))
        return out

    def on_transition(self, t: SetupTransition) -> list[Intent]:
        self._roll_day(t.ts)
        if t.to_state == "triggered":
            self._remember(self.triggered, t.setup_id, t)
            reco = self.recos.get(t.setup_id)
            return self._enter(t, reco) if reco is not None else []
        if t.to_state in CLOSING_STATES:
            self.triggered.pop(t.setup_id, None)
            out: list[Intent] = []
            for trade in [x for x in self.trades.values() if x.setup_id == t.setup_id and not x.closed]:
                out += self._exit_all(trade, t.ts, f"setup {t.to_state}: {t.reason}")
            return out
        return []

    def on_recommendation(self, r: ContractRecommendation) -> list[Intent]:
        if r.ts:
            self._roll_day(r.ts)
        prev = self.recos.get(r.setup_id)
        self._remember(self.recos, r.setup_id, r)
        if r.bid is not None and r.ask is not None and r.tradier_symbol and r.tradier_symbol not in self.quotes \
                and 0 <= r.bid <= router.MAX_PRICE and 0 <= r.ask <= router.MAX_PRICE:
            self._remember(self.quotes, r.tradier_symbol, (r.bid, r.ask))  # until a live quote arrives
        t = self.triggered.get(r.setup_id)
        if t is None or (prev is not None and (prev.ok or not r.ok)):
            return []  # decided on the first recommendation; a later one only helps after a refusal
        return self._enter(t, r)

    def _enter(self, t: SetupTransition, r: ContractRecommendation) -> list[Intent]:
        out: list[Intent] = []
        subject = t.setup_id
        for user in self.users:
            if (user, t.setup_id) in self.trades or (user, t.setup_id) in self.done:
                continue  # one entry per setup and user
            ok, why = self.gates.allowed(user)
            if not ok:
                out.append(Block(user, why, subject, "entry not sent"))
                continue
            if self.gates.kill_switch:
                out.append(Block(user, "kill_switch", subject, "kill switch refuses new entries"))
                continue
            if not resizable(r):
                out.append(Block(user, "no_contract", subject, r.reason))
                continue
            try:

                symbol = occ.parse(r.tradier_symbol or r.occ_symbol or "").tradier
            except ValueError as exc:
                out.append(Block(user, "bad_symbol", subject, str(exc)))
                continue
            quote = self.quotes.get(symbol)  # the live quote (the recommendation's until one arrives): the spread
            raw = r.ask if self.entry_price == "ask" or r.mid is None else r.mid
            if raw is None or not 0 < raw <= router.MAX_PRICE:
                out.append(Block(user, "no_price", subject, f"recommendation has no usable {self.entry_price}"))
                continue
            limit = float(router.round_to_tick(raw, "nearest"))
            lim = self.lim(user)
            if self.entries_today.get(user, 0) >= lim.max_orders_per_day:
                out.append(Block(user, "max_orders_per_day", subject,
                                 f"{lim.max_orders_per_day} entries already today"))
                continue
            lost = self.gates.loss_today(user)
            if lost >= lim.daily_loss_limit:
                out.append(Block(user, "daily_loss_limit", subject,
                                 f"lost {lost:.0f} today >= daily loss limit {lim.daily_loss_limit:.0f}"))
                continue
            # the recommendation names the contract; the size is this user's, from their own account now
            bal = self.gates.balances(user)
            sized = size_entry(t, r, quote, limit, lim.entry_risk(), bal, max(t.ts, r.ts),
                               self.committed_since(user, (bal or {}).get("ts")))
            if sized.reason is not None:
                out.append(Block(user, sized.reason, subject, sized.detail))
                continue
            room = lim.max_open_risk - self.open_risk(user)
            qty = min(sized.contracts, int(room // (limit * 100)) if room > 0 else 0)
            if qty <= 0:
                out.append(Block(user, "max_open_risk", subject,
                                 f"open risk {self.open_risk(user):.0f} + {limit * 100:.0f}/contract > "
                                 f"{lim.max_open_risk:.0f}"))
                continue
            trade = TradeState(user, t.setup_id, symbol, stop_value=_stop_value(sized.breakdown, r.sizing))
            self.trades[(user, t.setup_id)] = trade
            self.entries_today[user] = self.entries_today.get(user, 0) + 1
            payload = router.entry_payload(symbol, qty, limit, self._new_id(user, t.setup_id, "entry"))
            note = sized.detail if qty == sized.contracts else f"{sized.detail}; {qty} within max open risk"
            out.append(self._place(trade, "entry", "buy_to_open", qty, payload, t.ts, f"entry {t.reason}; {note}"))
        return out

    def on_advice(self, a: ExitAdvice) -> list[Intent]:
        self._roll_day(a.ts)
        out: list[Intent] = []
        for trade in [x for x in self.trades.values() if x.setup_id == a.setup_id and not x.closed]:
            ok, why = self.gates.can_send(trade.user)
            if not ok and a.action != "hold":
                out.append(Block(trade.user, why, a.setup_id, f"{a.action} not sent"))
                continue
            if a.action == "scale_out":
                key = (a.reason, a.fraction, a.r_multiple)
                if key in trade.advice_seen:
                    continue  # the same advice again (publishers may repeat it): act once
                if len(trade.advice_seen) < 32:
                    trade.advice_seen.add(key)
                out += self._scale_out(trade, a)
            elif a.action == "move_stop":
                out += self._protect(trade, a.ts, max(trade.avg_price, trade.stop_price or 0.0), a.reason)
            elif a.action == "trail_stop":
                bid = self.quotes.get(trade.symbol, (0.0, 0.0))[0]
                level = max(trade.avg_price, trade.stop_price or 0.0, bid * (1 - self.limits.trail_fraction))
                out += self._protect(trade, a.ts, level, a.reason)
            elif a.action == "exit_all":
                out += self._exit_all(trade, a.ts, a.reason)
        return out

    def _scale_out(self, trade: TradeState, a: ExitAdvice) -> list[Intent]:
        if trade.exiting or trade.held <= 0:
            return []
        if a.fraction is not None and not math.isfinite(a.fraction):
            return [Block(trade.user, "bad_advice", trade.setup_id, f"scale_out fraction {a.fraction!r}")]
        frac = min(max(a.fraction if a.fraction is not None else 0.5, 0.0), 1.0)
        held = int(trade.held)
        qty = max(1, round(held * frac))
        if held > 1 and frac < 1 and qty >= held:
            qty = held - 1
        qty = min(qty, self.lim(trade.user).max_contracts_per_order)
        bid = self.quotes.get(trade.symbol, (0.0, 0.0))[0]
        limit = bid if bid > 0 else None
        free = held - self.working_sells(trade)
        if free < qty:
            stops = [o for o in trade.orders if self.orders.get(o) and self.orders[o].role == "stop"
                     and self.orders[o].working]
            if stops and trade.pending_scale is None:
                trade.pending_scale = (qty, limit)
                return [Cancel(trade.user, o, "free contracts for the scale-out") for o in stops]
            return [Block(trade.user, "nothing_free", trade.setup_id, "working sells already cover the position")]
        return [self._sell(trade, "scale", qty, limit, a.ts, a.reason)]

    def _sell(self, trade: TradeState, role: str, qty: int, limit: float | None, ts: int, reason: str) -> Place:
        oid = self._new_id(trade.user, trade.setup_id, role)
        if role == "scale" and limit is not None:
            payload = router.scale_out_payload(trade.symbol, qty, limit, oid)
        else:
            payload = router.exit_payload(trade.symbol, qty, oid, limit)
            if limit is not None:
                self._exits.setdefault(trade.symbol, set()).add(oid)
        return self._place(trade, role, "sell_to_close", qty, payload, ts, reason)

    def _protect(self, trade: TradeState, ts: int, level: float, reason: str) -> list[Intent]:
        if trade.exiting or trade.held <= 0 or not 0 < level <= router.MAX_PRICE:
            return []
        stop = float(router.round_to_tick(level, "down"))
        if trade.stop_price is not None and stop <= trade.stop_price:
            return []
        trade.stop_price = stop
        mods: list[Intent] = []
        for oid in trade.orders:  # every resting stop of the trade moves (never lower: checked above)
            o = self.orders.get(oid)
            if o and o.role == "stop" and o.working:
                o.stop = stop
                mods.append(Modify(trade.user, oid, {"stop": f"{stop:.2f}"}))
        if mods:
            return mods
        free = int(trade.held - self.working_sells(trade))
        if free <= 0:
            return []
        oid = self._new_id(trade.user, trade.setup_id, "stop")
        payload = router.stop_payload(trade.symbol, min(free, self.lim(trade.user).max_contracts_per_order), stop, oid)
        return [self._place(trade, "stop", "sell_to_close", int(payload["quantity"]), payload, ts, reason)]

    def protective_level(self, trade: TradeState) -> float | None:
        """Where the protective stop of ``trade`` rests first (per share), or None (no automatic stop).

        ``advisor``: the option's value at the setup's stop (``valueAtStop`` of the recommendation's
        sizing); ``premium_pct`` (and ``advisor`` without that value): average fill x (1 - pct). Always
        at least one tick under the average fill (a sell stop rests below the market) and at least $0.05.
        """
        lim = self.lim(trade.user)
        if lim.protective_stop is None or not trade.avg_price > 0:
            return None
        level = trade.stop_value if lim.protective_stop == "advisor" and trade.stop_value else None
        if level is None:
            level = trade.avg_price * (1 - lim.protective_stop_pct)
        below = float(router.round_to_tick(trade.avg_price, "down")) - float(router.tick_for(
            router.round_to_tick(trade.avg_price, "down")))
        return max(min(level, below), float(router.TICK_SMALL))

    def _ensure_stop(self, trade: TradeState, ts: int) -> list[Intent]:
        """Keep resting protective stops for exactly the open quantity not already being sold: after every
        entry fill (partial too) the uncovered part gets a stop at ``trade.stop_price`` (first set from
        :meth:`protective_level`, then only raised by move/trail advice). Stops covering more than that
        (a scale-out or exit was placed meanwhile) are cancelled and re-placed once the cancel is confirmed."""
        stops = [self.orders[x] for x in trade.orders if x in self.orders and self.orders[x].role == "stop"
                 and self.orders[x].working]
        covered = sum(o.remaining for o in stops)
        others = self.working_sells(trade) - covered
        target = trade.held - others
        if covered > target + 1e-9:
            out: list[Intent] = []
            for o in stops:
                if not o.cancel_sent:
                    o.cancel_sent = True
                    out.append(Cancel(trade.user, o.order_id, "protective stop larger than the open quantity"))
            return out
        if target - covered < 1 - 1e-9:
            return []
        if trade.stop_rejects >= MAX_STOP_REJECTS:
            if trade.stop_rejects == MAX_STOP_REJECTS:
                trade.stop_rejects += 1  # published once
                return [Block(trade.user, "protective_stop_failed", trade.setup_id,
                              f"{MAX_STOP_REJECTS} protective stops refused; the position rests without one")]
            return []
        if trade.stop_price is None:
            level = self.protective_level(trade)
            if level is None:
                return []
            trade.stop_price = float(router.round_to_tick(level, "down"))
        out = []
        free = int(target - covered + 1e-9)
        cap = self.lim(trade.user).max_contracts_per_order
        while free > 0:
            qty = min(free, cap)
            oid = self._new_id(trade.user, trade.setup_id, "stop")
            payload = router.stop_payload(trade.symbol, qty, trade.stop_price, oid)
            out.append(self._place(trade, "stop", "sell_to_close", qty, payload, ts, "protective stop"))
            free -= qty
        return out

    def _exit_all(self, trade: TradeState, ts: int, reason: str, retry: bool = False) -> list[Intent]:
        """Cancel working entry/stop/scale orders and sell the rest. Idempotent (repeated advice does
        nothing) unless ``retry`` (flatten): then cancels and the exit are sent again."""
        if trade.exiting and not retry:
            return []
        trade.exiting = True
        trade.pending_scale = None
        out: list[Intent] = []
        for oid in trade.orders:
            o = self.orders.get(oid)
            if o and o.working and (o.role in ("entry", "stop", "scale")):
                out.append(Cancel(trade.user, oid, f"exit: {reason}"))
        out += self._exit_rest(trade, ts, reason)
        if trade.held <= 0 and not any(self.orders[o].working for o in trade.orders if o in self.orders):
            self._close(trade)
        return out

    def _exit_rest(self, trade: TradeState, ts: int, reason: str) -> list[Intent]:
        """Sell what is held and not covered by working sells (after cancels confirm, the rest)."""
        free = int(trade.held - self.working_sells(trade))
        if free <= 0:
            return []
        trade.exit_attempts += 1
        if trade.exit_attempts > MAX_EXIT_ATTEMPTS:
            return [Block(trade.user, "exit_retries_exhausted", trade.setup_id,
                          f"{MAX_EXIT_ATTEMPTS} exit orders failed; position left open, retried on the next flatten")]
        bid = self.quotes.get(trade.symbol, (0.0, 0.0))[0]
        qty = min(free, self.lim(trade.user).max_contracts_per_order)
        return [self._sell(trade, "exit", qty, bid if bid > 0 else None, ts, reason)]

    def flatten(self, ts: int, reason: str, user: str | None = None,
                only: Callable[[str], bool] | None = None) -> list[Intent]:
        """Exit every open trade (of ``user``, or everyone; ``only`` filters symbols). Gated by
        ``Gates.can_send`` only: the kill switch, auto-execution and opt-in never block a flatten.

        A repeated flatten is a retry: it resets the exit attempt budget of the trades it covers.
        """
        self._roll_day(ts)
        out: list[Intent] = []
        for trade in [t for t in self.trades.values() if not t.closed and (user is None or t.user == user)
                      and (only is None or only(t.symbol))]:
            trade.exit_attempts = 0
            ok, why = self.gates.can_send(trade.user)
            if not ok:
                out.append(Block(trade.user, why, trade.setup_id, "flatten not sent"))
                continue
            out += self._exit_all(trade, ts, reason, retry=True)
        return out

    def on_order_event(self, order_id: str, status: str, exec_qty: float, avg_price: float, ts: int) -> list[Intent]:
        """Apply a broker order update (cumulative ``exec_qty``); returns follow-up intents."""
        o = self.orders.get(order_id)
        if o is None:
            return []
        trade = self.trades.get((o.user, o.setup_id))
        delta = max(exec_qty - o.filled, 0.0)
        if delta > 0:
            fill_px = (avg_price * exec_qty - o.avg_price * o.filled) / delta if exec_qty else avg_price
            o.filled, o.avg_price = exec_qty, avg_price
            if trade is not None:
                if o.side == "buy_to_open":
                    total = trade.held + delta
                    trade.avg_price = (trade.avg_price * trade.held + fill_px * delta) / total
                    trade.held = total
                else:
                    trade.held = max(trade.held - delta, 0.0)
                    trade.exit_attempts = 0  # progress: the retry budget is for refusals, not for chunks
        if status:
            o.status = "filled" if status == "filled" else status
        out: list[Intent] = []
        if trade is None or trade.closed:
            return out
        if o.role == "stop" and status == "rejected":
            trade.stop_rejects += 1
        gate_ok, _ = self.gates.can_send(trade.user)
        if not o.working and trade.pending_scale is not None and gate_ok:
            qty, limit = trade.pending_scale
            free = int(trade.held - self.working_sells(trade))
            stops_left = any(self.orders[x].role == "stop" and self.orders[x].working
                             for x in trade.orders if x in self.orders)
            if free >= qty or (free >= 1 and not stops_left):  # every stop cancel confirmed, or enough freed
                trade.pending_scale = None
                out.append(self._sell(trade, "scale", min(qty, free), limit, ts, "scale-out after stop cancel"))
                if trade.stop_price is not None and trade.held - min(qty, free) >= 1:
                    stop_level, trade.stop_price = trade.stop_price, None
                    out += self._protect(trade, ts, stop_level, "re-place stop on the runner")
        elif trade.exiting and not o.working and gate_ok:
            out += self._exit_rest(trade, ts, "exit after cancel")
        if gate_ok and not trade.exiting and trade.pending_scale is None and trade.held > 0:
            out += self._ensure_stop(trade, ts)
        if trade.held <= 0 and not any(self.orders[x].working for x in trade.orders if x in self.orders):
            self._close(trade)
        return out

    def snapshot(self) -> dict[str, Any]:
        """State for ``status`` replies (no secrets)."""
        return {
            "trades": [{"user": t.user, "setup_id": t.setup_id, "symbol": t.symbol, "held": t.held,
                        "avg_price": round(t.avg_price, 4), "exiting": t.exiting, "stop": t.stop_price,
                        "closed": t.closed} for t in self.trades.values()],
            "working_orders": [o.order_id for o in self.orders.values() if o.working],
            "closed_today": len(self.done),
            "entries_today": dict(self.entries_today),
            "open_risk": {u: round(self.open_risk(u), 2) for u in self.users},
            "kill_switch": self.gates.kill_switch,
        }
