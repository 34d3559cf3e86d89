"""The selector process: the bus shell around :class:`services.selector.core.SelectorCore`.

Consumes ``chain.<root>`` and ``tick.O:<root>`` / ``tick.I:SPX`` (feed), ``setup.transition`` and
``state.market`` (detector), closed ``bar.<interval>.<sym>`` (aggregator). Publishes
``reco.<setup_id>``, ``exit.<setup_id>`` and ``block.selector``. Answers ``select``, ``chain`` and
``exits`` requests (shapes in :mod:`services.selector.core` and ``docs/selector.md``).

Every input is handled in event-time order across the feed, the aggregator and the detector (``aligned``,
docs/protocol.md "Event-time alignment"), and the selector is a relay: it sends its own watermark on, so the
broker and the coach align its recommendations and exit advice with their other inputs.
"""

from __future__ import annotations

from typing import Any

from services.selector.config import SelectorConfig
from services.selector.core import BadRequest, SelectorCore
from spx_common.bus import RpcError
from spx_common.config import load
from spx_common.service import BusService
from spx_common.topics import BAR, CHAIN, EXIT, OPTION_TICK, SETUP_TRANSITION, STATE_MARKET, TICK, chain_topic, tick_topic


class Selector(BusService):
    """Selector: option chains, regime-aware contract choice, risk sizing and exit advice."""

    name = "selector"
    replayable = (EXIT,)  # the recorder catches up after a restart or a gap
    aligned = (CHAIN, TICK, SETUP_TRANSITION, STATE_MARKET, BAR)
    watermarks = True

    def __init__(self, *args: Any, cfg: SelectorConfig | None = None, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.cfg = cfg or load(SelectorConfig)
        root = self.cfg.root
        self.subscriptions = {"feed": [chain_topic(root), OPTION_TICK + root, tick_topic("I:SPX")],
                              "detector": [SETUP_TRANSITION, STATE_MARKET], "aggregator": [BAR]}
        self.sel = SelectorCore(self.cfg)
        self.m_bad = self.metrics.counter("selector_bad_input_total", "Refused inputs, by kind.", ["kind"])
        self.m_reco = self.metrics.counter("selector_recommendations_total", "Recommendations, by outcome.",
                                           ["outcome"])
        self.m_exit = self.metrics.counter("selector_exit_advice_total", "Exit advice published, by action.",
                                           ["action"])
        self.m_chain_ok = self.metrics.gauge("selector_chain_ok", "1 when the chain is fresh and complete, else 0.")
        self.m_chain_issue = self.metrics.counter("selector_chain_issue_total", "Chain health changes to not ok, by "
                                                  "issue kind (stale, partial, no_chain).", ["kind"])
        self._chain_issues: list[str] = []
        self.m_blocks = self.metrics.counter("selector_blocks_total", "Refusals published on block.selector.",
                                             ["reason"])

    def setup(self) -> None:
        self.on(chain_topic(self.cfg.root), self._on_chain)
        self.on(TICK, lambda f, evs: self.sel.on_ticks(evs))
        self.on(SETUP_TRANSITION, lambda f, t: self._emit(self.sel.on_transition(t)))
        self.on(STATE_MARKET, lambda f, doc: self.sel.on_market(doc))
        self.on(BAR, self._on_bar)
        self.rpc("select", self._select)
        self.rpc("chain", lambda p: self.sel.chain_view())
        self.rpc("exits", lambda p: self.sel.exits_view())

    def _on_chain(self, frame, doc: dict) -> None:
        try:
            self.sel.on_chain_doc(doc)
        except ValueError as exc:
            self.m_bad.inc(kind="chain_doc")
            self.log.warning("refused chain document: %s", exc)

    def _on_bar(self, frame, bar) -> None:
        parts = frame.topic.split(".", 2)
        if len(parts) == 3:  # aligned: at the bar's end (the aggregator stamps bars with its watermark)
            key = self.event_key
            self._emit(self.sel.on_bar(parts[1], bar, frame.event_ns if key is None else key))

    def _emit(self, out: list) -> None:
        for topic, type_name, body in out:
            if type_name == "recommendation":
                self.m_reco.inc(outcome="ok" if body.ok else "refused")
            elif type_name == "exit_advice":
                self.m_exit.inc(action=body.action)
            elif type_name == "block":
                self.m_blocks.inc(reason=body.reason)
            self.publish(topic, type_name, body, body.ts)

    def _select(self, params: dict):
        try:
            reco = self.sel.select_request(params)
        except BadRequest as exc:
            self.m_bad.inc(kind="select_request")
            raise RpcError("bad_request", str(exc)) from None
        self.m_reco.inc(outcome="ok" if reco.ok else "refused")
        return reco

    def periodic(self) -> None:
        """Refresh computed greeks; report chain health changes (gauge, counter, one log line per change)."""
        self.sel.refresh()
        view = self.sel.chain_view()
        self.m_chain_ok.set(1.0 if view["ok"] else 0.0)
        kinds = sorted({i.split(":", 1)[0] for i in view["issues"]})
        if kinds != self._chain_issues:
            for k in set(kinds) - set(self._chain_issues):
                self.m_chain_issue.inc(kind=k)
            if view["issues"]:
                self.log.warning("chain not ok: %s", "; ".join(view["issues"]))
            elif self._chain_issues:
                self.log.info("chain ok again: %d contracts", view["contracts"])
            self._chain_issues = kinds

    def status(self) -> dict[str, Any]:
        st = super().status()
        st["selector"] = {"counts": dict(self.sel.counts), "cache": len(self.sel.cache),
                          "cache_hits": self.sel.cache.hits, "plans": len(self.sel.plans),
                          "chain_ok": self.sel.chain_view()["ok"]}
        return st
