"""Pure portfolio logic: balance snapshots, PDT / buying-power alerts, reconciliation, flatten timing.

* :class:`SnapshotGate` -- a balances snapshot is published on ``portfolio.<user>`` (and so persisted
  into ``portfolio_snapshots`` by the recorder) only the first time and when total equity or option
  buying power moved more than ``change_pct`` since the last published one.
* :func:`behaviour_alerts` -- PDT / day-trade-buying-power alerts (a configurable policy: the PDT rule
  is being replaced by intraday-margin standards, fields may be missing); :class:`Cooldown` keeps each
  (user, kind) to one alert per cooldown, in event time.
* :func:`reconcile` -- internal vs broker positions -> drift records.
* :func:`split_positions` / :func:`adoption` -- broker positions: only options are managed or adopted
  (average price = cost basis / (quantity x multiplier)); equities are reported, never touched.
* :func:`flatten_due` / :func:`is_zero_dte` -- when to flatten expiring SPXW options (they stop trading
  at 16:00 ET on expiration day).
"""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from typing import Any

from spx_common import occ
from spx_common.calendar import ET, MarketCalendar
from services.broker.reconcile import is_option

CLOSE_ET = dt.time(16, 0)


def _num(value: Any) -> float | None:
    if value is None or value == "" or value == "null":
        return None
    try:
        return float(Decimal(str(value)))
    except ArithmeticError:
        return None


#: where each account type's option buying power is read, in order; the first field present wins.
#: Tradier documents one sub-object named after ``account_type``, but real answers differ: a margin
#: account answered with a ``pdt`` sub-object (pattern-day-trader flagged) or a ``cash`` one, and
#: ``account_type`` itself may be missing, so every sub-object is looked at.
BUYING_POWER_FIELDS: dict[str, tuple[tuple[str, str], ...]] = {
    "margin": (("margin", "option_buying_power"), ("pdt", "option_buying_power"), ("cash", "cash_available")),
    "pdt": (("pdt", "option_buying_power"), ("margin", "option_buying_power"), ("cash", "cash_available")),
    "cash": (("cash", "cash_available"), ("cash", "option_buying_power"), ("margin", "option_buying_power"),
             ("pdt", "option_buying_power")),
}


def summarize_balances(bal: dict) -> dict[str, Any]:
    """Tradier balances -> flat snapshot; every field optional. Option buying power is read from whichever
    sub-object the answer has (:data:`BUYING_POWER_FIELDS`, by ``account_type``; margin's order when the
    type is missing or unknown); ``buying_power_source`` names the field used (None: none found)."""
    kind = str(bal.get("account_type") or "")
    option_bp, source = None, None
    for sub_name, field in BUYING_POWER_FIELDS.get(kind, BUYING_POWER_FIELDS["margin"]):
        sub = bal.get(sub_name)
        if isinstance(sub, dict):
            v = _num(sub.get(field))
            if v is not None:
                option_bp, source = v, f"{sub_name}.{field}"
                break
    dtbp = None
    for sub_name in (kind, "pdt", "margin"):
        sub = bal.get(sub_name)
        if isinstance(sub, dict) and _num(sub.get("day_trade_buying_power")) is not None:
            dtbp = _num(sub.get("day_trade_buying_power"))
            break
    return {
        "account_type": kind or None,
        "total_equity": _num(bal.get("total_equity")),
        "total_cash": _num(bal.get("total_cash")),
        "market_value": _num(bal.get("market_value")),
        "open_pl": _num(bal.get("open_pl")),
        "close_pl": _num(bal.get("close_pl")),
        "option_buying_power": option_bp,
        "buying_power_source": source,
        "day_trade_buying_power": dtbp,
        "pending_orders_count": _num(bal.get("pending_orders_count")),
    }


class SnapshotGate:
    """Decides which snapshots are worth persisting (first, or a > ``change_pct`` % move)."""

    def __init__(self, change_pct: float = 1.0) -> None:
        self.change_pct = change_pct
        self.last: dict[str, dict] = {}

    def should_publish(self, user: str, snap: dict) -> bool:
        prev = self.last.get(user)
        if prev is None or self._moved(prev.get("total_equity"), snap.get("total_equity")) or \
                self._moved(prev.get("option_buying_power"), snap.get("option_buying_power")):
            self.last[user] = snap
            return True
        return False

    def _moved(self, a: float | None, b: float | None) -> bool:
        if a is None or b is None:
            return a != b
        if a == 0:
            return b != 0
        return abs(b - a) / abs(a) * 100 > self.change_pct


class Cooldown:
    """At most one alert per (user, kind) per ``cooldown_s`` of event time (bounded memory)."""

    def __init__(self, cooldown_s: float, max_keys: int = 10_000) -> None:
        self.cooldown_ns = int(cooldown_s * 1e9)
        self.max_keys = max_keys
        self.last: dict[tuple[str, str], int] = {}

    def allow(self, user: str, kind: str, ts: int) -> bool:
        key = (user, kind)
        prev = self.last.get(key)
        if prev is not None and ts - prev < self.cooldown_ns:
            return False
        if len(self.last) >= self.max_keys:
            self.last.pop(next(iter(self.last)))
        self.last[key] = ts
        return True


def behaviour_alerts(snap: dict, *, policy: str, pdt_min_equity: float, entries_today: int,
                     next_order_cost: float = 0.0) -> list[dict]:
    """PDT / buying-power alerts for the coach (``kind``, ``severity``, ``message``)."""
    if policy == "off":
        return []
    out = []
    equity = snap.get("total_equity")
    dtbp = snap.get("day_trade_buying_power")
    obp = snap.get("option_buying_power")
    if snap.get("account_type") == "pdt" or dtbp is not None:
        if equity is not None and equity < pdt_min_equity:
            out.append({"kind": "pdt_equity", "severity": "critical",
                        "message": f"Equity ${equity:,.0f} is below the ${pdt_min_equity:,.0f} pattern-day-trader "
                                   "minimum: day trades may be restricted."})
        if dtbp is not None and dtbp <= max(next_order_cost, 0.0):
            out.append({"kind": "pdt_dtbp", "severity": "warning",
                        "message": f"Day-trade buying power ${dtbp:,.0f} is exhausted: another round trip today "
                                   "may trigger a day-trading margin call."})
    elif equity is not None and equity < pdt_min_equity and entries_today >= 3:
        out.append({"kind": "pdt_day_trades", "severity": "warning",
                    "message": f"{entries_today} day trades today with equity under ${pdt_min_equity:,.0f}: "
                               "a fourth in five days can flag the account as a pattern day trader."})
    if obp is not None and next_order_cost > 0 and obp < next_order_cost:
        out.append({"kind": "buying_power", "severity": "warning",
                    "message": f"Option buying power ${obp:,.0f} is below the next order's ${next_order_cost:,.0f}."})
    return out


def reconcile(internal: dict[str, float], broker: dict[str, float]) -> list[dict]:
    """Positions that differ: ``{symbol, internal, broker, drift}`` (drift = broker - internal)."""
    out = []
    for sym in sorted(set(internal) | set(broker)):
        a, b = internal.get(sym, 0.0), broker.get(sym, 0.0)
        if abs(a - b) > 1e-9:
            out.append({"symbol": sym, "internal": a, "broker": b, "drift": b - a})
    return out


def multiplier(row: dict) -> float:
    """Shares per unit of a broker position row: its own ``multiplier`` when given, else 100 for an
    OCC option symbol (standard equity and index options), 1 for anything else (shares)."""
    m = _num(row.get("multiplier"))
    if m is not None and m > 0:
        return m
    return 100.0 if is_option(str(row.get("symbol") or "")) else 1.0


def split_positions(rows: list[dict]) -> tuple[dict[str, float], dict[str, float]]:
    """Broker position rows -> ``(options, others)``: quantity per symbol (rows of one symbol summed).
    Only ``options`` are ever managed; ``others`` (equities, anything that is not an option) are reported."""
    options: dict[str, float] = {}
    others: dict[str, float] = {}
    for r in rows:
        sym, q = r.get("symbol"), _num(r.get("quantity"))
        if not sym or q is None:
            continue
        side = options if is_option(str(sym)) else others
        side[str(sym)] = side.get(str(sym), 0.0) + q
    return options, others


def adoption(rows: list[dict], known: set[str] | dict) -> dict[str, list]:
    """What to do at start with the broker's positions the ledger does not know (pure).

    * ``adopt``: ``(symbol, quantity, avg_price)`` of long OPTION positions; ``avg_price`` = cost basis /
      (quantity x the position's multiplier), per share like every option price (0 when the cost basis
      is missing);
    * ``shorts``: ``(symbol, quantity)`` of short options (alerted, never touched: we never open shorts);
    * ``others``: ``(symbol, quantity)`` of non-option positions (equities: reported, never touched).
    """
    out: dict[str, list] = {"adopt": [], "shorts": [], "others": []}
    cost: dict[str, float] = {}
    qty: dict[str, float] = {}
    mult: dict[str, float] = {}
    for r in rows:
        sym, q = r.get("symbol"), _num(r.get("quantity"))
        if not sym or q is None or str(sym) in known:
            continue
        sym = str(sym)
        qty[sym] = qty.get(sym, 0.0) + q
        c = _num(r.get("cost_basis"))
        cost[sym] = cost.get(sym, 0.0) + (c or 0.0)
        mult[sym] = multiplier(r)
    for sym, q in qty.items():
        if q == 0:
            continue
        if not is_option(sym):
            out["others"].append((sym, q))
        elif q < 0:
            out["shorts"].append((sym, q))
        else:
            avg = cost[sym] / (q * mult[sym]) if cost[sym] > 0 else 0.0
            out["adopt"].append((sym, q, avg))
    return out


def adoption_alerts(plan: dict[str, list], user: str, ts: int) -> list[dict]:
    """The coach alerts of an :func:`adoption` plan (pure): a short option is critical (never opened by
    this service, never touched), a position that is not an option is reported once (never managed)."""
    out = [{"kind": f"short:{sym}", "severity": "critical", "ts": ts, "user": user, "data": {},
            "message": f"The broker holds a SHORT {sym} ({qty:g}); this service never opens shorts "
                       "and will not touch it."} for sym, qty in plan["shorts"]]
    out += [{"kind": f"not_an_option:{sym}", "severity": "info", "ts": ts, "user": user,
             "data": {"symbol": sym, "quantity": qty},
             "message": f"The broker account holds {sym} x{qty:g}, not an option: reported only, never "
                        "adopted, exited or flattened."} for sym, qty in plan["others"]]
    return out


def is_zero_dte(symbol: str, ts: int) -> bool:
    """Whether an option expires on the ET date of ``ts``."""
    try:
        return occ.parse(symbol).expiration == dt.datetime.fromtimestamp(ts / 1e9, ET).date()
    except occ.OptionSymbolError:
        return False


_CALENDAR = None


def flatten_due(ts: int, minutes_before: float) -> bool:
    """True from ``minutes_before`` the session close until the close (expiring SPXW stop trading at the
    close): 16:00 ET, 13:00 ET on exchange early closes (``spx_common.calendar``); 16:00 on a date the
    calendar has no session for (a generated replay day on a holiday still flattens)."""
    global _CALENDAR
    if _CALENDAR is None:

        _CALENDAR = MarketCalendar()
    now = dt.datetime.fromtimestamp(ts / 1e9, ET)
    session = _CALENDAR.session(now.date())
    close_ns = session.close_ns if session is not None else \
        int(dt.datetime.combine(now.date(), CLOSE_ET, ET).timestamp() * 1e9)
    return close_ns - int(minutes_before * 60e9) <= ts < close_ns
