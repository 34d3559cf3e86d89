"""A broker SIGKILLed when the recorder had not written its newest records (issue 8): the restarted
broker's ledger is the store's view brought up to date with its own outbox — the position after the
last fill it published, today's entries counted once. Real broker process (paper), real sockets,
real SQLite."""

from __future__ import annotations

import time

from services.broker.restore import et_midnight_ns
from spx_common.models import Position
from spx_common.store import open_store
from tests.broker.harness import SYM, Harness
from tests.conftest import eventually

S = 1_000_000_000
#: today's entries are counted since ET midnight of the wall clock at restart (services/broker/restore.py)
T0 = max(time.time_ns() - 120 * S, et_midnight_ns(time.time_ns()) + 1)


def test_restart_restores_the_ledger_from_the_store_brought_up_to_date_with_the_outbox(run_dir):
    h = Harness(run_dir)  # no recorder: nothing reaches the store unless the test writes it
    try:
        h.quote_live(1.95, 2.0, T0)
        eventually(lambda: h.trigger("vwap-1", T0 + S) or h.seen("fill.default"), 10, what="entry filled")
        h.quote(3.0, 3.1, T0 + 60 * S)
        eventually(lambda: h.advice("vwap-1", "scale_out", T0 + 61 * S, 0.5) or
                   len(h.seen("fill.default")) >= 2, 10, what="scale-out filled")
        eventually(lambda: h.seen("position.default")[-1].quantity == 2, 10, what="position after the scale-out")
        entry = h.seen("order.default")[0]
        assert entry.side == "buy_to_open"
        # the recorder had written the entry and the position after it, not the scale-out
        from spx_common import provenance

        prov = {"source": provenance.configured()[0]}  # as the recorder of this configuration stamps them
        store = open_store(f"sqlite:///{run_dir / 'spx.sqlite3'}")
        store.record_orders([o for o in h.seen("order.default") if o.order_id == entry.order_id][-1:], **prov)
        store.record_positions([Position(user="default", option_symbol=SYM, quantity=4, avg_price=2.0,
                                         realized_pnl=0.0, ts=T0 + S)], **prov)
        store.close()
        h.proc.kill()
    finally:
        h.close()

    h = Harness(run_dir)
    try:
        st = h.call("status")["broker"]
        assert st["engine"]["entries_today"] == {"default": 1}  # stored and in the outbox: once
        assert st["engine"]["trades"][0]["held"] == 2  # the outbox's newest position, not the store's 4
        assert st["ledger"]["default"]["pnl"]["realized"] == 200.0
        eventually(lambda: h.seen("position.default"), 10, what="restored position published")
        assert h.seen("position.default")[-1].quantity == 2
    finally:
        h.close()


def test_restart_with_nothing_stored_restores_from_the_outbox_alone(run_dir):
    h = Harness(run_dir)
    try:
        h.quote_live(1.95, 2.0, T0)
        eventually(lambda: h.trigger("vwap-1", T0 + S) or h.seen("fill.default"), 10, what="entry filled")
        eventually(lambda: h.seen("position.default") and h.seen("position.default")[-1].quantity == 4, 10,
                   what="position after the entry")
        eventually(lambda: [o for o in h.seen("order.default") if o.type == "stop" and o.status == "open"], 10,
                   what="protective stop after the entry")
        level = [o for o in h.seen("order.default") if o.type == "stop"][-1].stop
        h.proc.kill()
    finally:
        h.close()
    h = Harness(run_dir)
    try:
        st = h.call("status")["broker"]
        assert st["engine"]["entries_today"] == {"default": 1}
        assert st["engine"]["trades"][0]["held"] == 4
        # the restored position gets its protective stop again, at the level it rested at before (the outbox)
        eventually(lambda: [o for o in h.seen("order.default") if o.type == "stop" and o.status == "open"], 10,
                   what="protective stop re-rested")
        [stop] = {o.order_id: o for o in h.seen("order.default") if o.type == "stop"}.values()
        assert stop.quantity == 4 and stop.setup_id == f"adopted-{SYM}" and stop.stop == level
        h.quote(2.4, 2.5, T0 + 2 * S)
        res = h.call("flatten", {})  # managed like any other position: the stop is cancelled first
        assert res["cancels"] == [stop.order_id] and res["closing"][0]["held"] == 4
        eventually(lambda: h.seen("position.default")[-1].quantity == 0, 10, what="flattened")
    finally:
        h.close()
