"""CPU per bar of the detector path, split by part, and the isolated plugins' round trip per bar.

    python benchmarks/detector_path.py                  # one generated day, SPY + I:SPX 1 s bars
    python benchmarks/detector_path.py --repeat 3 --isolation-bars 4000

The same code path serves live, replay and backtest (``DetectorEngine.on_bar``); this splits its cost so
a change can be judged on a loaded machine: every figure is **CPU time of this process**
(``time.process_time``), best of ``--repeat``, not wall time (on the shared 2-core host a wall-clock
figure measures the other jobs). Parts, over the ``(ctx, bar)`` pairs of the whole day:

* ``plugins alone``: each built-in's ``spx_detector_on_bar`` called directly (what the plugins cost);
* ``host``: ``PluginHost.on_bar`` over the same contexts (plugins + per-call budget, health, validation);
* ``engine, no plugins``: ``DetectorEngine.on_bar`` with an empty host (session state, rolling windows,
  read-only state maps, the context);
* ``engine + built-ins``: the two together (gating and the lifecycle's admissions included);
* ``backtester``: ``Backtester.on_bar`` (+ the bar's price path through the lifecycle, exits, trades),
  with a digest of its transitions and trades (a speed change must not change it).

Then the live configuration of ``benchmarks/load.py`` (built-ins plus ``benchmarks/lifecycle_plugin.py``,
its probe allowed off-session) with the plugins in worker processes (``isolation = "process"``): this
process's CPU per bar and the wall time of each ``on_bar`` (the round trip to the workers: ticks after
the bar's end wait for it), in session (seven plugins, two workers) and off session (the probe alone,
as load.py after 16:00 New York). The walls depend on how soon the workers get a core: on a loaded host
read them as the machine's, not the path's.
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import sys
import time

import msgspec

import spx_builtin_detectors
from services.aggregator.bars import bars_from_events
from services.backtest.engine import Backtester, merge_bars
from services.detector.config import DetectorConfig
from services.detector.core import DetectorEngine
from services.detector.host import PluginHost
from services.feed.synthetic import SyntheticSession

DATE = dt.date(2026, 11, 16)
SYMS = ["SPY", "I:SPX"]


def host(builtins: bool = True) -> PluginHost:
    h = PluginHost(budget_ms=1e9)
    if builtins:
        h.register(spx_builtin_detectors, "benchmark")
    return h


def best_cpu(fn, repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        c0 = time.process_time()
        fn()
        best = min(best, time.process_time() - c0)
    return best


def digest(bt: Backtester) -> str:
    """Of the transitions and refusals; then of the trades."""
    h = hashlib.sha256()
    for tr in bt.transitions:
        h.update(msgspec.msgpack.encode(tr))
    h.update(repr(sorted(bt.blocks.items())).encode())
    return h.hexdigest()[:12] + "/" + hashlib.sha256(repr(bt.trades).encode()).hexdigest()[:12]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeat", type=int, default=2, help="timed runs per part, best reported (default 2)")
    ap.add_argument("--isolation-bars", type=int, default=4000, help="bars for the isolated round trip "
                    "(default 4000; 0 skips it)")
    args = ap.parse_args()
    t = time.perf_counter()
    evs = [e for e in SyntheticSession(seed=7, date=DATE).events() if e.sym in SYMS]
    per: dict[str, list] = {}
    for b in bars_from_events(evs, intervals=("1s",)):
        per.setdefault(b.sym, []).append(b)
    bars = list(merge_bars(per))
    print(f"generated {len(bars):,} 1 s bars (SPY + I:SPX, {DATE}) in {time.perf_counter() - t:.1f} s "
          "(not timed)", file=sys.stderr)
    cfg = DetectorConfig(symbols=SYMS)
    n = len(bars)

    pairs: list = []
    cap = host()
    inner = cap.on_bar

    def capture(ctx, bar, only=None):
        pairs.append((ctx, bar, only))
        return inner(ctx, bar, only)

    cap.on_bar = capture  # type: ignore[method-assign]
    eng = DetectorEngine(cfg, cap)
    for b in bars:
        eng.on_bar(b)
    fns = [p.on_bar for p in host().plugins.values()]

    def plugins_alone() -> None:
        for ctx, bar, _ in pairs:
            for f in fns:
                f(ctx=ctx, bar=bar)

    def host_only() -> None:
        h = host()
        for ctx, bar, only in pairs:
            h.on_bar(ctx, bar, only)

    def engine(builtins: bool) -> None:
        e = DetectorEngine(cfg, host(builtins))
        for b in bars:
            e.on_bar(b)

    out: list[Backtester] = []

    def backtester() -> None:
        bt = Backtester(cfg, host())
        for b in bars:
            bt.on_bar(b)
        bt.finish()
        out.append(bt)

    print(f"CPU per bar, best of {args.repeat} ({n:,} bars; {len(pairs):,} reached the plugins):")
    for label, fn in (("plugins alone (6 built-ins)", plugins_alone), ("host (plugins + host)", host_only),
                      ("engine, no plugins", lambda: engine(False)), ("engine + built-ins", lambda: engine(True)),
                      ("backtester", backtester)):
        cpu = best_cpu(fn, args.repeat)
        extra = ""
        if label == "backtester":
            bt = out[-1]
            extra = (f"   {len(bt.transitions)} transitions, {len(bt.trades)} trades, digest {digest(bt)}; "
                     f"{cpu:.2f} s CPU for the day")
        print(f"  {label:28s} {cpu / n * 1e6:7.2f} us/bar{extra}")
    if args.isolation_bars:
        isolated(bars[: args.isolation_bars], args.repeat)
    return 0


def isolated(bars: list, repeat: int) -> None:
    from services.detector.isolation import build_host

    off = [msgspec.structs.replace(b, start_ns=b.start_ns + 7 * 3600 * 10**9) for b in bars]  # 16:30 ET on
    print(f"\nisolated plugins, load.py's plugin set ({len(bars):,} bars, best of {repeat} by CPU):")
    for label, seq in (("in session (7 plugins, 2 workers)", bars), ("off session (the probe alone)", off)):
        cfg = DetectorConfig(symbols=SYMS, isolation="process", plugins=["benchmarks.lifecycle_plugin"],
                             extended_hours=["bench_probe"], family_cap=1000, macro_block_below=-1, confirm_ms=50)
        best: tuple[float, list[float]] | None = None
        for _ in range(repeat):
            h = build_host(cfg)
            try:
                e = DetectorEngine(cfg, h)
                walls = []
                c0 = time.process_time()
                for b in seq:
                    t0 = time.perf_counter()
                    e.on_bar(b)
                    walls.append(time.perf_counter() - t0)
                cpu = time.process_time() - c0
            finally:
                getattr(h, "close", lambda: None)()
            if best is None or cpu < best[0]:
                best = (cpu, sorted(walls))
        assert best is not None
        cpu, walls = best
        k = len(walls)
        print(f"  {label:34s} CPU {cpu / k * 1e6:6.1f} us/bar   on_bar wall p50 {walls[k // 2] * 1e6:6.0f} us  "
              f"p99 {walls[int(k * 0.99)] * 1e6:7.0f} us  max {walls[-1] * 1e6:7.0f} us")


if __name__ == "__main__":
    raise SystemExit(main())
