"""The feed's and the aggregator's watermarks (docs/protocol.md, "Event-time alignment"), without sockets:
what each promises after a batch, per vendor connection, when a connection goes quiet, and the aggregator
closing every bar that ends at or before the feed's watermark."""

from __future__ import annotations

import time

from services.aggregator.config import AggregatorConfig
from services.aggregator.service import Aggregator
from services.feed.config import FeedConfig
from services.feed.service import FeedService
from spx_common.config import BusConfig, RuntimeConfig
from spx_common.models import IndexValue, Trade, Watermark

S = 1_000_000_000
T0 = 1_795_185_000 * S


def _capture(svc) -> list[tuple[str, object, int]]:
    out: list = []
    svc.publish = lambda topic, type_name, body, event_ns: out.append((topic, body, event_ns)) or 1
    return out


def _wms(frames) -> list[int]:
    return [body.ns for topic, body, _ in frames if topic.startswith("wm.")]


def test_feed_watermark_is_the_oldest_connection_and_a_quiet_one_is_left_out(run_dir):
    feed = FeedService(RuntimeConfig(run_dir=run_dir), BusConfig(),
                       config=FeedConfig(source="synthetic", watermark_idle_ms=50))
    out = _capture(feed)
    feed.ingest([Trade(sym="SPY", price=500, size=1, ts=T0 + 2 * S, seq=1)], stream="stocks")
    assert _wms(out) == [T0 + 2 * S]
    feed.ingest([IndexValue(sym="I:SPX", value=5000, ts=T0 + S)], stream="indices")
    # the indices connection is behind: the watermark may not pass its newest event (it never goes back)
    assert _wms(out) == [T0 + 2 * S] and feed.watermark_ns() == T0 + S
    feed.ingest([Trade(sym="SPY", price=500, size=1, ts=T0 + 3 * S, seq=2)], stream="stocks")
    assert _wms(out)[-1] == T0 + 2 * S  # still held back by indices at T0 + 1 s: nothing published below
    feed.ingest([IndexValue(sym="I:SPX", value=5000, ts=T0 + int(2.5 * S))], stream="indices")
    assert _wms(out)[-1] == T0 + int(2.5 * S)
    time.sleep(0.1)  # indices quiet for longer than watermark_idle_ms: it holds nobody back
    feed.ingest([Trade(sym="SPY", price=500, size=1, ts=T0 + 4 * S, seq=3)], stream="stocks")
    assert _wms(out)[-1] == T0 + 4 * S
    assert all(isinstance(body, Watermark) for topic, body, _ in out if topic.startswith("wm."))
    feed.ctx.destroy(linger=0)


def test_aggregator_closes_bars_at_the_feeds_watermark_and_passes_it_on(run_dir):
    agg = Aggregator(RuntimeConfig(run_dir=run_dir), BusConfig(),
                     config=AggregatorConfig(intervals=["1s"], allowed_lateness_ms=250, warmup_from_journal=False))
    out = _capture(agg)
    agg.agg.on_events([Trade(sym="SPY", price=500, size=1, ts=T0 + 100), Trade(sym="QQQ", price=400, size=1,
                                                                              ts=T0 + S + 100)])
    agg.agg.drain()
    # SPY's bar [T0, T0+1s) is closed by nothing yet: no later SPY event and QQQ's is within the lateness
    agg.on_watermark(None, Watermark(ns=T0 + S + 200))
    bars = [(t, b.start_ns) for t, b, _ in out if t.startswith("bar.")]
    assert bars == [("bar.1s.SPY", T0)]  # ends at T0 + 1 s <= the watermark: complete, published now
    assert _wms(out) == [T0 + S + 200]
    assert agg.agg.watermark == T0 + S + 200  # the core's clock follows the promise, never beyond it
    agg.on_watermark(None, Watermark(ns=T0 + 2 * S))
    assert [(t, b.start_ns) for t, b, _ in out if t.startswith("bar.")][-1] == ("bar.1s.QQQ", T0 + S)
    assert _wms(out) == [T0 + S + 200, T0 + 2 * S]
    agg.ctx.destroy(linger=0)
