"""Run a backtest over stored data and write its report (Markdown, PNG, JSON).

Data, per trading day (NYSE/Cboe sessions between FROM and TO, holidays excluded) and symbol:
``--resolution second``: stored 1s bars; a day without them falls back to stored vendor minute
bars (``60s``) and the report says so (promotion is then refused). ``--resolution tick``: stored
trades and quotes through the live aggregator (no fallback: a day without ticks is reported as
missing). The report records the data source and resolution actually used per day, the sample
size, the config hash and the plugin versions.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from collections.abc import Callable

import msgspec

from services.aggregator.bars import BarAggregator
from spx_common.marketrules import TradeRules
from services.backtest import report as rpt
from services.backtest import stats as st
from services.backtest.engine import Backtester, merge_bars
from services.detector.config import DetectorConfig
from services.detector.host import PluginHost
from services.detector.market import ET
from spx_common.store import Store
from spx_common.store.profile import FamilyStats, Profile

REPORT_VERSION = 1


@dataclass
class Options:
    start: dt.date
    end: dt.date
    resolution: str = "second"  # second | tick
    symbols: list[str] = field(default_factory=lambda: ["SPY", "I:SPX"])
    families: list[str] | None = None
    criteria: st.Criteria = field(default_factory=st.Criteria)
    baseline: dict | None = None
    pivot_every: int = 60
    record: bool = True


def trading_days(start: dt.date, end: dt.date) -> list[dt.date]:
    """NYSE/Cboe trading days (holidays excluded: ``spx_common.calendar``)."""
    from spx_common.calendar import MarketCalendar

    return MarketCalendar().trading_days(start, end)


def day_range(d: dt.date) -> tuple[int, int]:
    a = dt.datetime(d.year, d.month, d.day, tzinfo=ET)
    b = a + dt.timedelta(days=1)
    return int(a.timestamp()) * 10**9, int(b.timestamp()) * 10**9


def config_hash(cfg: DetectorConfig, opts: Options, plugins: list[dict]) -> str:
    doc = {"detector": cfg.model_dump(mode="json"), "resolution": opts.resolution, "symbols": sorted(opts.symbols),
           "families": sorted(opts.families) if opts.families else None, "pivot_every": opts.pivot_every,
           "plugins": sorted((p["name"], p["version"]) for p in plugins)}
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()[:16]


def make_host(cfg: DetectorConfig, families: list[str] | None) -> PluginHost:
    host = PluginHost(max_failures=cfg.max_failures, budget_ms=1e9, max_slow=cfg.max_slow)
    if cfg.entry_points:
        host.load_entry_points(enabled=cfg.entry_points_enabled)
    for mod in cfg.plugins:
        host.load_module(mod)
    if families:
        for name in [n for n, p in host.plugins.items() if p.family not in families]:
            del host.plugins[name]
    return host


@dataclass(frozen=True)
class DayJob:
    """One trading day of one backtest: everything a worker process needs (picklable)."""

    url: str
    day: dt.date
    prev: dt.date | None  # the trading day before: its 1 s bars warm the session state up
    resolution: str
    symbols: tuple[str, ...]
    families: tuple[str, ...] | None
    pivot_every: int
    tag: str
    cfg: dict  # DetectorConfig fields
    profile: Profile | None


@dataclass
class DayResult:
    day: str
    used: dict
    transitions: list = field(default_factory=list)
    advice: list = field(default_factory=list)
    trades: list = field(default_factory=list)
    blocks: dict = field(default_factory=dict)
    trade_blocks: dict = field(default_factory=dict)  # selector and broker refusals (the trade model's)
    bars: int = 0
    ticks: int = 0
    excluded: int = 0  # trades the feed's trade rules keep out of bars (tick resolution)


def _day_bars(store: Store, symbols, d: dt.date, interval: str) -> tuple[dict[str, list], set[str]]:
    a, b = day_range(d)
    per: dict[str, list] = {}
    sources = set()
    for sym in symbols:
        bars = store.bars(sym, "1s", a, b)
        if bars:
            sources.add("store second bars")
        else:
            bars = store.bars(sym, "60s", a, b)
            if bars:
                sources.add("vendor minute bars (fallback)")
                bars = [msgspec.structs.replace(x, interval=interval) for x in bars]
        if bars:
            per[sym] = bars
    return per, sources


def run_day(job: DayJob) -> DayResult:
    """One trading day, independent of every other: a fresh engine warmed up on the day before's
    closed bars (prior-day levels, rolling windows, recent bars: no plugin runs on them), then the
    day's data. Deterministic: the same job on the same data gives the same result, in any process."""
    from spx_common.store import open_store

    cfg = DetectorConfig(**job.cfg)
    host = make_host(cfg, list(job.families) if job.families else None)
    bt = Backtester(cfg, host, pivot_every=job.pivot_every, tag=job.tag, profile=job.profile)
    store = open_store(job.url, migrate=False)
    excluded = 0
    try:
        if job.prev is not None:
            warm, _ = _day_bars(store, job.symbols, job.prev, cfg.interval)
            for bar in merge_bars(warm):
                bt.engine.warm(bar)
        if job.resolution == "tick":
            a, b = day_range(job.day)
            events = store.events(list(job.symbols), a, b)
            used = {"day": job.day.isoformat(), "source": "store ticks" if events else "missing",
                    "resolution": "tick", "rows": len(events)}
            if events:
                excluded = TradeRules().apply(events)  # the feed's trade rules, as live (docs/microbars.md)
                bt.on_events(events, BarAggregator([cfg.interval], l2=True))
        else:
            per, sources = _day_bars(store, job.symbols, job.day, cfg.interval)
            used = {"day": job.day.isoformat(), "resolution": "second" if sources == {"store second bars"} else
                    "minute" if sources == {"vendor minute bars (fallback)"} else "mixed" if sources else "none",
                    "source": ", ".join(sorted(sources)) or "missing", "rows": sum(len(v) for v in per.values())}
            # where the bars came from (spx_common.provenance): live, backfill, replay, synthetic
            a, b = day_range(job.day)
            iv = "1s" if "store second bars" in sources else "60s"
            used["provenance"] = store.bar_sources(list(job.symbols), iv, a, b) if sources else []
            for bar in merge_bars(per):
                bt.on_bar(bar)
    finally:
        store.close()
    bt.finish()
    return DayResult(day=job.day.isoformat(), used=used, transitions=bt.transitions, advice=bt.advice,
                     trades=[t.as_dict() for t in bt.trades], blocks=bt.blocks, bars=bt.bars_seen,
                     trade_blocks=dict(bt.trade.blocks),
                     ticks=bt.ticks_seen, excluded=excluded)


def execute(fn: Callable, jobs: list, *, workers: int = 1, executor=None,
            progress: Callable[[int, int, str], None] | None = None, label: Callable[[Any], str] = str) -> list:
    """``[fn(job) for job in jobs]`` in job order, on ``executor`` (any ``concurrent.futures``
    executor, e.g. a Dask cluster's), else on ``workers`` local processes (1: in this process)."""
    from concurrent.futures import ProcessPoolExecutor, as_completed
    from multiprocessing import get_context

    total = len(jobs)
    if progress:
        progress(0, total, "")
    if executor is None and (workers <= 1 or total <= 1):
        out = []
        for i, job in enumerate(jobs):
            out.append(fn(job))
            if progress:
                progress(i + 1, total, label(job))
        return out
    own = executor is None
    pool = executor or ProcessPoolExecutor(max_workers=min(workers, total), mp_context=get_context("spawn"))
    try:
        futures = {pool.submit(fn, job): i for i, job in enumerate(jobs)}
        results: list = [None] * total
        for n, fut in enumerate(as_completed(futures), 1):
            i = futures[fut]
            results[i] = fut.result()
            if progress:
                progress(n, total, label(jobs[i]))
        return results
    finally:
        if own:
            pool.shutdown()


def default_workers() -> int:
    import os

    return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1))


def plan(store: Store, opts: Options, cfg: DetectorConfig, tag: str) -> list[DayJob]:
    days = trading_days(opts.start, opts.end)
    url = store.engine.url.render_as_string(hide_password=False)
    profile = store.get_active_profile()
    prevs = trading_days(opts.start - dt.timedelta(days=10), opts.start - dt.timedelta(days=1))
    before = prevs[-1] if prevs else None
    jobs = []
    for d in days:
        jobs.append(DayJob(url=url, day=d, prev=before, resolution=opts.resolution, symbols=tuple(opts.symbols),
                           families=tuple(opts.families) if opts.families else None, pivot_every=opts.pivot_every,
                           tag=tag, cfg=cfg.model_dump(), profile=profile))
        before = d
    return jobs


def run(store: Store, opts: Options, cfg: DetectorConfig | None = None, *,
        progress: Callable[[int, int, str], None] | None = None, workers: int = 1, executor=None) -> dict:
    """The backtest's result document (deterministic for the same data, config and options, whatever
    ``workers`` or ``executor``: each trading day runs alone, warmed up on the day before)."""
    cfg = cfg or DetectorConfig()
    cfg = cfg.model_copy(update={"symbols": list(opts.symbols)})
    host = make_host(cfg, opts.families)
    plugins = [{"name": p["name"], "family": p["family"], "version": p["version"]} for p in host.describe()]
    chash = config_hash(cfg, opts, plugins)
    jobs = plan(store, opts, cfg, f"bt-{chash}")
    days = execute(run_day, jobs, workers=workers, executor=executor, progress=progress,
                   label=lambda j: j.day.isoformat())
    return assemble(store, opts, days, plugins, chash, jobs[0].profile if jobs else store.get_active_profile())


def assemble(store: Store | None, opts: Options, days: list[DayResult], plugins: list[dict], chash: str,
             profile: Profile) -> dict:
    """The result document from the days' results (in day order); records them unless ``opts.record``
    is off or there is no store."""
    trades = sorted((t for d in days for t in d.trades), key=lambda t: (t["exit_ns"] or 0, t["setup_id"]))
    transitions = [tr for d in days for tr in d.transitions]
    blocks: dict[str, int] = {}
    for d in days:
        for k, v in d.blocks.items():
            blocks[k] = blocks.get(k, 0) + v
    data = [d.used for d in days]
    fams = sorted({t["family"] for t in trades} | {p["family"] for p in plugins})
    fallback = any("fallback" in x["source"] for x in data)
    per_family = {f: st.summarize([t for t in trades if t["family"] == f]).as_dict() for f in fams}
    overall = st.summarize(trades).as_dict()
    if opts.baseline is not None:
        promotion = st.compare(trades, opts.baseline.get("trades", []), opts.criteria, fallback=fallback,
                               days=len(days), baseline_days=(opts.baseline.get("range") or {}).get("trading_days"))
    else:
        promotion = st.promotion_without_baseline(trades, opts.criteria, fallback=fallback)
    if opts.record and store is not None:
        store.record_transitions(transitions, source="backtest", run_id=f"bt-{chash}")
        store.record_trailing_stop([a for d in days for a in d.advice])
    return {
        "report_version": REPORT_VERSION,
        "range": {"from": opts.start.isoformat(), "to": opts.end.isoformat(), "trading_days": len(days)},
        "evidence": {"requested_resolution": opts.resolution, "data": data, "fallback_to_minute_bars": fallback,
                     "sample": {"bars": sum(d.bars for d in days), "ticks": sum(d.ticks for d in days),
                                "excluded_trades": sum(d.excluded for d in days),
                                "setups": len({t.setup_id for t in transitions}), "resolved_trades": len(trades)},
                     "config_hash": chash, "plugins": plugins, "symbols": sorted(opts.symbols),
                     "profile_version": profile.version,
                     "days": "each trading day runs alone, warmed up on the day before's closed bars",
                     "trade_model": "the live selector core, broker engine and paper broker "
                                    "(services/backtest/trading.py); option trades where an option chain and "
                                    "quotes were replayed, R on the underlying always"},
        "trade_blocks": _sum_counts(d.trade_blocks for d in days),
        "criteria": {"min_t1_delta_pp": opts.criteria.min_t1_delta_pp,
                     "min_expectancy_delta_r": opts.criteria.min_expectancy_delta_r,
                     "min_trades": opts.criteria.min_trades},
        "overall": overall, "families": per_family, "options": st.option_summary(trades), "blocks": dict(sorted(blocks.items())),
        "promotion": promotion, "trades": trades,
    }


def _sum_counts(counts) -> dict[str, int]:
    out: dict[str, int] = {}
    for c in counts:
        for k, v in c.items():
            out[k] = out.get(k, 0) + v
    return dict(sorted(out.items()))


def family_stats(result: dict) -> list[FamilyStats]:
    """The result as optimizer-profile statistics (for ``--apply-profile``)."""
    out = []
    for fam, s in result["families"].items():
        out.append(FamilyStats(family=fam, trades=s["trades"], t1_hits=s["t1_hits"], t2_hits=s["t2_hits"],
                               stops=s["stops"], sum_r=s["sum_r"]))
    return out


def write(result: dict, out_dir: Path) -> dict[str, Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"json": out_dir / "report.json", "md": out_dir / "report.md", "png": out_dir / "report.png"}
    paths["json"].write_text(json.dumps(result, sort_keys=True, indent=1) + "\n")
    paths["md"].write_text(rpt.markdown(result))
    rpt.picture(result, paths["png"])
    return paths


class Progress:
    """A one-line progress bar with ETA on stderr (silent when stderr is not a terminal and quiet)."""

    def __init__(self, stream=sys.stderr, width: int = 30, unit: str = "days") -> None:
        self.stream, self.width, self.t0, self.unit = stream, width, time.monotonic(), unit

    def __call__(self, done: int, total: int, what: str) -> None:
        frac = done / total if total else 1.0
        el = time.monotonic() - self.t0
        eta = el / frac - el if frac > 0 else 0.0
        bar = "#" * int(frac * self.width)
        eta_s = f"{eta:5.1f}s" if done else "    -"  # nothing done yet: no rate to project
        self.stream.write(f"\r[{bar:<{self.width}}] {done}/{total} {self.unit}  {what:<10}  "
                          f"elapsed {el:5.1f}s  eta {eta_s}")
        if done >= total:
            self.stream.write("\n")
        self.stream.flush()
