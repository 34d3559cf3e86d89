"""The options reconnect backfill overlap through real processes (issue 21, item 1): a live feed process
and an aggregator process against the fake Massive server. The stream delivers some of a contract's
prints, the connection drops, and the vendor's REST history of the gap answers every print without a
``sequence_number`` (as the options trades endpoint does), two of them identical in one ms. The
volume in the aggregator's 1 s bar equals the vendor's distinct prints: the overlap is not counted twice
and the identical pair is not counted once."""

from __future__ import annotations

import datetime as dt
import os
import time
from zoneinfo import ZoneInfo

import zmq

from spx_common.bus import call_once
from spx_common.config import BusConfig, RuntimeConfig
from spx_common.models import IndexValue, Trade
from spx_testing import Processes
from tests.conftest import eventually
from tests.feed.helpers import LIVE_TEST_CONFIG

from services.feed.synthetic import option_symbol

MS = 1_000_000
S = 1_000_000_000


def _env(run_dir, fake) -> dict[str, str]:
    cfg = {f"SPX_FEED_{k.upper()}": str(v) for k, v in LIVE_TEST_CONFIG.items()}
    return {**os.environ, **cfg, "SPX_RUNTIME_RUN_DIR": str(run_dir), "MASSIVE_API_KEY": "k",
            "MASSIVE_WS_URL": fake.ws_url, "MASSIVE_REST_URL": fake.rest_url, "SPX_FEED_STRIKES_EACH_SIDE": "1",
            "SPX_FEED_BACKFILL_OPTION_QUOTE_CONTRACTS": "0"}


def test_options_reconnect_overlap_counts_each_vendor_print_once_in_the_bars(run_dir, fake):
    runtime, bus = RuntimeConfig(run_dir=run_dir), BusConfig()
    env = _env(run_dir, fake)
    ctx = zmq.Context()
    ps = Processes()

    def call(service: str, method: str, params: dict | None = None):
        return call_once(ctx, bus.rep_endpoint(service, runtime), method, params, timeout_s=2.0)

    try:
        with ps:
            agg = ps.service("aggregator", env=env)
            agg.wait_ready(lambda: call("aggregator", "ping"), 30, "aggregator answering", 0.2)
            feed = ps.service("feed", env=env)
            feed.wait_ready(lambda: fake.subscribed("indices", "V.I:SPX"), 30, "the feed subscribed V.I:SPX")
            agg.wait_ready(lambda: ((call("aggregator", "status") or {}).get("peers") or {}).get("feed"), 15,
                           "the aggregator hears the feed", 0.1)
            # event times inside one second, some seconds ago: the gap's window reaches back to them
            t0 = (time.time_ns() - 3 * S) // S * S + 100 * MS
            day = dt.datetime.fromtimestamp(t0 // S, ZoneInfo("America/New_York")).date()
            c = option_symbol(day, True, 5900.0)  # O:SPXW...

            def centred():
                fake.push("indices", [IndexValue(sym="I:SPX", value=5900.0, ts=t0)])
                return f"T.{c}" in fake.subscriptions.get("options", ())

            eventually(centred, 15, 0.3, what=f"the feed subscribed T.{c}")
            # the vendor's prints of the contract in that second (sizes in contracts); 3 and 4 are identical
            prints = [Trade(sym=c, price=5.5, size=1, ts=t0 + 10 * MS + 250_000, seq=501, exch=302),
                      Trade(sym=c, price=5.6, size=2, ts=t0 + 20 * MS + 1_000, seq=502, exch=303, cond=[209]),
                      Trade(sym=c, price=5.7, size=3, ts=t0 + 30 * MS + 40_000, seq=503, exch=302),
                      Trade(sym=c, price=5.7, size=3, ts=t0 + 30 * MS + 90_000, seq=504, exch=302),
                      Trade(sym=c, price=5.8, size=5, ts=t0 + 40 * MS + 7, seq=505, exch=302)]
            fake.push("options", prints[:3])  # the stream got the first three (one of the identical pair) ...

            def cached() -> list:
                r = call("aggregator", "ticks_since", {"sym": c, "since_ns": 0, "limit": 1000}) or {}
                return [e for e in r.get("events", []) if (e.get("event") or {}).get("size") is not None]

            eventually(lambda: len(cached()) == 3, 10, what="the streamed prints in the aggregator")
            fake.trades[c] = prints  # ... the REST history has them all, without sequence numbers
            connects = fake.connects["options"]
            fake.drop("options")
            eventually(lambda: fake.connects["options"] > connects, 10, what="options reconnected")
            eventually(lambda: ((call("feed", "status") or {}).get("live") or {}).get("backfill", {}).get("last", {})
                       .get("options"), 15, 0.2, what="the options gap backfilled")
            summary = call("feed", "status")["live"]["backfill"]["last"]["options"]
            # the window starts at the last streamed print (inclusive): prints 3, 4, 5 come back, 3 was streamed
            assert summary["gap_start_ns"] == prints[2].ts // MS * MS, summary
            assert (summary["fetched"].get("option_trade"), summary["overlap"], summary["published"]) == (3, 1, 2), summary
            # a later event closes the second's bar
            fake.push("indices", [IndexValue(sym="I:SPX", value=5900.0, ts=t0 + 3 * S)])

            def bars() -> list:
                r = call("aggregator", "bars_since", {"sym": c, "interval": "1s", "limit": 100}) or {}
                return r.get("bars") or []

            [bar] = eventually(bars, 10, 0.1, what="the contract's 1 s bar closed")
            assert bar["start_ns"] == t0 // S * S
            assert bar["volume"] == sum(p.size for p in prints) == 14  # each vendor print once
            assert len(cached()) == len(prints)
    finally:
        ctx.destroy(linger=0)
