"""What the broker process reads from the store, every statement in one place (the broker modules hold no SQL).

Read-only: the recorder stays the only writer of orders, fills, positions and snapshots. Each function
takes a database URL, opens its own engine and disposes of it (the broker reads these once, at start or
on a rare request, off the event loop). A SQLite URL whose file does not exist, or a database without
the table, is a first start: the functions answer "nothing stored" instead of creating anything.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from spx_common.store import tables as t
from spx_common.store.engine import make_engine

#: the error every database failure raises (the broker catches it to run without the store, loudly)
StoreError = sa.exc.SQLAlchemyError
_CHUNK = 500  # ids per IN (...) statement


@dataclass
class BrokerRows:
    """The broker's rows of the store (see :func:`broker_rows`)."""

    positions: list[dict] = field(default_factory=list)  # user, option_symbol, quantity, avg_price, realized_pnl
    entries: dict[str, int] = field(default_factory=dict)  # user -> buy_to_open orders since ``since_ns``
    cash: dict[str, float] = field(default_factory=dict)  # user -> total_cash of the newest snapshot
    stops: dict[tuple[str, str], float] = field(default_factory=dict)  # (user, symbol) -> newest stop level


def database_absent(url: str) -> bool:
    """True for a SQLite URL whose file does not exist (nothing was ever stored; do not create it)."""
    return url.startswith("sqlite:///") and not Path(url[len("sqlite:///"):]).exists()


def has_table(url: str, name: str) -> bool:
    """Whether the database at ``url`` exists and has table ``name``."""
    if database_absent(url):
        return False
    engine = make_engine(url)
    try:
        return bool(sa.inspect(engine).has_table(name))
    finally:
        engine.dispose()


def broker_rows(url: str, users: Iterable[str], since_ns: int, source: str | None = None) -> BrokerRows:
    """For ``users``: their open positions, their entries (``buy_to_open`` orders) since ``since_ns``, the
    total cash of their newest portfolio snapshot, and the stop level of their newest protective stop
    order (``sell_to_close`` ``stop``/``stop_limit``) since ``since_ns`` per option symbol. With
    ``source`` only rows of that provenance."""
    users = list(users)
    out = BrokerRows()
    if database_absent(url):
        return out
    engine = make_engine(url)
    try:
        if not sa.inspect(engine).has_table("positions"):
            return out
        with engine.connect() as c:
            def of(table: sa.Table) -> Any:
                return table.c.source == source if source is not None else sa.true()

            rows = c.execute(sa.select(t.positions).where(t.positions.c.user.in_(users), of(t.positions),
                                                          t.positions.c.quantity != 0)).mappings()
            out.positions = [dict(r) for r in rows]
            counts = c.execute(
                sa.select(t.orders.c.user, sa.func.count()).where(
                    t.orders.c.user.in_(users), t.orders.c.side == "buy_to_open", of(t.orders),
                    t.orders.c.ts >= since_ns).group_by(t.orders.c.user))
            out.entries = {u: int(n) for u, n in counts}
            stops = c.execute(
                sa.select(t.orders.c.user, t.orders.c.option_symbol, t.orders.c.stop).where(
                    t.orders.c.user.in_(users), t.orders.c.side == "sell_to_close",
                    t.orders.c.type.in_(("stop", "stop_limit")), t.orders.c.stop.is_not(None), of(t.orders),
                    t.orders.c.ts >= since_ns).order_by(t.orders.c.ts))
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


def stored_order_ids(url: str, ids: Iterable[str]) -> set[str]:
    """Which of ``ids`` the ``orders`` table holds (none when there is no such table)."""
    ids = sorted(set(ids))
    found: set[str] = set()
    if not ids or database_absent(url):
        return found
    engine = make_engine(url)
    try:
        if not sa.inspect(engine).has_table("orders"):
            return found
        with engine.connect() as c:
            for i in range(0, len(ids), _CHUNK):
                found.update(r[0] for r in c.execute(
                    sa.select(t.orders.c.order_id).where(t.orders.c.order_id.in_(ids[i:i + _CHUNK]))))
    finally:
        engine.dispose()
    return found
