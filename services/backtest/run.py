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
import heapq
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from collections.abc import Callable, Iterable

import msgspec
import os
from multiprocessing import get_context
from concurrent.futures import ProcessPoolExecutor, as_completed

from services.aggregator.bars import BarAggregator
from spx_common.marketrules import TradeRules
from services.backtest import report as rpt
from services.backtest import stats as st
from services.backtest.engine import Backtester, merge_bars
from services.backtest.trading import TradeModel, selector_config
from services.broker.config import BrokerConfig
from spx_common.models import IndexValue, Quote
from services.detector.config import DetectorConfig
from services.detector.host import PluginHost
from spx_common.calendar import ET, MarketCalendar
from spx_common.store import Store
from spx_common.store.profile import FamilyStats, Profile
from spx_common import journal

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
    #: the tick journal directory whose option quotes, index values and chain documents are replayed
    #: through the selector and the paper broker (None: no options side)
    journal: Path | None = None
    fee_per_contract: float = 0.0
    selector: dict = field(default_factory=dict)  # [selector] settings (SelectorConfig fields)
    broker: dict = field(default_factory=dict)  # [broker] settings (BrokerConfig fields, no secrets)


def trading_days(start: dt.date, end: dt.date) -> list[dt.date]:
    """NYSE/Cboe trading days (holidays excluded: ``spx_common.calendar``)."""

    return MarketCalendar().trading_days(start, end)


def day_range(d: dt.date) -> tuple[int, int]:
    a = dt.datetime(d.year, d.month, d.day, tzinfo=ET)
    b = a + dt.timedelta(days=1)
    return int(a.timestamp()) * 10**9, int(b.timestamp()) * 10**9


def config_hash(cfg: DetectorConfig, opts: Options, plugins: list[dict]) -> str:
    doc = {"detector": cfg.model_dump(mode="json"), "resolution": opts.resolution, "symbols": sorted(opts.symbols),
           "families": sorted(opts.families) if opts.families else None, "pivot_every": opts.pivot_every,
           "plugins": sorted((p["name"], p["version"]) for p in plugins)}
    if opts.journal or opts.fee_per_contract or opts.selector or opts.broker:  # (older hashes stay as they were)
        doc["trade_model"] = {"journal": bool(opts.journal), "fee": opts.fee_per_contract,
                              "selector": opts.selector, "broker": opts.broker}
    return hashlib.sha256(json.dumps(doc, sort_keys=True, default=str).encode()).hexdigest()[:16]


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


#: option quotes, index values and chain documents replayed per day at most (bounded memory); the rest of
#: a larger day is left out and the evidence says how much
MAX_OPTION_EVENTS = 5_000_000
MAX_CHAIN_DOCS = 50_000


def day_options(journal_dir: str | Path, day: dt.date) -> tuple[list, list[dict], dict]:
    """The options side of ``day`` from a tick journal: option quotes (``O:`` symbols) and index values in
    event-time order, the chain documents, and what was read (evidence)."""

    a, b = day_range(day)
    stats = journal.ReadStats()
    events: list = []
    dropped = 0
    for f in journal.day_files(journal_dir, day):
        for batch in journal.iter_batches(f, stats):
            for ev in batch:
                if not a <= ev.ts < b or not (ev.sym.startswith("O:") or type(ev) is IndexValue):
                    continue
                if type(ev) is not Quote and type(ev) is not IndexValue:
                    continue  # option trades: the paper broker fills on quotes only
                if len(events) >= MAX_OPTION_EVENTS:
                    dropped += 1
                    continue
                events.append(ev)
    docs = []
    for doc in journal.iter_docs(journal_dir, "chain", stats, day=day):
        ts = doc.get("ts")
        if isinstance(ts, int) and a <= ts < b:
            if len(docs) >= MAX_CHAIN_DOCS:
                dropped += 1
                continue
            docs.append(doc)
    events.sort(key=lambda e: e.ts)  # stable: batches keep their order within a time
    docs.sort(key=lambda d: d["ts"])
    used = {"source": "journal" if events or docs else "none", "option_quotes": sum(
        1 for e in events if type(e) is Quote), "index_values": sum(1 for e in events if type(e) is IndexValue),
        "chain_docs": len(docs), "left_out": dropped, "torn": stats.torn, "corrupt": stats.corrupt}
    return events, docs, used


def day_ticks(journal_dir: str | Path, day: dt.date, symbols: Iterable[str]) -> list:
    """The trades, quotes and index values of ``symbols`` on ``day`` from a tick journal, in stream order
    (at most :data:`MAX_OPTION_EVENTS`)."""

    a, b = day_range(day)
    wanted = set(symbols)
    out: list = []
    for f in journal.day_files(journal_dir, day):
        for batch in journal.iter_batches(f):
            for ev in batch:
                if ev.sym in wanted and a <= ev.ts < b:
                    out.append(ev)
                    if len(out) >= MAX_OPTION_EVENTS:
                        return out
    return out


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
    journal: str | None = None
    fee_per_contract: float = 0.0
    selector: dict = field(default_factory=dict)
    broker: dict = field(default_factory=dict)


@dataclass
class DayResult:
    day: str
    used: dict
    transitions: list = field(default_factory=list)
    advice: list = field(default_factory=list)
    trades: list = field(default_factory=list)
    blocks: dict = field(default_factory=dict)
    trade_blocks: dict = field(default_factory=dict)  # selector and broker refusals (the trade model's)
    orders: list = field(default_factory=list)  # the broker engine's orders, in their final state
    fills: list = field(default_factory=list)  # the paper broker's fills (the ledger's)
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
    model = TradeModel(selector_config(cfg.interval, job.pivot_every, **job.selector), BrokerConfig(**job.broker),
                       fee_per_contract=job.fee_per_contract)
    bt = Backtester(cfg, host, pivot_every=job.pivot_every, tag=job.tag, profile=job.profile, trade=model)
    opt_events: list = []
    docs: list[dict] = []
    options = {"source": "none"}
    if job.journal:
        opt_events, docs, options = day_options(job.journal, job.day)
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
            source = "store ticks"
            if not events and job.journal:  # the tick journal of a live or replayed run: every event it published
                events, source = day_ticks(job.journal, job.day, job.symbols), "journal ticks"
            used = {"day": job.day.isoformat(), "source": source if events else "missing",
                    "resolution": "tick", "rows": len(events)}
            if events:
                excluded = TradeRules().apply(events)  # the feed's trade rules, as live (docs/microbars.md)
                # option quotes join the stream; index values already are in it when the journal gave the ticks
                quotes = [e for e in opt_events if type(e) is Quote]
                merged = heapq.merge(events, quotes, key=lambda e: e.ts) if quotes else events
                bt.on_events(merged, BarAggregator([cfg.interval], l2=True), docs)
        else:
            per, sources = _day_bars(store, job.symbols, job.day, cfg.interval)
            used = {"day": job.day.isoformat(), "resolution": "second" if sources == {"store second bars"} else
                    "minute" if sources == {"vendor minute bars (fallback)"} else "mixed" if sources else "none",
                    "source": ", ".join(sorted(sources)) or "missing", "rows": sum(len(v) for v in per.values())}
            # where the bars came from (spx_common.provenance): live, backfill, replay, synthetic
            a, b = day_range(job.day)
            iv = "1s" if "store second bars" in sources else "60s"
            used["provenance"] = store.bar_sources(list(job.symbols), iv, a, b) if sources else []
            bt.on_seconds(merge_bars(per), opt_events, docs)
    finally:
        store.close()
    bt.finish()
    used["options"] = options
    return DayResult(day=job.day.isoformat(), used=used, transitions=bt.transitions, advice=bt.advice,
                     trades=[t.as_dict() for t in bt.trades], blocks=bt.blocks, bars=bt.bars_seen,
                     trade_blocks=dict(bt.trade.blocks), orders=bt.trade.final_orders(), fills=list(bt.trade.fills),
                     ticks=bt.ticks_seen, excluded=excluded)


def execute(fn: Callable, jobs: list, *, workers: int = 1, executor=None,
            progress: Callable[[int, int, str], None] | None = None, label: Callable[[Any], str] = str) -> list:
    """``[fn(job) for job in jobs]`` in job order, on ``executor`` (any ``concurrent.futures``
    executor, e.g. a Dask cluster's), else on ``workers`` local processes (1: in this process)."""

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
                           tag=tag, cfg=cfg.model_dump(), profile=profile,
                           journal=str(opts.journal) if opts.journal else None,
                           fee_per_contract=opts.fee_per_contract, selector=dict(opts.selector),
                           broker=dict(opts.broker)))
        before = d
    return jobs


def run(store: Store, opts: Options, cfg: DetectorConfig | None = None, *,
        progress: Callable[[int, int, str], None] | None = None, workers: int = 1, executor=None) -> dict:
    """The backtest's result document (deterministic for the same data, config and options, whatever
    ``workers`` or ``executor``: each trading day runs alone, warmed up on the day before)."""
    days, plugins, chash, jobs = run_days(store, opts, cfg, progress=progress, workers=workers, executor=executor)
    return assemble(store, opts, days, plugins, chash, jobs[0].profile if jobs else store.get_active_profile())


def run_days(store: Store, opts: Options, cfg: DetectorConfig | None = None, *,
             progress: Callable[[int, int, str], None] | None = None, workers: int = 1,
             executor=None) -> tuple[list[DayResult], list[dict], str, list[DayJob]]:
    """Every trading day's result (in day order), the plugins, the config hash and the jobs."""
    cfg = cfg or DetectorConfig()
    cfg = cfg.model_copy(update={"symbols": list(opts.symbols)})
    host = make_host(cfg, opts.families)
    plugins = [{"name": p["name"], "family": p["family"], "version": p["version"]} for p in host.describe()]
    chash = config_hash(cfg, opts, plugins)
    jobs = plan(store, opts, cfg, f"bt-{chash}")
    days = execute(run_day, jobs, workers=workers, executor=executor, progress=progress,
                   label=lambda j: j.day.isoformat())
    return days, plugins, chash, jobs


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
        # the option side too, so a backtest is a stored run like a live or replayed one (spx backtest --parity)
        store.record_orders([o for d in days for o in d.orders], source="backtest", run_id=f"bt-{chash}")
        store.record_fills([f for d in days for f in d.fills], source="backtest", run_id=f"bt-{chash}")
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
                     "paper_slippage_per_share": float(opts.broker.get("paper_slippage", 0.0)),
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
        # net of modelled slippage: the profile's expectancy floor is judged on what the fills would have kept
        net = s["sum_r"] - s.get("slippage_r", 0.0) * s["trades"]
        out.append(FamilyStats(family=fam, trades=s["trades"], t1_hits=s["t1_hits"], t2_hits=s["t2_hits"],
                               stops=s["stops"], sum_r=round(net, 6)))
    return out


def write(result: dict, out_dir: Path) -> dict[str, Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"json": out_dir / "report.json", "md": out_dir / "report.md", "png": out_dir / "report.png"}
    paths["json"].write_text(json.dumps(result, sort_keys=True, indent=1) + "\n")
    paths["md"].write_text(rpt.markdown(result))
    rpt.picture(result, paths["png"])
    return paths
