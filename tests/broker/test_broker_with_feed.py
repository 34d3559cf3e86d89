"""The broker with the real feed process (synthetic session): paper entries and exits fill against the
option quotes the feed publishes, and a falling bid is chased by the exit limit."""

from __future__ import annotations

import collections

from spx_common.bus import Subscriber
from spx_testing import ServiceProcess
from tests.broker.harness import Harness
from tests.conftest import eventually


def test_paper_broker_trades_on_real_feed_quotes(run_dir):
    # entries are sized per user from the live quote's spread (issue 18): cap the order at the 2 lots expected
    h = Harness(run_dir, {"SPX_BROKER_MAX_CONTRACTS_PER_ORDER": "2", "SPX_BROKER_MAX_PREMIUM_PER_TRADE": "5000"},
                stand_ins=("detector", "selector"))
    env = {"SPX_FEED_REPLAY_SPEED": "50", "SPX_FEED_SOURCE": "synthetic"}
    feed = ServiceProcess.service("feed", run_dir=run_dir, env=env).start()
    watch = Subscriber(h.ctx, [h.bus.pub_endpoint("feed", h.rt)], ["tick.O:"])
    try:
        with feed:
            seen: collections.Counter = collections.Counter()
            last: dict[str, object] = {}

            def watch_quotes():
                for _ in range(2000):  # bounded: the stream never pauses
                    f = watch.recv(0.05)
                    if f is None:
                        break
                    for q in f.body():
                        if 0.5 < getattr(q, "bid", 0) and getattr(q, "ask", 99) < 10:  # 2 lots fit max_open_risk
                            seen[q.sym] += 1
                            last[q.sym] = q
                return sum(seen.values()) > 40

            feed.wait_ready(watch_quotes, 20, what="feed option quotes")
            sym = seen.most_common(1)[0][0]
            q = last[sym]
            ts = q.ts
            h.collect()
            eventually(lambda: h.trigger("feed-1", ts, qty=2, bid=q.bid, ask=q.ask + 0.5, sym=sym[2:]) or
                       (watch_quotes() and False) or sum(f.quantity for f in h.seen("fill.default")) >= 2,
                       20, what="entry filled on feed quotes")
            entry = [f for f in h.seen("fill.default") if f.side == "buy_to_open"]
            assert all(f.price <= round(q.ask + 0.5, 2) for f in entry)
            h.advice("feed-1", "exit_all", h.call("status")["broker"]["event_ns"])
            eventually(lambda: h.seen("position.default")[-1].quantity == 0, 20, what="exit filled on feed quotes")
            sells = [f for f in h.seen("fill.default") if f.side == "sell_to_close"]
            assert sum(f.quantity for f in sells) == 2
            ledger = h.call("ledger", {"user": "default"})["default"]
            assert ledger["positions"] == [] and ledger["working_orders"] == []
            assert h.seen("block.") == []
    finally:
        watch.close()
        h.close()
