"""Pure parts: tick grid and payload builders, paper fills, ledger P&L and slippage, portfolio logic."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

import pytest
from hypothesis import given, strategies as st

from services.broker import portfolio as pf
from services.broker import router
from services.broker.ledger import Ledger
from services.broker.paper import PaperBroker
from spx_common.models import Order

SYM = "SPXW260220C05000000"
ET_NOON = int(dt.datetime(2026, 2, 20, 17, 0, tzinfo=dt.UTC).timestamp() * 1e9)


# ----------------------------------------------------------------------------- tick grid and payloads

@pytest.mark.parametrize("price,direction,expected", [
    (1.23, "nearest", "1.25"), (1.22, "nearest", "1.20"), (1.24, "down", "1.20"), (1.21, "up", "1.25"),
    (2.98, "nearest", "3.00"), (2.97, "down", "2.95"), (3.04, "nearest", "3.00"), (3.05, "nearest", "3.10"),
    (3.09, "down", "3.00"), (3.01, "up", "3.10"), (0.01, "nearest", "0.05"), (12.34, "nearest", "12.30"),
    (2.99, "up", "3.00"),
])
def test_tick_grid(price, direction, expected):
    assert str(router.round_to_tick(price, direction)) == expected


@given(st.decimals(min_value="0.01", max_value="500", places=4), st.sampled_from(["nearest", "down", "up"]))
def test_rounded_prices_are_always_on_the_grid(p, direction):
    out = router.round_to_tick(p, direction)
    assert router.on_grid(out)
    if direction == "down" and p >= Decimal("0.05"):
        assert out <= p
    if direction == "up":
        assert out >= p


def test_builders_and_guard():
    e = router.entry_payload("O:" + SYM, 2, 2.97, "t-1")
    assert e["option_symbol"] == SYM and e["symbol"] == "SPX" and e["price"] == "2.95"
    s = router.stop_payload(SYM, 1, 3.37, "t-2", limit=3.21)
    assert s["type"] == "stop_limit" and s["stop"] == "3.30" and s["price"] == "3.20"
    with pytest.raises(router.OrderRefused):
        router.stop_payload(SYM, 1, 1.0, "t-3", limit=2.0)
    assert router.exit_payload(SYM, 1, "t-4")["type"] == "market"
    assert router.make_tag("spx", "al ice", "s/1") == "spx-al-ice-s-1"
    with pytest.raises(router.OrderRefused, match="bad_quantity"):
        router.entry_payload(SYM, 0, 1.0, "t")
    with pytest.raises(router.OrderRefused, match="bad_tag"):
        router.entry_payload(SYM, 1, 1.0, "bad tag!")
    with pytest.raises(router.OrderRefused, match="off_grid"):
        router.check_payload(e | {"price": "3.05"}, 0, 0)
    with pytest.raises(router.OrderRefused, match="order_type"):
        router.check_payload(e | {"type": "market"}, 0, 0)
    with pytest.raises(router.OrderRefused, match="side"):
        router.check_payload(e | {"side": "buy_to_close"}, 0, 0)
    router.check_payload(router.scale_out_payload(SYM, 1, 3.0, "t-5"), 2, 1)
    with pytest.raises(router.OrderRefused, match="would_short"):
        router.check_payload(router.scale_out_payload(SYM, 2, 3.0, "t-5"), 2, 1)


# ----------------------------------------------------------------------------- paper broker

def test_paper_limits_slippage_partials_and_stops():
    pb = PaperBroker(starting_cash=10_000, slippage=0.02)
    o, ev = pb.place(router.entry_payload(SYM, 3, 2.0, "p-1"), 1)
    assert [e["status"] for e in ev] == ["open"]  # no quote yet
    assert pb.on_quote(SYM, 2.0, 2.10, 2) == []  # ask above the limit: no fill
    ev = pb.on_quote(SYM, 1.9, 1.99, 3, bid_size=5, ask_size=2)
    assert ev[-1]["status"] == "partially_filled" and ev[-1]["exec_quantity"] == 2
    assert ev[-1]["avg_fill_price"] == 2.0  # 1.99 + 0.02 slippage, capped at the limit
    ev = pb.on_quote(SYM, 1.9, 1.95, 4, ask_size=10)
    assert ev[-1]["status"] == "filled" and ev[-1]["last_fill_price"] == pytest.approx(1.97)
    assert pb.positions[SYM][0] == 3
    with pytest.raises(router.OrderRefused, match="sell_to_open"):
        pb.place(router.entry_payload(SYM, 1, 1.0, "p-x") | {"side": "sell_to_open"}, 5)
    stop, ev = pb.place(router.stop_payload(SYM, 3, 1.5, "p-2"), 5)
    with pytest.raises(router.OrderRefused, match="would_short"):
        pb.place(router.scale_out_payload(SYM, 1, 3.0, "p-3"), 5)
    assert pb.on_quote(SYM, 1.6, 1.7, 6) == []
    ev = pb.on_quote(SYM, 1.45, 1.55, 7)
    assert ev[-1]["status"] == "filled" and ev[-1]["avg_fill_price"] == pytest.approx(1.43)
    assert SYM not in pb.positions
    bal = pb.balances()
    assert bal["total_cash"] == pytest.approx(10_000 - (2 * 2.0 + 1.97) * 100 + 3 * 1.43 * 100)
    with pytest.raises(ValueError, match="finalized"):
        pb.cancel(stop.id, 8)
    w, _ = pb.place(router.entry_payload(SYM, 1, 1.0, "p-4"), 8)
    assert [e["status"] for e in pb.cancel(w.id, 9)] == ["canceled"] and pb.open_orders() == []


def test_paper_sell_limit_never_below_limit():
    pb = PaperBroker(slippage=0.5)
    pb.on_quote(SYM, 1.0, 1.05, 1)
    pb.place(router.entry_payload(SYM, 2, 1.10, "a"), 1)
    o, ev = pb.place(router.scale_out_payload(SYM, 1, 2.0, "b"), 2)
    ev = pb.on_quote(SYM, 2.1, 2.2, 3)
    assert ev[-1]["avg_fill_price"] == 2.0  # 2.1 - 0.5 would be below the limit


# ----------------------------------------------------------------------------- ledger

def _order(oid, side, qty, price, ts=1):
    return Order(order_id=oid, user="u", option_symbol=SYM, side=side, quantity=qty, type="limit", price=price, ts=ts)


def test_ledger_fills_from_cumulative_quantities_pnl_and_slippage():
    lg = Ledger()
    lg.record_order(_order("e", "buy_to_open", 3, 2.0), decision_mid=1.95)
    o, f, p = lg.apply_event("e", "partially_filled", 1, 2.0, 1, "b1")
    assert o.status == "partially_filled" and o.broker_id == "b1" and f.quantity == 1 and p.quantity == 1
    assert lg.apply_event("e", "partially_filled", 1, 2.0, 2)[1] is None  # repeated event: no double count
    o, f, p = lg.apply_event("e", "filled", 3, 1.98, 3)
    assert f.quantity == 2 and f.price == pytest.approx(1.97) and p.quantity == 3
    lg.record_order(_order("x", "sell_to_close", 2, 3.0), decision_mid=3.05)
    _, f, p = lg.apply_event("x", "filled", 2, 3.0, 4)
    assert p.quantity == 1 and p.realized_pnl == pytest.approx((3.0 - 1.98) * 2 * 100)
    [p] = lg.mark(SYM, 2.4, 2.6, 5)
    assert p.unrealized_pnl == pytest.approx((2.5 - 1.98) * 100)
    stats = lg.slippage_stats()
    assert stats["count"] == 3 and stats["max"] == pytest.approx(0.05)
    assert lg.open_positions() == {SYM: 1} and lg.apply_event("nope", "filled", 1, 1, 1) == (None, None, None)


# ----------------------------------------------------------------------------- portfolio

def test_snapshot_gate_publishes_only_on_1pct_moves():
    g = pf.SnapshotGate(1.0)
    base = pf.summarize_balances({"account_type": "margin", "total_equity": "50000.123456",
                                  "margin": {"option_buying_power": 40000}})
    assert base["option_buying_power"] == 40000 and g.should_publish("u", base)
    assert not g.should_publish("u", {**base, "total_equity": 50400})
    assert g.should_publish("u", {**base, "total_equity": 50600})
    assert g.should_publish("u", {**base, "total_equity": 50600, "option_buying_power": 30000})
    cash = pf.summarize_balances({"account_type": "cash", "cash": {"cash_available": 1234.5}})
    assert cash["option_buying_power"] == 1234.5 and cash["day_trade_buying_power"] is None
    assert pf.summarize_balances({})["total_equity"] is None


def test_pdt_alerts_policy_and_cooldown():
    pdt = pf.summarize_balances({"account_type": "pdt", "total_equity": 20000,
                                 "pdt": {"option_buying_power": 5000, "day_trade_buying_power": 0}})
    kinds = [a["kind"] for a in pf.behaviour_alerts(pdt, policy="alert", pdt_min_equity=25000, entries_today=1)]
    assert kinds == ["pdt_equity", "pdt_dtbp"]
    assert pf.behaviour_alerts(pdt, policy="off", pdt_min_equity=25000, entries_today=1) == []
    margin = {"account_type": "margin", "total_equity": 10000, "option_buying_power": 100}
    assert [a["kind"] for a in pf.behaviour_alerts(margin, policy="alert", pdt_min_equity=25000, entries_today=3,
                                                   next_order_cost=200)] == ["pdt_day_trades", "buying_power"]
    cd = pf.Cooldown(60)
    assert cd.allow("u", "pdt", 0) and not cd.allow("u", "pdt", 59 * 10**9) and cd.allow("u", "other", 1)
    assert cd.allow("u", "pdt", 61 * 10**9)


def test_reconcile_and_flatten_timing():
    assert pf.reconcile({SYM: 2}, {SYM: 2}) == []
    assert pf.reconcile({SYM: 2}, {SYM: 1, "X": 1}) == [
        {"symbol": SYM, "internal": 2, "broker": 1, "drift": -1}, {"symbol": "X", "internal": 0, "broker": 1, "drift": 1}]
    at = lambda h, m: int(dt.datetime(2026, 2, 20, h, m, tzinfo=dt.UTC).timestamp() * 1e9)  # noqa: E731
    assert not pf.flatten_due(at(20, 49), 10) and pf.flatten_due(at(20, 50), 10) and not pf.flatten_due(at(21, 0), 10)
    assert pf.is_zero_dte(SYM, ET_NOON) and not pf.is_zero_dte("SPXW260223C05000000", ET_NOON)
    assert not pf.is_zero_dte("garbage", ET_NOON)


paper_ops = st.lists(st.one_of(
    st.tuples(st.just("buy"), st.integers(1, 5), st.floats(0.05, 10)),
    st.tuples(st.just("sell"), st.integers(1, 5), st.floats(0.05, 10), st.sampled_from(["limit", "stop", "market"])),
    st.tuples(st.just("quote"), st.floats(0.0, 10), st.floats(0.0, 2), st.integers(0, 4)),
    st.tuples(st.just("cancel"), st.integers(0, 30)),
), max_size=60)


@given(paper_ops, st.floats(0, 0.5))
def test_paper_property_limits_honoured_never_short(ops, slippage):
    pb = PaperBroker(slippage=slippage)
    fills = []
    for i, o in enumerate(ops):
        try:
            if o[0] == "buy":
                _, ev = pb.place(router.entry_payload(SYM, o[1], o[2], f"b{i}"), i)
            elif o[0] == "sell":
                if o[3] == "limit":
                    payload = router.scale_out_payload(SYM, o[1], o[2], f"s{i}")
                elif o[3] == "stop":
                    payload = router.stop_payload(SYM, o[1], o[2], f"s{i}")
                else:
                    payload = router.exit_payload(SYM, o[1], f"s{i}")
                _, ev = pb.place(payload, i)
            elif o[0] == "quote":
                ev = pb.on_quote(SYM, o[1], o[1] + o[2], i, bid_size=o[3], ask_size=o[3])
            else:
                ev = pb.cancel(o[1] % max(len(pb.orders), 1) + 1, i) if pb.orders else []
        except (router.OrderRefused, ValueError, KeyError):
            continue
        fills += [e for e in ev if e["last_fill_quantity"] and e["status"] in ("filled", "partially_filled")]
        assert pb.positions.get(SYM, [0.0])[0] >= 0
        assert sum(o.remaining for o in pb._working.get(SYM, {}).values() if o.side == "sell_to_close") <= \
            pb.positions.get(SYM, [0.0])[0] + 1e-9
    for e in fills:
        o = pb.orders[e["id"]]
        if o.side == "buy_to_open":
            assert e["last_fill_price"] <= o.price + 1e-9
        elif o.type == "limit":
            assert e["last_fill_price"] >= o.price - 1e-9


def test_flatten_window_follows_the_exchange_calendar_early_close():
    import datetime as dt

    from services.broker.portfolio import ET, flatten_due

    def ns(d, h, m):
        return int(dt.datetime(d.year, d.month, d.day, h, m, tzinfo=ET).timestamp() * 1e9)

    regular, early = dt.date(2026, 11, 25), dt.date(2026, 11, 27)  # day after Thanksgiving: 13:00 close
    assert flatten_due(ns(regular, 15, 55), 10) and not flatten_due(ns(regular, 15, 45), 10)
    assert not flatten_due(ns(regular, 16, 0), 10)
    assert flatten_due(ns(early, 12, 55), 10) and not flatten_due(ns(early, 15, 55), 10)
    assert flatten_due(ns(dt.date(2026, 11, 26), 15, 55), 10)  # no session (holiday): 16:00 fallback
