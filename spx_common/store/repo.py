"""The typed repository other services call. Every write is an idempotent upsert keyed by a
natural id, so replaying a spool, a journal or a backfill never duplicates a row."""

from __future__ import annotations

import math
import time
from typing import Any
from collections.abc import Iterable, Sequence

import msgspec
import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine
import json

from spx_common import models as m
from spx_common.provenance import RANK
from spx_common.store import tables as t
from spx_common.store.engine import make_engine
from spx_common.store.profile import FamilyStats, Profile, evaluate, profile_from_body
from spx_common.calendar import et_date
from spx_common.store.users import DEFAULTS, UserError, check_id, validate

TERMINAL = {"target2_hit", "stopped", "invalidated", "expired", "blocked"}
_ORDER = ["forming", "ready", "triggered", "target1_hit", "target2_hit", "invalidated", "stopped", "expired",
          "blocked"]


def _insert(conn: Connection, table: sa.Table):
    if conn.dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    else:
        from sqlalchemy.dialects.sqlite import insert
    return insert(table)


def _rank(col) -> sa.ColumnElement:
    return sa.case(*((col == k, v) for k, v in RANK.items()), else_=0)


def upsert(conn: Connection, table: sa.Table, rows: Sequence[dict], *, newer_col: str | None = None,
           update: bool = True, ranked: bool = False) -> None:
    """Insert ``rows``; on a primary-key conflict update (only when ``newer_col`` is not older, and with
    ``ranked`` only when the new row's provenance ranks at least as high: ``spx_common.provenance.RANK``)
    or skip."""
    if not rows:
        return
    keys = [c.name for c in table.primary_key.columns]
    stmt = _insert(conn, table)
    if not update:
        conn.execute(stmt.on_conflict_do_nothing(index_elements=keys), list(rows))
        return
    cols = [c for c in rows[0] if c not in keys]
    where = None
    if newer_col is not None:
        where = table.c[newer_col] <= stmt.excluded[newer_col]
    if ranked:
        better = _rank(table.c.source) <= _rank(stmt.excluded.source)
        where = better if where is None else sa.and_(where, better)
    stmt = stmt.on_conflict_do_update(index_elements=keys, set_={c: stmt.excluded[c] for c in cols}, where=where)
    conn.execute(stmt, list(rows))


# --------------------------------------------------------------------------- pure row builders


def _entry_mid(row: dict) -> float | None:
    lo, hi = row.get("entry_low"), row.get("entry_high")
    if lo is None or hi is None:
        return None
    return (lo + hi) / 2.0


def r_of(row: dict, price: float | None) -> float | None:
    """R multiple of ``price`` for the setup in ``row`` (entry price or entry-zone mid vs stop)."""
    entry = row.get("entry_price") or _entry_mid(row)
    stop = row.get("stop")
    if price is None or entry is None or stop is None or entry == stop:
        return None
    risk = abs(entry - stop)
    sign = 1.0 if row["direction"] == "long" else -1.0
    return round(sign * (price - entry) / risk, 6)


def merge_transition(row: dict | None, tr: m.SetupTransition, source: str = "live", run_id: str | None = None) -> dict:
    """Fold one transition into a setup-instance row. Idempotent and order-tolerant: flags only
    turn on, MFE/MAE are max/min, state and last time follow the newest event. A new row gets
    ``source`` and ``run_id`` (its provenance); an existing one keeps its own."""
    if row is None:
        row = {"setup_id": tr.setup_id, "detector": tr.detector, "family": tr.family, "sym": tr.sym,
               "direction": tr.direction, "state": tr.to_state, "first_ns": tr.ts, "last_ns": tr.ts,
               "triggered_ns": None, "entry_low": None, "entry_high": None, "stop": None, "targets": [],
               "confidence": None, "entry_price": None, "bid_ask_imbalance_at_trigger": None,
               "aggressor_skew_at_trigger": None, "macro_alignment_score": None,
               "microstructure_at_trigger": None, "trailing_stop_path": None, "t1_hit": False, "t2_hit": False,
               "stopped": False, "r_multiple": None, "mfe_r": None, "mae_r": None, "resolved_at": None,
               "resolution": None, "source": source, "run_id": run_id}
    else:
        row = dict(row)
    newer = tr.ts >= row["last_ns"]
    row["first_ns"] = min(row["first_ns"], tr.ts)
    if newer:
        row["last_ns"] = tr.ts
        row["state"] = tr.to_state
        for k in ("entry_low", "entry_high", "stop", "confidence", "macro_alignment_score"):
            v = getattr(tr, k)
            if v is not None:
                row[k] = v
        if tr.targets:
            row["targets"] = list(tr.targets)
    else:
        for k in ("entry_low", "entry_high", "stop", "confidence", "macro_alignment_score"):
            if row.get(k) is None and getattr(tr, k) is not None:
                row[k] = getattr(tr, k)
    if tr.to_state == "triggered" and (row["triggered_ns"] is None or tr.ts <= row["triggered_ns"]):
        row["triggered_ns"] = tr.ts
        row["entry_price"] = tr.price
        ms = dict(tr.microstructure)
        row["microstructure_at_trigger"] = ms
        row["bid_ask_imbalance_at_trigger"] = ms.get("bid_ask_imbalance")
        row["aggressor_skew_at_trigger"] = ms.get("aggressor_skew")
        if tr.macro_alignment_score is not None:
            row["macro_alignment_score"] = tr.macro_alignment_score
    r = r_of(row, tr.price) if row["triggered_ns"] is not None and tr.ts >= row["triggered_ns"] else None
    if r is not None:
        row["mfe_r"] = r if row["mfe_r"] is None else max(row["mfe_r"], r)
        row["mae_r"] = r if row["mae_r"] is None else min(row["mae_r"], r)
    if tr.to_state == "target1_hit":
        row["t1_hit"] = True
    elif tr.to_state == "target2_hit":
        row["t1_hit"] = row["t2_hit"] = True
    elif tr.to_state == "stopped":
        row["stopped"] = True
    if tr.to_state in TERMINAL and (row["resolved_at"] is None or tr.ts <= row["resolved_at"]):
        row["resolved_at"] = tr.ts
        row["resolution"] = tr.to_state
        if row["triggered_ns"] is not None:
            row["r_multiple"] = r if r is not None else (-1.0 if tr.to_state == "stopped" else None)
    return row


def _fold_key(x: m.SetupTransition) -> tuple[int, int]:
    return (x.ts, _ORDER.index(x.to_state))


def order_row(o: m.Order, source: str = "live", run_id: str | None = None) -> dict:
    return {"source": source, "run_id": run_id, "order_id": o.order_id, "user": o.user, "setup_id": o.setup_id, "option_symbol": o.option_symbol,
            "side": o.side, "quantity": o.quantity, "type": o.type, "price": o.price, "stop": o.stop,
            "status": o.status, "broker_id": o.broker_id, "reason": o.reason, "ts": o.ts}


def fill_key(f: m.Fill) -> str:
    """A fill's natural id: the broker's fill id, else (order, time, quantity, price)."""
    return f"{f.order_id}:{f.fill_id}" if f.fill_id else f"{f.order_id}@{f.ts}:{f.quantity:g}x{f.price:g}"


def fill_row(f: m.Fill, source: str = "live", run_id: str | None = None) -> dict:
    return {"source": source, "run_id": run_id, "fill_key": fill_key(f), "order_id": f.order_id, "user": f.user, "option_symbol": f.option_symbol,
            "side": f.side, "quantity": f.quantity, "price": f.price, "ts": f.ts, "broker_id": f.broker_id}


def position_row(p: m.Position, source: str = "live", run_id: str | None = None) -> dict:
    return {"source": source, "run_id": run_id, "user": p.user, "option_symbol": p.option_symbol, "quantity": p.quantity, "avg_price": p.avg_price,
            "realized_pnl": p.realized_pnl, "unrealized_pnl": p.unrealized_pnl, "ts": p.ts}


def _num(v: Any) -> float | None:
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None


def snapshot_row(doc: dict, source: str = "live", run_id: str | None = None) -> dict:
    """A ``portfolio.<user>`` document as a row (raises ValueError without user/ts)."""
    user, ts = doc.get("user"), doc.get("ts")
    if not isinstance(user, str) or not user or not isinstance(ts, int) or isinstance(ts, bool) or ts < 0:
        raise ValueError("portfolio snapshot needs a user and an integer ts")
    body = msgspec.json.decode(msgspec.json.encode(doc))
    return {"user": user, "ts": ts, "total_equity": _num(doc.get("total_equity")),
            "option_buying_power": _num(doc.get("option_buying_power")), "body": body, "source": source,
            "run_id": run_id}


_BAR_CORE = {"sym", "interval", "start_ns", "open", "high", "low", "close", "volume", "trades", "vwap", "source"}


_JSON_MAP = msgspec.json.Decoder(dict[str, Any])


def _json_map(text: str | bytes) -> dict[str, Any]:
    """A JSON column's stored text as a map: msgspec, or ``json`` for what only it reads (NaN, Infinity)."""
    if not text or text == "null":
        return {}
    try:
        return _JSON_MAP.decode(text)
    except msgspec.DecodeError:

        doc = json.loads(text)
        return dict(doc) if doc else {}


def _wire_source(provenance: str) -> str:
    """The bar's own source (``MicroBar.source``) a stored bar of ``provenance`` has unless ``extra`` says."""
    return "backfill" if provenance == "backfill" else "tick"


# JSON has no NaN or Infinity (PostgreSQL's json type refuses the whole batch that carries one): a non-finite
# microstructure value is stored as its name and read back as the float (every extra field but bar_source is a number)
_NONFINITE = {"nan": "NaN", "inf": "Infinity", "-inf": "-Infinity"}
_FROM_NAME = {name: float(name) for name in _NONFINITE.values()}


def _extra_floats(extra: dict[str, Any]) -> dict[str, Any]:
    for k, v in extra.items():
        if isinstance(v, str) and k != "bar_source" and v in _FROM_NAME:
            extra[k] = _FROM_NAME[v]
    return extra


def bar_row(b: m.MicroBar, source: str | None = None, run_id: str | None = None) -> dict:
    """A bar as a row. ``source`` is its provenance (default: ``backfill`` for a backfilled bar, else
    ``live``); the bar's own source goes to ``extra["bar_source"]`` when it is not the usual one."""
    d = msgspec.structs.asdict(b)
    extra = {k: v if not isinstance(v, float) or math.isfinite(v) else _NONFINITE[str(v)]
             for k, v in d.items() if k not in _BAR_CORE and k not in ("closed", "gap_fill") and v is not None}
    prov = source or ("backfill" if b.source == "backfill" else "live")
    if b.source != _wire_source(prov):
        extra["bar_source"] = b.source
    return {"sym": b.sym, "interval": b.interval, "start_ns": b.start_ns, "open": b.open, "high": b.high,
            "low": b.low, "close": b.close, "volume": b.volume, "trades": b.trades, "vwap": b.vwap,
            "source": prov, "run_id": run_id, "extra": extra or None}


def event_row(e: m.Trade | m.Quote) -> dict:
    if isinstance(e, m.Trade):
        return {"sym": e.sym, "kind": "t", "ts": e.ts, "seq": e.seq, "price": e.price, "size": e.size,
                "bid": None, "ask": None, "bid_size": None, "ask_size": None}
    return {"sym": e.sym, "kind": "q", "ts": e.ts, "seq": e.seq, "price": None, "size": None, "bid": e.bid,
            "ask": e.ask, "bid_size": e.bid_size, "ask_size": e.ask_size}


# --------------------------------------------------------------------------- repository


class Store:
    """Repository over one engine. Thread-safe for use from one writer thread plus readers."""

    def __init__(self, engine: Engine | str | None = None) -> None:
        self.engine = engine if isinstance(engine, Engine) else make_engine(engine)

    def close(self) -> None:
        self.engine.dispose()

    # ---------------------------------------------------------------- setups
    def record_transitions(self, transitions: Iterable[m.SetupTransition], *, source: str = "live",
                           run_id: str | None = None, conn: Connection | None = None) -> None:
        """Log transitions (natural key: setup, state, time) and re-fold their setup instances; new
        rows get ``source``/``run_id`` (their provenance, ``spx_common.provenance``)."""
        trs = list(transitions)
        if not trs:
            return
        if conn is None:
            with self.engine.begin() as c:
                return self.record_transitions(trs, source=source, run_id=run_id, conn=c)
        upsert(conn, t.setup_transitions, [
            {"setup_id": x.setup_id, "to_state": x.to_state, "ts": x.ts, "from_state": x.from_state,
             "reason": x.reason, "price": x.price, "body": msgspec.to_builtins(x), "source": source,
             "run_id": run_id} for x in trs], update=False)
        ids = sorted({x.setup_id for x in trs})
        rows: dict[str, dict] = {}
        logs: dict[str, list] = {i: [] for i in ids}
        paths: dict[str, Any] = {}
        st = t.setup_transitions.c
        for i in range(0, len(ids), 500):
            part = ids[i:i + 500]
            for r in conn.execute(sa.select(t.setup_instances).where(t.setup_instances.c.setup_id.in_(part))):
                rows[r.setup_id] = dict(r._mapping)
            for r in conn.execute(sa.select(st.setup_id, st.body).where(st.setup_id.in_(part))):
                logs[r.setup_id].append(r.body)
            for r in conn.execute(sa.select(t.trailing_stops.c.setup_id, t.trailing_stops.c.path)
                                  .where(t.trailing_stops.c.setup_id.in_(part))):
                paths[r.setup_id] = r.path
        for sid in ids:
            old = rows.get(sid)
            if all(b is not None for b in logs[sid]):
                # re-fold the whole log: the result does not depend on arrival order or repeats
                new = None
                for x in sorted((msgspec.convert(b, m.SetupTransition) for b in logs[sid]), key=_fold_key):
                    new = merge_transition(new, x, old["source"] if old else source,
                                           old["run_id"] if old else run_id)
            else:  # transitions logged before revision 0002 carry no body: fold the new ones in
                new = old
                for x in sorted((x for x in trs if x.setup_id == sid), key=_fold_key):
                    new = merge_transition(new, x, source, run_id)
            new["trailing_stop_path"] = paths.get(sid, new["trailing_stop_path"])
            rows[sid] = new
        upsert(conn, t.setup_instances, [rows[i] for i in ids])

    def record_trailing_stop(self, advice: Iterable[m.ExitAdvice], conn: Connection | None = None) -> None:
        """Keep the newest trailing-stop path the exit advisor published for each setup (also when
        the advice arrives before the setup's first transition: it is applied when that lands)."""
        latest: dict[str, m.ExitAdvice] = {}
        for a in advice:
            if a.trailing_stop_path and (a.setup_id not in latest or a.ts >= latest[a.setup_id].ts):
                latest[a.setup_id] = a
        if not latest:
            return
        if conn is None:
            with self.engine.begin() as c:
                return self.record_trailing_stop(latest.values(), conn=c)
        upsert(conn, t.trailing_stops, [{"setup_id": a.setup_id, "ts": a.ts, "path": list(a.trailing_stop_path)}
                                        for a in latest.values()], newer_col="ts")
        ts_ = t.trailing_stops.c
        for r in conn.execute(sa.select(ts_.setup_id, ts_.path).where(ts_.setup_id.in_(sorted(latest)))):
            conn.execute(t.setup_instances.update().where(t.setup_instances.c.setup_id == r.setup_id)
                         .values(trailing_stop_path=r.path))

    def setup_instance(self, setup_id: str) -> dict | None:
        with self.engine.connect() as c:
            r = c.execute(sa.select(t.setup_instances).where(t.setup_instances.c.setup_id == setup_id)).first()
            return dict(r._mapping) if r else None

    # ---------------------------------------------------------------- execution
    # Execution rows carry the provenance of the run that made them (``source``, ``run_id``).
    def record_orders(self, orders: Iterable[m.Order], conn: Connection | None = None, *, source: str = "live",
                      run_id: str | None = None) -> None:
        rows = _latest([order_row(o, source, run_id) for o in orders], ("order_id",))
        self._write(t.orders, rows, conn, newer_col="ts")

    def record_fills(self, fills: Iterable[m.Fill], conn: Connection | None = None, *, source: str = "live",
                     run_id: str | None = None) -> None:
        self._write(t.fills, _latest([fill_row(f, source, run_id) for f in fills], ("fill_key",)), conn,
                    update=False)

    def run_rows(self, run_id: str, *, limit: int = 200_000) -> dict[str, list[dict]]:
        """What one run recorded (``run_id``): its setup transitions, orders and fills (each fill with its
        order's ``setup_id``), oldest first, at most ``limit`` of each (the parity report's input)."""
        tr, o, f = t.setup_transitions.c, t.orders.c, t.fills.c
        with self.engine.connect() as c:
            trs = [dict(r._mapping) for r in c.execute(
                sa.select(tr.setup_id, tr.to_state, tr.ts, tr.price, tr.source).where(tr.run_id == run_id)
                .order_by(tr.ts, tr.setup_id, tr.to_state).limit(limit))]
            orders = [dict(r._mapping) for r in c.execute(
                sa.select(t.orders).where(o.run_id == run_id).order_by(o.ts, o.order_id).limit(limit))]
            fills = [dict(r._mapping) for r in c.execute(
                sa.select(t.fills, o.setup_id).join(t.orders, o.order_id == f.order_id, isouter=True)
                .where(f.run_id == run_id).order_by(f.ts, f.fill_key).limit(limit))]
        return {"transitions": trs, "orders": orders, "fills": fills}

    def record_positions(self, positions: Iterable[m.Position], conn: Connection | None = None, *,
                         source: str = "live", run_id: str | None = None) -> None:
        rows = _latest([position_row(p, source, run_id) for p in positions], ("user", "option_symbol"))
        self._write(t.positions, rows, conn, newer_col="ts")

    def record_snapshots(self, docs: Iterable[dict], conn: Connection | None = None, *, source: str = "live",
                         run_id: str | None = None) -> None:
        self._write(t.portfolio_snapshots, _latest([snapshot_row(d, source, run_id) for d in docs], ("user", "ts")),
                    conn, update=False)

    # ---------------------------------------------------------------- market data
    def upsert_bars(self, bars: Iterable[m.MicroBar], conn: Connection | None = None, *, source: str | None = None,
                    run_id: str | None = None) -> int:
        """Store bars with their provenance (``bar_row``). A stored bar is replaced only by one of at
        least its provenance's rank (live > backfill > replay > synthetic > backtest): replaying a
        day never overwrites the live or vendor bars of that day."""
        rows = _latest([bar_row(b, source, run_id) for b in bars], ("sym", "interval", "start_ns"))
        self._write(t.bars, rows, conn, ranked=True)
        return len(rows)

    def insert_events(self, events: Iterable[m.Trade | m.Quote], conn: Connection | None = None) -> int:
        rows = _latest([event_row(e) for e in events], ("sym", "kind", "ts", "seq"))
        self._write(t.market_events, rows, conn, update=False)
        return len(rows)

    def bars(self, sym: str, interval: str, start_ns: int = 0, end_ns: int = 2**62) -> list[m.MicroBar]:
        """Stored bars of ``sym`` in ``[start_ns, end_ns)``, oldest first, as bus models (for replay)."""
        b = t.bars.c
        # ``extra`` as the stored text (SQLite) decoded by msgspec, not SQLAlchemy's json.loads per row (a
        # backtest reads two days of 1 s bars per day); a driver that parses JSON itself (psycopg) gives a map
        q = (sa.select(b.sym, b.interval, b.start_ns, b.open, b.high, b.low, b.close, b.volume, b.trades, b.vwap,
                       b.source, sa.type_coerce(b.extra, sa.String))
             .where(b.sym == sym, b.interval == interval, b.start_ns >= start_ns, b.start_ns < end_ns)
             .order_by(b.start_ns))
        out = []
        bar = m.MicroBar
        with self.engine.connect() as c:
            for (sym_, iv, start, o, h, lo, cl, vol, n, vwap, src, extra) in c.execute(q):
                extra = _extra_floats(_json_map(extra) if isinstance(extra, str | bytes) else dict(extra) if extra else {})
                wire = extra.pop("bar_source", _wire_source(src))
                out.append(bar(sym=sym_, interval=iv, start_ns=start, open=o, high=h, low=lo, close=cl, volume=vol,
                               trades=n, vwap=vwap, source=wire, closed=True, **extra))
        return out

    def bar_sources(self, syms: Iterable[str], interval: str, start_ns: int = 0, end_ns: int = 2**62) -> list[str]:
        """The provenances of the stored bars of ``syms`` in ``[start_ns, end_ns)`` (what a backtest
        reports it ran on: live, replay, synthetic, backfill)."""
        b = t.bars.c
        q = (sa.select(b.source).distinct().where(b.sym.in_(sorted(set(syms))), b.interval == interval,
                                                  b.start_ns >= start_ns, b.start_ns < end_ns))
        with self.engine.connect() as c:
            return sorted(r[0] for r in c.execute(q))

    def events(self, syms: Iterable[str], start_ns: int = 0, end_ns: int = 2**62) -> list[m.Trade | m.Quote]:
        """Stored trades and quotes of ``syms`` in ``[start_ns, end_ns)`` in aggregation order (time,
        a quote before a trade at the same time, then vendor sequence), for tick-resolution replay."""
        e = t.market_events.c
        q = (sa.select(t.market_events).where(e.sym.in_(sorted(set(syms))), e.ts >= start_ns, e.ts < end_ns)
             .order_by(e.ts, sa.case((e.kind == "q", 0), else_=1), e.sym, e.seq))
        out: list[m.Trade | m.Quote] = []
        with self.engine.connect() as c:
            for r in c.execute(q):
                if r.kind == "t":
                    out.append(m.Trade(sym=r.sym, price=r.price, size=r.size or 0.0, ts=r.ts, seq=r.seq,
                                       source="replay"))
                else:
                    out.append(m.Quote(sym=r.sym, bid=r.bid, ask=r.ask, bid_size=r.bid_size or 0.0,
                                       ask_size=r.ask_size or 0.0, ts=r.ts, seq=r.seq, source="replay"))
        return out

    def setup_instances(self, since_ns: int = 0, until_ns: int = 2**62, *, family: str | None = None,
                        source: str | None = None) -> list[dict]:
        """Setup instances first seen in ``[since_ns, until_ns)``, oldest first (reports, backtests)."""
        s = t.setup_instances.c
        q = sa.select(t.setup_instances).where(s.first_ns >= since_ns, s.first_ns < until_ns)
        if family is not None:
            q = q.where(s.family == family)
        if source is not None:
            q = q.where(s.source == source)
        with self.engine.connect() as c:
            return [dict(r._mapping) for r in c.execute(q.order_by(s.first_ns, s.setup_id))]

    def active_setups(self, *, limit: int = 200, source: str = "live", within_ns: int = 24 * 3600 * 10**9) -> list[dict]:
        """Setup instances not yet resolved, of the newest ``within_ns`` of event time (the detector
        host restores these on restart), oldest first, at most ``limit`` (the newest ones)."""
        s = t.setup_instances.c
        with self.engine.connect() as c:
            newest = c.execute(sa.select(sa.func.max(s.last_ns)).where(s.source == source)).scalar()
            if newest is None:
                return []
            q = (sa.select(t.setup_instances)
                 .where(s.source == source, s.state.not_in(sorted(TERMINAL)), s.last_ns >= newest - within_ns)
                 .order_by(s.first_ns.desc(), s.setup_id).limit(limit))
            rows = [dict(r._mapping) for r in c.execute(q)]
            # not yet triggered: the microstructure the setup was formed with is only in its transitions
            missing = [r["setup_id"] for r in rows if r.get("microstructure_at_trigger") is None]
            if missing:
                tr = t.setup_transitions.c
                latest = {sid: body for sid, body in c.execute(
                    sa.select(tr.setup_id, tr.body).where(tr.setup_id.in_(missing)).order_by(tr.ts))}
                for r in rows:
                    body = latest.get(r["setup_id"])
                    if isinstance(body, dict) and isinstance(body.get("microstructure"), dict):
                        r["microstructure"] = body["microstructure"]
        return rows[::-1]

    def count(self, table: str) -> int:
        with self.engine.connect() as c:
            return c.execute(sa.select(sa.func.count()).select_from(t.metadata.tables[table])).scalar_one()

    # ---------------------------------------------------------------- backfill checkpoints
    def checkpoint(self, task: str) -> dict | None:
        with self.engine.connect() as c:
            r = c.execute(sa.select(t.backfill_checkpoints).where(t.backfill_checkpoints.c.task == task)).first()
            return dict(r._mapping) if r else None

    def set_checkpoint(self, task: str, status: str, rows: int, detail: str = "",
                       conn: Connection | None = None) -> None:
        self._write(t.backfill_checkpoints, [{"task": task, "status": status, "rows": rows, "detail": detail,
                                              "updated_ns": time.time_ns()}], conn)

    # ---------------------------------------------------------------- broker credentials (ciphertext only)
    def put_credentials(self, user: str, broker: str, ciphertext: bytes, key_id: str, *,
                        account_id: str | None = None, now_ns: int | None = None) -> None:
        """Store sealed credentials (the caller encrypts with spx_common.crypto; plaintext never comes here)."""
        now = now_ns or time.time_ns()
        old = self.credentials(user, broker)
        row = {"user": user, "broker": broker, "account_id": account_id, "ciphertext": bytes(ciphertext),
               "key_id": key_id, "created_ns": old["created_ns"] if old else now,
               "rotated_ns": now if old else None}
        self._write(t.broker_credentials, [row], None)

    def credentials(self, user: str, broker: str) -> dict | None:
        c_ = t.broker_credentials.c
        with self.engine.connect() as c:
            r = c.execute(sa.select(t.broker_credentials).where(c_.user == user, c_.broker == broker)).first()
            return dict(r._mapping) if r else None

    # ---------------------------------------------------------------- optimizer profile
    def get_active_profile(self) -> Profile:
        """The newest profile version (the built-in default, version 0, when none was saved)."""
        p = t.optimizer_profiles
        with self.engine.connect() as c:
            r = c.execute(sa.select(p).order_by(p.c.version.desc()).limit(1)).first()
        return Profile() if r is None else _profile(r)

    def profile_history(self, limit: int = 50) -> list[Profile]:
        p = t.optimizer_profiles
        with self.engine.connect() as c:
            return [_profile(r) for r in c.execute(sa.select(p).order_by(p.c.version.desc()).limit(limit))]

    def profile_version(self, version: int) -> Profile | None:
        p = t.optimizer_profiles
        with self.engine.connect() as c:
            r = c.execute(sa.select(p).where(p.c.version == version)).first()
        return _profile(r) if r else None

    def save_profile(self, profile: Profile, *, author: str, reason: str, now_ns: int | None = None) -> Profile:
        """Append ``profile`` as the next version (history is never rewritten)."""
        p = t.optimizer_profiles
        body = profile.body()
        with self.engine.begin() as c:
            top = c.execute(sa.select(sa.func.max(p.c.version))).scalar_one() or 0
            row = {"version": top + 1, "created_ns": now_ns or time.time_ns(), "author": author,
                   "reason": reason, "body": body}
            c.execute(p.insert(), [row])
        return profile_from_body(body, version=row["version"], created_ns=row["created_ns"], author=author,
                                 reason=reason)

    def revert_profile(self, version: int, *, author: str = "cli") -> Profile:
        """Make an older version active again by saving a copy of it as the newest version."""
        old = self.profile_version(version)
        if old is None:
            raise KeyError(f"no profile version {version}")
        return self.save_profile(old, author=author, reason=f"revert to version {version}")

    def family_stats(self, since_ns: int, until_ns: int, *,
                     source: str | Iterable[str] | None = "live") -> list[FamilyStats]:
        """Resolved, triggered trades per family with ``resolved_at`` in ``[since_ns, until_ns)``, of
        ``source`` (one provenance or several; ``live`` by default: backtest, replay and demo rows never
        move the live rolling window; None: all)."""
        s = t.setup_instances.c
        if source is not None:
            sources = [source] if isinstance(source, str) else sorted(set(source))
        q = (sa.select(s.family, sa.func.count(), sa.func.sum(sa.case((s.t1_hit, 1), else_=0)),
                       sa.func.sum(sa.case((s.t2_hit, 1), else_=0)), sa.func.sum(sa.case((s.stopped, 1), else_=0)),
                       sa.func.coalesce(sa.func.sum(s.r_multiple), 0.0))
             .where(s.resolved_at >= since_ns, s.resolved_at < until_ns, s.triggered_ns.is_not(None),
                    s.r_multiple.is_not(None), *(() if source is None else (s.source.in_(sources),)))
             .group_by(s.family).order_by(s.family))
        with self.engine.connect() as c:
            return [FamilyStats(family=f, trades=int(n), t1_hits=int(a or 0), t2_hits=int(b or 0),
                                stops=int(d or 0), sum_r=float(r)) for f, n, a, b, d, r in c.execute(q)]

    def requarantine(self, now_ns: int, window_ns: int, *,
                     window: str = "live rolling window (data: live ticks, tick resolution)",
                     stats: list[FamilyStats] | None = None,
                     sources: Iterable[str] = ("live",)) -> dict[str, str]:
        """Quarantine families failing their floors (the rolling window over setup rows of ``sources``,
        live only by default, or given backtest ``stats``); saves a new profile version when anything
        changed and returns {family: reason}."""
        profile = self.get_active_profile()
        if stats is None:
            stats = self.family_stats(now_ns - window_ns, now_ns + 1, source=list(sources))
        new, changes = evaluate(profile, stats, window=window)
        if changes:
            self.save_profile(new, author="auto", reason="re-quarantine: " + ", ".join(sorted(changes)),
                              now_ns=now_ns)
        return changes

    # ---------------------------------------------------------------- users
    def add_user(self, user: str, *, now_ns: int | None = None, **settings: Any) -> dict:
        """Create ``user`` with the defaults overridden by ``settings``; UserError when invalid or taken."""

        check_id(user)
        row = {**DEFAULTS, "display_name": user, **validate(settings)}
        now = now_ns or time.time_ns()
        row.update(user=user, created_ns=now, updated_ns=now, last_ok_ns=None, last_error=None, last_error_ns=None)
        try:
            with self.engine.begin() as c:
                c.execute(t.users.insert().values(**row))
        except sa.exc.IntegrityError:
            raise UserError(f"user {user!r} already exists (change it with 'spx users set')") from None
        return row

    def user(self, user: str) -> dict | None:
        with self.engine.connect() as c:
            r = c.execute(sa.select(t.users).where(t.users.c.user == user)).first()
            return dict(r._mapping) if r else None

    def users(self, *, enabled_only: bool = False) -> list[dict]:
        q = sa.select(t.users).order_by(t.users.c.user)
        if enabled_only:
            q = q.where(t.users.c.enabled.is_(True))
        with self.engine.connect() as c:
            return [dict(r._mapping) for r in c.execute(q)]

    def update_user(self, user: str, *, now_ns: int | None = None, **settings: Any) -> dict:
        """Change settings of an existing user; UserError when unknown or invalid."""

        clean = validate(settings)
        with self.engine.begin() as c:
            n = c.execute(t.users.update().where(t.users.c.user == user)
                          .values(**clean, updated_ns=now_ns or time.time_ns())).rowcount
        if not n:
            raise UserError(f"no user {user!r} (add it with 'spx users add')")
        return self.user(user)

    def set_credential_status(self, user: str, *, ok_ns: int | None = None, error: str | None = None,
                              now_ns: int | None = None) -> None:
        """Record the outcome of a broker call made with ``user``'s credentials (never the token)."""
        vals: dict[str, Any] = {}
        if ok_ns is not None:
            vals["last_ok_ns"] = ok_ns
        if error is not None:
            vals.update(last_error=error[:500], last_error_ns=now_ns or time.time_ns())
        if vals:
            with self.engine.begin() as c:
                c.execute(t.users.update().where(t.users.c.user == user).values(**vals))

    def delete_credentials(self, user: str, broker: str) -> bool:
        c_ = t.broker_credentials.c
        with self.engine.begin() as c:
            return bool(c.execute(t.broker_credentials.delete().where(c_.user == user, c_.broker == broker)).rowcount)

    # ---------------------------------------------------------------- internals
    # ------------------------------------------------------------------ coach answers, feed availability

    def record_coach_events(self, events: Iterable[m.CoachEvent], conn: Connection | None = None) -> None:
        """Alerts, idempotent by id (an alert heard again, or after its answer, keeps the answer)."""
        rows = _latest([coach_event_row(e) for e in events if e.id], ("id",))
        self._write(t.coach_events, rows, conn)

    def record_feedback(self, answers: Iterable[m.CoachFeedback], conn: Connection | None = None) -> None:
        """Users' answers: the first answer to an alert is final; an answer to an alert not stored yet
        stores the alert's kind and time from the answer (its message follows when the alert arrives)."""
        c = t.coach_events.c

        def go(cx: Connection) -> None:
            for fb in answers:
                upsert(cx, t.coach_events, [{
                    "id": fb.event_id, "user": fb.user, "kind": fb.kind, "severity": "info", "setup_id": None,
                    "message": "", "ts": fb.event_ts, "day": ny_day(fb.event_ts)}], update=False)
                cx.execute(sa.update(t.coach_events).where(c.id == fb.event_id, c.feedback.is_(None),
                                                           c.user == fb.user)
                           .values(feedback=fb.action, feedback_ns=fb.ts))
        if conn is None:
            with self.engine.begin() as cx:
                go(cx)
        else:
            go(conn)

    def coach_stats(self, start_day: str, end_day: str) -> list[dict]:
        """Per day and kind: alerts, acknowledged, dismissed and the two rates, days ``start..end``."""
        c = t.coach_events.c
        q = (sa.select(c.day, c.kind, sa.func.count().label("alerts"),
                       sa.func.sum(sa.case((c.feedback == "ack", 1), else_=0)).label("acked"),
                       sa.func.sum(sa.case((c.feedback == "dismiss", 1), else_=0)).label("dismissed"))
             .where(c.day >= start_day, c.day <= end_day, c.message != "").group_by(c.day, c.kind)
             .order_by(c.day, c.kind))
        with self.engine.connect() as cx:
            out = []
            for r in cx.execute(q):
                n = int(r.alerts)
                out.append({"day": r.day, "kind": r.kind, "alerts": n, "acked": int(r.acked or 0),
                            "dismissed": int(r.dismissed or 0),
                            "ack_rate": round(int(r.acked or 0) / n, 4) if n else None,
                            "dismiss_rate": round(int(r.dismissed or 0) / n, 4) if n else None})
            return out

    def record_availability(self, docs: Iterable[dict], conn: Connection | None = None, *,
                            source: str = "live") -> None:
        """Finished sessions' feed availability (``availability.feed``), one row per day and source."""
        rows = [{"day": str(d["day"]), "source": str(d.get("source") or source), "pct": d.get("pct"),
                 "session_s": int(d["session_s"]), "elapsed_s": int(d["elapsed_s"]),
                 "available_s": int(d["available_s"]), "longest_gap_s": int(d["longest_gap_s"]),
                 "longest_gap_start_ns": d.get("longest_gap_start_ns"), "recorded_ns": time.time_ns()}
                for d in docs]
        self._write(t.feed_availability, _latest(rows, ("day", "source")), conn)

    def availability(self, limit: int = 30) -> list[dict]:
        """Stored sessions' availability, newest first."""
        a = t.feed_availability.c
        with self.engine.connect() as cx:
            return [dict(r._mapping) for r in cx.execute(
                sa.select(t.feed_availability).order_by(a.day.desc(), a.source).limit(limit))]

    def _write(self, table: sa.Table, rows: list[dict], conn: Connection | None, **kw: Any) -> None:
        if not rows:
            return
        if conn is None:
            with self.engine.begin() as c:
                upsert(c, table, rows, **kw)
        else:
            upsert(conn, table, rows, **kw)


def ny_day(ts_ns: int) -> str:
    """The New York date of an event time, YYYY-MM-DD."""

    return et_date(ts_ns).isoformat()


def coach_event_row(e: m.CoachEvent) -> dict:
    return {"id": e.id, "user": e.user, "kind": e.kind, "severity": e.severity, "setup_id": e.setup_id,
            "message": e.message, "ts": e.ts, "day": ny_day(e.ts)}  # the answer columns are the answer's


def _latest(rows: list[dict], keys: tuple[str, ...]) -> list[dict]:
    """One row per key (the newest by ``ts`` when present): a multi-row upsert may not touch a key twice."""
    out: dict[tuple, dict] = {}
    for r in rows:
        k = tuple(r[x] for x in keys)
        old = out.get(k)
        if old is None or r.get("ts", 0) >= old.get("ts", 0):
            out[k] = r
    return list(out.values())


def _profile(r) -> Profile:
    return profile_from_body(r.body, version=r.version, created_ns=r.created_ns, author=r.author, reason=r.reason)
