"""l2_microstructure on a real aggregator process: off nulls the microstructure fields of bars closed
from then on (OHLCV unchanged); the open bar's accumulators are never dropped, so a bar that was
open while the switch went back on closes with microstructure over all of its trades."""

from __future__ import annotations

from spx_common.models import Quote, Trade
from tests.conftest import eventually
from tests.harness import service_process
from tests.rollout.helpers import reload_set, spx_flags_set

S = 1_000_000_000
T0 = 1_771_599_600 * S
MICRO = ("buy_volume", "sell_volume", "delta_volume", "bid_ask_imbalance", "quote_coverage_pct", "avg_spread_bps")


def _second(pub, k: int, n: int = 4, part: int = 0) -> None:
    """Quote then ``n`` trades at the ask within second ``k`` (``part`` picks a later slice of it)."""
    base = T0 + k * S + part * S // 2
    pub.publish("tick.SPY", "ticks", [Quote(sym="SPY", bid=600.0, ask=600.02, bid_size=300, ask_size=100, ts=base)],
                base)
    for i in range(n):
        ts = base + (i + 1) * 1_000_000
        pub.publish("tick.SPY", "ticks", [Trade(sym="SPY", price=600.02, size=10, ts=ts)], ts)


def test_l2_microstructure_off_and_on_at_runtime_keeps_open_bar_state(run_dir):
    env = {"SPX_AGGREGATOR_ALLOWED_LATENESS_MS": "0", "SPX_AGGREGATOR_INTERVALS": '["1s"]',
           "SPX_AGGREGATOR_WARMUP_FROM_JOURNAL": "false"}
    with service_process(run_dir, "aggregator", peers=("feed",), topics=["bar.1s."], env=env) as (pubs, sub, rpc):
        feed = pubs["feed"]
        pid = rpc.call("status")["pid"]
        closed: dict[int, object] = {}

        def bar(k: int):
            while (f := sub.recv(0.02)) is not None:
                if f.topic.startswith("bar."):
                    b = f.body()
                    if b.closed:
                        closed[(b.start_ns - T0) // S] = b
            return closed.get(k)

        _second(feed, 0)
        _second(feed, 1)  # closes bar 0
        b0 = eventually(lambda: bar(0), 5, what="bar 0")
        assert all(getattr(b0, f) is not None for f in MICRO) and b0.delta_volume == 40

        assert reload_set(run_dir, rpc, "l2_microstructure", False)["changed"] == {"l2_microstructure": False}
        _second(feed, 2)  # closes bar 1 (open when the switch went off)
        b1 = eventually(lambda: bar(1), 5, what="bar 1")
        assert all(getattr(b1, f) is None for f in MICRO)
        assert (b1.open, b1.close, b1.volume, b1.trades, b1.vwap) == (600.02, 600.02, 40, 4, 600.02)

        # bar 2: half its trades arrive while off, then the switch goes back on (operator path)
        out = spx_flags_set(run_dir, "l2_microstructure", "true")
        assert "aggregator" in out
        _second(feed, 2, part=1)
        _second(feed, 3)  # closes bar 2
        b2 = eventually(lambda: bar(2), 5, what="bar 2")
        assert b2.trades == 8 and b2.buy_volume == 80 and b2.delta_volume == 80 and b2.quote_coverage_pct == 100.0
        assert b2.bid_ask_imbalance is not None
        # nothing was lost across the switches: the query API has every bar
        starts = [b["start_ns"] for b in rpc.call("bars_since", {"sym": "SPY", "interval": "1s"})["bars"]]
        assert starts == [T0, T0 + S, T0 + 2 * S]
        assert rpc.call("status")["pid"] == pid
