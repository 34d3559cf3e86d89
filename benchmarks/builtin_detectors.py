"""Per-bar cost of each built-in detector, isolated from the host and the lifecycle.

    python benchmarks/builtin_detectors.py            # one generated day, SPY + I:SPX 1s bars
    python benchmarks/builtin_detectors.py --repeat 5

The deterministic generated session (``services.feed.synthetic``, seed 7) is aggregated to 1s bars
with the live aggregator and run once through the real detector engine with a capturing plugin
(GEX from the generated chain), keeping every ``(ctx, bar)`` pair the built-ins would see (not
timed). Then each built-in's ``spx_detector_on_bar`` is timed alone over the same pairs, best of
``--repeat``. Printed: microseconds per bar and the projection to 117,000 bars (the five-day
second-resolution backtest, whose whole-engine target is under 5 s — see benchmarks/backtest.py).
Target here: the six built-ins together under 1 s per 117,000 bars (they must leave most of the
backtest's budget to the engine and the lifecycle).

Then the cost of plugin isolation (issue 24): the same bars through the whole detector engine
(context, plugins, validation, gating, lifecycle) with the plugins in process (``[detector]
isolation = "inline"``, the backtester's way) and in worker processes (``"process"``, the detector
service's default), for the built-in package and for ``benchmarks/lifecycle_plugin.py`` (two
candidates every bar): microseconds per bar each way and the difference, best of ``--repeat``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import sys
import time

import spx_builtin_detectors
from services.aggregator.bars import bars_from_events
from services.detector.config import DetectorConfig
from services.detector.core import DetectorEngine
from services.detector.hookspecs import API_VERSION, hookimpl
from services.detector.host import PluginHost
from services.feed.synthetic import SyntheticSession

DATE = dt.date(2026, 11, 16)
PROJECT_BARS = 117_000


class Capture:
    def __init__(self) -> None:
        self.pairs: list = []

    @hookimpl
    def spx_detector_describe(self):
        return {"name": "capture", "family": "bench", "api_version": API_VERSION}

    @hookimpl
    def spx_detector_on_bar(self, ctx, bar):
        self.pairs.append((ctx, bar))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeat", type=int, default=3, help="timed runs per detector, best reported (default 3)")
    ap.add_argument("--bars-kept", type=int, default=60, help="[detector] bars_kept while capturing (default 60)")
    ap.add_argument("--isolation-bars", type=int, default=5000, help="bars for the isolation comparison "
                    "(default 5000)")
    args = ap.parse_args()
    t = time.perf_counter()
    session = SyntheticSession(seed=7, date=DATE)
    evs = [e for e in session.events() if e.sym in ("SPY", "I:SPX")]
    bars = sorted(bars_from_events(evs, intervals=("1s",)), key=lambda b: (b.start_ns, b.sym))
    cap = Capture()
    host = PluginHost(budget_ms=1e9)
    host.register(cap, "benchmark")
    eng = DetectorEngine(DetectorConfig(symbols=["SPY", "I:SPX"], bars_kept=args.bars_kept), host)
    chain_at = bars[0].start_ns + 3600 * 10**9
    fed = False
    for b in bars:
        if not fed and b.start_ns >= chain_at:
            eng.on_chain({"ts": b.start_ns, "underlying": None, "contracts": session.chain(b.start_ns)})
            fed = True
        eng.on_bar(b)
    pairs = cap.pairs
    print(f"captured {len(pairs):,} (ctx, bar) pairs in {time.perf_counter() - t:.1f} s (not timed)", file=sys.stderr)

    total = 0.0
    for module in spx_builtin_detectors.DETECTORS:
        fn = module.spx_detector_on_bar
        best, fired = float("inf"), 0
        for _ in range(args.repeat):
            fired = 0
            t0 = time.perf_counter()
            for ctx, bar in pairs:
                if fn(ctx=ctx, bar=bar):
                    fired += 1
            best = min(best, time.perf_counter() - t0)
        per = best / len(pairs)
        total += per
        print(f"{module.NAME:14s} {per * 1e6:6.2f} us/bar  -> {per * PROJECT_BARS:5.3f} s per {PROJECT_BARS:,} bars"
              f"  ({fired} candidates on the day)")
    print(f"{'all six':14s} {total * 1e6:6.2f} us/bar  -> {total * PROJECT_BARS:5.3f} s per {PROJECT_BARS:,} bars"
          f"  target < 1 s")
    isolation_overhead(bars[: args.isolation_bars], args.repeat)
    return 0


def isolation_overhead(bars: list, repeat: int) -> None:
    from services.detector.isolation import build_host

    print(f"\nplugin isolation, whole engine per bar ({len(bars):,} bars, best of {repeat}):")
    for label, kw in (("built-ins", {}),
                      ("lifecycle_plugin", {"entry_points": False, "plugins": ["benchmarks.lifecycle_plugin"]})):
        per = {}
        for mode in ("inline", "process"):
            best = float("inf")
            for _ in range(repeat):
                cfg = DetectorConfig(symbols=["SPY", "I:SPX"], isolation=mode, **kw)
                host = build_host(cfg)
                try:
                    eng = DetectorEngine(cfg, host)
                    t0 = time.perf_counter()
                    for b in bars:
                        eng.on_bar(b)
                    best = min(best, time.perf_counter() - t0)
                finally:
                    getattr(host, "close", lambda: None)()
            per[mode] = best / len(bars) * 1e6
        print(f"  {label:17s} in process {per['inline']:7.1f} us/bar   isolated {per['process']:7.1f} us/bar   "
              f"overhead {per['process'] - per['inline']:7.1f} us/bar")


if __name__ == "__main__":
    raise SystemExit(main())
