"""The broker process: wires the pure engine, ledger and portfolio logic to the bus and a broker.

Consumes ``setup.transition`` (detector), ``reco.<setup_id>`` and ``exit.<setup_id>`` (selector) and
``tick.O:...`` option quotes (feed).  Publishes ``order.<user>``, ``fill.<user>``,
``position.<user>``, ``portfolio.<user>``, ``alert.<user>`` (PDT / buying power, drift, flatten) and
``block.broker`` (every refusal, with its reason; counted in ``broker_blocks_total{reason}``).

Brokers:

* **paper** (no ``TRADIER_ACCESS_TOKEN``): :class:`~services.broker.paper.PaperBroker` fills against
  the quotes on the bus; nothing is sent anywhere, so it auto-executes for ``paper_users`` unless
  ``paper_auto_execution=false`` (this is what makes the embedded default trade end to end);
* **tradier**: :class:`~services.broker.tradier.TradierClient`; nothing is sent unless
  ``TRADIER_EXECUTION_ENABLED`` (+ ``TRADIER_EXECUTION_PRODUCTION_ENABLED`` off the sandbox); a new
  *entry* also needs the ``auto_execution`` rollout switch on, the kill switch off and the user's opt-in
  (``auto_execution_users``). Exits, stops, cancels and flatten need only the first (:meth:`send_allowed`).
  Order events come from the account-events websocket; while it is down, order status is polled.

Users: with users in the store (``spx users``), every enabled user gets an isolated account runner
(:mod:`services.broker.accounts`): their own broker client (paper, or Tradier with their sealed token,
account and environment), bounded intent queue, worker task, balances, portfolio sync, reconciliation
and order polling, and their own limits (max contracts, max risk per trade, daily loss limit) and
opt-in; a user whose broker fails (500s, 429s, bad token) is alerted and blocked with a reason while
the others trade.  With no users in the store, one shared account serves the config lists as before.

An expired access token (Tradier's fault ``access_token_expired``, sent with HTTP 500) stops the
account: nothing more is sent for it (every order is refused with reason ``token_expired``, order
polling, reconciliation and the events stream pause), the credential status records it, and each user
is alerted once: "token expired: renew it with spx users credentials set".  The stored token is read
again every ``poll_interval_s`` while expired (and at once on ``credentials.set``); a different one that
answers a balances call replaces the client and the account resumes (alert ``token_renewed``).  An
account-events websocket already open stays open (it only receives; it sends no request).

Decisions run in event time (the newest ``event_ns`` of the frames received); the broker I/O of each
account runs in its own worker task draining its bounded intent queue in order. The inputs are handled in
event-time order across the detector, the selector and the feed (``aligned``, docs/protocol.md), and a paper
account's intents run at once, in order, at the event time of the input that made them (a paper broker does
no I/O): its orders and fills depend on the data only, never on the replay speed or task scheduling. Working
entries time out in event time at the first input past their timeout. The broker is a relay (its watermark
goes on to the coach, which aligns ``alert.`` and ``position.``).  Requests: ``status``, ``ledger``,
``flatten``, ``slippage``, ``portfolio``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import msgspec

from services.broker import accounts as acc
from services.broker import credentials as creds
from services.broker import gates
from services.broker import portfolio as pf
from services.broker import router
from services.broker.config import BrokerConfig
from services.broker import credentials_rpc
from services.broker.credentials import with_stored_credentials
from services.broker.engine import Block, Cancel, Engine, Gates, Intent, Modify, Place, et_day
from services.broker.ledger import Ledger
from services.broker import reconcile
from services.broker import restore
from services.broker.restore import Restored
from services.broker.tradier import (
    FINAL_STATUSES, OPEN_STATUSES, PlacementUnresolved, TradierClient, TradierError, TradierTokenExpired,
    account_events, dec, exec_quantity, token_fingerprint,
)
from spx_common.bus import RpcError
from spx_common.clock import EventClock
from spx_common.config import load
from spx_common.models import BlockEvent, ContractRecommendation, ExitAdvice, Quote, SetupTransition
from spx_common.service import BusService
from spx_common.store.broker import stored_order_ids
from spx_common.topics import (EXIT, FILL, OPTION_TICK, ORDER, POSITION, RECO, SETUP_TRANSITION, alert_topic,
                               block_topic, fill_topic, order_topic, portfolio_topic, position_topic)
from spx_common.codec import FrameError, decode_frames
from spx_common import provenance

class _Plain:
    """A token already in memory, in the shape :func:`credentials.client_for` takes (``reveal()``)."""

    def __init__(self, token: str) -> None:
        self._token = token

    def reveal(self) -> str:
        return self._token


QUEUE_MAX = 1000
FLATTEN_RETRY_S = 30.0
FLAGS_ALERT_S = 60.0  # the critical "flags file not usable" alert repeats this often (wall clock) while it lasts
FLATTEN_SYNC_S = 8.0  # operator flatten: longest wait for an account's positions before flattening the ledger's
MAX_UNRESOLVED_CHECKS = 10
MARK_PUBLISH_NS = 1_000_000_000
SELECT_GRACE_S = 0.5
MAX_ORPHANS = 200
MAX_BROKER_IDS = 10_000
STARTUP_DELAY_S = 2.0
MAX_SELECT_INFLIGHT = 20


class BrokerService(BusService):
    """Broker: paper or Tradier execution, fills, ledger, portfolio sync, reconciliation, flatten."""

    name = "broker"
    subscriptions = {"detector": [SETUP_TRANSITION], "selector": [RECO, EXIT], "feed": [OPTION_TICK]}
    aligned = (SETUP_TRANSITION, RECO, EXIT, OPTION_TICK)
    watermarks = True
    replayable = (ORDER, FILL, POSITION)  # the recorder catches up after a restart or a gap

    def __init__(self, *args: Any, config: BrokerConfig | None = None, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.cfg = with_stored_credentials(config or load(BrokerConfig), self.runtime)
        self.records = self._stored_users()

    def _stored_users(self) -> list[dict] | None:
        from spx_common.store.config import StoreConfig

        try:
            return acc.stored_users(load(StoreConfig).resolved_url(self.runtime))
        except Exception as exc:  # noqa: BLE001 - the store is optional: trade the config lists, say so loudly
            logging.getLogger("spx.broker").error("users not read from the store (%r); using the config lists", exc)
            return None

    # ------------------------------------------------------------------ setup

    def setup(self) -> None:
        cfg = self.cfg
        m = self.metrics
        self.m_blocks = m.counter("broker_blocks_total", "Refusals published on block.broker.", ["reason"])
        self.m_orders = m.counter("broker_orders_sent_total", "Orders sent to the broker.", ["role"])
        self.m_order_errors = m.counter("broker_order_errors_total", "Broker calls that failed.", ["kind"])
        self.m_fills = m.counter("broker_fills_total", "Fills recorded in the ledger.")
        self.m_drift = m.counter("broker_drift_total", "Reconciliation drift events.")
        self.m_alerts = m.counter("broker_alerts_total", "Behavioural alerts sent.", ["kind"])
        self.m_bad = m.counter("broker_bad_input_total", "Inputs refused at the boundary.", ["kind"])
        self.m_advice = m.counter("broker_exit_advice_total", "Exit advice received from the selector.", ["action"])
        self.m_queue = m.gauge("broker_intent_queue", "Intents waiting for the broker worker.")
        self.m_select = m.counter("broker_select_requests_total",
                                  "select requests to the selector when no reco frame came.", ["outcome"])
        self._selecting: set[str] = set()
        self._select_tasks: set[asyncio.Future] = set()
        self.clock = EventClock()
        self.ledger = Ledger(cfg.slippage_window)
        if not self.records:
            # httpx logs every request at INFO: order polling would flood the log
            logging.getLogger("httpx").setLevel(logging.WARNING)
        self.accounts = acc.build(cfg, self.records, QUEUE_MAX)
        self.account_of: dict[str, acc.Account] = {u: a for a in self.accounts for u in a.users}
        for a in self.accounts:
            self._paper_balances(a, 0)  # local: entries are sized from them from the first decision on
        self.users = [u for a in self.accounts for u in a.users]
        self.engine = Engine(
            self.users,
            acc.limits_of(cfg, None),
            Gates(self.allowed, kill_switch=bool(self.flags.get("kill_switch")),
                  balances=lambda user: self._balances_of(user) or None,
                  loss_today=self._loss_today, send=self.send_allowed),
            entry_price=cfg.entry_price,
            session=self.pub.session[:6] if self.pub else "",
            user_limits={a.name: acc.limits_of(cfg, a.record) for a in self.accounts if a.record is not None},
        )
        self._pnl_day: Any = None
        self._store = None
        if self.records:
            from spx_common.store import Store, make_engine
            from spx_common.store.config import StoreConfig

            self._store = Store(make_engine(load(StoreConfig).resolved_url(self.runtime)))
        self._pnl_base: dict[str, float] = {}
        self.broker_ids: dict[tuple[str, str], str] = {}  # (account, broker order id) -> our order id
        self.unresolved: dict[str, int] = {}  # tags whose placement outcome is unknown -> attempts
        self.snapshots = pf.SnapshotGate(cfg.portfolio_change_pct)
        self.cooldown = pf.Cooldown(cfg.alert_cooldown_s)
        self._marked: dict[tuple[str, str], int] = {}
        self._orphans: dict[tuple[str, str], list[dict]] = {}
        self._last_flatten = float("-inf")
        self._flags_alerted = float("-inf")
        self._started_mono = time.monotonic()
        self._notices: list[tuple[str, str, Any]] = []
        self._inline: list[tuple[Intent, acc.Account]] = []  # paper intents, run in order by _run_inline
        self._inline_busy = False
        if any(a.tradier is not None for a in self.accounts):
            logging.getLogger("httpx").setLevel(logging.WARNING)
        self.on(SETUP_TRANSITION, self._on_transition)
        self.on(RECO, self._on_reco)
        self.on(EXIT, self._on_exit)
        self.on(OPTION_TICK, self._on_ticks)
        self.rpc("ledger", lambda p: self.ledger.snapshot(p.get("user")))
        self.rpc("flatten", self._rpc_flatten)
        self.rpc("slippage", lambda p: self.ledger.slippage_stats())
        self.rpc("portfolio", lambda p: self._balances_of(str((p or {}).get("user") or self.users[0])))
        credentials_rpc.register(self)  # credentials.set|test|remove|status for the gateway (users' own tokens)
        self.log.info("broker mode %s", self.mode, extra={
            "mode": self.mode, "sandbox": cfg.is_sandbox, "tradier_send": cfg.tradier_send_allowed()[0],
            "accounts": {a.name: a.kind for a in self.accounts}})

    @property
    def mode(self) -> str:
        """``paper``/``tradier`` (the shared config-list account) or ``users`` (per-user accounts)."""
        return "users" if self.records else self.cfg.mode

    @staticmethod
    def _paper_balances(a: acc.Account, ts: int) -> None:
        if a.paper is not None:
            a.balances = {**pf.summarize_balances(a.paper.balances()), "ts": ts}

    def _balances_of(self, user: str) -> dict[str, Any]:
        a = self.account_of.get(user)
        return a.balances if a is not None else {}

    def _loss_today(self, user: str) -> float:
        """Dollars lost today (ET): P&L now vs at the first decision of the day; positive = loss."""

        day = et_day(self._now())
        if day != self._pnl_day:
            self._pnl_day = day
            self._pnl_base = {u: sum(self.ledger.pnl(u).values()) for u in self.users}
        return self._pnl_base.get(user, 0.0) - sum(self.ledger.pnl(user).values())

    def send_allowed(self, user: str) -> tuple[bool, str]:
        """Whether anything at all may be sent for ``user`` (:func:`gates.send_allowed`)."""
        return gates.send_allowed(self.cfg, self.account_of.get(user))

    def allowed(self, user: str) -> tuple[bool, str]:
        """Whether a new *entry* may be sent for ``user`` (:func:`gates.entry_allowed`)."""
        return gates.entry_allowed(self.cfg, self.account_of.get(user), user, self.flags)

    def on_flags(self, changed: dict[str, Any]) -> None:
        self.engine.gates.kill_switch = bool(self.flags.get("kill_switch"))
        self._flags_alert()

    def _flags_alert(self) -> None:
        """A flags file that is not usable (the kill switch is then ON): a critical alert to every user,
        repeated once per alert cooldown while it lasts."""
        err = self.flag_store.error
        now = time.monotonic()
        if not err:
            self._flags_alerted = float("-inf")
            return
        # wall clock, not event time: it must repeat in a replay too; the first waits for subscribers
        if now - self._flags_alerted < FLAGS_ALERT_S or now - self._started_mono < STARTUP_DELAY_S:
            return
        self._flags_alerted = now
        ts = self._now()
        for user in self.users:
            self.m_alerts.inc(kind="flags_invalid")
            self.publish(alert_topic(user), "doc", {
                "kind": "flags_invalid", "severity": "critical", "ts": ts, "user": user, "data": {"error": err},
                "message": f"The switches file is not usable ({err}); the kill switch is ON and no entry is sent "
                           "until a valid file is written (spx flags set). Exits and flatten still go through."}, ts)

    # ------------------------------------------------------------------ bus input

    def _now(self) -> int:
        return self.clock.now_ns() or time.time_ns()

    def _advance(self, ts: int) -> None:
        """Event time moves to ``ts``: working entries past their timeout are cancelled first."""
        self.clock.advance(ts)
        self._submit(self.engine.expire_entries(self.clock.now_ns()))

    def _reco_comes_in_order(self) -> bool:
        """Aligned with a live selector: its reco for a transition comes in event-time order after it."""
        al = self.aligner
        if al is None:
            return False
        return any(not st.idle and st.watermark > -(1 << 63) for name, st in al.streams.items()
                   if name in self.bus.instances_of("selector"))

    def _on_transition(self, frame, t: SetupTransition) -> None:
        self._advance(t.ts)
        self._submit(self.engine.on_transition(t))
        if t.to_state == "triggered" and t.setup_id not in self.engine.recos and not self._reco_comes_in_order() \
                and len(self._selecting) < MAX_SELECT_INFLIGHT and t.setup_id not in self._selecting:
            self._selecting.add(t.setup_id)
            task = asyncio.ensure_future(self._select_fallback(t))
            self._select_tasks.add(task)
            task.add_done_callback(self._select_tasks.discard)

    async def _select_fallback(self, t: SetupTransition) -> None:
        """No ``reco.<setup_id>`` yet: after a grace period ask the selector (``select`` request with
        ``{"setup_id", "transition"}``) and feed its ContractRecommendation answer to the engine."""
        try:
            await asyncio.sleep(SELECT_GRACE_S)
            if t.setup_id in self.engine.recos or self.stop_event.is_set():
                return
            try:
                res = await self.client("selector", timeout_s=1.0, retries=0).call(
                    "select", {"setup_id": t.setup_id, "transition": msgspec.to_builtins(t)})
                reco = msgspec.convert(res, ContractRecommendation)
            except RpcError as exc:
                self.m_select.inc(outcome=exc.code)
                return
            except msgspec.ValidationError as exc:
                self.m_select.inc(outcome="bad_answer")
                self.log.warning("selector answered select with a bad recommendation: %s", exc)
                return
            self.m_select.inc(outcome="ok")
            self._submit(self.engine.on_recommendation(reco))
        finally:
            self._selecting.discard(t.setup_id)

    def _on_reco(self, frame, r: ContractRecommendation) -> None:
        if r.ts:
            self._advance(r.ts)
        self._submit(self.engine.on_recommendation(r))

    def _on_exit(self, frame, a: ExitAdvice) -> None:
        self.m_advice.inc(action=a.action)
        self._advance(a.ts)
        self._submit(self.engine.on_advice(a))

    def _on_ticks(self, frame, events: list) -> None:
        for ev in events:
            if not isinstance(ev, Quote) or not ev.sym.startswith("O:"):
                continue
            if not (ev.bid <= router.MAX_PRICE and ev.ask <= router.MAX_PRICE):  # inf passes the schema
                self.m_bad.inc(kind="quote")
                continue
            self._advance(ev.ts)
            sym = ev.sym[2:]
            self._submit(self.engine.on_quote(sym, ev.bid, ev.ask, ev.ts))
            for pos in self.ledger.mark(sym, ev.bid, ev.ask, ev.ts):
                key = (pos.user, sym)
                if ev.ts - self._marked.get(key, 0) >= MARK_PUBLISH_NS:  # P&L marks at most 1/s per position
                    if len(self._marked) >= MAX_BROKER_IDS:
                        self._marked.clear()
                    self._marked[key] = ev.ts
                    self.publish(position_topic(pos.user), "position", pos, ev.ts)
            for a in self.accounts:
                if a.paper is not None:
                    for e in a.paper.on_quote(sym, ev.bid, ev.ask, ev.ts, ev.bid_size, ev.ask_size):
                        self._apply_broker_event(e, ev.ts, a)

    # ------------------------------------------------------------------ intents

    def _submit(self, intents: list[Intent]) -> None:
        if not intents:  # every option quote comes through here; most make no intent
            return
        for it in intents:
            if isinstance(it, Block):
                self._block(it.user, it.reason, it.subject, it.detail)
                continue
            user = it.order.user if isinstance(it, Place) else it.user
            a = self.account_of.get(user)
            if a is None:
                self._block(user, "unknown_user", "", "no account for this user")
                continue
            if a.paper is not None:
                self._inline.append((it, a))
                continue
            try:
                a.queue.put_nowait(it)
            except asyncio.QueueFull:
                self._block(user, "queue_full", getattr(it, "order_id", ""),
                            f"broker worker of {a.name} is behind; intent dropped")
        self.m_queue.set(sum(a.queue.qsize() for a in self.accounts))
        if self._inline and not self._inline_busy:
            self._run_inline()

    def _run_inline(self) -> None:
        """Paper intents, first in first out (those they make join the end), each to completion at once:
        a paper account does no I/O, so its coroutines never suspend."""
        self._inline_busy = True
        try:
            while self._inline:
                it, a = self._inline.pop(0)
                coro = self._execute(it, a)
                try:
                    coro.send(None)
                except StopIteration:
                    continue
                except Exception as exc:  # as in _worker: a bug must not stop the next intents
                    self._intent_failed(it, exc)
                    continue
                coro.close()
                self._intent_failed(it, RuntimeError("a paper intent awaited I/O"))
        finally:
            self._inline_busy = False

    def _intent_failed(self, it: Intent, exc: BaseException) -> None:
        self.m_order_errors.inc(kind="internal")
        self.log.error("intent %r failed: %r", it, exc, exc_info=exc)
        self._block(getattr(it, "user", "") or getattr(getattr(it, "order", None), "user", ""),
                    "internal_error", "", repr(exc))

    def _block(self, user: str, reason: str, subject: str, detail: str = "") -> None:
        self.m_blocks.inc(reason=reason)
        body = BlockEvent(service="broker", reason=reason, ts=self._now(), subject=f"{user}:{subject}" if user else subject,
                          detail=detail[:500])
        self.publish(block_topic("broker"), "block", body, body.ts)

    def _publish_order(self, order) -> None:
        if order is not None:
            self.publish(order_topic(order.user), "order", order, order.ts)

    async def _worker(self, a: acc.Account) -> None:
        """One account's broker I/O, in order; a slow or failing broker only delays this account."""
        while not self.stop_event.is_set():
            try:
                it = await asyncio.wait_for(a.queue.get(), 0.2)
            except TimeoutError:
                continue
            try:
                await self._execute(it, a)
            except Exception as exc:  # a bug must not stop execution of the next intents
                self._intent_failed(it, exc)
            self.m_queue.set(sum(x.queue.qsize() for x in self.accounts))

    async def _execute(self, it: Intent, a: acc.Account) -> None:
        ts = self._now()
        if a.token_expired and a.paper is None and not isinstance(it, Place):
            # a cancel or modify queued before the expiry was seen: never sent with the dead token
            self._block(it.user, "token_expired", it.order_id, a.token_expired)
            return
        if isinstance(it, Place):
            await self._place(it, ts, a)
        elif isinstance(it, Cancel):
            await self._cancel(it, ts, a)
        elif isinstance(it, Modify):
            await self._modify(it, ts, a)

    def _broker_id(self, order_id: str) -> str | None:
        o = self.ledger.get(order_id)
        return o.broker_id if o else None

    async def _place(self, p: Place, ts: int, a: acc.Account) -> None:
        order = msgspec.structs.replace(p.order, ts=ts)
        self.ledger.record_order(order, p.decision_mid)
        self._publish_order(order)
        client = a.client
        if client is None:
            return self._refused(order, "no_token", "no broker credentials for this user", ts, p.role)
        if a.token_expired and a.paper is None:  # queued before the expiry was seen: never sent with a dead token
            return self._refused(order, "token_expired", a.token_expired, ts, p.role)
        try:
            res = await client.place_order(p.payload, ts=ts)
            broker_id = str(res["id"])
            events = list(res.get("events") or [])
        except router.OrderRefused as exc:
            return self._refused(order, exc.reason, exc.detail, ts, p.role)
        except PlacementUnresolved as exc:
            self.m_order_errors.inc(kind="unresolved")
            self.unresolved[order.order_id] = 0
            self._publish_order(self.ledger.update_order(order.order_id, status="unknown", ts=ts,
                                                         reason=f"placement unresolved: {exc.cause!r}"))
            self._alert(order.user, "order_unresolved", "warning",
                        f"Order {order.order_id} got no answer; it will be found by its tag, never re-sent.", ts)
            return
        except TradierTokenExpired as exc:
            self.m_order_errors.inc(kind=type(exc).__name__)
            await self._token_expired(a, exc, ts)
            return self._refused(order, "token_expired", a.token_expired, ts, p.role)
        except TradierError as exc:
            self.m_order_errors.inc(kind=type(exc).__name__)
            why = "; ".join(getattr(exc, "messages", None) or []) or type(exc).__name__  # the broker's own text
            if p.role != "exit":  # an exit refusal has its own critical alert
                self._alert(order.user, "broker_error", "critical",
                            f"Your broker refused or failed the {p.role} order for {order.option_symbol} "
                            f"({why}); nothing was opened.", ts)
            return self._refused(order, "broker_rejected", str(exc), ts, p.role)
        self.m_orders.inc(role=p.role)
        self._map(a, broker_id, order.order_id)
        self._publish_order(self.ledger.update_order(order.order_id, broker_id=broker_id, status="open", ts=ts))
        for e in events + self._orphans.pop((a.name, broker_id), []):
            self._apply_broker_event(e, ts, a)

    def _refused(self, order, reason: str, detail: str, ts: int, role: str) -> None:
        self._block(order.user, reason, order.order_id, detail)
        if role == "exit":
            self.log.warning("exit order %s refused: %s %s", order.order_id, reason, detail)
            self._alert(order.user, "exit_failed", "critical",
                        f"Exit order for {order.option_symbol} was refused ({reason}: {detail[:200]}); the position "
                        "is still open and the exit will be retried.", ts)
        self._publish_order(self.ledger.update_order(order.order_id, status="rejected", reason=f"{reason}: {detail}"[:300],
                                                     ts=ts))
        self._submit(self.engine.on_order_event(order.order_id, "rejected", 0.0, 0.0, ts))

    async def _cancel(self, c: Cancel, ts: int, a: acc.Account) -> None:
        bid = self._broker_id(c.order_id)
        if bid is None:
            return
        client = a.client
        if client is None:
            return
        try:
            events = list((await client.cancel_order(bid, ts=ts)).get("events") or [])
            if not events:  # confirmed on the stream: read the order back so it is known even while that is down
                events = [await client.order(bid)]
        except TradierTokenExpired as exc:
            await self._token_expired(a, exc, ts)
            return
        except (ValueError, TradierError) as exc:  # already final or unknown: its state tells what happened
            self.m_order_errors.inc(kind="cancel")
            self.log.warning("cancel %s failed: %s", c.order_id, exc)
            try:
                events = [await client.order(bid)]
            except (ValueError, TradierError):
                return
        for e in events:
            self._apply_broker_event(e, ts, a)

    async def _modify(self, mo: Modify, ts: int, a: acc.Account) -> None:
        bid = self._broker_id(mo.order_id)
        if bid is None:
            return
        client = a.client
        if client is None:
            return
        try:
            events = list((await client.modify_order(bid, ts=ts, **mo.fields)).get("events") or [])
        except TradierTokenExpired as exc:
            await self._token_expired(a, exc, ts)
            return
        except (ValueError, TradierError, router.OrderRefused) as exc:
            self.m_order_errors.inc(kind="modify")
            self._block(mo.user, "modify_failed", mo.order_id, str(exc))
            return
        changes = {k: float(v) for k, v in mo.fields.items() if k in ("price", "stop")}
        self._publish_order(self.ledger.update_order(mo.order_id, ts=ts, **changes))
        for e in events:
            self._apply_broker_event(e, ts, a)

    def _map(self, a: acc.Account, broker_id: str, order_id: str) -> None:
        self.broker_ids[(a.name, broker_id)] = order_id
        while len(self.broker_ids) > MAX_BROKER_IDS:
            self.broker_ids.pop(next(iter(self.broker_ids)))

    def _apply_broker_event(self, e: dict, ts: int, a: acc.Account) -> None:
        """One order event of account ``a`` (paper, stream or polled order): ledger -> publish -> engine."""
        broker_id = str(e.get("id", ""))
        order_id = self.broker_ids.get((a.name, broker_id))
        if order_id is None and e.get("tag") and self.ledger.get(str(e["tag"])) is not None \
                and self.ledger.get(str(e["tag"])).user in a.users:
            order_id = str(e["tag"])
            self._map(a, broker_id, order_id)
            self.unresolved.pop(order_id, None)
        if order_id is None:
            # may be an event for a placement whose HTTP answer is still on its way: keep it (bounded)
            self.m_bad.inc(kind="unknown_order_event")
            if broker_id:
                self._orphans.setdefault((a.name, broker_id), []).append(e)
                while len(self._orphans) > MAX_ORPHANS:
                    self._orphans.pop(next(iter(self._orphans)))
            return
        status = str(e.get("status") or "")
        qty = float(exec_quantity(e))
        avg = float(dec(e.get("avg_fill_price"), None) or 0)
        order, fill, position = self.ledger.apply_event(order_id, status, qty, avg, ts, broker_id)
        self._publish_order(order)
        if fill is not None:
            self.m_fills.inc()
            self.publish(fill_topic(fill.user), "fill", fill, ts)
            self._paper_balances(a, ts)  # keep the buying power the engine sizes with current (cheap locally)
        if position is not None:
            self.publish(position_topic(position.user), "position", position, ts)
        self._submit(self.engine.on_order_event(order_id, status, qty, avg, ts))

    # ------------------------------------------------------------------ alerts, portfolio, reconcile, flatten

    def _alert(self, user: str, kind: str, severity: str, message: str, ts: int, **data: Any) -> None:
        if not self.cooldown.allow(user, kind, ts):
            return
        self.m_alerts.inc(kind=kind)
        self.publish(alert_topic(user), "doc", {"kind": kind, "severity": severity, "message": message, "ts": ts,
                                               "user": user, "data": data}, ts)

    async def _balances(self, a: acc.Account) -> dict:
        return await a.client.balances() if a.client is not None else {}

    async def _broker_positions(self, a: acc.Account) -> dict[str, float]:
        rows = await a.client.positions() if a.client is not None else []
        a.last_position_rows = rows
        options, a.other_positions = pf.split_positions(rows)  # equities are reported, never managed
        return options

    async def _note_call(self, a: acc.Account, error: BaseException | None) -> None:
        """A stored user's credential status (last successful call / last error) for ``spx users``."""
        if a.record is None or a.tradier is None or self._store is None:
            return
        try:
            if error is None:
                await asyncio.to_thread(self._store.set_credential_status, a.name, ok_ns=time.time_ns())
            else:
                await asyncio.to_thread(self._store.set_credential_status, a.name,
                                        error=f"{type(error).__name__}: {error}"[:300])
        except Exception as exc:  # noqa: BLE001 - bookkeeping only
            self.log.warning("credential status of %s not stored: %r", a.name, exc)

    async def _token_expired(self, a: acc.Account, exc: TradierError, ts: int) -> None:
        """The broker said ``a``'s access token expired: stop sending for it, record it, alert its users once."""
        if a.token_expired:
            return
        vendor = "; ".join(getattr(exc, "messages", []) or []) or str(exc)
        a.token_expired = f"access token expired ({vendor})"[:300]
        if a.tradier is not None:
            a.expired_tokens.add(a.tradier.token_fingerprint)
        self.log.error("%s: the Tradier access token expired (%s); nothing is sent for this account until a new "
                       "token is stored", a.name, vendor)
        await self._note_call(a, exc)
        self.spawn(self._await_renewal(a), f"token-renewal-{a.name}")
        for user in a.users:
            self._block(user, "token_expired", a.name, a.token_expired)
            self._alert(user, "token_expired", "critical",
                        f"Tradier token expired: renew it with spx users credentials set {user}. No order is sent "
                        "for this account until then; open positions stay open.", ts, account=a.name)

    def _stored_token(self, a: acc.Account) -> tuple[str, str | None] | None:
        """(token, account id) the store holds for ``a`` now, or None (read in a worker thread)."""
        from spx_common.crypto import KeyRing

        if a.record is not None:
            if self._store is None:
                return None
            found = creds.read(self._store, KeyRing.from_env(), a.name)
            return (found[0].reveal(), found[1]) if found is not None else None
        cfg = creds.with_stored_credentials(self.cfg.model_copy(update={"access_token": ""}), self.runtime)
        return (cfg.access_token, cfg.account_id) if cfg.access_token else None

    async def check_renewed(self, a: acc.Account) -> bool:
        """While ``a``'s token is expired: a stored token other than the expired ones that answers a balances
        call replaces the client and the account resumes. True when it resumed."""
        if not a.token_expired:
            return False
        try:
            found = await asyncio.to_thread(self._stored_token, a)
        except Exception as exc:  # noqa: BLE001 - the store or key ring may be down: try again later
            self.log.warning("%s: stored token not readable (%s)", a.name, type(exc).__name__)
            return False
        if found is None or token_fingerprint(found[0]) in a.expired_tokens:
            return False
        token, account = found
        cfg = self.cfg
        if a.record is not None:
            client = creds.client_for(cfg, a.record, _Plain(token), account)
        else:
            client = TradierClient(cfg.base_url, token, account or cfg.account_id, timeout_s=cfg.request_timeout_s,
                                   place_timeout_s=cfg.place_timeout_s, max_retries=cfg.max_retries,
                                   max_rate_wait_s=cfg.max_rate_wait_s)
        try:
            bal = await client.balances()
        except TradierError as exc:
            if isinstance(exc, TradierTokenExpired):
                a.expired_tokens.add(client.token_fingerprint)
            self.log.warning("%s: the stored token does not work yet (%s)", a.name, type(exc).__name__)
            await client.aclose()
            return False
        old, a.tradier, a.token_expired = a.tradier, client, ""
        if old is not None:
            await old.aclose()
        ts = self._now()
        a.balances = {**pf.summarize_balances(bal), "ts": ts}
        await self._note_call(a, None)
        self.log.warning("%s: a new Tradier token is stored and works; sending resumes", a.name)
        for user in a.users:
            self._alert(user, "token_renewed", "info", "Tradier token renewed: orders for this account resume.", ts,
                        account=a.name)
        return True

    async def _await_renewal(self, a: acc.Account) -> None:
        """While ``a``'s token is expired, read the stored token again every ``poll_interval_s``."""
        while a.token_expired and not self.stop_event.is_set():
            try:
                await asyncio.wait_for(self.stop_event.wait(), self.cfg.poll_interval_s)
                return
            except TimeoutError:
                pass
            try:
                await self.check_renewed(a)
            except Exception:  # noqa: BLE001 - a bug here must not stop the broker; the next round retries
                self.log.exception("%s: token renewal check failed", a.name)

    async def on_credentials_stored(self, user: str) -> None:
        """``credentials.set`` stored a token for ``user``: resume an expired account at once."""
        a = self.account_of.get(user)
        if a is not None and a.token_expired:
            await self.check_renewed(a)

    async def sync_portfolio(self, a: acc.Account | None = None) -> None:
        for each in [a] if a is not None else self.accounts:
            await self._sync_portfolio(each)

    async def _sync_portfolio(self, a: acc.Account) -> None:
        if a.paper is None and a.tradier is None:
            return
        ts = self._now()
        if a.token_expired:
            await self.check_renewed(a)
            return
        try:
            bal = await self._balances(a)
        except TradierTokenExpired as exc:
            await self._token_expired(a, exc, ts)
            return
        except TradierError as exc:
            await self._note_call(a, exc)
            for user in a.users:
                self._alert(user, "broker_unreachable", "warning",
                            f"Your broker account could not be read ({type(exc).__name__}).", ts)
            raise
        await self._note_call(a, None)
        snap = pf.summarize_balances(bal)
        mode = a.kind
        for user in a.users:
            if self.snapshots.should_publish(user, snap):
                self.publish(portfolio_topic(user), "doc", {**snap, "user": user, "ts": ts, "mode": mode,
                                                          "pnl": self.ledger.pnl(user)}, ts)
            policy = (a.record or {}).get("day_trading_policy") or self.cfg.pdt_policy
            for al in pf.behaviour_alerts(snap, policy=policy, pdt_min_equity=self.cfg.pdt_min_equity,
                                          entries_today=self.engine.entries_today.get(user, 0)):
                self._alert(user, al["kind"], al["severity"], al["message"], ts)
        a.balances = {**snap, "ts": ts}

    async def resolve_unknown(self, a: acc.Account) -> None:
        """Look unresolved placements up by tag; after ``MAX_UNRESOLVED_CHECKS`` give their risk back."""
        mine = [oid for oid in self.unresolved if (self.ledger.get(oid) is not None and
                                                   self.ledger.get(oid).user in a.users)]
        if not mine or a.tradier is None:
            return
        await self.poll_orders(a)
        ts = self._now()
        for oid in mine:
            if oid not in self.unresolved:
                continue
            self.unresolved[oid] += 1
            if self.unresolved[oid] >= MAX_UNRESOLVED_CHECKS:
                del self.unresolved[oid]
                order = self.ledger.get(oid)
                self._block(order.user if order else "", "placement_not_found", oid,
                            f"no order with this tag after {MAX_UNRESOLVED_CHECKS} lookups")
                self._refused_quietly(oid, ts)

    def _refused_quietly(self, order_id: str, ts: int) -> None:
        self._publish_order(self.ledger.update_order(order_id, status="rejected", reason="placement_not_found", ts=ts))
        self._submit(self.engine.on_order_event(order_id, "rejected", 0.0, 0.0, ts))

    async def reconcile(self, a: acc.Account | None = None) -> list[dict]:
        out: list[dict] = []
        for each in [a] if a is not None else self.accounts:
            out += await self._reconcile(each)
        return out

    async def _reconcile(self, a: acc.Account) -> list[dict]:
        """Unknown placements, missed order events (a poll even while the stream is up), then positions."""
        if (a.paper is None and a.tradier is None) or a.token_expired:
            return []
        await self.resolve_unknown(a)
        if a.tradier is not None:
            await self.poll_orders(a)
        ts = self._now()
        broker = await self._broker_positions(a)
        if not a.adopted:
            self._adopt(a, ts)
        self._publish_notices(ts)
        if not a.synced and a.tradier is not None and a.adopted:  # the orders were not read at start
            self._take_over(a, await a.tradier.orders(), ts)
            a.synced = True
            self._publish_notices(ts)
        if a.synced:  # adopted/restored positions, and any trade whose stop could not be sent: a stop rests
            self._submit(self.engine.protect(ts, a.users))
        drift = pf.reconcile(self._ledger_positions(a), broker)
        a.last_drift = drift
        for d in drift:
            self.m_drift.inc()
            for user in a.users:
                self._alert(user, f"drift:{d['symbol']}", "warning",
                            f"Position drift on {d['symbol']}: ledger {d['internal']:g}, broker {d['broker']:g}.", ts,
                            **d)
        return drift

    def _ledger_positions(self, a: acc.Account) -> dict[str, float]:
        """The ledger's positions held at ``a``'s broker (the shared account holds every config user's)."""
        return self.ledger.open_positions(a.name if a.record is not None else None)

    async def _startup_sync(self, a: acc.Account) -> None:
        """Tradier, at start: adopt held positions; count today's entries sent before a restart
        (our tags ``spx-<user>-...-entry-...``) against ``max_orders_per_day``."""
        ts = self._now()
        assert a.tradier is not None
        try:  # entries are sized from the account's balances: read them before the first decision
            a.balances = {**pf.summarize_balances(await a.tradier.balances()), "ts": ts}
        except TradierError as exc:
            await self._note_call(a, exc)
            self.log.warning("%s: balances at start unavailable (%s); entries refused until synced", a.name, exc)
        try:
            await self._broker_positions(a)  # the rows _adopt reads
            self._adopt(a, ts)
        except TradierTokenExpired as exc:
            await self._token_expired(a, exc, ts)
            return
        except TradierError as exc:
            await self._note_call(a, exc)
            self.log.warning("%s: positions at start unavailable (%s); adopting at the first reconcile", a.name, exc)
        try:
            orders = await a.tradier.orders()
        except TradierError as exc:
            self.log.warning("%s: today's orders unavailable at start (%s); daily entry count starts at 0", a.name, exc)
            return
        for user in a.users:
            prefix = router.make_tag("spx", user) + "-"
            n = sum(1 for o in orders if str(o.get("tag") or "").startswith(prefix) and "-entry-" in str(o.get("tag")))
            if n:
                self.engine.seed_entries(user, n, ts)
                self.log.info("%d entries already sent today for %s", n, user)
        self._take_over(a, orders, ts)
        a.synced = True  # the first reconcile rests the stops (subscribers are connected by then)

    def _take_over(self, a: acc.Account, orders: list[dict], ts: int) -> None:
        """At start: the working option orders at ``a``'s broker that this process did not place (sent
        before a restart) become orders of the adopted trades (:meth:`Engine.take_over`): a resting stop
        stays the position's protective stop (resized to the open quantity, never doubled), a resting
        scale-out or exit counts as a working sell, an entry of ours (our tag) is managed and its fills
        protected. Sells for nothing held are left alone (flatten cancels them)."""
        owner = a.name if a.record is not None else (self.cfg.auto_execution_users or a.users)[0]

        def known(broker_id: str, tag: str) -> bool:  # ours already (a placement's answer may be on its way)
            return (a.name, broker_id) in self.broker_ids or bool(tag and self.ledger.get(tag) is not None)

        for t in reconcile.takeovers(orders, a.users, owner, known, lambda u: router.make_tag("spx", u)):
            order = self.engine.take_over(t.user, t.symbol, t.side, t.type, t.quantity, t.filled, t.avg_price,
                                          t.price, t.stop, ts, exiting=t.exiting)
            if order is None:
                continue
            self.ledger.record_order(order, None, t.filled, t.avg_price)
            self.ledger.update_order(order.order_id, broker_id=t.broker_id)
            self._map(a, t.broker_id, order.order_id)
            self._notices.append((f"order.{order.user}", "order", self.ledger.get(order.order_id)))
            self.log.warning("%s: took over working %s %s %s x%g (broker id %s)", a.name, t.side, t.type, t.symbol,
                             t.quantity - t.filled, t.broker_id)

    def _adopt(self, a: acc.Account, ts: int) -> None:
        """At start: take over the broker's long OPTION positions the ledger does not know (a restart),
        so exits and flatten cover them (:func:`portfolio.adoption`: average price = cost basis /
        (quantity x multiplier)); a short option is only alerted and an equity only reported (never
        touched). The position frames go out with the first reconcile, when subscribers are connected."""
        a.adopted = True
        if a.record is not None:
            user = a.name
        else:
            user = (self.cfg.auto_execution_users or a.users)[0]
        plan = pf.adoption(a.last_position_rows or [], set(self._ledger_positions(a)))
        for alert in pf.adoption_alerts(plan, user, ts):
            self.m_alerts.inc(kind=alert["kind"].split(":", 1)[0])
            self._notices.append((alert_topic(user), "doc", alert))
        for sym, qty, avg in plan["adopt"]:
            self.engine.adopt(user, sym, qty, avg, ts)
            pos = self.ledger.adopt(user, sym, qty, avg, ts)
            self._notices.append((position_topic(user), "position", pos))
            self.log.warning("adopted broker position %s x%g @ %.4f for %s", sym, qty, avg, user)

    async def poll_orders(self, a: acc.Account) -> None:
        """Fallback when the stream is down: order status by polling; resolves unknown placements by tag."""
        if a.tradier is None or a.token_expired:
            return
        ts = self._now()
        for o in await a.tradier.orders():
            oid = self.broker_ids.get((a.name, str(o.get("id"))))
            if oid is None and o.get("tag") in self.unresolved:
                oid = str(o["tag"])
            if oid is None:
                continue
            known = self.ledger.get(oid)
            if known is not None and known.user in a.users and \
                    (known.status not in FINAL_STATUSES or o.get("status") != known.status):
                self._apply_broker_event(o, ts, a)

    def periodic(self) -> None:
        self._submit(self.engine.expire_entries(self._now()))
        self.check_flatten()
        self._flags_alert()

    def check_flatten(self) -> list[Intent]:
        """Late-day flatten (event time), guarded by ``TRADIER_FORCE_FLATTEN_ENABLED``.

        Runs within a second of becoming due, then at most every ``FLATTEN_RETRY_S`` while 0DTE trades
        stay open: a failed exit is logged, alerted and retried, never escalated to anything else.
        """
        ts = self._now()
        if not self.cfg.force_flatten_enabled or not pf.flatten_due(ts, self.cfg.flatten_minutes):
            return []
        now = time.monotonic()
        if now - self._last_flatten < FLATTEN_RETRY_S:
            return []
        intents = self.engine.flatten(ts, "late-day flatten of 0DTE", only=lambda sym: pf.is_zero_dte(sym, ts))
        if intents:
            self._last_flatten = now
            self.log.warning("late-day flatten: %d intent(s)", len(intents))
            for user in {i.order.user if isinstance(i, Place) else i.user for i in intents if not isinstance(i, Block)}:
                self._alert(user, "flatten", "warning", "Flattening open 0DTE positions before the 16:00 ET close.", ts)
        self._submit(intents)
        return intents

    async def _rpc_flatten(self, params: dict) -> dict:
        """Operator flatten: the broker's positions are the truth. Each account's ledger is first
        reconciled with what its broker holds (found option contracts adopted, missing ones taken off),
        then every open option position is exited. Gated only by ``send_allowed`` (never the kill
        switch, the auto-execution switch or opt-in). An account whose broker cannot be read within
        ``FLATTEN_SYNC_S`` is flattened from the ledger and named in ``reconcile_errors``."""
        user = params.get("user")
        if user is not None and user not in self.account_of:
            raise RpcError("bad_request", f"unknown user {user!r}")
        symbol = params.get("symbol")
        if symbol is not None and not isinstance(symbol, str):
            raise RpcError("bad_request", "'symbol' must be an option symbol")
        accounts = [self.account_of[user]] if user is not None else list(self.accounts)
        aligned: dict[str, dict[str, float]] = {}
        errors: dict[str, str] = {}
        for a in accounts:
            if a.token_expired:
                errors[a.name] = a.token_expired
                continue
            try:
                aligned[a.name] = await asyncio.wait_for(self._align_with_broker(a), FLATTEN_SYNC_S)
            except TradierTokenExpired as exc:
                await self._token_expired(a, exc, self._now())
                errors[a.name] = a.token_expired
            except (TimeoutError, TradierError, OSError) as exc:
                errors[a.name] = f"{type(exc).__name__}: {exc}"[:300]
                self.log.warning("flatten: positions of %s not read (%s); flattening the ledger's", a.name, exc)
        self._publish_notices(self._now())
        closing = [{"user": t.user, "symbol": t.symbol, "held": t.held} for t in self.engine.trades.values()
                   if not t.closed and t.held > 0 and (user is None or t.user == user)
                   and (symbol is None or t.symbol == symbol)]
        intents = self.engine.flatten(self._now(), str(params.get("reason") or "operator flatten"), user=user,
                                      only=None if symbol is None else (lambda s: s == symbol))
        self._submit(intents)
        return {"intents": len(intents), "closing": closing,
                "blocked": [i.reason for i in intents if isinstance(i, Block)],
                "orders": [i.order.order_id for i in intents if isinstance(i, Place)],
                "cancels": [i.order_id for i in intents if isinstance(i, Cancel)],
                "reconciled": aligned, "reconcile_errors": errors}

    async def _align_with_broker(self, a: acc.Account) -> dict[str, float]:
        """Make the engine and ledger hold what ``a``'s broker holds, option by option (equities and
        shorts are never touched); returns ``{symbol: contracts added (+) or taken off (-)}``."""
        broker = await self._broker_positions(a)
        if a.tradier is not None:
            await self._cancel_foreign(a)
        ts = self._now()
        if not a.adopted:
            self._adopt(a, ts)
        owner = a.name if a.record is not None else (self.cfg.auto_execution_users or a.users)[0]
        held = self.engine.held_by_symbol(a.users)
        changes = reconcile.plan(held, broker)
        for sym, delta, avg in reconcile.alignment(changes, broker, a.last_position_rows or [], pf.multiplier):
            if delta > 0:
                self.engine.adopt(owner, sym, delta, avg, ts)
                self._notices.append((position_topic(owner), "position", self.ledger.align(owner, sym, delta, avg, ts)))
                self.log.warning("flatten: %s holds %g more %s than the ledger: adopted", a.name, delta, sym)
            else:
                self.engine.trim(a.users, sym, -delta)
                if len(a.users) == 1:
                    self._notices.append((position_topic(owner), "position",
                                          self.ledger.align(owner, sym, delta, 0.0, ts)))
                self.log.warning("flatten: %s holds %g fewer %s than the ledger: taken off", a.name, -delta, sym)
        return changes

    async def _cancel_foreign(self, a: acc.Account) -> None:
        """Before a flatten: cancel the working option orders at ``a``'s broker that this process does not
        manage (placed before a restart, or by hand): a resting sell would make the exit exceed the held
        quantity (the router refuses it), a resting entry could open a new position."""
        assert a.tradier is not None
        for o in await a.tradier.orders():
            if o.get("status") not in OPEN_STATUSES or not o.get("option_symbol") or \
                    o.get("side") not in ("buy_to_open", "sell_to_close"):
                continue
            oid = self.broker_ids.get((a.name, str(o.get("id"))))
            mine = self.engine.orders.get(oid) if oid is not None else None
            if mine is not None and mine.working:
                continue  # the engine's own: its flatten cancels or keeps it
            self.log.warning("flatten: cancelling working %s %s at %s (not managed by this process)",
                             o.get("side"), o.get("option_symbol"), a.name)
            try:
                await a.tradier.cancel_order(o["id"])
            except TradierError as exc:
                self.log.warning("flatten: cancel of %s failed: %s", o.get("id"), exc)

    def _publish_notices(self, ts: int) -> None:
        for topic, type_name, body in self._notices:
            self.publish(topic, type_name, body, ts)
        self._notices.clear()

    # ------------------------------------------------------------------ loops

    async def _every(self, interval_s: float, fn, what: str, first_delay_s: float = 0.0) -> None:
        try:
            await asyncio.wait_for(self.stop_event.wait(), first_delay_s)
            return
        except TimeoutError:
            pass
        while not self.stop_event.is_set():
            try:
                await fn()
            except TradierError as exc:
                self.m_order_errors.inc(kind=what)
                self.log.warning("%s failed: %s", what, exc)
            except Exception:
                self.m_order_errors.inc(kind=what)
                self.log.exception("%s failed", what)
            try:
                await asyncio.wait_for(self.stop_event.wait(), interval_s)
            except TimeoutError:
                pass

    async def _stream_loop(self, a: acc.Account) -> None:
        """Account events over the websocket; while it is down, poll order status."""
        assert a.tradier is not None
        delay = 1.0
        while not self.stop_event.is_set():
            if a.token_expired:  # nothing is sent with a dead token; _await_renewal resumes the account
                a.stream_state = "token_expired"
                try:
                    await asyncio.wait_for(self.stop_event.wait(), self.cfg.poll_interval_s)
                except TimeoutError:
                    pass
                delay = 1.0
                continue
            try:
                a.stream_state = "connecting"
                async for ev in account_events(a.tradier):
                    a.stream_state = "up"
                    delay = 1.0
                    self._apply_broker_event(ev, self._now(), a)
            except TradierTokenExpired as exc:
                await self._token_expired(a, exc, self._now())
                continue
            except (TimeoutError, TradierError, OSError, Exception) as exc:
                a.stream_state = "down"
                self.log.warning("%s: account events stream down (%s); polling orders", a.name, exc)
            end = time.monotonic() + delay
            while time.monotonic() < end and not self.stop_event.is_set() and not a.token_expired:
                try:
                    await self.poll_orders(a)
                except TradierTokenExpired as exc:
                    await self._token_expired(a, exc, self._now())
                except TradierError as exc:
                    self.log.warning("%s: order polling failed: %s", a.name, exc)
                try:
                    await asyncio.wait_for(self.stop_event.wait(), self.cfg.poll_interval_s)
                except TimeoutError:
                    pass
            delay = min(delay * 2, 60.0)

    async def _tradier_account(self, a: acc.Account) -> None:
        await self._startup_sync(a)
        a.stream_state = "starting"
        await self._stream_loop(a)

    async def restore(self) -> None:
        """Rebuild the ledger after a restart from the store (positions, today's entries, paper cash),
        brought up to date with this broker's own outbox (what the recorder may not have written)."""
        from spx_common.store.config import StoreConfig

        url = load(StoreConfig).resolved_url(self.runtime)
        try:

            state = await asyncio.to_thread(restore.load, url, list(self.users), time.time_ns(),
                                            provenance.configured()[0])
        except Exception as exc:  # the store is optional for trading: log loudly, restore what we published
            self.log.warning("ledger not restored from the store: %r", exc)
            state = Restored()
        try:
            await asyncio.to_thread(self._newest_of_outbox, state, url, time.time_ns())
        except Exception as exc:  # noqa: BLE001 - the store's view stands; say so
            self.log.error("ledger not brought up to date with the outbox: %r", exc)
        ts = self._now()
        for row in state.positions:
            user, sym, qty = row["user"], row["option_symbol"], float(row["quantity"])
            if qty <= 0:
                continue
            avg = float(row["avg_price"])
            pos = self.ledger.adopt(user, sym, qty, avg, ts, realized=float(row.get("realized_pnl") or 0.0))
            self.engine.adopt(user, sym, qty, avg, ts, stop_price=state.stops.get((user, sym)))
            a = self.account_of.get(user)
            if a is not None and a.paper is not None and (a.record is not None or user in self.cfg.paper_users):
                held = a.paper.positions.setdefault(sym, [0.0, 0.0])
                held[0] += qty
                held[1] += qty * avg * 100
            self._notices.append((position_topic(user), "position", pos))
        for user, n in state.entries.items():
            self.engine.seed_entries(user, n, ts)
        for a in self.accounts:
            if a.paper is None:
                continue
            owner = a.name if a.record is not None else (self.cfg.paper_users or [""])[0]
            if owner in state.cash:
                a.paper.cash = state.cash[owner]
            self._paper_balances(a, ts)
        if state.positions or state.entries:
            self.log.info("restored from the store: %d position(s), entries today %s", len(state.positions),
                          state.entries)

    def _newest_of_outbox(self, state: Restored, url: str, now_ns: int) -> None:
        """Bring the store's view (``state``) up to date with what this broker published itself (its
        outbox): the recorder may not have written the newest orders, fills and positions when it died
        with us (issue 8; :func:`restore.newest_of_outbox`)."""

        frames = []
        for topic, payload in self.outbox_frames:
            try:
                frame = decode_frames([topic.encode(), payload])
                if frame.type in ("position", "order"):
                    frames.append((frame.type, frame.body()))
            except FrameError:
                continue
        entries = restore.newest_of_outbox(state, frames, self.users, now_ns)
        ids = set().union(*entries.values()) if entries else set()
        added = restore.add_unstored_entries(state, entries, stored_order_ids(url, ids) if ids else set())
        if frames:
            self.log.info("ledger brought up to date with the outbox: %d frame(s), %d entries today only there",
                          len(frames), added)

    async def main(self) -> None:
        await self.restore()
        for a in self.accounts:
            # paper: the restore is all there is to read; its positions' stops rest at the first reconcile,
            # once subscribers (the recorder) are connected
            a.synced = a.paper is not None
        for a in self.accounts:
            self.spawn(self._worker(a), f"broker-worker-{a.name}")
            # the first snapshot waits for subscribers (the recorder) to connect: PUB drops frames before that
            self.spawn(self._every(self.cfg.portfolio_interval_s, lambda a=a: self.sync_portfolio(a),
                                   "portfolio", STARTUP_DELAY_S), f"portfolio-{a.name}")
            self.spawn(self._every(self.cfg.reconcile_interval_s, lambda a=a: self.reconcile(a), "reconcile",
                                   STARTUP_DELAY_S), f"reconcile-{a.name}")
            if a.tradier is not None:
                self.spawn(self._tradier_account(a), f"account-events-{a.name}")
        await self.stop_event.wait()

    async def drain(self) -> None:
        for task in list(self._select_tasks):
            task.cancel()
        deadline = time.monotonic() + 2.0
        while any(not a.queue.empty() for a in self.accounts) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        for a in self.accounts:
            if a.tradier is not None:
                await a.tradier.aclose()
        if self._store is not None:
            self._store.close()

    def status(self) -> dict[str, Any]:
        base = super().status()
        first = self.accounts[0]
        streams = [a.stream_state for a in self.accounts if a.tradier is not None]
        base["broker"] = {
            "mode": self.mode,
            "config": self.cfg.public(),
            "send_allowed": {u: self.allowed(u)[0] for u in self.users},
            "refusal_reason": {u: self.allowed(u)[1] for u in self.users if not self.allowed(u)[0]},
            "stream": streams[0] if len(streams) == 1 and first.record is None else
            ({a.name: a.stream_state for a in self.accounts if a.tradier is not None} or "n/a"),
            "balances": first.balances if first.record is None else {a.name: a.balances for a in self.accounts},
            "accounts": {a.name: a.describe() for a in self.accounts},
            "ledger": self.ledger.snapshot(),
            "engine": self.engine.snapshot(),
            "drift": [d for a in self.accounts for d in a.last_drift],
            "slippage": self.ledger.slippage_stats(),
            "rate_limits": {a.name: {k: v.as_dict() for k, v in a.tradier.limits.items()}
                            for a in self.accounts if a.tradier is not None},
            "unresolved": sorted(self.unresolved),
            "event_ns": self.clock.now_ns(),
        }
        if first.record is None:  # the shared account: the same shape as before per-user accounts
            base["broker"]["rate_limits"] = base["broker"]["rate_limits"].get(acc.SHARED, {})
        return base
