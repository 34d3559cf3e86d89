"""SelectorCore without sockets: triggers publish reco + blocks, caching per risk context, plan bounds."""

import msgspec
import pytest

from services.selector.config import SelectorConfig
from services.selector.core import BadRequest, SelectorCore
from spx_common.models import IndexValue, MicroBar, Quote, SetupTransition
from tests.selector.helpers import T, chain_doc


def core(**kw):
    c = SelectorCore(SelectorConfig(default_buying_power=20_000, **kw))
    c.on_chain_doc(chain_doc())
    return c


def tr(sid="s1", to="triggered", direction="long", price=None, stop=None, ts=T + 10**9):
    spot = chain_doc()["underlying"]
    price = spot if price is None else price
    stop = (price - 5 if direction == "long" else price + 5) if stop is None else stop
    return SetupTransition(setup_id=sid, detector="d", family="f", sym="I:SPX", direction=direction, to_state=to,
                           reason="t", ts=ts, price=price, stop=stop)


def test_trigger_publishes_reco_and_starts_plan_terminal_drops_it():
    c = core()
    out = c.on_transition(tr())
    assert [(t, ty) for t, ty, _ in out] == [("reco.s1", "recommendation")] and out[0][2].ok
    assert [p["setup_id"] for p in c.exits_view()] == ["s1"]
    assert c.on_transition(tr(to="ready")) == [] and len(c.plans) == 1
    c.on_transition(tr(to="invalidated"))
    assert c.plans == {}


def test_bad_trigger_is_refused_with_a_published_block():
    c = core()
    out = c.on_transition(tr(stop=chain_doc()["underlying"] + 3))  # long with stop above entry
    kinds = {ty: body for _, ty, body in out}
    assert not kinds["recommendation"].ok and kinds["recommendation"].reason.startswith("stop_wrong_side")
    assert kinds["block"].reason == "stop_wrong_side" and kinds["block"].subject == "s1"
    assert c.plans == {}
    nostop = msgspec.structs.replace(tr(sid="s2"), stop=None)
    out = c.on_transition(nostop)
    assert out[0][2].reason.startswith("bad_setup") and out[1][2].reason == "bad_setup"


def test_select_request_forms_cache_and_isolation():
    c = core()
    spot = chain_doc()["underlying"]
    setup = {"setup_id": "x", "direction": "short", "entry": spot, "stop": spot + 6}
    a = c.select_request({"setup": setup, "risk": {"maxRiskDollars": 300, "dayTradeBuyingPower": 9e5}})
    b = c.select_request({"setup": setup, "risk": {"maxRiskDollars": 3000, "dayTradeBuyingPower": 9e5}})
    a2 = c.select_request({"setup": setup, "risk": {"maxRiskDollars": 300, "dayTradeBuyingPower": 9e5}})
    assert a2 is a and b is not a and a.suggestedContracts < b.suggestedContracts and a.option_type == "put"
    adhoc = c.select_request({"setup": setup, "risk": {"maxRiskDollars": 300, "dayTradeBuyingPower": 9e5},
                              "adhoc": True})
    assert adhoc is not a and adhoc.suggestedContracts == a.suggestedContracts
    assert c.cache.hits == 1
    c.clock.advance(T + 11 * 10**9)  # 10 s of event time later the entry expires... and so does the chain's
    c.on_ticks([IndexValue(sym="I:SPX", value=spot, ts=T + 11 * 10**9)])
    assert c.select_request({"setup": setup, "risk": {"maxRiskDollars": 300, "dayTradeBuyingPower": 9e5}}) is not a
    for bad in ({"setup": {"direction": "long"}, "risk": {"maxRiskDollars": 1}}, {"setup": setup},
                {"transition": {"setup_id": 1}}, {"setup": setup, "risk": {"maxRiskDollars": 1}, "regime": 5},
                {"setup_id": "other", "transition": msgspec.to_builtins(tr())}):
        with pytest.raises(BadRequest):
            c.select_request(bad)


def test_bad_market_input_is_counted_not_fatal():
    c = core()
    with pytest.raises(ValueError):
        c.on_chain_doc({"ts": "x", "contracts": []})
    assert c.counts["bad_chain_doc"] == 1 and c.chain is not None and len(c.chain.contracts) == 82
    c.on_ticks([Quote(sym="O:SPXW261120C05860000", bid=float("nan"), ask=1.0, bid_size=1, ask_size=1, ts=T + 1)])
    assert c.counts["bad_quotes"] == 1
    c.on_market({"regime": 7})
    assert c.regime is None
    c.on_market({"regime": "compression"})
    assert c.chain_view()["regime"] == "compression"


def test_plans_bounded_and_bars_route_by_symbol_and_interval():
    c = core(max_advisors=2, bar_interval="60s")
    for sid in ("a", "b", "c"):
        c.on_transition(tr(sid=sid))
    assert list(c.plans) == ["b", "c"] and c.counts["plans_evicted"] == 1
    spot = chain_doc()["underlying"]
    bar = MicroBar(sym="I:SPX", interval="1s", start_ns=T, open=spot, high=spot + 5.2, low=spot, close=spot + 5,
                   closed=True)
    assert c.on_bar("1s", msgspec.structs.replace(bar, closed=False), T + 2 * 10**9) == []
    assert c.on_bar("1s", msgspec.structs.replace(bar, sym="SPY"), T + 2 * 10**9) == []
    out = c.on_bar("1s", bar, T + 2 * 10**9)
    assert sorted({t for t, _, _ in out}) == ["exit.b", "exit.c"] and len(out) == 4
    assert c.on_bar("60s", bar, T + 3 * 10**9) == []  # pivot series: no pivot yet
