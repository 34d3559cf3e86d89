"""The live feed's sans-I/O policy core (services/feed/livecore.py): events in, actions out, no clock,
no sockets. The shell (LiveIngest) is covered by the process tests in this folder."""

from __future__ import annotations

import datetime as dt

from services.feed.config import FeedConfig
from services.feed.livecore import (Backfill, GapMerged, LiveCore, Poll, Resubscribe, SetMode, option_plan)
from spx_common.calendar import ET
from spx_common.models import IndexValue, Quote, Trade

S = 10**9
OPEN_NS = int(dt.datetime(2026, 11, 20, 10, 0, tzinfo=ET).timestamp()) * S  # a Friday, in the session
CLOSED_NS = int(dt.datetime(2026, 11, 20, 16, 30, tzinfo=ET).timestamp()) * S


def core(**cfg) -> LiveCore:
    return LiveCore(FeedConfig(**{"api_key": "k", "source": "live", **cfg}), last_stream_wall=100.0)


def trade(ts: int, sym: str = "SPY", price: float = 600.0) -> Trade:
    return Trade(sym=sym, price=price, size=1, ts=ts)


def test_watchdog_polls_after_silence_in_market_hours_and_recovers_on_the_stream():
    c = core(poll_after_s=5, poll_interval_s=1)
    assert c.stream_events([trade(OPEN_NS)], 100.0) == []
    actions, wait = c.watchdog(104.0, OPEN_NS + 4 * S, True)
    assert actions == [] and wait == 0.25 and not c.polling
    actions, wait = c.watchdog(105.5, OPEN_NS + 6 * S, True)
    assert actions == [SetMode("poll", "stream silent 5.5s"), Poll()] and wait == 1 and c.polling
    assert c.watchdog(106.5, 0, True)[0] == [Poll()]  # still polling: one poll each interval, no new switch
    assert c.periodic(True, "") == []  # the mode stays poll while polling
    assert c.stream_events([trade(OPEN_NS + 7 * S)], 107.0) == [SetMode("tick", "stream recovered")]
    assert not c.polling and c.last_stream_ns == OPEN_NS + 7 * S
    assert c.periodic(False, "stocks: reset") == [SetMode("down", "stocks: reset")]


def test_watchdog_uses_the_markets_time_and_stops_polling_at_the_close():
    c = core(poll_after_s=5)
    c.stream_events([trade(CLOSED_NS - 10 * S)], 100.0)  # 16:29:50: after the close
    assert c.market_now_ns(130.0, 0) == CLOSED_NS + 20 * S
    assert c.watchdog(130.0, 0, True)[0] == []  # silent 30 s, but the session is over: no polling
    c2 = core(poll_after_s=5)
    c2.stream_events([trade(OPEN_NS)], 100.0)
    c2.watchdog(106.0, 0, True)
    assert c2.polling
    # the market's clock runs on from the last event: 6.5 hours later the session has closed
    actions, _ = c2.watchdog(100.0 + 6.5 * 3600, 0, False)
    assert actions == [SetMode("down", "market closed")] and not c2.polling
    c3 = core(poll_after_s=5, poll_market_hours_only=False)
    c3.stream_events([trade(CLOSED_NS)], 100.0)
    assert Poll() in c3.watchdog(106.0, 0, True)[0]  # configured to poll at any hour


def test_a_fatal_stream_stops_the_watchdog_and_the_mode_changes():
    c = core(poll_after_s=5)
    c.stream_events([trade(OPEN_NS)], 100.0)
    c.watchdog(106.0, 0, True)
    assert c.failed("401 Unknown API Key", "auth_failed: 401") == [SetMode("down", "auth_failed: 401")]
    assert c.watchdog(200.0, 0, True)[0] == [] and c.periodic(True, "") == [] and c.connected() == []
    assert core().connected() == [SetMode("tick")]


def test_poll_answers_unchanged_since_the_last_poll_are_not_new():
    c = core(poll_after_s=5)
    c.stream_events([trade(OPEN_NS)], 100.0)
    c.watchdog(106.0, 0, True)
    q = Quote(sym="SPY", bid=599.9, ask=600.1, ts=OPEN_NS + 2 * S)
    t1 = trade(OPEN_NS + 3 * S)
    assert c.fresh_poll([t1, q]) == [q, t1]  # new, in event-time order
    t2 = trade(OPEN_NS + 4 * S)
    assert c.fresh_poll([t2, q]) == [t2]  # the quote did not change
    c.stream_events([trade(OPEN_NS + 5 * S)], 107.0)
    assert c.fresh_poll([trade(OPEN_NS + 6 * S)]) == []  # the stream is back: a late answer is dropped


def test_atm_hysteresis_recenters_only_after_resubscribe_strikes():
    c = core(strike_step=5.0, resubscribe_strikes=2, strikes_each_side=3, max_option_contracts=1000)

    def v(value: float, sym: str = "I:SPX") -> IndexValue:
        return IndexValue(sym=sym, value=value, ts=OPEN_NS)

    assert c.index_value(v(6001.0, "I:NDX")) == []  # not the underlying
    [first] = c.index_value(v(6001.0))
    assert isinstance(first, Resubscribe) and first.center == 6000.0 and first.contracts == 14
    assert "T.O:SPXW261120C06000000" in first.topics and "Q.O:SPXW261120P06015000" in first.topics
    assert c.index_value(v(6007.4)) == []  # one strike away (6005): inside the hysteresis
    assert c.index_value(v(5993.0)) == []  # one strike the other way
    [again] = c.index_value(v(6009.0))  # two strikes (6010): re-centred
    assert again.center == 6010.0 and c.atm_center == 6010.0
    assert c.index_value(v(6002.6)) == []  # 6005 is one strike from the new centre
    small = core(strike_step=5.0, strikes_each_side=20, max_option_contracts=10, option_quotes=False)
    [r] = small.index_value(v(6000.0))
    assert r.contracts == 10 and all(t.startswith("T.") for t in r.topics)


def test_reconnect_gap_windows_and_merging_behind_the_running_backfill():
    c = core(backfill_max_s=600, ping_interval_s=20, ping_timeout_s=20, stocks=["SPY", "QQQ"])
    now = OPEN_NS + 1000 * S
    down = now - 5 * S
    published = {"SPY": down - 2 * S, "QQQ": down - 100 * S}  # QQQ idle: capped at one ping period (40 s)
    starts, actions = c.gap("stocks", [], down, now, published)
    assert starts == {"SPY": down - 2 * S, "QQQ": down - 40 * S}
    [bf] = actions
    assert isinstance(bf, Backfill) and bf.gap.plan == {"SPY": (True, True), "QQQ": (True, True)}
    assert bf.gap.end_ns == now
    # a second gap while the first still waits: merged into it (widened window, later end)
    starts2, actions2 = c.gap("stocks", [], now + 10 * S, now + 20 * S, {}, last_ts={"SPY": down - 9 * S})
    assert actions2 == [GapMerged("stocks")] and bf.gap.merged == 1 and bf.gap.end_ns == now + 20 * S
    assert bf.gap.starts["SPY"] == down - 9 * S and bf.gap.starts["QQQ"] == down - 40 * S
    assert starts2 == {"SPY": down - 9 * S, "QQQ": now + 10 * S}
    # once it runs, the next gap waits anew (at most one running and one waiting per market)
    c.gap_started(bf.gap)
    _, actions3 = c.gap("stocks", [], now + 30 * S, now + 31 * S, {})
    assert isinstance(actions3[0], Backfill) and actions3[0].gap is not bf.gap
    # another market is independent; the window never reaches back more than backfill_max_s
    starts4, actions4 = c.gap("indices", [], now - 5000 * S, now, {}, last_ts={})
    assert starts4 == {"I:SPX": now - 600 * S} and actions4[0].gap.plan == {"I:SPX": (True, False)}
    assert core(backfill=False).gap("stocks", [], down, now, {}) == (None, [])


def test_option_gap_plan_nearest_the_money_and_no_quotes_once_refused():
    topics = [f"{k}.O:SPXW261120{cp}0{s}000" for s in (5990, 5995, 6000, 6005, 6010) for cp in "CP" for k in "TQ"]
    plan = option_plan(topics, 6000.0, trades_n=4, quotes_n=2)
    assert list(plan)[:2] == ["O:SPXW261120C06000000", "O:SPXW261120P06000000"]
    assert sum(t for t, _ in plan.values()) == 4 and sum(q for _, q in plan.values()) == 2
    c = core(backfill_option_contracts=4, backfill_option_quote_contracts=2)
    c.index_value(IndexValue(sym="I:SPX", value=6001.0, ts=OPEN_NS))
    assert c.gap_plan("options", topics) == plan
    c.quotes_refused("HTTP 403")
    assert not any(q for _, q in c.gap_plan("options", topics).values())
    assert c.gap("options", [], OPEN_NS, OPEN_NS + S, {}) == (None, [])  # nothing subscribed: no gap


def test_restart_window_from_the_journal_read_back():
    c = core(restart_backfill_max_s=600, reorder_tolerance_ms=2000)
    now = OPEN_NS + 3600 * S
    newest = {"SPY": now - 30 * S, "I:SPX": now - 10 * S, "O:SPXW261120C06000000": now - 299 * S}
    starts, default_ns = c.restart_window(newest, now - 300 * S, now - 10 * S, now, "2026-11-20")
    # each symbol from its newest journaled event minus the reorder tolerance, never before what was read
    assert starts == {"SPY": now - 32 * S, "I:SPX": now - 12 * S, "O:SPXW261120C06000000": now - 300 * S}
    assert default_ns == now - 300 * S
    assert c.restart_window({}, 0, 0, now, "2026-11-20") == "no journaled event of 2026-11-20"
    too_old = c.restart_window({"SPY": now - 700 * S}, now - 800 * S, now - 700 * S, now, "2026-11-20")
    assert too_old == "the previous run's newest event is 700.0s old (restart_backfill_max_s 600)"
    ahead = c.restart_window({"SPY": now + 120 * S}, now, now + 120 * S, now, "2026-11-20")
    assert isinstance(ahead, str) and "-120.0s old" in ahead


def test_what_a_symbols_gap_fetches_and_a_refusal_turns_option_quotes_off():
    from services.feed.livecore import fetch_kinds

    assert fetch_kinds("indices", True, True, False) == ["index"]
    assert fetch_kinds("stocks", True, True, False) == ["trade", "quote"]
    assert fetch_kinds("stocks", True, False, True) == ["trade"]
    assert fetch_kinds("options", True, True, False) == ["option_trade", "option_quote"]
    assert fetch_kinds("options", False, True, False) == ["option_quote"]
    assert fetch_kinds("options", True, True, True) == ["option_trade"]  # refused: trades only
    c = core()
    assert not c.fetch_failed("option_quote", 500, "boom") and not c.option_quotes_refused  # retryable kind
    assert not c.fetch_failed("quote", 403, "no") and not c.option_quotes_refused  # stock quotes: not the plan
    assert c.fetch_failed("option_quote", 403, "") and c.option_quotes_refused == "HTTP 403"


def test_gap_summary_totals_overlap_truncation_and_failures():
    from services.feed.livecore import gap_summary

    results = [
        {"sym": "SPY", "fetched": {"trade": 10, "quote": 5}, "published": 12, "truncated_from_ns": None, "error": ""},
        {"sym": "O:SPXW1", "fetched": {"option_quote": 3}, "published": 3, "truncated_from_ns": 7 * S,
         "error": ""},
        {"sym": "O:SPXW2", "fetched": {}, "published": 0, "truncated_from_ns": None, "error": "option_trade: 500"},
    ]
    plan = {"SPY": (True, True), "O:SPXW1": (False, True), "O:SPXW2": (True, False)}
    got = gap_summary("stocks", plan, {"SPY": 5 * S, "O:SPXW1": 4 * S, "O:SPXW2": 6 * S}, 9 * S, results)
    assert got == {"ts": 9 * S, "market": "stocks", "gap_start_ns": 4 * S, "gap_end_ns": 9 * S, "symbols": 3,
                   "fetched": {"trade": 10, "quote": 5, "option_quote": 3}, "published": 15, "overlap": 3,
                   "truncated": [{"sym": "O:SPXW1", "from_ns": 7 * S}],
                   "failed": {"O:SPXW2": "option_trade: 500"}}


def test_restart_gap_is_looked_for_and_due_by_the_rules():
    assert core(backfill=False).restart_skip(True) == "off"
    assert core(restart_backfill_max_s=0).restart_skip(True) == "off"
    assert core().restart_skip(False) == "journal off: the previous run's end is unknown"
    assert core().restart_skip(True) is None
    c = core(poll_after_s=5)
    assert c.restart_gap_due(True, None)  # the market's first stream event ends its gap
    assert not c.restart_gap_due(False, None) and not c.restart_gap_due(False, 4.9)
    assert c.restart_gap_due(False, 5.0)  # connected and quiet for poll_after_s


def test_overflow_gap_start_and_chain_requests():
    c = core(ping_interval_s=10, ping_timeout_s=5, strikes_each_side=4, strike_step=5)
    assert c.overflow_start(100 * S) == 85 * S
    assert c.chain_request(OPEN_NS) is None  # no ATM centre yet
    c.atm_center = 5900.0
    assert c.chain_request(OPEN_NS) == ("2026-11-20", 5880.0, 5920.0)
    late = int(dt.datetime(2026, 11, 20, 23, 30, tzinfo=ET).timestamp()) * S  # 04:30 UTC the next day
    assert c.chain_request(late)[0] == "2026-11-20"  # the New York date, not UTC's
    c.fatal = "auth_failed"
    assert c.chain_request(OPEN_NS) is None


def test_chain_snapshot_rows_become_chain_contracts():
    from services.feed.parsing import chain_contracts

    rows = [
        {"details": {"ticker": "O:SPXW261120P05900000", "strike_price": 5900, "contract_type": "put",
                     "expiration_date": "2026-11-20"}, "last_quote": {"bid": 1.0, "ask": 1.2},
         "greeks": {"delta": -0.4, "gamma": 0.01}, "open_interest": 12, "day": {"volume": 3},
         "implied_volatility": 0.2, "underlying_asset": {"value": 5901.5}},
        {"details": {"ticker": "O:SPXW261120C05900000", "strike_price": 5900, "contract_type": "call",
                     "expiration_date": "2026-11-20"}, "last_quote": {"bid": 2.0, "ask": 2.2}},
        {"details": {"ticker": "O:SPX261120C05900000", "strike_price": 5900}},  # the monthly root: not SPXW
        {"details": {"ticker": "O:SPXW261120C05905000"}},  # no strike: skipped
    ]
    contracts, underlying = chain_contracts(rows, "SPXW")
    assert underlying == 5901.5
    assert [(c["symbol"], c["type"], c["mid"]) for c in contracts] == [
        ("O:SPXW261120C05900000", "call", 2.1), ("O:SPXW261120P05900000", "put", 1.1)]
    assert contracts[1]["open_interest"] == 12 and contracts[1]["volume"] == 3 and contracts[1]["delta"] == -0.4
