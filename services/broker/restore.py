"""Restore the ledger after a restart from the store (what the recorder persisted from our frames).

Read once at start, off the event loop: open positions of the configured users (``positions``),
today's entries (``orders``, ``buy_to_open`` since ET midnight) and the latest portfolio snapshot
(``portfolio_snapshots``, for the paper account's cash).  A missing database or schema means a first
start: nothing is restored.  Only reads; the recorder stays the only writer.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from pathlib import Path

import sqlalchemy as sa

from spx_common.calendar import ET
from spx_common.store import make_engine
from spx_common.store import tables as t


@dataclass
class Restored:
    positions: list[dict] = field(default_factory=list)  # user, option_symbol, quantity, avg_price, realized_pnl
    entries: dict[str, int] = field(default_factory=dict)  # user -> entries sent today
    cash: dict[str, float] = field(default_factory=dict)  # user -> total_cash of the latest snapshot
    #: (user, option symbol) -> stop level of the newest protective stop order today: where the restored
    #: position's stop rests again (the setup's stop as last moved), else the premium_pct rule
    stops: dict[tuple[str, str], float] = field(default_factory=dict)


def et_midnight_ns(now_ns: int) -> int:
    day = dt.datetime.fromtimestamp(now_ns / 1e9, ET).date()
    return int(dt.datetime.combine(day, dt.time(0, 0), ET).timestamp() * 1e9)


def load(url: str, users: list[str], now_ns: int, source: str | None = None) -> Restored:
    """Read what the store holds for ``users``; an absent database or schema restores nothing. With
    ``source`` only rows of that provenance (``spx_common.provenance``): a live broker never takes
    over a demo's paper positions, cash or entry count."""
    out = Restored()
    if url.startswith("sqlite:///") and not Path(url[len("sqlite:///"):]).exists():
        return out
    engine = make_engine(url)
    try:
        if not sa.inspect(engine).has_table("positions"):
            return out
        with engine.connect() as c:
            of = (lambda table: table.c.source == source) if source is not None else (lambda table: sa.true())
            rows = c.execute(sa.select(t.positions).where(t.positions.c.user.in_(users), of(t.positions),
                                                          t.positions.c.quantity != 0)).mappings()
            out.positions = [dict(r) for r in rows]
            counts = c.execute(
                sa.select(t.orders.c.user, sa.func.count()).where(
                    t.orders.c.user.in_(users), t.orders.c.side == "buy_to_open", of(t.orders),
                    t.orders.c.ts >= et_midnight_ns(now_ns)).group_by(t.orders.c.user))
            out.entries = {u: int(n) for u, n in counts}
            stops = c.execute(
                sa.select(t.orders.c.user, t.orders.c.option_symbol, t.orders.c.stop).where(
                    t.orders.c.user.in_(users), t.orders.c.side == "sell_to_close",
                    t.orders.c.type.in_(("stop", "stop_limit")), t.orders.c.stop.is_not(None), of(t.orders),
                    t.orders.c.ts >= et_midnight_ns(now_ns)).order_by(t.orders.c.ts))
            out.stops = {(u, sym): float(level) for u, sym, level in stops}  # ascending ts: the newest wins
            for user in users:
                snap = c.execute(sa.select(t.portfolio_snapshots.c.body).where(t.portfolio_snapshots.c.user == user,
                                                                              of(t.portfolio_snapshots))
                                 .order_by(t.portfolio_snapshots.c.ts.desc()).limit(1)).scalar()
                if isinstance(snap, dict) and isinstance(snap.get("total_cash"), (int, float)):
                    out.cash[user] = float(snap["total_cash"])
    finally:
        engine.dispose()
    return out
