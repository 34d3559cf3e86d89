"""Restore after a restart, the pure part (``services.broker.restore``) and the store's reads
(``spx_common.store.broker``): the store's view brought up to date with the outbox, on SQLite."""

from __future__ import annotations

from services.broker import restore
from services.broker.restore import Restored, et_midnight_ns
from spx_common.models import Order, Position
from spx_common.store import open_store
from spx_common.store.broker import broker_rows, has_table, stored_order_ids
from tests.broker.harness import SYM

S = 1_000_000_000
NOW = et_midnight_ns(1_771_603_200 * S) + 15 * 3600 * S  # 2026-02-20 15:00 ET
PUT = "SPXW260220P04990000"


def _order(oid, side="buy_to_open", type_="limit", stop=None, ts=NOW, user="u1", sym=SYM):
    return Order(order_id=oid, user=user, setup_id="s1", option_symbol=sym, side=side, quantity=2, type=type_,
                 price=None if type_ == "stop" else 2.0, stop=stop, status="open", ts=ts)


def _pos(qty, user="u1", sym=SYM, avg=2.0):
    return Position(user=user, option_symbol=sym, quantity=qty, avg_price=avg, realized_pnl=10.0, ts=NOW)


def test_outbox_frames_bring_the_store_view_up_to_date():
    state = Restored(positions=[{"user": "u1", "option_symbol": SYM, "quantity": 4, "avg_price": 2.0,
                                 "realized_pnl": 0.0},
                                {"user": "u1", "option_symbol": PUT, "quantity": 1, "avg_price": 1.0,
                                 "realized_pnl": 0.0}],
                     entries={"u1": 1}, stops={("u1", SYM): 1.0})
    frames = [("order", _order("e1")), ("order", _order("e2")),
              ("order", _order("st1", "sell_to_close", "stop", 1.2)),
              ("order", _order("st1", "sell_to_close", "stop", 1.5)),  # moved up: the newest frame wins
              ("order", _order("old", ts=et_midnight_ns(NOW) - S)),  # yesterday's entry: not today's
              ("position", _pos(2)), ("position", _pos(0, sym=PUT)),  # scaled out; flat
              ("position", _pos(9, user="stranger")), ("order", _order("x", user="stranger"))]  # not ours
    entries = restore.newest_of_outbox(state, frames, ["u1"], NOW)
    assert entries == {"u1": {"e1", "e2"}}
    assert [(r["option_symbol"], r["quantity"]) for r in state.positions] == [(SYM, 2)]
    assert state.stops == {("u1", SYM): 1.5}
    assert restore.add_unstored_entries(state, entries, {"e1"}) == 1 and state.entries == {"u1": 2}


def test_store_reads_for_the_broker(tmp_path):
    url = f"sqlite:///{tmp_path / 'spx.sqlite3'}"
    assert broker_rows(url, ["u1"], 0).positions == [] and not has_table(url, "orders")
    assert not (tmp_path / "spx.sqlite3").exists()  # a first start creates nothing
    store = open_store(url)
    try:
        store.record_orders([_order("e1"), _order("st1", "sell_to_close", "stop", 1.2, ts=NOW + S),
                             _order("st2", "sell_to_close", "stop", 1.4, ts=NOW + 2 * S),
                             _order("e9", ts=NOW - 86_400 * S)], source="live")
        store.record_orders([_order("d1", user="u1", sym=PUT, side="sell_to_close", type_="stop", stop=0.5)],
                            source="demo")
        store.record_positions([_pos(2), _pos(3, user="u2")], source="live")
        store.record_snapshots([{"user": "u1", "ts": NOW, "total_cash": 9_000.0}], source="live")
    finally:
        store.close()
    rows = broker_rows(url, ["u1"], et_midnight_ns(NOW), "live")
    assert [(r["option_symbol"], r["quantity"]) for r in rows.positions] == [(SYM, 2)]
    assert rows.entries == {"u1": 1} and rows.cash == {"u1": 9_000.0}
    assert rows.stops == {("u1", SYM): 1.4}  # the newest stop order of today; the demo's is not ours
    assert restore.load(url, ["u1"], NOW, "live").stops == {("u1", SYM): 1.4}
    assert stored_order_ids(url, ["e1", "zz", "st2"]) == {"e1", "st2"} and has_table(url, "orders")
