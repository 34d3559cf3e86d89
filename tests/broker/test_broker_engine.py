"""The pure execution engine: scenario tests and hypothesis properties (never short, never past a limit,
nothing at all when the flags are off)."""

from __future__ import annotations

import datetime as dt
import math

import msgspec
from hypothesis import HealthCheck, example, given, settings, strategies as st

from services.broker import router
from services.broker.engine import Block, Cancel, Engine, Gates, Limits, Modify, Place
from spx_common.models import ContractRecommendation, ExitAdvice, SetupTransition, SizingBreakdown

SYMS = ["SPXW260220C05000000", "SPXW260220P04990000", "SPXW260220C05010000"]
T0 = int(dt.datetime(2026, 2, 20, 15, 0, tzinfo=dt.UTC).timestamp() * 1e9)


def tr(setup, state, ts=T0, reason="r"):
    return SetupTransition(setup_id=setup, detector="d", family="f", sym="I:SPX", direction="long",
                           to_state=state, reason=reason, ts=ts)


RISK = 400.0  # the test users' risk budget (Limits.max_risk_per_trade)
ACCOUNT = {"account_type": "margin", "option_buying_power": 1e9, "day_trade_buying_power": 1e9, "total_equity": 1e6}


def setup_for(qty, bid, ask, risk=RISK):
    """Entry and stop of a long setup on which ``qty`` contracts of a 0.5-delta call lose about ``risk``:
    loss per contract = 100 x (value lost to the stop + spread) = risk / (qty + 0.5), where feasible (a
    contract cannot lose more than its value plus the spread, nor less than the spread)."""
    spread, mid = ask - bid, (ask + bid) / 2
    want = risk / (qty + 0.5) / 100 if qty > 0 else math.inf
    move = max(min(want - spread, mid), 0.01)
    return 5000.0, 5000.0 - move / 0.5


def reco(setup, sym=SYMS[0], qty=4, bid=1.9, ask=2.0, ok=True, ts=T0, risk=RISK):
    """A recommendation whose setup (entry/stop in its sizing) sizes ``qty`` contracts for a ``risk``
    budget: the broker re-sizes every entry for its user (issue 18), ``suggestedContracts`` is not used."""
    entry, stop = setup_for(qty, bid, ask, risk)
    sizing = SizingBreakdown(maxRiskDollars=500.0, contractsByRisk=0, contractsByBuyingPower=0, perContractDebit=0.0,
                             entry=entry, stop=stop)
    return ContractRecommendation(setup_id=setup, ok=ok, reason="ok" if ok else "no liquid contract",
                                  tradier_symbol=sym if ok else None, bid=bid, ask=ask, mid=(bid + ask) / 2,
                                  delta=0.5, suggestedContracts=qty, sizing=sizing, ts=ts)


def engine(allowed=True, users=("u1",), **limits):
    return Engine(list(users), Limits(**{"max_risk_per_trade": RISK, **limits}),
                  Gates(lambda u: (allowed, "" if allowed else "execution_disabled"), balances=lambda u: ACCOUNT))


def places(intents):
    return [i for i in intents if isinstance(i, Place)]


def test_entry_scale_out_stop_and_exit_scenario():
    e = engine()
    assert e.on_transition(tr("s1", "triggered")) == []
    [p] = places(e.on_recommendation(reco("s1", qty=4)))
    assert p.payload["side"] == "buy_to_open" and p.payload["price"] == "2.00" and p.payload["quantity"] == "4"
    oid = p.order.order_id
    e.on_order_event(oid, "partially_filled", 1, 2.0, T0)
    e.on_order_event(oid, "filled", 4, 2.0, T0)
    e.on_quote(SYMS[0], 3.04, 3.2)
    [s] = places(e.on_advice(ExitAdvice(setup_id="s1", action="scale_out", fraction=0.5, reason="T1", ts=T0)))
    assert s.payload["side"] == "sell_to_close" and s.payload["quantity"] == "2" and s.payload["price"] == "3.00"
    e.on_order_event(s.order.order_id, "filled", 2, 3.0, T0)
    [st_] = places(e.on_advice(ExitAdvice(setup_id="s1", action="move_stop", reason="BE", ts=T0)))
    assert st_.payload["type"] == "stop" and st_.payload["stop"] == "2.00" and st_.payload["quantity"] == "2"
    e.on_quote(SYMS[0], 4.0, 4.2)
    [m] = [i for i in e.on_advice(ExitAdvice(setup_id="s1", action="trail_stop", reason="trail", ts=T0))
           if isinstance(i, Modify)]
    assert m.fields == {"stop": "3.00"}
    out = e.on_advice(ExitAdvice(setup_id="s1", action="exit_all", reason="target 2", ts=T0))
    assert [type(i) for i in out] == [Cancel]  # the stop covers both contracts: cancel first
    [x] = places(e.on_order_event(st_.order.order_id, "canceled", 0, 0, T0))
    assert x.payload["quantity"] == "2" and x.payload["price"] == "4.00"
    e.on_order_event(x.order.order_id, "filled", 2, 4.0, T0)
    assert ("u1", "s1") in e.done and ("u1", "s1") not in e.trades and e.open_risk("u1") == 0 and not e.orders


def test_reco_before_trigger_and_duplicates():
    e = engine()
    assert e.on_recommendation(reco("s1")) == []
    assert len(places(e.on_transition(tr("s1", "triggered")))) == 1
    assert places(e.on_transition(tr("s1", "triggered"))) == []
    assert places(e.on_recommendation(reco("s1"))) == []


def test_refusals_have_reasons():
    e = engine(allowed=False)
    e.on_transition(tr("s1", "triggered"))
    [b] = e.on_recommendation(reco("s1"))
    assert isinstance(b, Block) and b.reason == "execution_disabled"
    e = engine(max_orders_per_day=1, max_open_risk=1000)
    e.on_transition(tr("a", "triggered"))
    [p] = places(e.on_recommendation(reco("a", qty=50)))
    assert p.payload["quantity"] == "5"  # 5 x $200 = $1000 of risk: capped to fit
    e.on_transition(tr("b", "triggered"))
    [b] = e.on_recommendation(reco("b"))
    assert b.reason == "max_orders_per_day"
    e2 = engine(max_open_risk=100)
    e2.on_transition(tr("c", "triggered"))
    assert [i.reason for i in e2.on_recommendation(reco("c"))] == ["max_open_risk"]
    e3 = engine()
    e3.gates.kill_switch = True
    e3.on_transition(tr("k", "triggered"))
    assert [i.reason for i in e3.on_recommendation(reco("k"))] == ["kill_switch"]
    e4 = engine()
    e4.on_transition(tr("n", "triggered"))
    assert [i.reason for i in e4.on_recommendation(reco("n", ok=False))] == ["no_contract"]
    e4.on_transition(tr("z", "triggered"))  # one contract loses more than the $400 budget
    assert [i.reason for i in e4.on_recommendation(reco("z", qty=0, bid=4.9, ask=5.0))] == ["zero_size"]


def test_closing_state_exits_and_day_rolls():
    e = engine(max_orders_per_day=1)
    e.on_transition(tr("s1", "triggered"))
    [p] = places(e.on_recommendation(reco("s1", qty=2)))
    e.on_order_event(p.order.order_id, "partially_filled", 1, 2.0, T0)
    out = e.on_transition(tr("s1", "stopped"))
    assert isinstance(out[0], Cancel) and places(out)[0].payload["quantity"] == "1"
    nxt = T0 + 24 * 3600 * 10**9
    e.on_transition(tr("s2", "triggered", ts=nxt))
    assert len(places(e.on_recommendation(reco("s2", ts=nxt)))) == 1  # new ET day, new budget


# ----------------------------------------------------------------------------- properties

LIM = dict(max_contracts_per_order=3, max_orders_per_day=4, max_open_risk=1500.0, max_risk_per_trade=RISK)

SETUP = st.integers(0, 2)
op = st.one_of(
    st.tuples(st.just("trigger"), SETUP),
    st.tuples(st.just("reco"), SETUP, st.integers(-1, 8), st.floats(0.05, 8), st.integers(0, 2)),
    st.tuples(st.just("advice"), SETUP,
              st.sampled_from(["scale_out", "move_stop", "trail_stop", "exit_all", "hold"]), st.floats(0, 1)),
    st.tuples(st.just("state"), SETUP, st.sampled_from(["stopped", "invalidated", "expired",
                                                                      "target1_hit", "ready"])),
    st.tuples(st.just("quote"), st.integers(0, 2), st.floats(0.05, 15), st.floats(0, 1)),
    st.tuples(st.just("fill"), st.integers(0, 50), st.floats(0.1, 1.0)),
    st.tuples(st.just("reject"), st.integers(0, 50)),
    st.tuples(st.just("flatten"),),
    st.tuples(st.just("nextday"),),
)


opening = st.tuples(SETUP, st.integers(1, 8), st.floats(0.05, 8), st.integers(0, 2)).map(
    lambda x: [("trigger", x[0]), ("reco", x[0], x[1], x[2], x[3]), ("fill", 0, 1.0)])
scenario = st.tuples(st.lists(opening, max_size=3), st.lists(op, max_size=80)).map(
    lambda x: [o for group in x[0] for o in group] + x[1])


class SimBroker:
    """An independent broker model: positions, working orders; checks every order the engine sends."""

    def __init__(self):
        self.held: dict[tuple[str, str], float] = {}
        self.cost: dict[tuple[str, str, str], float] = {}  # per trade: (user, symbol, setup)
        self.theld: dict[tuple[str, str, str], float] = {}  # contracts held per trade
        self.working: dict[str, dict] = {}
        self.violations: list[str] = []
        self.sent = 0

    def working_sells(self, user, sym):
        return sum(o["qty"] - o["filled"] for o in self.working.values()
                   if o["user"] == user and o["sym"] == sym and o["side"] == "sell_to_close")

    def risk(self, user):
        # cost is kept per trade (user, symbol, setup), as the engine books it: two setups on one contract
        # are two positions, and selling one does not move the other's cost basis to the average
        r = sum(c for (u, _, _), c in self.cost.items() if u == user)
        r += sum((o["qty"] - o["filled"]) * o["price"] * 100 for o in self.working.values()
                 if o["user"] == user and o["side"] == "buy_to_open")
        return r

    def apply(self, intents, eng):
        follow = []
        for i in intents:
            if isinstance(i, Block):
                continue
            self.sent += 1
            if isinstance(i, Place):
                p, user = i.payload, i.order.user
                sym = p["option_symbol"]
                if p["side"] not in ("buy_to_open", "sell_to_close"):
                    self.violations.append(f"side {p['side']}")
                if int(p["quantity"]) > LIM["max_contracts_per_order"]:
                    self.violations.append(f"quantity {p['quantity']}")
                try:
                    router.check_payload(p, self.held.get((user, sym), 0.0), self.working_sells(user, sym))
                except router.OrderRefused as exc:
                    self.violations.append(f"engine produced a refused order: {exc}")
                self.working[i.order.order_id] = {"user": user, "sym": sym, "side": p["side"], "qty": int(p["quantity"]),
                                                  "filled": 0.0, "price": float(p.get("price", p.get("stop", 0.05))),
                                                  "setup": i.order.setup_id}
                if self.risk(user) > LIM["max_open_risk"] + 1e-6:
                    self.violations.append(f"open risk {self.risk(user)}")
            elif isinstance(i, Cancel) and i.order_id in self.working:
                self.working.pop(i.order_id)
                follow += eng.on_order_event(i.order_id, "canceled", 0, 0, T0) if False else \
                    self._final(eng, i.order_id, "canceled")
        return follow

    def _final(self, eng, oid, status):
        rec = eng.orders[oid]
        return eng.on_order_event(oid, status, rec.filled, rec.avg_price, T0)

    def fill(self, eng, idx, frac):
        if not self.working:
            return []
        oid = sorted(self.working)[idx % len(self.working)]
        o = self.working[oid]
        key = (o["user"], o["sym"])
        qty = max(1.0, float(int((o["qty"] - o["filled"]) * frac)))
        qty = min(qty, o["qty"] - o["filled"])
        if o["side"] == "sell_to_close":
            if qty > self.held.get(key, 0.0) + 1e-9:
                self.violations.append(f"fill would go short: {qty} > {self.held.get(key, 0.0)}")
                qty = self.held.get(key, 0.0)
            if qty <= 0:
                return []
            tkey = (o["user"], o["sym"], o["setup"])
            avg = self.cost.get(tkey, 0.0) / self.theld[tkey] if self.theld.get(tkey) else 0.0
            self.held[key] -= qty
            self.theld[tkey] = self.theld.get(tkey, 0.0) - qty
            self.cost[tkey] = self.cost.get(tkey, 0.0) - avg * qty
        else:
            tkey = (o["user"], o["sym"], o["setup"])
            self.held[key] = self.held.get(key, 0.0) + qty
            self.theld[tkey] = self.theld.get(tkey, 0.0) + qty
            self.cost[tkey] = self.cost.get(tkey, 0.0) + qty * o["price"] * 100
        o["filled"] += qty
        price = o["price"]
        prev = eng.orders[oid]
        avg_px = (prev.avg_price * prev.filled + price * qty) / (prev.filled + qty)
        status = "filled" if o["filled"] >= o["qty"] else "partially_filled"
        if status == "filled":
            self.working.pop(oid)
        return eng.on_order_event(oid, status, o["filled"], avg_px, T0)

    def reject(self, eng, idx):
        cands = sorted(k for k, o in self.working.items() if o["filled"] == 0)
        if not cands:
            return []
        oid = cands[idx % len(cands)]
        self.working.pop(oid)
        return self._final(eng, oid, "rejected")


def run_ops(ops, allowed=True, kill=False):
    eng = Engine(["u1", "u2"], Limits(**LIM), Gates(lambda u: (allowed, "" if allowed else "execution_disabled"),
                                                    kill_switch=kill, balances=lambda u: ACCOUNT))
    sim = SimBroker()
    ts = T0
    entries: dict[tuple[str, object], int] = {}
    for o in ops:
        kind = o[0]
        if kind == "trigger":
            out = eng.on_transition(tr(f"s{o[1]}", "triggered", ts))
        elif kind == "reco":
            out = eng.on_recommendation(reco(f"s{o[1]}", SYMS[o[4]], qty=o[2], bid=o[3] * 0.9, ask=o[3], ts=ts))
        elif kind == "advice":
            out = eng.on_advice(ExitAdvice(setup_id=f"s{o[1]}", action=o[2], fraction=o[3], reason="x", ts=ts))
        elif kind == "state":
            out = eng.on_transition(tr(f"s{o[1]}", o[2], ts))
        elif kind == "quote":
            ts += 3 * 10**9
            out = eng.on_quote(SYMS[o[1]], o[2] * (1 - o[3] / 2), o[2], ts) + eng.expire_entries(ts)
        elif kind == "fill":
            out = sim.fill(eng, o[1], o[2])
        elif kind == "reject":
            out = sim.reject(eng, o[1])
        elif kind == "flatten":
            out = eng.flatten(ts, "test")
        else:
            ts += 24 * 3600 * 10**9
            out = []
        while out:
            for i in out:
                if isinstance(i, Place) and i.role == "entry":
                    key = (i.order.user, eng.day)
                    entries[key] = entries.get(key, 0) + 1
                    if entries[key] > LIM["max_orders_per_day"]:
                        sim.violations.append("too many entries in a day")
            out = sim.apply(out, eng)
        for (u, s), h in sim.held.items():
            if h < -1e-9:
                sim.violations.append(f"short {u} {s} {h}")
    return sim


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scenario)
@example([("trigger", 0), ("reco", 0, 1, 5.0, 2), ("fill", 0, 1.0), ("trigger", 1), ("reco", 1, 3, 3.0, 2),
          ("fill", 0, 1.0), ("advice", 0, "scale_out", 0.0), ("fill", 0, 1.0), ("nextday",), ("trigger", 0)])
def test_property_never_short_never_past_a_limit(ops):
    sim = run_ops(ops)
    assert sim.violations == []


@settings(max_examples=150, deadline=None)
@given(scenario)
def test_property_flags_off_nothing_is_sent(ops):
    sim = run_ops(ops, allowed=False)
    assert sim.sent == 0 and sim.violations == []


@settings(max_examples=100, deadline=None)
@given(scenario)
def test_property_kill_switch_no_entries(ops):
    sim = run_ops(ops, kill=True)
    assert sim.sent == 0  # no entry means nothing to exit either


def test_later_ok_recommendation_after_a_refusal_enters_once():
    e = engine()
    e.on_transition(tr("s1", "triggered"))
    assert [i.reason for i in e.on_recommendation(reco("s1", ok=False))] == ["no_contract"]
    assert e.on_recommendation(reco("s1", ok=False)) == []
    assert len(places(e.on_recommendation(reco("s1")))) == 1
    assert e.on_recommendation(reco("s1")) == []


def test_exit_limit_follows_a_falling_bid_but_scale_out_does_not():
    e = engine()
    e.on_transition(tr("s1", "triggered"))
    [p] = places(e.on_recommendation(reco("s1", qty=3)))
    e.on_order_event(p.order.order_id, "filled", 3, 2.0, T0)
    e.on_quote(SYMS[0], 3.0, 3.1, T0)
    [s] = places(e.on_advice(ExitAdvice(setup_id="s1", action="scale_out", fraction=0.34, reason="T1", ts=T0)))
    assert e.on_quote(SYMS[0], 2.5, 2.6, T0 + 5 * 10**9) == []  # a target is not chased
    e.on_order_event(s.order.order_id, "filled", 1, 3.0, T0)
    [x] = places(e.on_advice(ExitAdvice(setup_id="s1", action="exit_all", reason="stop", ts=T0 + 6 * 10**9)))
    assert x.payload["price"] == "2.50"
    [m] = e.on_quote(SYMS[0], 2.27, 2.4, T0 + 9 * 10**9)
    assert isinstance(m, Modify) and m.fields == {"price": "2.25"}
    assert e.on_quote(SYMS[0], 2.1, 2.2, T0 + 10 * 10**9) == []  # throttled
    assert e.on_quote(SYMS[0], 2.3, 2.4, T0 + 12 * 10**9) == []  # never raised
    e.on_order_event(x.order.order_id, "filled", 2, 2.25, T0 + 12 * 10**9)
    assert ("u1", "s1") in e.done and e.on_quote(SYMS[0], 1.0, 1.1, T0 + 20 * 10**9) == []


def test_stale_entry_is_cancelled_after_the_timeout_filled_part_kept():
    e = engine(entry_timeout_s=60)
    e.on_transition(tr("s1", "triggered"))
    [p] = places(e.on_recommendation(reco("s1", qty=3)))
    e.on_order_event(p.order.order_id, "partially_filled", 1, 2.0, T0)
    assert e.expire_entries(T0 + 59 * 10**9) == []
    [c] = e.expire_entries(T0 + 60 * 10**9)
    assert isinstance(c, Cancel) and c.order_id == p.order.order_id
    assert e.expire_entries(T0 + 61 * 10**9) == []  # one cancel
    e.on_order_event(p.order.order_id, "canceled", 1, 2.0, T0 + 61 * 10**9)
    assert e.trades[("u1", "s1")].held == 1 and e.open_risk("u1") == 200
    assert engine(allowed=False).expire_entries(T0) == []


def test_non_finite_inputs_are_refused_not_crashing():
    nan, inf = float("nan"), float("inf")
    e = engine()
    e.on_transition(tr("s1", "triggered"))
    assert [i.reason for i in e.on_recommendation(reco("s1", ask=nan, bid=nan))] == ["no_price"]
    e.on_transition(tr("s2", "triggered"))
    assert [i.reason for i in e.on_recommendation(reco("s2", ask=inf, bid=1.0))] == ["no_price"]
    e.on_transition(tr("s3", "triggered"))
    [p] = places(e.on_recommendation(reco("s3")))
    e.on_order_event(p.order.order_id, "filled", 4, 2.0, T0)
    assert e.on_quote(SYMS[0], inf, inf, T0) == [] and e.quotes[SYMS[0]] != (inf, inf)
    [b] = e.on_advice(ExitAdvice(setup_id="s3", action="scale_out", fraction=nan, reason="x", ts=T0))
    assert b.reason == "bad_advice"


ANY = st.floats(allow_nan=True, allow_infinity=True)
wild_op = st.one_of(
    st.tuples(st.just("trigger"), SETUP),
    st.tuples(st.just("reco"), SETUP, st.integers(-10, 10**6), ANY, st.integers(0, 2)),
    st.tuples(st.just("advice"), SETUP, st.sampled_from(["scale_out", "move_stop", "trail_stop", "exit_all"]), ANY),
    st.tuples(st.just("quote"), st.integers(0, 2), ANY, st.floats(0, 1)),
    st.tuples(st.just("fill"), st.integers(0, 50), st.floats(0.1, 1.0)),
)


@settings(max_examples=150, deadline=None)
@given(st.lists(wild_op, max_size=40))
def test_property_wild_numbers_never_crash_or_break_a_limit(ops):
    sim = run_ops(ops)
    assert sim.violations == []


def test_repeated_scale_out_advice_acts_once_a_different_one_again():
    e = engine()
    e.on_transition(tr("s1", "triggered"))
    [p] = places(e.on_recommendation(reco("s1", qty=6)))
    e.on_order_event(p.order.order_id, "filled", 6, 2.0, T0)
    e.on_quote(SYMS[0], 3.0, 3.1, T0)
    t1 = ExitAdvice(setup_id="s1", action="scale_out", fraction=0.5, reason="T1", r_multiple=1.0, ts=T0)
    [s] = places(e.on_advice(t1))
    e.on_order_event(s.order.order_id, "filled", 3, 3.0, T0)
    assert e.on_advice(msgspec.structs.replace(t1, ts=T0 + 10**9)) == []
    t2 = ExitAdvice(setup_id="s1", action="scale_out", fraction=0.5, reason="T2", r_multiple=2.0, ts=T0)
    [s2] = places(e.on_advice(t2))
    assert s2.payload["quantity"] == "2"


def test_repeated_exit_all_is_idempotent_flatten_retries():
    e = engine()
    e.on_transition(tr("s1", "triggered"))
    [p] = places(e.on_recommendation(reco("s1", qty=2)))
    e.on_order_event(p.order.order_id, "filled", 2, 2.0, T0)
    e.on_quote(SYMS[0], 2.5, 2.6, T0)
    [x] = places(e.on_advice(ExitAdvice(setup_id="s1", action="exit_all", reason="T2", ts=T0)))
    assert e.on_advice(ExitAdvice(setup_id="s1", action="exit_all", reason="T2", ts=T0 + 1)) == []
    assert e.on_transition(tr("s1", "stopped", T0 + 2)) == []
    [y] = places(e.on_order_event(x.order.order_id, "rejected", 0, 0, T0 + 3))  # refused: retried at once
    assert y.payload["quantity"] == "2"
    assert places(e.flatten(T0 + 4, "operator")) == []  # the retry already covers the position
    for i in range(6):  # a broker that keeps refusing: bounded retries, then a published reason
        out = e.on_order_event(y.order.order_id, "rejected", 0, 0, T0 + 5 + i)
        if not places(out):
            break
        [y] = places(out)
    assert [b.reason for b in out] == ["exit_retries_exhausted"]
    [z] = places(e.flatten(T0 + 60, "late-day flatten"))  # the next flatten is a fresh retry budget
    assert z.payload["quantity"] == "2"


def test_entries_sized_from_the_users_balances_at_decision_time():
    """Behaviour changed by issue 18: the broker sizes from the account's synced balances (0DTE: the smaller
    of option and day-trade buying power), never the recommendation's size; no balances -> refused."""
    bal = {"u1": {"account_type": "margin", "option_buying_power": 500.0, "total_equity": 50_000.0}}
    e = Engine(["u1"], Limits(max_risk_per_trade=RISK), Gates(lambda u: (True, ""), balances=lambda u: bal.get(u)))
    e.on_transition(tr("s1", "triggered"))
    [p] = places(e.on_recommendation(reco("s1", qty=4)))
    assert p.payload["quantity"] == "2"  # $500 buys two $200 contracts
    bal["u1"] = {**bal["u1"], "option_buying_power": 100_000.0, "day_trade_buying_power": 150.0, "ts": T0 + 1}
    e.on_transition(tr("s2", "triggered"))
    assert [b.reason for b in e.on_recommendation(reco("s2"))] == ["buying_power"]  # 0DTE: day-trade BP binds
    bal.pop("u1")
    e.on_transition(tr("s3", "triggered"))
    assert [b.reason for b in e.on_recommendation(reco("s3"))] == ["balances_unknown"]


def test_large_adopted_position_exits_in_capped_chunks():
    e = engine(max_contracts_per_order=10)
    e.adopt("u1", SYMS[0], 60, 2.0, T0)
    e.on_quote(SYMS[0], 2.5, 2.6, T0)
    out = e.flatten(T0, "close all")
    sold = 0
    for _ in range(20):
        [x] = places(out)
        assert int(x.payload["quantity"]) <= 10
        sold += int(x.payload["quantity"])
        out = e.on_order_event(x.order.order_id, "filled", int(x.payload["quantity"]), 2.5, T0)
        if not places(out):
            break
    assert sold == 60 and ("u1", f"adopted-{SYMS[0]}") in e.done
