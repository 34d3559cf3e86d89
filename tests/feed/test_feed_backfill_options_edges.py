"""Option quote backfill at its edges, on the real feed against the fake Massive server:

* the gap's *end* overlaps the resumed stream (the window ends when the connection is back, and
  quotes streamed right after the reconnect are also in the vendor's history): each quote is
  published once, the overlap at both edges is counted and summarised;
* a raw-queue overflow on the options stream (not a reconnect) backfills the dropped option quotes
  from the exact end of what was published.
"""

from __future__ import annotations

import datetime as dt
import json
import time
from zoneinfo import ZoneInfo


from spx_common.models import IndexValue, Quote
from tests.conftest import eventually
from tests.feed.helpers import live_feed

from services.feed.parsing import to_wire
from services.feed.synthetic import option_symbol

MS = 1_000_000


def live(run_dir, fake, **kw):
    opts = dict(strikes_each_side=2, backfill_option_contracts=1, backfill_option_quote_contracts=1)
    return live_feed(run_dir, fake, ["tick.", "status.feed", "status.backfill"], **{**opts, **kw})


def metric(feed, name: str, **labels) -> float:
    return feed.service.metrics.counter(name, "", list(labels)).value(**labels)


def quote(sym: str, ts: int, seq: int) -> Quote:
    return Quote(sym=sym, bid=round(10 + seq / 100, 2), ask=round(10.1 + seq / 100, 2), bid_size=10, ask_size=12,
                 ts=ts, seq=seq, bid_exch=302, ask_exch=303)


def atm_call(fake) -> tuple[int, str]:
    """Centre the options on 5900; return an ms-aligned event time two seconds ago and the ATM call."""
    fake.wait_subscribed("indices", "V.I:SPX")
    t0 = (time.time_ns() - 2 * 10**9) // MS * MS
    fake.push("indices", [IndexValue(sym="I:SPX", value=5900.0, ts=t0)])
    day = dt.datetime.fromtimestamp(t0 // 10**9, ZoneInfo("America/New_York")).date()
    sym = option_symbol(day, True, 5900.0)
    fake.wait_subscribed("options", f"Q.{sym}")
    return t0, sym


def backfill_docs(feed) -> list[dict]:
    return [d for d in feed.bodies("status.backfill") if d["market"] == "options"]


def test_quotes_streamed_after_the_reconnect_and_in_the_history_are_published_once(run_dir, fake):
    with live(run_dir, fake) as feed:
        t0, s = atm_call(fake)
        fake.push("options", [quote(s, t0 + i * MS, i) for i in (1, 2, 3)])
        eventually(lambda: len(feed.events(f"tick.{s}")) == 3, 5, what="streamed quotes")
        fake.quotes[s] = [quote(s, t0 + i * MS, i) for i in range(1, 11)]  # the vendor's history: 1..10
        fake.rest_stall_s = 1.0  # the backfill's answers arrive after the resumed stream's first quotes
        connects = fake.connects["options"]
        fake.drop("options")
        eventually(lambda: fake.connects["options"] > connects and fake.connected("options") == 1
                   and f"Q.{s}" in fake.subscriptions["options"], 10, what="options resubscribed")
        # in flight when the connection came back: 7..10 are inside the gap's window too, 11..12 are not
        fake.push("options", [quote(s, t0 + i * MS, i) for i in range(7, 13)])

        eventually(lambda: backfill_docs(feed), 15, what="status.backfill summary")
        got = feed.events(f"tick.{s}")
        assert sorted(e.seq for e in got) == list(range(1, 13))  # every quote once: no hole, no duplicate
        assert [e.seq for e in got if e.backfilled] == [4, 5, 6]  # only what the stream never delivered
        doc = backfill_docs(feed)[-1]
        # fetched 3..10 from the last published event (inclusive) to the reconnect: 3 and 7..10 overlap
        assert doc["fetched"] == {"option_quote": 8, "option_trade": 0}
        assert doc["published"] == 3 and doc["overlap"] == 5
        assert doc["gap_start_ns"] == t0 + 3 * MS and not doc["truncated"] and not doc["failed"]
        assert metric(feed, "feed_backfill_overlap_total", market="options") == 5
        eventually(lambda: metric(feed, "tick_drop_count", reason="duplicate") >= 5, 5, what="duplicates counted")


def test_an_options_queue_overflow_backfills_the_dropped_quotes(run_dir, fake):
    with live(run_dir, fake, raw_queue_max=10) as feed:
        t0, s = atm_call(fake)
        quotes = [quote(s, t0 + i * MS, i) for i in range(1, 301)]
        fake.quotes[s] = quotes

        async def burst():  # 300 frames in one go: far more than the 10-frame queue
            for c in fake._live("options"):
                for q in quotes:
                    await c.ws.send(json.dumps([to_wire(q)]))

        fake._call(burst)
        eventually(lambda: len(feed.events(f"tick.{s}")) == 300, 15, what="every quote, via stream or backfill")
        got = feed.events(f"tick.{s}")
        assert sorted(e.seq for e in got) == list(range(1, 301))
        back = [e for e in got if e.backfilled]
        assert back and all(e.source == "backfill" for e in back)
        assert [e.ts for e in back] == sorted(e.ts for e in back)
        assert metric(feed, "tick_drop_count", reason="queue_overflow") >= 1
        # the queue may overflow more than once in the burst: one summary per caught-up gap
        eventually(lambda: sum(d["published"] for d in backfill_docs(feed)) == len(back), 5,
                   what="status.backfill summaries of every gap")
        docs = backfill_docs(feed)
        assert sum(d["fetched"]["option_quote"] for d in docs) >= len(back)
        assert not any(d["truncated"] or d["failed"] for d in docs)
        assert metric(feed, "feed_backfill_fetched_total", kind="option_quote") >= len(back)


def test_stacked_gaps_publish_in_event_time_order_and_at_most_one_waits(run_dir, fake):
    # gap 1's quote fetch is held up (two 429s wait >= 2 s) while two more overflows open gap 2 and
    # then gap 3: gap 3 widens the waiting gap 2 instead of queueing, and nothing newer is published
    # before gap 1's older quotes
    with live(run_dir, fake, raw_queue_max=10) as feed:
        t0, s = atm_call(fake)
        quotes = [quote(s, t0 + i * MS, i) for i in range(1, 601)]
        fake.quotes[s] = quotes

        def burst(part):
            async def go():
                for c in fake._live("options"):
                    for q in part:
                        await c.ws.send(json.dumps([to_wire(q)]))
            fake._call(go)

        def quote_requests() -> int:
            return sum(1 for p, _, _ in list(fake.requests) if p == f"/v3/quotes/{s}")

        def published(seq: int) -> bool:
            return any(e.seq == seq for e in feed.events(f"tick.{s}"))

        fake.fail_next(f"/v3/quotes/{s}", 429, 429)
        burst(quotes[:300])
        eventually(lambda: quote_requests() >= 1, 5, what="gap 1 asking for quotes (answered 429)")
        burst(quotes[300:450])
        eventually(lambda: published(450), 5, what="the stream caught up after the second burst")
        burst(quotes[450:])
        eventually(lambda: len(feed.events(f"tick.{s}")) == 600, 15, what="every quote, via stream or backfill")
        got = feed.events(f"tick.{s}")
        assert sorted(e.seq for e in got) == list(range(1, 601))
        back = [e for e in got if e.backfilled]
        assert any(e.seq <= 300 for e in back) and any(e.seq > 300 for e in back)
        assert [e.ts for e in back] == sorted(e.ts for e in back)
        eventually(lambda: len(backfill_docs(feed)) >= 2, 10, what="a summary per gap")
        assert metric(feed, "feed_backfill_gaps_merged_total", market="options") >= 1
        assert len(backfill_docs(feed)) == 2  # the running gap and the one that waited (widened)
        assert quote_requests() == 2 + 1 + 1  # gap 1: two 429s and the answer; gap 2: one request
