"""Live ingest against the fake Massive server: real WebSocket, real REST, real ZeroMQ frames out."""

from __future__ import annotations

import json
import random
import time

import pytest

from spx_common.journal import iter_events
from spx_common.models import IndexValue, Quote, Trade
from tests.conftest import eventually

from services.feed.synthetic import SyntheticSession
from spx_common.retry import Backoff, RateLimiter
from services.feed.parsing import to_wire
from tests.feed.helpers import live_feed


def live(run_dir, fake, key="k", **kw):
    return live_feed(run_dir, fake, key=key, **kw)


def now_ns() -> int:
    return time.time_ns()


def _metric(feed, name: str, **labels) -> float:
    return feed.service.metrics.counter(name, "", list(labels)).value(**labels)


def test_handshake_subscribe_every_event_type_and_bad_input(run_dir, fake):
    with live(run_dir, fake) as feed:
        fake.wait_subscribed("stocks", "T.SPY")
        fake.wait_subscribed("stocks", "Q.SPY")
        fake.wait_subscribed("indices", "V.I:SPX")
        t = now_ns()
        fake.push("indices", [IndexValue(sym="I:SPX", value=5902.4, ts=t)])
        # the ATM strike (5900) picks the option contracts: +-20 strikes, calls and puts, T and Q
        eventually(lambda: len(fake.subscriptions["options"]) == 41 * 2 * 2, 5, what="option subscriptions")
        assert any("C05900000" in s for s in fake.subscriptions["options"])
        trade = Trade(sym="SPY", price=590.1, size=100, ts=t, seq=11, exch=4, cond=[12])
        quote = Quote(sym="SPY", bid=590.09, ask=590.1, bid_size=300, ask_size=500, ts=t + 1_000_000, seq=12)
        fake.push("stocks", [trade, quote, trade,  # a duplicate (same seq)
                             {"ev": "AM", "sym": "SPY", "v": 1, "o": 1, "c": 1, "h": 1, "l": 1, "s": 1, "e": 2},
                             {"ev": "T", "sym": "SPY", "p": "not a price", "t": t // 10**6},  # malformed
                             {"ev": "T", "sym": "SPY", "p": 590.2, "t": t},  # ns where ms belong: refused
                             {"ev": "T", "sym": "SPY", "p": 590.2, "s": 5, "t": t // 10**6 - 10_000,
                              "q": 13}])  # 10 s older than the newest SPY event: stale
        fake.push_raw("stocks", "this is not json")
        fake.push("stocks", [Trade(sym="SPY", price=590.3, size=1, ts=t + 2_000_000, seq=14)])
        eventually(lambda: len(feed.events("tick.SPY")) == 3, 5, what="SPY events")
        got = feed.events("tick.SPY")
        assert [(type(e).__name__, e.seq) for e in got] == [("Trade", 11), ("Quote", 12), ("Trade", 14)]
        assert got[0].ts == t // 1_000_000 * 1_000_000 and got[0].source == "tick"  # ms on the wire -> ns
        assert got[1].bid_size == 300  # shares, unchanged after 2025-11-03
        assert feed.events("tick.I:SPX")[0].value == 5902.4
        eventually(lambda: _metric(feed, "feed_parse_errors_total", reason="bad_json") == 1, 3)
        assert _metric(feed, "tick_drop_count", reason="duplicate") == 1
        assert _metric(feed, "tick_drop_count", reason="stale") == 1
        assert _metric(feed, "feed_parse_errors_total", reason="bad_T") == 2
        assert _metric(feed, "feed_unknown_events_total", ev="AM") == 1
        eventually(lambda: any(s.mode == "tick" and s.connected for s in feed.bodies("status.feed")), 3)
        # the ATM moves 3 strikes: the option set is re-centred (unsubscribe far, subscribe new)
        fake.push("indices", [IndexValue(sym="I:SPX", value=5917.0, ts=t + 10**9)])
        eventually(lambda: any("C06015000" in s for s in fake.subscriptions["options"]), 5, what="re-centred")
        assert len(fake.subscriptions["options"]) == 164
        opts = feed.service.live.streams["options"]
        eventually(lambda: opts.acked == opts.topics == fake.subscriptions["options"], 3,
                   what="every subscription confirmed by the vendor's acks")
        assert feed.service.live.streams["stocks"].reconnects == 0


def test_auth_failure_stops_without_retry_loop(run_dir, fake):
    with live(run_dir, fake, key="wrong") as feed:
        eventually(lambda: feed.service.live is not None and feed.service.live.fatal, 5, what="auth failure seen")
        eventually(lambda: any(s.mode == "down" and "auth_failed" in s.detail for s in feed.bodies("status.feed")), 5)
        time.sleep(0.8)  # several backoff periods: there must be no further attempt
        assert all(n == 1 for n in fake.connects.values()), dict(fake.connects)
        assert "MASSIVE_API_KEY" in feed.service.live.fatal


def test_drop_mid_stream_reconnects_resubscribes_and_backfills_the_gap(run_dir, fake):
    with live(run_dir, fake) as feed:
        fake.wait_subscribed("stocks", "Q.SPY")
        t = now_ns() - 2 * 10**9
        sent = [Trade(sym="SPY", price=590 + i / 100, size=100, ts=t + i * 10**7, seq=i) for i in range(1, 6)]
        fake.push("stocks", sent)
        eventually(lambda: len(feed.events("tick.SPY")) == 5, 5)
        # while we are disconnected the vendor keeps trading; REST history has it (and what we saw)
        fake.trades["SPY"] = sent + [Trade(sym="SPY", price=591 + i / 100, size=100, ts=t + i * 10**7, seq=i)
                                     for i in range(6, 11)]
        fake.drop("stocks")
        eventually(lambda: fake.connects["stocks"] == 2, 5, what="reconnected")
        fake.wait_subscribed("stocks", "T.SPY")  # re-authenticated and re-subscribed
        eventually(lambda: len(feed.events("tick.SPY")) == 10, 5, what="gap backfilled")
        got = feed.events("tick.SPY")
        assert [e.seq for e in got] == list(range(1, 11))  # nothing lost, nothing twice
        assert all(e.backfilled and e.source == "backfill" for e in got[5:])
        assert not any(e.backfilled for e in got[:5])
        fake.push("stocks", [Trade(sym="SPY", price=592, size=1, ts=now_ns(), seq=11)])
        eventually(lambda: len(feed.events("tick.SPY")) == 11, 5)
        assert _metric(feed, "feed_reconnects_total", market="stocks") == 1
        eventually(lambda: any(s.reconnects >= 1 for s in feed.bodies("status.feed")), 3)
        assert len(fake.auth_attempts["stocks"]) == 2
        # the journal has no hole either
        eventually(lambda: [e.seq for e in iter_events(run_dir / "journal", symbols=["SPY"])] == list(range(1, 12)), 3,
                   what="journal holds every SPY event once")


def test_garbage_from_the_vendor_never_crashes_the_feed(run_dir, fake):
    nasty = ["", "[]", "{}", "null", "[null]", "[[]]", "[1,2,3]", '["T"]', '[{"ev": null}]', '[{"ev": 5}]',
             '[{"ev":"T"}]', '[{"ev":"Q","sym":"SPY","bp":-1,"ap":1,"t":1}]', '[{"ev":"V","T":"","val":1,"t":1}]',
             '[{"ev":"T","sym":"SPY","p":1e400,"t":1}]', '[{"ev":"T","sym":"SPY","p":1,"t":-5}]',
             '[{"ev":"status"}]', '[{"ev":"status","status":5}]', "[" * 5000, '[{"ev":"T","sym":"' + "X" * 500 + '"}]',
             r'[{"ev":"\ud800"}]', "\x00\xff", '[{"ev":"T","sym":"SPY","p":1,"t":1,"c":"notalist"}]']
    with live(run_dir, fake) as feed:
        fake.wait_subscribed("stocks", "T.SPY")
        for text in nasty:
            fake.push_raw("stocks", text)
        good = Trade(sym="SPY", price=590, size=1, ts=now_ns(), seq=1)
        fake.push("stocks", [{"ev": "T", "sym": "SPY", "p": "x", "t": 1}, good, {"ev": "XYZ"}])
        eventually(lambda: feed.events("tick.SPY"), 5, what="the good event after the garbage")
        assert [e.seq for e in feed.events("tick.SPY")] == [1]
        stocks = feed.service.live.streams["stocks"]
        assert stocks.connected and stocks.reconnects == 0 and feed.service.state == "running"
        errors = feed.service.live.parser.errors
        assert sum(errors.values()) >= len(nasty) - 3, errors  # "[]" and "[[]]"-like arrays are not errors


def test_stalled_server_is_detected_by_ping_and_left(run_dir, fake):
    with live(run_dir, fake, ping_interval_s=0.2, ping_timeout_s=0.3) as feed:
        fake.wait_subscribed("stocks", "T.SPY")
        fake.stall("stocks", 3.0)
        eventually(lambda: fake.connects["stocks"] >= 2, 6, what="reconnect after a stall")
        fake.wait_subscribed("stocks", "T.SPY")
        # the stalled connection may still count as subscribed until the fake sees it close: push again until
        # the new connection takes it
        trade = Trade(sym="SPY", price=590, size=1, ts=now_ns(), seq=1)
        eventually(lambda: fake.push("stocks", [trade]) and feed.events("tick.SPY"), 15, 0.5,
                   what="the trade pushed after the reconnect published")
        stocks = feed.service.live.streams["stocks"]
        assert stocks.reconnects >= 1 and "ping" in stocks.last_error.lower(), stocks.last_error


def test_vendor_status_messages_are_handled(run_dir, fake):
    with live(run_dir, fake) as feed:
        fake.wait_subscribed("stocks", "T.SPY")
        fake.status("stocks", "slow_consumer", "You are falling behind", close=True, code=1008)
        eventually(lambda: fake.connects["stocks"] == 2, 5)
        fake.wait_subscribed("stocks", "T.SPY")
        fake.max_connections_on_auth = True
        fake.status("stocks", "force_disconnect", "Forced disconnect", close=True)
        eventually(lambda: _metric(feed, "feed_vendor_status_total", status="max_connections") >= 1, 5)
        stream = feed.service.live.streams["stocks"]
        eventually(lambda: stream.evictions >= 1 and stream.last_status.startswith("max_connections"), 3)
        fake.max_connections_on_auth = False
        eventually(lambda: stream.connected, 5, what="connected again after eviction")
        for st in ("slow_consumer", "force_disconnect", "max_connections", "auth_success"):
            assert _metric(feed, "feed_vendor_status_total", status=st) >= 1, st
        assert stream.backoff.attempt >= 1  # not reset by auth_success


def test_silent_stream_switches_to_poll_and_back(run_dir, fake):
    t = now_ns()
    fake.trades["SPY"] = [Trade(sym="SPY", price=590.5, size=100, ts=t, seq=77)]
    fake.quotes["SPY"] = [Quote(sym="SPY", bid=590.49, ask=590.51, bid_size=100, ask_size=200, ts=t, seq=78)]
    fake.index_values["I:SPX"] = IndexValue(sym="I:SPX", value=5905.0, ts=t)
    with live(run_dir, fake, poll_after_s=0.6, poll_interval_s=0.2) as feed:
        fake.wait_subscribed("stocks", "T.SPY")
        eventually(lambda: any(s.mode == "poll" for s in feed.bodies("status.feed")), 10, what="poll mode")
        eventually(lambda: feed.events("tick.SPY"), 10, what="polled events")
        polled = feed.events("tick.")
        assert {e.source for e in polled} == {"poll"}
        assert {(type(e).__name__, e.sym) for e in polled} == {("Trade", "SPY"), ("Quote", "SPY"),
                                                              ("IndexValue", "I:SPX")}
        time.sleep(0.5)  # unchanged last trade/NBBO is not published again
        assert len(feed.events("tick.SPY")) == 2
        fake.push("stocks", [Trade(sym="SPY", price=591, size=1, ts=now_ns(), seq=100)])
        def modes_after_poll():
            modes = [s.mode for s in feed.bodies("status.feed")]
            return "tick" in modes[modes.index("poll"):]

        eventually(modes_after_poll, 10, what="a tick status after the poll status")
        # the status frame goes out just before the stream event's frame: wait for that frame too
        eventually(lambda: feed.events("tick.SPY")[-1].source == "tick", 5, what="the stream event after the polls")


def test_backoff_full_jitter_capped_and_connect_limiter():
    b = Backoff(0.5, 30.0, random.Random(1))
    caps = []
    for _ in range(10):
        caps.append(b.cap())
        assert 0 <= b.next_delay() <= caps[-1]
    assert caps[:4] == [0.5, 1.0, 2.0, 4.0] and max(caps) == 30.0
    lim = RateLimiter(3, 60.0)  # the websocket's connects per minute
    for t in (0.0, 1.0, 2.0):
        assert lim.wait_s(t) == 0
        lim.record(t)
    assert lim.wait_s(3.0) == pytest.approx(57.0)
    assert lim.wait_s(60.5) == 0


def test_live_chain_snapshot_is_published_like_the_synthetic_one(run_dir, fake):
    import datetime as dt
    from zoneinfo import ZoneInfo

    from services.feed.synthetic import option_symbol
    from spx_testing.fakes.massive import option_snapshot_row

    today = dt.datetime.now(ZoneInfo("America/New_York")).date()
    rows = []
    for k in (5850.0, 5900.0, 5950.0, 6500.0):
        for call in (True, False):
            rows.append(option_snapshot_row(option_symbol(today, call, k), k, call, today.isoformat(), 10.0, 10.4,
                                            5901.0, iv=None if k == 5950 else 0.15))
    rows.append(option_snapshot_row("O:SPX" + option_symbol(today, True, 5900.0)[6:], 5900.0, True,
                                    today.isoformat(), 10, 11, 5901.0))  # AM-settled SPX monthly: not SPXW
    fake.options_snapshot["I:SPX"] = rows
    with live(run_dir, fake, chain_every_s=0.3) as feed:
        fake.wait_subscribed("indices", "V.I:SPX")
        fake.push("indices", [IndexValue(sym="I:SPX", value=5901.0, ts=now_ns())])
        doc = eventually(lambda: feed.bodies("chain.SPXW"), 5, what="chain document")[0]
    strikes = sorted({c["strike"] for c in doc["contracts"]})
    assert strikes == [5850.0, 5900.0, 5950.0]  # within +-20 strikes of 5900; 6500 filtered by the request
    assert doc["underlying"] == 5901.0 and doc["root"] == "SPXW"
    c = next(c for c in doc["contracts"] if c["strike"] == 5900.0 and c["type"] == "call")
    assert set(c) == {"symbol", "strike", "type", "expiration", "bid", "ask", "mid", "open_interest", "volume", "iv",
                      "delta", "gamma"}
    assert set(c) == set(SyntheticSession(seed=1).chain(SyntheticSession(seed=1).open_ns)[0])  # same shape
    assert c["mid"] == 10.2 and c["iv"] == 0.15 and c["symbol"].startswith("O:SPXW")
    assert next(c for c in doc["contracts"] if c["strike"] == 5950.0)["iv"] is None


def test_flapping_server_cannot_cause_a_reconnect_storm(run_dir, fake):
    fake.drop_after_auth = True
    with live(run_dir, fake, backoff_initial_s=0.01, backoff_max_s=0.02, max_connects_per_minute=3) as feed:
        throttled = lambda: _metric(feed, "feed_connect_throttled_total", market="stocks")  # noqa: E731
        eventually(lambda: throttled() >= 1, 5, what="connect attempts throttled")
        time.sleep(0.5)
        assert fake.connects["stocks"] == 3  # per rolling minute, despite the 10 ms backoff
        assert len(fake.auth_attempts["stocks"]) == 3


def test_option_topics_respect_the_vendor_contract_limit_and_market_hours():
    import datetime as dt

    from services.feed.live import in_market_hours, option_topics

    d = dt.date(2026, 11, 20)
    t = option_topics("SPXW", d, 5900.0, 5.0, 20, 1000, True)
    assert len(t) == 41 * 2 * 2 and "Q.O:SPXW261120P05800000" in t and "T.O:SPXW261120C06000000" in t
    small = option_topics("SPXW", d, 5900.0, 5.0, 300, 10, False)
    assert len(small) == 10 and all(x.startswith("T.") for x in small)
    assert "T.O:SPXW261120C05900000" in small and "T.O:SPXW261120P05890000" in small  # nearest strikes first
    ny_0930 = 1_795_185_000 * 10**9  # 2026-11-20 09:30 New York (a Friday)
    assert in_market_hours(ny_0930) and in_market_hours(ny_0930 + 6 * 3600 * 10**9 + 29 * 60 * 10**9)
    assert not in_market_hours(ny_0930 - 1)  # 09:29:59.999...
    assert not in_market_hours(ny_0930 + 390 * 60 * 10**9)  # 16:00
    assert not in_market_hours(ny_0930 + 86_400 * 10**9)  # Saturday


def test_options_reconnect_backfills_option_trades(run_dir, fake):
    import datetime as dt
    from zoneinfo import ZoneInfo

    from services.feed.synthetic import option_symbol

    with live(run_dir, fake) as feed:
        fake.wait_subscribed("indices", "V.I:SPX")
        t = now_ns()
        fake.push("indices", [IndexValue(sym="I:SPX", value=5900.0, ts=t)])
        sym = option_symbol(dt.datetime.fromtimestamp(t // 10**9, ZoneInfo("America/New_York")).date(), True, 5900.0)
        fake.wait_subscribed("options", f"T.{sym}")
        fake.push("options", [Trade(sym=sym, price=10.0, size=2, ts=t, seq=1, exch=302)])
        eventually(lambda: feed.events(f"tick.{sym}"), 5)
        fake.trades[sym] = [Trade(sym=sym, price=10.0, size=2, ts=t, seq=1, exch=302),
                            Trade(sym=sym, price=10.5, size=3, ts=t + 5 * 10**6, seq=2, exch=302)]
        fake.drop("options")
        eventually(lambda: len(feed.events(f"tick.{sym}")) == 2, 5, what="option trade backfilled")
        got = feed.events(f"tick.{sym}")
    # the vendor's options trades answer has no sequence_number: the backfilled print carries none
    assert [(e.seq, e.price, e.backfilled) for e in got] == [(1, 10.0, False), (0, 10.5, True)]


def test_raw_queue_overflow_is_counted_and_backfilled(run_dir, fake):
    with live(run_dir, fake, raw_queue_max=10) as feed:
        fake.wait_subscribed("stocks", "T.SPY")
        t = now_ns() - 10**9
        trades = [Trade(sym="SPY", price=590 + i / 100, size=1, ts=t + i * 10**6, seq=i + 1) for i in range(300)]
        fake.trades["SPY"] = trades

        async def burst():  # 300 frames in one go: far more than the 10-frame queue
            for c in fake._live("stocks"):
                for tr in trades:
                    await c.ws.send(json.dumps([to_wire(tr)]))

        fake._call(burst)
        eventually(lambda: len(feed.events("tick.SPY")) == 300, 10, what="every trade, via stream or backfill")
        got = feed.events("tick.SPY")
        assert sorted(e.seq for e in got) == list(range(1, 301))
        assert _metric(feed, "tick_drop_count", reason="queue_overflow") >= 1
        assert any(e.backfilled for e in got)
