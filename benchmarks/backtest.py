"""Backtest throughput: second-resolution days and a tick-resolution day through every built-in
detector, gating, the lifecycle and the trade model (the engine ``spx backtest`` runs); last, one day
with its option chain and quotes (options on: the selector, broker engine and paper fills trade them).

    python benchmarks/backtest.py              # 5 generated days of 1s bars + 1 tick day
    python benchmarks/backtest.py --days 2

Data: the deterministic generated sessions (``services.feed.synthetic``), aggregated to 1s bars
with the live aggregator before the clock starts. Second resolution: the SPY 1s bars of N days
(~23,400 a day; five days ≈ 117,000 bars) — target under 5 s; then the same days with I:SPX too
(twice the bars, gamma squeeze active) and the full ``run()`` from a SQLite store, for reference.
Tick resolution: one generated day's SPY trades and quotes and I:SPX values through the live
aggregator, detectors and lifecycle — target at least 400,000 ticks/s. That day is generated at a
realistic SPY density (``--spy-trades`` 20/s and ``--spy-quotes`` 60/s on average, U-shaped over
the day; real SPY prints more than that) rather than the replay default of 4 and 6 per second,
which would make it a test of the per-bar detector cost, not of tick throughput. Plugins: the
built-in package only (``spx_builtin_detectors``), as shipped.
"""

from __future__ import annotations

import argparse
import datetime as dt
import sys
import tempfile
import time

import spx_builtin_detectors
from services.aggregator.bars import BarAggregator, bars_from_events
from services.backtest.engine import Backtester, merge_bars
from services.detector.config import DetectorConfig
from services.detector.host import PluginHost
from services.feed.synthetic import SyntheticSession

FIRST = dt.date(2026, 11, 16)


def bt_default_workers() -> int:
    from services.backtest.run import default_workers

    return default_workers()


def host() -> PluginHost:
    h = PluginHost(budget_ms=1e9)
    h.register(spx_builtin_detectors, "benchmark")
    return h


def days(n: int) -> list[dt.date]:
    out, d = [], FIRST
    while len(out) < n:
        if d.weekday() < 5:
            out.append(d)
        d += dt.timedelta(days=1)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--days", type=int, default=5, help="second-resolution days (default 5)")
    ap.add_argument("--repeat", type=int, default=3, help="timed runs, best reported (default 3)")
    ap.add_argument("--workers", type=int, default=bt_default_workers(), help="processes for the parallel "
                    "run() (default: every core)")
    ap.add_argument("--spy-trades", type=float, default=20.0, help="tick day: SPY trades/s (default 20)")
    ap.add_argument("--spy-quotes", type=float, default=60.0, help="tick day: SPY quotes/s (default 60)")
    args = ap.parse_args()
    syms = ("SPY", "I:SPX")
    per_day: list[dict[str, list]] = []
    tick_day: list = []
    t = time.perf_counter()
    for i, d in enumerate(days(args.days)):
        evs = [e for e in SyntheticSession(seed=7 + i, date=d).events() if e.sym in syms]
        per: dict[str, list] = {}
        for b in bars_from_events(evs, intervals=("1s",)):
            per.setdefault(b.sym, []).append(b)
        per_day.append(per)
        print(f"\rgenerating day {i + 1}/{args.days} ...", end="", file=sys.stderr)
    print(f"\rgenerated {args.days} days in {time.perf_counter() - t:.1f} s (not timed)", file=sys.stderr)
    t = time.perf_counter()
    tick_day = [e for e in SyntheticSession(seed=7, date=FIRST, spy_trades_per_s=args.spy_trades,
                                            spy_quotes_per_s=args.spy_quotes).events()
                if e.sym in syms]
    print(f"generated the tick day ({len(tick_day):,} events) in {time.perf_counter() - t:.1f} s (not timed)",
          file=sys.stderr)

    def second(symbols) -> tuple[float, int, Backtester]:
        best, n, bt = float("inf"), 0, None
        for _ in range(args.repeat):
            cfg = DetectorConfig(symbols=list(symbols))
            bt = Backtester(cfg, host())
            bars = [b for per in per_day for b in merge_bars({s: per[s] for s in symbols})]
            t0 = time.perf_counter()
            for b in bars:
                bt.on_bar(b)
            bt.finish()
            best, n = min(best, time.perf_counter() - t0), len(bars)
        return best, n, bt

    el, n, bt = second(("SPY",))
    print(f"second resolution, SPY: {n:,} bars in {el:.2f} s = {n / el:,.0f} bars/s "
          f"({len(bt.transitions):,} transitions, {len(bt.trades)} resolved trades)  target < 5 s for ~117,000 bars")
    el, n, bt = second(syms)
    print(f"second resolution, SPY + I:SPX: {n:,} bars in {el:.2f} s = {n / el:,.0f} bars/s "
          f"({len(bt.transitions):,} transitions, {len(bt.trades)} resolved trades)")

    best, nt = float("inf"), 0
    for _ in range(args.repeat):
        cfg = DetectorConfig(symbols=list(syms))
        bt = Backtester(cfg, host())
        t0 = time.perf_counter()
        bt.on_events(tick_day, BarAggregator([cfg.interval]))
        bt.finish()
        best, nt = min(best, time.perf_counter() - t0), len(tick_day)
    print(f"tick resolution, one day: {nt:,} events (trades, quotes, index values; {bt.bars_seen:,} 1s bars, "
          f"{len(bt.trades)} resolved trades) in {best:.2f} s = {nt / best:,.0f} ticks/s through bars, detectors "
          f"and lifecycle  target >= 400,000")

    from services.backtest import run as bt_run
    from spx_common.store import open_store
    with tempfile.TemporaryDirectory() as tmp:
        store = open_store(f"sqlite:///{tmp}/bench.sqlite3")
        for per in per_day:
            for bars in per.values():
                store.upsert_bars(bars)
        opts = bt_run.Options(start=days(args.days)[0], end=days(args.days)[-1], symbols=list(syms), record=False)
        cfg = DetectorConfig(entry_points=False, plugins=["spx_builtin_detectors"])
        timing = {}
        for workers in sorted({1, args.workers}):
            t0 = time.perf_counter()
            res = bt_run.run(store, opts, cfg, workers=workers)
            timing[workers] = time.perf_counter() - t0
        store.close()
    n_bars = res["evidence"]["sample"]["bars"]
    for workers, el in timing.items():
        print(f"spx backtest run() from SQLite, SPY + I:SPX, {args.days} days on {workers} process(es): "
              f"{n_bars:,} bars in {el:.2f} s = {el / args.days:.2f} s per day overall (store reads, warm-up on "
              f"the day before and report statistics included)")
    one = timing[1] / args.days
    best_w = max(timing)
    print(f"per core: {one:.2f} s per day -> a year (252 days) {252 * one:.0f} s on 1 core; measured on "
          f"{best_w} cores: {252 * timing[best_w] / args.days:.0f} s (projection from {args.days} days; "
          f"target < 60 s)")
    options_day(per_day[0], args.repeat)
    return 0


def options_day(per: dict[str, list], repeat: int) -> None:
    """Options on: the first day's SPY + I:SPX 1s bars with its option chain (a snapshot every 5 s, the
    feed's ``chain_every_s``) and every option quote and index value of the session, through the detectors,
    the lifecycle and the trade model (the live selector, broker engine and paper broker)."""
    from spx_common.models import IndexValue, Quote

    s = SyntheticSession(seed=7, date=FIRST)
    opt = [e for e in s.events() if (type(e) is Quote and e.sym.startswith("O:")) or type(e) is IndexValue]
    docs = [{"ts": t, "root": "SPXW", "underlying": s.spot(s.sim_seconds(t)), "contracts": s.chain(t)}
            for t in range(s.open_ns, s.end_ns, 5 * 10**9)]
    bars = list(merge_bars(per))
    best, bt = float("inf"), None
    for _ in range(repeat):
        bt = Backtester(DetectorConfig(symbols=["SPY", "I:SPX"]), host())
        t0 = time.perf_counter()
        bt.on_seconds(iter(bars), opt, docs)
        bt.finish()
        best = min(best, time.perf_counter() - t0)
    assert bt is not None
    traded = sum(1 for t in bt.trades if t.pnl_usd is not None)
    print(f"options on, one day: {len(bars):,} bars + {len(opt):,} option quotes and index values + {len(docs):,} "
          f"chain snapshots in {best:.2f} s per day ({len(bt.trades)} resolved trades, {traded} with option fills, "
          f"{len(bt.trade.fills)} paper fills)")


if __name__ == "__main__":
    raise SystemExit(main())
