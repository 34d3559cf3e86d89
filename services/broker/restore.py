"""Restore the ledger after a restart: the store's view (what the recorder persisted from our frames),
brought up to date with this broker's own outbox.

* :func:`load` -- read once at start, off the event loop (``spx_common.store.broker.broker_rows``: the
  only place with the statements): open positions of the configured users, today's entries, the latest
  portfolio snapshot's cash (paper account) and the newest protective stop level per position. A missing
  database or schema means a first start: nothing is restored. Only reads; the recorder stays the only writer.
* :func:`newest_of_outbox` (pure) -- the outbox is a contiguous tail of what this broker published, so a
  position it has a frame for is at that frame's state, the newest stop order frame gives the stop level,
  and today's entries it holds are counted unless the store has them (:func:`add_unstored_entries`).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from spx_common.calendar import ET
from spx_common.store.broker import broker_rows


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
    """Read what the store holds for ``users`` (today = since ET midnight of ``now_ns``); an absent
    database or schema restores nothing. With ``source`` only rows of that provenance
    (``spx_common.provenance``): a live broker never takes over a demo's paper positions, cash or entries."""
    rows = broker_rows(url, users, et_midnight_ns(now_ns), source)
    return Restored(rows.positions, rows.entries, rows.cash, rows.stops)


def newest_of_outbox(state: Restored, frames: Iterable[tuple[str, Any]], users: Iterable[str],
                     now_ns: int) -> dict[str, set[str]]:
    """Bring ``state`` (the store's view) up to date with the outbox's decoded ``(type, body)`` frames, in
    publish order (pure): a position the outbox has a frame for takes that frame's state (flat ones are
    dropped); the newest ``stop``/``stop_limit`` order frame of today sets the stop level. Returns today's
    entry order ids per user found in the outbox: the caller counts those the store lacks
    (:func:`add_unstored_entries`)."""
    known = set(users)
    midnight = et_midnight_ns(now_ns)
    positions: dict[tuple[str, str], Any] = {}
    entries: dict[str, set[str]] = {}
    for kind, body in frames:
        if getattr(body, "user", None) not in known:
            continue
        if kind == "position":
            positions[(body.user, body.option_symbol)] = body
        elif kind == "order" and body.ts >= midnight:
            if body.side == "buy_to_open":
                entries.setdefault(body.user, set()).add(body.order_id)
            elif body.type in ("stop", "stop_limit") and body.stop is not None:
                state.stops[(body.user, body.option_symbol)] = body.stop
    if positions:
        rows = {(r["user"], r["option_symbol"]): r for r in state.positions}
        for key, pos in positions.items():
            rows[key] = {"user": pos.user, "option_symbol": pos.option_symbol, "quantity": pos.quantity,
                         "avg_price": pos.avg_price, "realized_pnl": pos.realized_pnl}
        state.positions = [r for r in rows.values() if float(r["quantity"]) > 0]
    return entries


def add_unstored_entries(state: Restored, entries: dict[str, set[str]], stored: set[str]) -> int:
    """Count the outbox's entries the store does not hold (pure); returns how many were added."""
    added = 0
    for user, ids in entries.items():
        n = len(ids - stored)
        if n:
            state.entries[user] = state.entries.get(user, 0) + n
            added += n
    return added
