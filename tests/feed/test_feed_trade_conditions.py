"""Trade conditions through every vendor path: planted condition ids on the fake Massive server's stream and
REST history and in a flat file; each print flagged as the rule says (docs/microbars.md, "Which prints make
bars") and the bars equal the specification's bars (pybars) of the prints the rule keeps."""

from __future__ import annotations

import gzip
import io
import time
from contextlib import redirect_stderr

import msgspec

from services.aggregator.bars import bars_from_events, csv_row
from services.cli.main import main as spx
from services.feed.replay import FlatFileSource
from spx_common import flatfiles
from spx_common.marketrules import EXCL_CONDITION, EXCL_CORRECTION, EXCL_OUTLIER, EXCL_VOLUME_ONLY, TradeRules
from spx_common.models import Quote, Trade
from services.aggregator.pybars import PyBarAggregator
from tests.conftest import eventually
from tests.feed.helpers import RunningFeed, live_feed

S = 1_000_000_000
#: one print per condition class: (conditions, correction, the flag the rule gives it)
CLASSES = [
    ([], 0, 0),  # regular, no condition
    ([14, 41], 0, 0),  # intermarket sweep, trade-thru exempt: updates everything
    ([12], 0, 0),  # Form T: the table's override, extended-hours prints make bars
    ([999], 0, 0),  # an id not in the table: never hides a trade
    ([37], 0, EXCL_VOLUME_ONLY),  # odd lot: volume only
    ([2], 0, EXCL_VOLUME_ONLY),  # average price: volume only
    ([22], 0, EXCL_VOLUME_ONLY),  # prior reference price: high/low and volume, not the last sale
    ([32], 0, EXCL_VOLUME_ONLY),  # sold out of sequence: high/low and volume, not the last sale
    ([16], 0, EXCL_CONDITION),  # market center official open: a marker, no update at all
    ([38], 0, EXCL_CONDITION),  # corrected consolidated close: price but not volume
    ([12, 37], 0, EXCL_VOLUME_ONLY),  # extended hours and an odd lot: the odd lot decides
    ([37, 16], 0, EXCL_CONDITION),  # an odd lot that is also a marker: out entirely
]
CORRECTION = ([], 1, EXCL_CORRECTION)  # REST and flat files only (the stream has no correction field)


def planted(t0: int, classes, *, seq0: int = 1) -> tuple[list, list[int]]:
    """Quotes and trades over a few seconds: regular prints near 590, each planted print far away (600 +), so
    a planted print that reached a bar would move its high, VWAP and volume. Returns (events, wanted flags
    of the trades in order)."""
    events, want, seq = [], [], seq0
    for i, (cond, corr, flag) in enumerate(classes):
        ts = t0 + i * 400_000_000
        events.append(Quote(sym="SPY", bid=589.99, ask=590.01, bid_size=300, ask_size=500, ts=ts, seq=seq))
        seq += 1
        regular = flag == 0 and not corr
        events.append(Trade(sym="SPY", price=590.01 if regular else 600.0 + i, size=100 + i, ts=ts + 1_000_000,
                            seq=seq, cond=list(cond)))
        want.append(flag)
        seq += 1
    return events, want


def rule_bars(events: list, want: list[int]) -> list:
    """The specification's bars of the rule's flags ``want`` (not the production flags): regular prints, the
    volume-only ones' sizes, nothing of the rest."""
    it = iter(want)
    kept = []
    for e in events:
        if type(e) is Trade:
            flag = next(it)
            if flag not in (0, EXCL_VOLUME_ONLY):
                continue
            e = msgspec.structs.replace(e, excl=flag)
        kept.append(e)
    spec = PyBarAggregator(["1s"])
    spec.on_events(kept)
    return by_start(spec.flush())


def by_start(bars: list) -> list:
    return sorted(bars, key=lambda b: (b.sym, b.start_ns))


def check(events: list, want: list[int]) -> None:
    got = [e.excl for e in events if type(e) is Trade]
    assert got == want
    assert by_start(bars_from_events(events)) == rule_bars(events, want)


def test_live_stream_flags_each_condition_class_and_bars_follow_the_rule(run_dir, fake):
    with live_feed(run_dir, fake) as feed:
        fake.wait_subscribed("stocks", "Q.SPY")
        events, want = planted(time.time_ns() - 5 * S, CLASSES)
        fake.push("stocks", events)
        eventually(lambda: len(feed.events("tick.SPY")) == len(events), 5, what="every planted event")
        got = feed.events("tick.SPY")
        check(got, want)
        assert [e.cond for e in got if type(e) is Trade] == [c for c, _, _ in CLASSES]  # kept, flagged
        counter = feed.service.metrics.counter("feed_trades_excluded_total", "", ["condition"])
        eventually(lambda: counter.value(condition="37") == 3, 3, what="excluded prints counted per condition")
        assert [counter.value(condition=c) for c in ("2", "22", "32", "16", "38", "12", "14")] == [1, 1, 1, 2, 1, 0, 0]


def test_rest_backfill_flags_conditions_and_corrections_and_bars_follow_the_rule(run_dir, fake):
    with live_feed(run_dir, fake) as feed:
        fake.wait_subscribed("stocks", "Q.SPY")
        t0 = time.time_ns() - 8 * S
        first = [Trade(sym="SPY", price=590.0, size=1, ts=t0, seq=1)]
        fake.push("stocks", first)
        eventually(lambda: len(feed.events("tick.SPY")) == 1, 5)
        gap, want = planted(t0 + S, CLASSES + [CORRECTION], seq0=2)
        fake.trades["SPY"] = first + [e for e in gap if type(e) is Trade]
        fake.quotes["SPY"] = [e for e in gap if type(e) is Quote]
        fake.corrections[("SPY", gap[-1].seq)] = 1
        fake.drop("stocks")
        eventually(lambda: len(feed.events("tick.SPY")) == 1 + len(gap), 10, what="gap backfilled")
        got = sorted(feed.events("tick.SPY")[1:], key=lambda e: e.seq)
        assert all(e.backfilled for e in got)
        check(got, want)
        counter = feed.service.metrics.counter("feed_trades_excluded_total", "", ["condition"])
        eventually(lambda: counter.value(condition="correction") == 1, 3, what="the correction counted")


def test_flat_file_conditions_and_corrections_through_spx_bars_explain(tmp_path):
    t0 = 1_795_185_000 * S  # 2026-11-19 14:30 UTC
    events, want = planted(t0, CLASSES + [CORRECTION])
    trades = tmp_path / "trades.csv.gz"
    with gzip.open(trades, "wt") as fh:
        fh.write("ticker,conditions,correction,exchange,id,participant_timestamp,price,sequence_number,sip_timestamp,"
                 "size,tape,trf_id,trf_timestamp\n")
        n = 0
        for e in events:
            if type(e) is Trade:
                corr = CLASSES[n][1] if n < len(CLASSES) else CORRECTION[1]
                cond = ",".join(map(str, e.cond))
                fh.write(f'SPY,"{cond}",{corr},11,{e.seq},{e.ts - 5},{e.price},{e.seq},{e.ts},{e.size:g},1,0,0\n')
                n += 1
    quotes = tmp_path / "quotes.csv"
    quotes.write_text("ticker,ask_exchange,ask_price,ask_size,bid_exchange,bid_price,bid_size,conditions,indicators,"
                      "participant_timestamp,sequence_number,sip_timestamp,tape,trf_timestamp\n" + "".join(
                          f"SPY,12,{e.ask},{e.ask_size:g},11,{e.bid},{e.bid_size:g},,,{e.ts - 5},{e.seq},{e.ts},1,0\n"
                          for e in events if type(e) is Quote))
    out = tmp_path / "bars.csv"
    err = io.StringIO()
    with redirect_stderr(err):
        assert spx(["bars", "--trades", str(trades), "--quotes", str(quotes), "--out", str(out), "--explain"]) == 0
    read = list(flatfiles.read_merged([trades, quotes]))
    TradeRules().apply(read)
    check(read, want)
    assert out.read_text().splitlines()[1:] == [",".join(csv_row(b)) for b in bars_from_events(read)]
    lines = [ln for ln in err.getvalue().splitlines() if ln.startswith("excluded 20")]
    assert len(lines) == len(want) - want.count(0)
    assert any("volume only, conditions 37 Odd Lot Trade" in ln for ln in lines)
    assert any("22 Prior Reference Price" in ln for ln in lines)
    assert any(ln.endswith("conditions 16 Market Center Official Open") for ln in lines)
    assert any(ln.endswith("correction") for ln in lines)
    assert "37: 3" in err.getvalue()


def test_the_outlier_guard_in_a_flat_file_replay_flags_and_counts_a_print_far_from_the_quote(run_dir, tmp_path):
    """[feed] outlier_guard_pct on a replay of a flat file without condition codes (as the real days are)."""
    t0 = 1_795_185_000 * S
    trades, quotes = tmp_path / "trades.csv", tmp_path / "quotes.csv"
    trades.write_text("ticker,conditions,correction,exchange,id,participant_timestamp,price,sequence_number,"
                      "sip_timestamp,size,tape,trf_id,trf_timestamp\n"
                      f"SPY,,0,11,1,{t0 + 1},165.01,1,{t0 + 1},100,1,0,0\n"
                      f"SPY,,0,11,2,{t0 + 2},167.51,2,{t0 + 2},5000,1,0,0\n"  # 1.5% above the ask
                      f"SPY,14,0,11,3,{t0 + 3},167.51,3,{t0 + 3},100,1,0,0\n")  # a condition: not the guard's
    quotes.write_text("ticker,ask_exchange,ask_price,ask_size,bid_exchange,bid_price,bid_size,conditions,indicators,"
                      f"participant_timestamp,sequence_number,sip_timestamp,tape,trf_timestamp\n"
                      f"SPY,12,165.02,500,11,165.0,300,,,{t0},1,{t0},1,0\n")
    src = FlatFileSource([trades, quotes], quote_sizes="shares")
    with RunningFeed(run_dir, replay_source=src, replay_speed="max", outlier_guard_pct=1.0) as feed:
        eventually(lambda: len(feed.events("tick.SPY")) == 4, 5, what="the replayed events")
        got = [e for e in feed.events("tick.SPY") if type(e) is Trade]
        assert [e.excl for e in got] == [0, EXCL_OUTLIER, 0]
        counter = feed.service.metrics.counter("feed_trades_excluded_total", "", ["condition"])
        eventually(lambda: counter.value(condition="outlier") == 1, 3, what="the outlier counted")
