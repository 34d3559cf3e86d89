"""``SelectorCore``: the selector's state and decisions without sockets (the service is a thin shell).

Inputs are decoded bus bodies with their event times; outputs are ``(topic, type, body)`` tuples
to publish. Request handling (:meth:`SelectorCore.select_request`) validates the request and
returns a ``ContractRecommendation``; an unreadable request raises :class:`BadRequest` (answered as
error code ``bad_request``), a readable one that cannot be served gets ``ok=False`` and a reason.

``select`` request params (either form):

* broker fallback: ``{"setup_id": str, "transition": SetupTransition as a map}`` -- the configured
  default risk context is used, cached;
* explicit: ``{"setup": {"setup_id"?, "direction", "entry", "stop", "targets"?},
  "risk": {"maxRiskDollars", "dayTradeBuyingPower"?, "optionBuyingPower"?, "pdtQualified"?, "equity"?},
  "regime"?: str, "adhoc"?: bool}`` -- ``adhoc`` (or a setup without ``setup_id``) bypasses the cache.

Answer: a ``ContractRecommendation`` (see ``docs/selector.md``).
"""

from __future__ import annotations

import math
from collections import OrderedDict
from typing import Any

import msgspec

from services.selector import chain as chains
from services.selector.exits import ExitPlan, ExitPlanError, ExitRules
from services.selector.select import Policy, RecoCache, RiskContext, SetupSpec, regime_key, select
from spx_common.errors import Refused
from spx_common.clock import EventClock
from spx_common.models import BlockEvent, ContractRecommendation, IndexValue, MicroBar, Quote, SetupTransition
from spx_common.topics import block_topic, exit_topic, reco_topic

TERMINAL = {"invalidated", "stopped", "expired", "blocked"}
Out = list[tuple[str, str, Any]]


class BadRequest(Refused, ValueError):
    """A ``select`` request that cannot be read."""


def setup_from_transition(t: SetupTransition) -> SetupSpec:
    """Entry is the trigger price, else the middle of the entry zone."""
    entry = t.price
    if entry is None and t.entry_low is not None and t.entry_high is not None:
        entry = (t.entry_low + t.entry_high) / 2
    if entry is None or t.stop is None:
        raise BadRequest(f"transition of {t.setup_id} has no entry price or stop")
    return SetupSpec(setup_id=t.setup_id, direction=t.direction, entry=entry, stop=t.stop, targets=list(t.targets))


class SelectorCore:
    """Chain, regime, cache and exit plans; every method is driven by event time."""

    def __init__(self, cfg: Any) -> None:
        self.cfg = cfg
        self.policy = Policy.from_config(cfg)
        self.rules = ExitRules(cfg.scale1_fraction, cfg.scale2_fraction, cfg.pivot_left, cfg.pivot_right,
                               cfg.trail_buffer)
        self.default_risk = RiskContext(maxRiskDollars=cfg.default_max_risk_dollars,
                                        dayTradeBuyingPower=cfg.default_buying_power,
                                        optionBuyingPower=cfg.default_buying_power, equity=cfg.default_equity)
        self.clock = EventClock()
        self.chain: chains.Chain | None = None
        self.chain_problems: list[str] = []
        self.regime: str | None = None
        self.cache = RecoCache(cfg.cache_ttl_s, cfg.cache_max)
        self.plans: OrderedDict[str, tuple[str, ExitPlan]] = OrderedDict()  # setup_id -> (sym, plan)
        self.dirty = False
        self.counts: dict[str, int] = {}

    def _count(self, key: str, n: int = 1) -> None:
        self.counts[key] = self.counts.get(key, 0) + n

    # ------------------------------------------------------------------ market inputs

    def on_chain_doc(self, doc: dict[str, Any]) -> None:
        """A ``chain.<root>`` document replaces the chain (bad rows skipped and counted)."""
        try:
            ch, problems = chains.from_feed_doc(doc, self.cfg.root)
        except ValueError as exc:
            self._count("bad_chain_doc")
            self.chain_problems = [str(exc)]
            raise
        self.clock.advance(ch.ts)
        if ch.underlying is None and self.chain is not None:
            ch.underlying = self.chain.underlying
        self.chain, self.chain_problems = ch, problems[:20]
        self._count("chain_docs")
        self._count("bad_contract_rows", len(problems))
        self.dirty = True

    def on_ticks(self, events: list[Any]) -> None:
        """Live option quotes update chain contracts; index values move the underlying."""
        for ev in events:
            if isinstance(ev, Quote) and self.chain is not None:
                if not (math.isfinite(ev.bid) and math.isfinite(ev.ask)):
                    self._count("bad_quotes")
                    continue
                self.clock.advance(ev.ts)
                if self.chain.apply_quote(ev.sym, ev.bid, ev.ask, ev.ts):
                    self.dirty = True
            elif isinstance(ev, IndexValue) and self.chain is not None and math.isfinite(ev.value) and ev.value > 0:
                self.clock.advance(ev.ts)
                self.chain.underlying = ev.value  # index values move greeks but do not make option data fresh
                self.dirty = True

    def refresh(self) -> int:
        """Recompute greeks from live quotes when anything changed (called about once a second)."""
        if not self.dirty or self.chain is None:
            return 0
        self.dirty = False
        n = self.chain.refresh_greeks(self.clock.now_ns(), self.cfg.rate)
        self._count("greeks_computed", n)
        return n

    def on_market(self, doc: dict[str, Any]) -> None:
        """``state.market``: remember the regime label."""
        r = doc.get("regime") if isinstance(doc, dict) else None
        if isinstance(r, str):
            self.regime = r

    # ------------------------------------------------------------------ selection

    def recommend(self, setup: SetupSpec, risk: RiskContext, regime: str | None, *, cached: bool) -> ContractRecommendation:
        """Select (through the cache unless ``cached`` is false)."""
        now = self.clock.now_ns()
        self.refresh()
        key = RecoCache.key(setup, regime, risk) if cached else None
        if key is not None:
            hit = self.cache.get(key, now)
            if hit is not None:
                return hit
        reco = select(setup, self.chain, regime, risk, self.policy, now)
        if key is not None:
            self.cache.put(key, now, reco)
        self._count("reco_ok" if reco.ok else "reco_refused")
        return reco

    def select_request(self, params: dict[str, Any]) -> ContractRecommendation:
        """The ``select`` RPC (see module docstring); :class:`BadRequest` for unreadable params."""
        try:
            if "transition" in params:
                t = msgspec.convert(params["transition"], SetupTransition)
                if params.get("setup_id") not in (None, t.setup_id):
                    raise BadRequest("setup_id does not match the transition's")
                return self.recommend(setup_from_transition(t), self.default_risk, self.regime, cached=True)
            setup = msgspec.convert(params.get("setup"), SetupSpec)
            risk = msgspec.convert(params.get("risk"), RiskContext)
        except msgspec.ValidationError as exc:
            raise BadRequest(str(exc)) from None
        regime = params.get("regime", self.regime)
        if regime is not None and not isinstance(regime, str):
            raise BadRequest("regime must be a string")
        adhoc = bool(params.get("adhoc")) or "setup_id" not in (params.get("setup") or {})
        return self.recommend(setup, risk, regime, cached=not adhoc)

    # ------------------------------------------------------------------ setups and exits

    def on_transition(self, t: SetupTransition) -> Out:
        """Triggered: publish ``reco.<id>`` (default risk context) and start its exit plan; terminal: drop the plan."""
        self.clock.advance(t.ts)
        out: Out = []
        if t.to_state in TERMINAL:
            self.plans.pop(t.setup_id, None)
            return out
        if t.to_state != "triggered":
            return out
        try:
            setup = setup_from_transition(t)
        except BadRequest as exc:
            reco = ContractRecommendation(setup_id=t.setup_id, ok=False, reason=f"bad_setup: {exc}", ts=t.ts)
        else:
            reco = self.recommend(setup, self.default_risk, self.regime, cached=True)
            if t.setup_id not in self.plans:
                try:
                    self.plans[t.setup_id] = (t.sym, ExitPlan(t.setup_id, t.direction, setup.entry, setup.stop,
                                                              list(setup.targets), self.rules))
                    while len(self.plans) > self.cfg.max_advisors:
                        self.plans.popitem(last=False)
                        self._count("plans_evicted")
                except ExitPlanError as exc:
                    self._count("bad_exit_plans")
                    out.append(self._block(t.setup_id, "bad_exit_plan", str(exc), t.ts))
        reco = msgspec.structs.replace(reco, ts=t.ts)
        out.append((reco_topic(t.setup_id), "recommendation", reco))
        if not reco.ok:
            out.append(self._block(t.setup_id, reco.reason.split(":", 1)[0], reco.reason, t.ts))
        return out

    def _block(self, subject: str, reason: str, detail: str, ts: int) -> tuple[str, str, Any]:
        self._count(f"block_{reason}")
        return (block_topic("selector"), "block", BlockEvent(service="selector", reason=reason, ts=ts, subject=subject,
                                                        detail=detail[:500]))

    def on_bar(self, interval: str, bar: MicroBar, event_ns: int) -> Out:
        """Closed bars drive exit plans: ``price_interval`` bars check stop/targets, ``bar_interval`` bars pivots."""
        if not bar.closed:
            return []
        self.clock.advance(event_ns)
        out: Out = []
        ts = max(event_ns, bar.start_ns)
        for sid, (sym, plan) in list(self.plans.items()):
            if sym != bar.sym:
                continue
            advice = []
            if interval == self.cfg.price_interval:
                advice += plan.on_price_bar(bar.high, bar.low, ts)
            if interval == self.cfg.bar_interval:
                advice += plan.on_pivot_bar(bar.high, bar.low, ts)
            out += [(exit_topic(sid), "exit_advice", a) for a in advice]
            if plan.closed:
                del self.plans[sid]
        self._count("exit_advice", len(out))
        return out

    # ------------------------------------------------------------------ views

    def chain_view(self) -> dict[str, Any]:
        """The ``chain`` RPC: health and the contracts nearest the money (greeks refreshed first)."""
        self.refresh()
        h = chains.health(self.chain, self.clock.now_ns(), stale_s=self.cfg.stale_s,
                          min_contracts=self.cfg.min_chain_contracts)
        near = []
        if self.chain is not None and self.chain.underlying:
            u = self.chain.underlying
            for c in sorted(self.chain.contracts.values(), key=lambda c: abs(c.strike - u))[:20]:
                near.append({"symbol": c.symbol.tradier, "bid": c.bid, "ask": c.ask, "delta": c.delta, "iv": c.iv,
                             "open_interest": c.open_interest, "greeks": c.greeks_source})
        return {"ok": h.ok, "issues": h.issues, "contracts": h.contracts, "quoted": h.quoted,
                "age_s": None if math.isinf(h.age_s) else round(h.age_s, 3),
                "underlying": self.chain.underlying if self.chain else None, "regime": regime_key(self.regime),
                "problems": self.chain_problems, "near": near}

    def exits_view(self) -> list[dict[str, Any]]:
        """The ``exits`` RPC: every tracked plan."""
        return [{"setup_id": sid, "sym": sym, "direction": p.direction, "stage": p.stage, "stop": p.stop,
                 "t1": p.t1, "t2": p.t2, "trailing_stop_path": list(p.trailing_stop_path)}
                for sid, (sym, p) in self.plans.items()]
