"""Broker hot paths: what one option quote and one decision cost inside the broker process.

    python benchmarks/broker.py [--n 100000]

* quote path: the work ``BrokerService`` does per ``tick.O:`` quote (engine quote cache, ledger
  mark, paper broker fill check), over 500 option symbols with 2 held and 6 working orders;
* decision path: a whole trade per setup: entry decision (trigger + recommendation -> the entry re-sized
  for the user from their balances, the contract repriced from entry to stop -> payload), T1 scale-out,
  exit, and the three fills; the same with the protective stop the service always places (the stop after
  the entry fill, its cancel before the scale-out and the exit, the runner's stop); the per-user sizing
  step alone;
* the payload guard (:func:`router.check_payload`) alone.
"""

from __future__ import annotations

import argparse
import datetime as dt
import time

from services.broker import router
from services.broker.engine import Engine, Gates, Limits, Place
from services.broker.ledger import Ledger
from services.broker.paper import PaperBroker
from spx_common.models import ContractRecommendation, ExitAdvice, SetupTransition

T0 = int(dt.datetime(2026, 2, 20, 15, 0, tzinfo=dt.UTC).timestamp() * 1e9)


def report(label: str, seconds: float, n: int, unit: str) -> None:
    us = seconds / n * 1e6
    print(f"{label:<52} {us:8.2f} us/{unit}  {1e6 / us:>12,.0f} {unit}s/s")


def syms(n: int) -> list[str]:
    return [f"SPXW260220{'C' if i % 2 else 'P'}0{4800 + 5 * (i // 2):04d}000" for i in range(n)]


def quote_path(n: int) -> None:
    symbols = syms(500)
    eng = Engine(["u"], Limits(max_open_risk=1e9, max_orders_per_day=1000), Gates(lambda u: (True, "")))
    ledger, paper = Ledger(), PaperBroker(starting_cash=1e9)
    for s in symbols[:2]:
        paper.on_quote(s, 1.0, 1.05, T0)
        o, evs = paper.place(router.entry_payload(s, 5, 1.05, f"e-{s}"), T0)
        from spx_common.models import Order

        ledger.record_order(Order(order_id=f"e-{s}", user="u", option_symbol=s, side="buy_to_open", quantity=5,
                                  type="limit", price=1.05, ts=T0))
        ledger.apply_event(f"e-{s}", "filled", 5, 1.05, T0)
    for s in symbols[2:8]:
        paper.place(router.entry_payload(s, 1, 0.05, f"w-{s}"), T0)  # working, never filled
    t0 = time.perf_counter()
    for i in range(n):
        s = symbols[i % 500]
        bid = 1.0 + (i % 7) * 0.05
        eng.on_quote(s, bid, bid + 0.05)
        ledger.mark(s, bid, bid + 0.05, T0 + i)
        paper.on_quote(s, bid, bid + 0.05, T0 + i)
    report("quote path (engine + ledger mark + paper)", time.perf_counter() - t0, n, "quote")


BALANCES = {"account_type": "margin", "option_buying_power": 1e9, "day_trade_buying_power": 1e9,
            "total_equity": 1e6}


def _engine(protective_stop: str | None) -> tuple[Engine, str]:
    """One user's engine with limits that never refuse, and the contract it trades (quoted)."""
    eng = Engine(["u"], Limits(max_open_risk=1e12, max_orders_per_day=10**9, max_contracts_per_order=10,
                               max_risk_per_trade=2000.0, protective_stop=protective_stop),
                 Gates(lambda u: (True, ""), balances=lambda u: BALANCES))
    sym = syms(1)[0]
    eng.on_quote(sym, 2.9, 3.0)
    return eng, sym


def _enter(eng: Engine, sid: str, sym: str) -> Place:
    """A triggered setup and its recommendation: the entry order placed."""
    eng.on_transition(SetupTransition(setup_id=sid, detector="d", family="f", sym="I:SPX", direction="long",
                                      to_state="triggered", reason="r", ts=T0, price=4800.0, stop=4795.0))
    [p] = [x for x in eng.on_recommendation(ContractRecommendation(
        setup_id=sid, ok=True, reason="ok", tradier_symbol=sym, bid=1.9, ask=2.0, delta=0.45, iv=0.18,
        gamma=0.01, underlying=4801.0, suggestedContracts=4, ts=T0)) if isinstance(x, Place)]
    return p


def decision_path(n: int) -> None:
    """Each entry is re-sized for its user (spx_common.sizing: the contract repriced from the setup's entry
    to its stop with Black-Scholes, the account's balances and caps) before it is placed."""
    eng, sym = _engine(protective_stop=None)
    t0 = time.perf_counter()
    for i in range(n):
        sid = f"s{i}"
        p = _enter(eng, sid, sym)
        eng.on_order_event(p.order.order_id, "filled", p.order.quantity, 2.0, T0)
        [s] = eng.on_advice(ExitAdvice(setup_id=sid, action="scale_out", fraction=0.5, reason="T1", ts=T0))
        eng.on_order_event(s.order.order_id, "filled", s.order.quantity, 2.9, T0)
        [x] = eng.on_advice(ExitAdvice(setup_id=sid, action="exit_all", reason="T2", ts=T0))
        eng.on_order_event(x.order.order_id, "filled", x.order.quantity, 2.9, T0)
    report("decision path (entry, T1 scale-out, exit; 3 fills)", time.perf_counter() - t0, n, "setup")


def decision_path_protected(n: int) -> None:
    """The decision path as the service runs it since the protective stop (issue 18 item 5): after the entry
    fill a stop rests; the scale-out cancels it first, then sells and re-places it on the runner; the exit
    cancels the runner's stop first. Cancels are confirmed at once (the paper broker's behaviour)."""
    from services.broker.engine import Cancel

    eng, sym = _engine(protective_stop="advisor")

    def confirm(intents):
        out = []
        for c in intents:
            if isinstance(c, Cancel):
                out += eng.on_order_event(c.order_id, "canceled", 0, 0, T0)
        return out

    t0 = time.perf_counter()
    for i in range(n):
        sid = f"s{i}"
        p = _enter(eng, sid, sym)
        [stop] = eng.on_order_event(p.order.order_id, "filled", p.order.quantity, 2.0, T0)
        follow = confirm(eng.on_advice(ExitAdvice(setup_id=sid, action="scale_out", fraction=0.5, reason="T1", ts=T0)))
        [s] = [x for x in follow if isinstance(x, Place) and x.role == "scale"]
        eng.on_order_event(s.order.order_id, "filled", s.order.quantity, 2.9, T0)
        [x] = confirm(eng.on_advice(ExitAdvice(setup_id=sid, action="exit_all", reason="T2", ts=T0)))
        eng.on_order_event(x.order.order_id, "filled", x.order.quantity, 2.9, T0)
    report("decision path + protective stop (stop, 2 cancels)", time.perf_counter() - t0, n, "setup")


def sizing_only(n: int) -> None:
    """The per-user sizing step alone (what the decision path gained in issue 18)."""
    from services.broker.entry_size import EntryRisk, size_entry

    sym = syms(1)[0]
    t = SetupTransition(setup_id="s", detector="d", family="f", sym="I:SPX", direction="long",
                        to_state="triggered", reason="r", ts=T0, price=4800.0, stop=4795.0)
    r = ContractRecommendation(setup_id="s", ok=True, reason="ok", tradier_symbol=sym, bid=1.9, ask=2.0, delta=0.45,
                               iv=0.18, gamma=0.01, underlying=4801.0, suggestedContracts=4, ts=T0)
    risk = EntryRisk(max_risk_per_trade=2000.0)
    t0 = time.perf_counter()
    for _ in range(n):
        size_entry(t, r, (1.9, 2.0), 2.0, risk, BALANCES, T0)
    report("per-user entry sizing (size_entry)", time.perf_counter() - t0, n, "entry")


def guard(n: int) -> None:
    payload = router.scale_out_payload(syms(1)[0], 2, 2.97, "tag-1")
    t0 = time.perf_counter()
    for _ in range(n):
        router.check_payload(payload, 4, 1)
    report("router.check_payload", time.perf_counter() - t0, n, "order")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=100_000)
    n = ap.parse_args().n
    quote_path(n)
    decision_path(max(n // 20, 100))
    decision_path_protected(max(n // 20, 100))
    sizing_only(max(n // 20, 100))
    guard(n // 2)


if __name__ == "__main__":
    main()
