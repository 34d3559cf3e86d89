"""The trade model: the live mesh's trade code driven in event time, without sockets.

A backtest (and the parity report) makes its trades here, through the very objects the live processes
wrap: :class:`~services.selector.core.SelectorCore` (contract choice, greeks, sizing through
:mod:`spx_common.sizing`, the exit plans and their advice), :class:`~services.broker.engine.Engine` (entry
decision re-sized for the account, scale-outs, protective and trailing stops, exits, flatten),
:class:`~services.broker.ledger.Ledger` (fills, slippage against the mid at decision) and
:class:`~services.broker.paper.PaperBroker` (the live paper fill model on the replayed option quotes).
This module only routes between them, in the order the mesh delivers frames:

* a transition goes to the broker engine, then to the selector, whose ``reco.<id>`` goes to the engine;
* closed bars go to the selector (``price_interval`` bars check stops and targets, ``bar_interval`` bars
  trail the runner); its ``exit.<id>`` advice goes to the engine;
* option quotes go to the selector's chain, the engine's quote cache, the ledger's marks and the paper
  broker (whose fills come back as order events: ledger, then engine, as in the broker service);
* intents are executed first in, first out; the follow-ups an order event causes queue behind them (the
  broker service's per-account worker queue).

Each triggered setup gets one :class:`TradeRecord` with both measures: the **underlying R** of the exit
advisor (Σ fraction × R at each exit; a setup the lifecycle closes — stopped, invalidated, expired —
settles the rest at the plan's stop when the price is beyond it, else at the transition's price; a trade
open when its session's data ends closes at the last price) and, when an option entry filled, the
**option P&L in dollars** from the paper fills (less ``fee_per_contract`` per contract bought or sold) with
the slippage of every fill against the option mid at decision (positive = cost).
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import msgspec

from services.broker import router
from services.broker.accounts import limits_of
from services.broker.config import BrokerConfig
from services.broker.engine import Block, Cancel, Engine, Gates, Intent, Modify, Place
from services.broker.ledger import MULTIPLIER, Ledger
from services.broker.paper import PaperBroker
from services.broker.portfolio import flatten_due, is_zero_dte, summarize_balances
from services.selector.config import SelectorConfig
from services.selector.core import SelectorCore
from spx_common.models import ContractRecommendation, ExitAdvice, Fill, MicroBar, Order, Quote, \
    SetupTransition

USER = "backtest"
#: the ``[broker]`` settings the trade model uses (the paper account's; never credentials or endpoints)
BROKER_FIELDS = ("paper_slippage", "paper_starting_cash", "max_contracts_per_order", "max_orders_per_day",
                 "max_open_risk", "pdt_policy", "pdt_min_equity", "max_risk_per_trade", "max_premium_per_trade",
                 "min_risk_per_contract", "dtbp_floor", "rate", "slippage_window", "entry_price", "protective_stop",
                 "protective_stop_pct", "entry_timeout_s", "force_flatten_enabled", "flatten_minutes")
CLOSING = ("stopped", "invalidated", "expired")
MAX_EVENTS_PER_STEP = 10_000  # intents + order events one input may cause (a loop guard; never reached live)


@dataclass
class TradeRecord:
    """One triggered setup: the exit advisor's R on the underlying and the option trade the broker made."""

    setup_id: str
    detector: str
    family: str
    sym: str
    direction: str
    triggered_ns: int
    entry: float
    stop: float
    targets: list[float]
    t1_hit: bool = False
    t2_hit: bool = False
    r: float = 0.0
    exit_ns: int | None = None
    resolution: str = "open"
    trailing_stop_path: list[float] = field(default_factory=list)
    #: the option side (None: no entry filled — no chain, a refusal, or the entry never filled)
    option_symbol: str | None = None
    contracts: float = 0.0
    entry_fill: float | None = None
    pnl_usd: float | None = None
    fees_usd: float = 0.0
    slippage_usd: float | None = None
    risk_usd: float | None = None  # the sized loss to the stop (contracts x perContractLoss)
    option_delta: float | None = None  # the contract's delta at decision (the recommendation's): its moneyness
    option_reason: str = ""  # why no option trade (the selector's or the broker's refusal)
    fills: list[dict] = field(default_factory=list)

    def as_dict(self) -> dict:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


class _Open:
    __slots__ = ("rec", "remaining", "stage")

    def __init__(self, rec: TradeRecord) -> None:
        self.rec, self.remaining, self.stage = rec, 1.0, 0


def broker_settings(cfg: BrokerConfig) -> dict:
    """The trade-relevant ``[broker]`` settings of ``cfg`` (:data:`BROKER_FIELDS`), JSON-ready."""
    return cfg.model_dump(mode="json", include=set(BROKER_FIELDS))


def selector_config(price_interval: str = "1s", pivot_every: int = 60, **over: Any) -> SelectorConfig:
    """The selector's configuration for a backtest: its defaults, stops and targets on ``price_interval``
    bars, pivots on ``pivot_every``-second bars (the live ``bar_interval``)."""
    return SelectorConfig(**{"price_interval": price_interval, "bar_interval": f"{int(pivot_every)}s", **over})


class TradeModel:
    """The selector core, broker engine, ledger and paper broker of one account (see module docstring)."""

    def __init__(self, selector_cfg: SelectorConfig | None = None, broker_cfg: BrokerConfig | None = None, *,
                 fee_per_contract: float = 0.0, user: str = USER) -> None:
        self.selector_cfg = selector_cfg or selector_config()
        self.broker_cfg = broker_cfg or BrokerConfig()
        if not (math.isfinite(fee_per_contract) and fee_per_contract >= 0):
            raise ValueError(f"fee_per_contract must be a finite number >= 0, not {fee_per_contract!r}")
        self.fee = float(fee_per_contract)
        self.user = user
        self.selector = SelectorCore(self.selector_cfg)
        self.paper = PaperBroker(self.broker_cfg.paper_starting_cash, self.broker_cfg.paper_slippage)
        self.ledger = Ledger(self.broker_cfg.slippage_window)
        self._balances: dict | None = None
        self.engine = Engine([user], limits_of(self.broker_cfg, None),
                             Gates(lambda u: (True, ""), balances=lambda u: self._balances),
                             entry_price=self.broker_cfg.entry_price)
        self._refresh_balances(0)
        self.now_ns = 0
        self.records: dict[str, TradeRecord] = {}
        self.open: dict[str, _Open] = {}
        self.finished: list[TradeRecord] = []
        self.advice: list[ExitAdvice] = []
        self.orders: list[Order] = []  # every order placed, as the broker service publishes it first
        self.fills: list[Fill] = []
        self.blocks: dict[str, int] = {}
        self._paper_ids: dict[str, int] = {}
        self._placed: dict[str, tuple[str, str, float | None]] = {}  # order id -> (setup id, role, decision mid)
        self._last: dict[str, tuple[int, float]] = {}  # underlying symbol -> (ts, last close)

    # ------------------------------------------------------------------ inputs

    def on_transition(self, tr: SetupTransition, market: dict | None = None) -> None:
        """A lifecycle transition (``market``: the detector's ``state.market`` document at that time)."""
        self._advance(tr.ts)
        if tr.to_state in CLOSING:
            self._close_record(tr)  # before the selector drops the plan
        self._submit(self.engine.on_transition(tr))
        if market:
            self.selector.on_market(market)
        out = self.selector.on_transition(tr)
        if tr.to_state == "triggered":
            self._open_record(tr)  # the selector's exit plan, when it could make one
        for _topic, kind, body in out:
            if kind == "recommendation":
                self._reco(body)
            elif kind == "block":
                self._count(f"selector_{body.reason}")

    def on_price_bar(self, bar: MicroBar, event_ns: int) -> None:
        """A closed bar of the selector's ``price_interval``."""
        self._last[bar.sym] = (bar.start_ns, bar.close)
        self._bar(self.selector_cfg.price_interval, bar, event_ns)

    def on_pivot_bar(self, bar: MicroBar, event_ns: int) -> None:
        """A closed bar of the selector's ``bar_interval`` (pivots trail the runner)."""
        self._bar(self.selector_cfg.bar_interval, bar, event_ns)

    def on_chain_doc(self, doc: dict) -> None:
        """A ``chain.<root>`` document (a bad one is counted and skipped, as the selector service does)."""
        try:
            self.selector.on_chain_doc(doc)
        except ValueError:
            self._count("bad_chain_doc")
            return
        self._advance(int(doc.get("ts") or 0))

    def on_market_events(self, events: list) -> None:
        """Feed events: option quotes (``O:`` symbols) and index values, in stream order."""
        if not events:
            return
        self.selector.on_ticks(events)
        for ev in events:
            if type(ev) is not Quote or not ev.sym.startswith("O:"):
                continue
            if not (0 <= ev.bid <= router.MAX_PRICE and 0 <= ev.ask <= router.MAX_PRICE):
                self._count("bad_quote")
                continue
            self._advance(ev.ts)
            sym = ev.sym[2:]
            self._submit(self.engine.on_quote(sym, ev.bid, ev.ask, ev.ts))
            self.ledger.mark(sym, ev.bid, ev.ask, ev.ts)
            self._events(self.paper.on_quote(sym, ev.bid, ev.ask, ev.ts, ev.bid_size, ev.ask_size))

    def periodic(self, ts: int) -> None:
        """What the broker service does about once a second: cancel entries past their timeout, and the
        late-day flatten of 0DTE positions when ``force_flatten_enabled`` (event time)."""
        self._advance(ts)
        self._submit(self.engine.expire_entries(self.now_ns))
        cfg = self.broker_cfg
        if cfg.force_flatten_enabled and flatten_due(self.now_ns, cfg.flatten_minutes) and self.engine.trades:
            now = self.now_ns
            self._submit(self.engine.flatten(now, "late-day flatten of 0DTE", only=lambda sym: is_zero_dte(sym, now)))

    def end_session(self, sym: str | None = None, *, reason: str = "session_end") -> None:
        """The session's data ended: flatten the broker's trades (of ``sym``'s setups, or all) and close
        every open record at its symbol's last close."""
        for _sid, o in list(self.open.items()):
            if sym is not None and o.rec.sym != sym:
                continue
            last = self._last.get(o.rec.sym)
            self._settle(o, last[1] if last else o.rec.entry, last[0] if last else o.rec.triggered_ns, reason)
        self._submit(self.engine.flatten(self.now_ns, "backtest: session data ended"))

    def finish(self) -> list[TradeRecord]:
        """Every record, option figures filled in, in exit order (call after :meth:`end_session`)."""
        for rec in self.finished:
            self._option_figures(rec)
        return sorted(self.finished, key=lambda t: (t.exit_ns or 0, t.setup_id))

    def final_orders(self) -> list[Order]:
        """Every order placed, in its final state (the ledger's: status, fills), in placement order."""
        return [self.ledger.get(o.order_id) or o for o in self.orders]

    # ------------------------------------------------------------------ the underlying R

    def _open_record(self, tr: SetupTransition) -> None:
        held = self.selector.plans.get(tr.setup_id)
        if tr.setup_id in self.records or held is None:
            if held is None:
                self._count("exit_plan_invalid")
            return
        plan = held[1]
        rec = TradeRecord(setup_id=tr.setup_id, detector=tr.detector, family=tr.family, sym=tr.sym,
                          direction=tr.direction, triggered_ns=tr.ts, entry=float(plan.entry), stop=float(plan.stop),
                          targets=list(tr.targets), trailing_stop_path=[float(plan.stop)])
        self.records[tr.setup_id] = rec
        self.open[tr.setup_id] = _Open(rec)

    def _close_record(self, tr: SetupTransition) -> None:
        """The lifecycle closed the setup (the selector drops its plan, the broker exits): settle the rest at the
        plan's stop when the price is beyond it (the stop touched), else at the transition's price."""
        o = self.open.get(tr.setup_id)
        if o is None:
            return
        plan = self.selector.plans.get(tr.setup_id, (None, None))[1]
        stop = plan.stop if plan is not None else o.rec.trailing_stop_path[-1]
        last = self._last.get(tr.sym)
        price = tr.price if tr.price is not None else (last[1] if last else o.rec.entry)
        if (price - stop) * (1.0 if o.rec.direction == "long" else -1.0) <= 0:
            price = stop
        why = "expired" if tr.to_state == "expired" else self._stop_kind(o) if tr.to_state == "stopped" \
            else tr.to_state
        self._settle(o, price, tr.ts, why)

    @staticmethod
    def _stop_kind(o: _Open) -> str:
        r = o.rec
        return "stopped" if not r.t1_hit else "target1_then_stop" if not r.t2_hit else "runner_stop"

    @staticmethod
    def _r_of(a: ExitAdvice, rec: TradeRecord) -> float:
        """The advice's R multiple; advice without one (it is optional on the wire) is priced from its
        underlying price against the trade's entry and stop, and at 0 R when it carries neither."""
        if a.r_multiple is not None:
            return float(a.r_multiple)
        risk = abs(rec.entry - rec.stop)
        if a.price is None or not risk:
            return 0.0
        return (a.price - rec.entry) * (1.0 if rec.direction == "long" else -1.0) / risk

    def _apply(self, a: ExitAdvice) -> None:
        o = self.open.get(a.setup_id)
        if o is None:
            return
        rec = o.rec
        rec.trailing_stop_path = list(a.trailing_stop_path)
        if a.action == "scale_out" and a.fraction is not None:
            take = o.remaining * a.fraction
            rec.r += take * self._r_of(a, rec)
            o.remaining -= take
            o.stage += 1
            rec.t1_hit = True
            rec.t2_hit = rec.t2_hit or o.stage >= 2
        elif a.action == "exit_all":
            rec.r += o.remaining * self._r_of(a, rec)
            o.remaining = 0.0
            rec.resolution = self._stop_kind(o)
            self._finish(o, a.ts)

    def _settle(self, o: _Open, price: float, ts: int, why: str) -> None:
        rec = o.rec
        if o.remaining > 0:
            sign = 1.0 if rec.direction == "long" else -1.0
            risk = abs(rec.entry - rec.stop)
            rec.r += o.remaining * ((price - rec.entry) * sign / risk if risk > 0 else 0.0)
            o.remaining = 0.0
        rec.resolution = why if rec.resolution == "open" else rec.resolution
        self._finish(o, ts)

    def _finish(self, o: _Open, ts: int) -> None:
        o.rec.exit_ns = ts
        o.rec.r = round(o.rec.r, 6)
        self.open.pop(o.rec.setup_id, None)
        self.finished.append(o.rec)

    # ------------------------------------------------------------------ routing

    def _advance(self, ts: int) -> None:
        if ts > self.now_ns:
            self.now_ns = ts

    def _count(self, key: str, n: int = 1) -> None:
        self.blocks[key] = self.blocks.get(key, 0) + n

    def _bar(self, interval: str, bar: MicroBar, event_ns: int) -> None:
        self._advance(event_ns)
        for _topic, kind, body in self.selector.on_bar(interval, bar, event_ns):
            if kind != "exit_advice":
                continue
            self.advice.append(body)
            self._apply(body)
            self._submit(self.engine.on_advice(body))

    def _reco(self, r: ContractRecommendation) -> None:
        rec = self.records.get(r.setup_id)
        if rec is not None and not r.ok:
            rec.option_reason = r.reason
        self._submit(self.engine.on_recommendation(r))

    def _refresh_balances(self, ts: int) -> None:
        self._balances = {**summarize_balances(self.paper.balances()), "ts": ts}

    def _submit(self, intents: list[Intent]) -> None:
        """Execute intents first in, first out (the broker service's worker queue); follow-ups queue behind."""
        queue: deque[Intent] = deque(intents)
        n = 0
        while queue:
            n += 1
            if n > MAX_EVENTS_PER_STEP:
                self._count("intent_loop_guard")
                return
            it = queue.popleft()
            ts = self.now_ns
            if isinstance(it, Block):
                self._count(it.reason)
                rec = self.records.get(it.subject)
                if rec is not None and not rec.option_reason and it.reason not in ("nothing_free",):
                    rec.option_reason = f"{it.reason}: {it.detail}"[:300]
            elif isinstance(it, Place):
                order = msgspec.structs.replace(it.order, ts=ts)
                self.ledger.record_order(order, it.decision_mid)
                self.orders.append(order)
                self._placed[order.order_id] = (order.setup_id, it.role, it.decision_mid)
                try:
                    po, events = self.paper.place(it.payload, ts)
                except router.OrderRefused as exc:
                    self._count(exc.reason)
                    self.ledger.update_order(order.order_id, status="rejected", ts=ts)
                    queue.extend(self.engine.on_order_event(order.order_id, "rejected", 0.0, 0.0, ts))
                    continue
                self._paper_ids[order.order_id] = po.id
                queue.extend(self._events(events, submit=False))
            elif isinstance(it, Cancel):
                pid = self._paper_ids.get(it.order_id)
                if pid is None:
                    continue
                try:
                    events = self.paper.cancel(pid, ts)
                except (KeyError, ValueError):
                    continue
                queue.extend(self._events(events, submit=False))
            elif isinstance(it, Modify):
                pid = self._paper_ids.get(it.order_id)
                if pid is None:
                    continue
                try:
                    events = self.paper.modify(pid, it.fields, ts)
                except (ValueError, router.OrderRefused):
                    self._count("modify_failed")
                    continue
                # the order's new price/stop, as the broker service records a modify
                self.ledger.update_order(it.order_id, ts=ts, **{k: float(v) for k, v in it.fields.items()
                                                                if k in ("price", "stop")})
                queue.extend(self._events(events, submit=False))

    def _events(self, events: list[dict], submit: bool = True) -> list[Intent]:
        """Paper order events: ledger (fills), then the engine, as the broker service applies them."""
        out: list[Intent] = []
        for e in events:
            oid = str(e.get("tag") or "")
            status = str(e.get("status") or "")
            qty, avg = float(e.get("exec_quantity") or 0.0), float(e.get("avg_fill_price") or 0.0)
            ts = int(e.get("ts") or self.now_ns)
            _, fill, _ = self.ledger.apply_event(oid, status, qty, avg, ts, str(e.get("id", "")))
            if fill is not None:
                self.fills.append(fill)
                self._refresh_balances(ts)
            out += self.engine.on_order_event(oid, status, qty, avg, ts)
        if submit:
            self._submit(out)
            return []
        return out

    # ------------------------------------------------------------------ option figures

    def _option_figures(self, rec: TradeRecord) -> None:
        """Dollar P&L, fees and slippage of ``rec``'s option trade from its fills (the ledger's)."""
        fills = [f for f in self.fills if self._placed.get(f.order_id, ("",))[0] == rec.setup_id]
        if not fills:
            return
        bought = sum(f.quantity for f in fills if f.side.startswith("buy"))
        if bought <= 0:
            return
        sold = sum(f.quantity for f in fills if not f.side.startswith("buy"))
        cash = sum((-1 if f.side.startswith("buy") else 1) * f.quantity * f.price * MULTIPLIER for f in fills)
        held = bought - sold
        if held > 1e-9:  # no bid to sell into before the data ended: marked at the last bid (0 without one)
            q = self.paper.quotes.get(fills[0].option_symbol)
            cash += held * (q[0] if q else 0.0) * MULTIPLIER
            rec.option_reason = rec.option_reason or f"{held:g} contract(s) unsold at the end: marked at the last bid"
        slip = 0.0
        for f in fills:
            mid = self._placed[f.order_id][2]
            if mid is not None:
                slip += (1 if f.side.startswith("buy") else -1) * (f.price - mid) * f.quantity * MULTIPLIER
        rec.option_symbol = fills[0].option_symbol
        rec.contracts = bought
        buys = [f for f in fills if f.side.startswith("buy")]
        rec.entry_fill = round(sum(f.price * f.quantity for f in buys) / bought, 4)
        rec.fees_usd = round(self.fee * (bought + sold), 2)
        rec.pnl_usd = round(cash - rec.fees_usd, 2)
        rec.slippage_usd = round(slip, 2)
        reco = self.engine.recos.get(rec.setup_id)
        per = reco.sizing.perContractLoss if reco is not None and reco.sizing is not None else None
        rec.risk_usd = round(per * bought, 2) if per else None
        rec.option_delta = reco.delta if reco is not None else None
        rec.fills = [{"order_id": f.order_id, "side": f.side, "quantity": f.quantity, "price": f.price, "ts": f.ts,
                      "role": self._placed[f.order_id][1]} for f in fills]
