"""``spx backtest FROM TO``: replay stored data through the live detector host, lifecycle, selector, broker
engine and paper fills; report per family; compare with a baseline; decide promotion. ``--parity RUN_ID``:
re-run a stored run's window and list every difference (services/backtest/parity.py)."""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
from pathlib import Path

from sqlalchemy.exc import SQLAlchemyError

from services.cli.common import Progress, fail
from services.detector.config import DetectorConfig
from spx_common.calendar import ET
from spx_common.config import ConfigError, load
from spx_common.store import open_store


def _date(text: str) -> dt.date:
    try:
        return dt.date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a date like 2026-11-20") from None


def _parity(args, store, opts, cfg, workers: int, progress) -> int:
    """``--parity RUN_ID``: re-run the stored run's window and compare (services/backtest/parity.py)."""
    from services.backtest import parity
    from services.backtest import run as bt

    run_id = str(args.parity)
    recorded = store.run_rows(run_id)
    win = parity.window(recorded)
    if win is None:
        return fail(f"run {run_id!r} recorded no transitions, orders or fills in this store")
    opts.start, opts.end, opts.record, opts.baseline = win[0], win[1], False, None
    days, _, chash, _ = bt.run_days(store, opts, cfg, progress=progress, workers=workers)
    mine, users = parity.one_user(recorded)
    doc = parity.compare(mine, parity.rerun_rows(days), tolerance_ns=int(args.parity_tolerance_ms * 1e6))
    doc.update(run_id=run_id, window=[win[0].isoformat(), win[1].isoformat()], users=users, config_hash=chash,
               compared_user=users[0] if users else None)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "parity.json").write_text(json.dumps(doc, sort_keys=True, indent=1, default=str) + "\n")
    print(parity.text(doc))
    if len(users) > 1:
        print(f"(orders and fills of {users[0]} compared; the run also traded for {', '.join(users[1:])})",
              file=sys.stderr)
    return 0 if doc["agree"] else 1


def trade_settings() -> tuple[dict, dict]:
    """The configured ``[selector]`` settings and the trade-relevant ``[broker]`` ones (the trade model's)."""
    from services.backtest.trading import broker_settings
    from services.broker.config import BrokerConfig
    from services.selector.config import SelectorConfig

    skip = {"price_interval", "bar_interval"}  # the backtest's own bars (the detectors' interval, --pivot)
    sel, sel0 = (c.model_dump(mode="json", exclude=skip) for c in (load(SelectorConfig), SelectorConfig()))
    brk, brk0 = broker_settings(load(BrokerConfig)), broker_settings(BrokerConfig())
    # only what differs from the defaults: the config hash of an unconfigured run stays what it was
    return {k: v for k, v in sel.items() if v != sel0[k]}, {k: v for k, v in brk.items() if v != brk0[k]}


def slippage_per_share(text: str) -> float:
    """``--slippage``: a number of dollars per share in [0, 5], or ``live`` (the running broker's rolling realized
    slippage: mean of its fills against the mid at decision, at least 0). ValueError with the reason."""
    if text == "live":
        from services.cli.common import call
        from spx_common.bus import RpcError

        try:
            stats = call("broker", "slippage", timeout_s=2.0)
        except (RpcError, TimeoutError, OSError) as exc:
            raise ValueError(f"--slippage live: the broker did not answer ({exc})") from None
        mean = stats.get("mean") if isinstance(stats, dict) else None
        if not isinstance(mean, (int, float)) or not stats.get("count"):
            raise ValueError("--slippage live: the broker has no realized slippage yet (no fills)")
        return round(min(max(float(mean), 0.0), 5.0), 4)
    try:
        v = float(text)
    except ValueError:
        raise ValueError(f"--slippage must be dollars per share or 'live', not {text!r}") from None
    if not 0 <= v <= 5:
        raise ValueError(f"--slippage must be within [0, 5] dollars per share, not {v}")
    return v


def register(sub) -> None:
    p = sub.add_parser(
        "backtest", help="replay stored bars/ticks through the detectors; report, compare, promote",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Replays stored data (second bars, or trades and quotes with --resolution tick) day by day\n"
                    "through the same detector host, gating, lifecycle, selector, broker engine and paper fills\n"
                    "as the live mesh (--journal: the recorded option chains and quotes are traded too).\n"
                    "Writes report.md, report.png and report.json to --out, and the setup instances (source\n"
                    "'backtest') to the store. Deterministic: the same data and config give identical JSON.\n\n"
                    "Promotion (needs --baseline) by confidence, not point deltas: the 95% lower bound of the\n"
                    "T1-rate delta >= +1.0 pp and of the expectancy delta >= +0.05 R, at least --min-trades\n"
                    "resolved trades, trades per day >= --min-throughput-share of the baseline's, and no day on\n"
                    "vendor minute-bar fallback (docs/backtest.md).",
        epilog="examples:\n  spx backtest 2026-11-16 2026-11-20 --save-baseline base.json\n"
               "  spx backtest 2026-11-16 2026-11-20 --baseline base.json --out run2\n"
               "  spx backtest 2026-11-20 2026-11-20 --resolution tick --families orb,vwap\n"
               "  spx backtest 2026-11-20 2026-11-20 --journal auto --fee-per-contract 0.65 --slippage 0.02\n"
               "  spx backtest --parity 20261120T143000Z-a1b2c3 --resolution tick --journal auto")
    p.add_argument("start", type=_date, metavar="FROM", nargs="?", help="first day (YYYY-MM-DD, New York)")
    p.add_argument("end", type=_date, metavar="TO", nargs="?", help="last day, inclusive")
    p.add_argument("--parity", metavar="RUN_ID",
                   help="instead of FROM TO: re-run the window of the stored run RUN_ID (live, replay or backtest) and "
                        "list every difference in transitions, orders and fills (exit 1 when any); writes parity.json "
                        "to --out")
    p.add_argument("--parity-tolerance-ms", type=float, default=0.0, metavar="MS",
                   help="event-time differences of transitions and orders up to this are not differences (default 0)")
    p.add_argument("--resolution", choices=("second", "tick"), default="second",
                   help="second: stored 1s bars (minute-bar fallback is reported and blocks promotion); "
                        "tick: stored trades and quotes through the live aggregator (default: second)")
    p.add_argument("--symbols", default="SPY,I:SPX", help="comma-separated (default SPY,I:SPX)")
    p.add_argument("--families", help="only these setup families (comma-separated)")
    p.add_argument("--out", type=Path, default=Path("backtest-report"), help="report directory (default ./backtest-report)")
    p.add_argument("--baseline", type=Path, help="a report.json (or --save-baseline file) to compare with")
    p.add_argument("--save-baseline", type=Path, help="also save this run's result as a baseline file")
    p.add_argument("--min-trades", type=int, default=30, help="minimum resolved trades to promote (default 30)")
    p.add_argument("--min-throughput-share", type=float, default=0.8, metavar="SHARE",
                   help="trades per day must be at least this share of the baseline's to promote (default 0.8)")
    p.add_argument("--journal", metavar="DIR",
                   help="replay the options side from this tick journal (option quotes and chain snapshots; 'auto' = "
                        "the runtime's journal): the live selector picks and sizes contracts, the broker engine trades "
                        "them and the paper broker fills on the replayed quotes (docs/backtest.md)")
    p.add_argument("--fee-per-contract", type=float, default=0.0, metavar="USD",
                   help="dollars per option contract bought or sold, taken off the option P&L (default 0)")
    p.add_argument("--slippage", metavar="USD|live",
                   help="slippage per share added to every paper fill (buys above the ask, sells below the bid) instead "
                        "of [broker] paper_slippage; 'live' = the running broker's rolling realized slippage against "
                        "the mid (its mean, at least 0)")
    p.add_argument("--apply-profile", action="store_true",
                   help="re-quarantine families failing their optimizer-profile floors in this backtest")
    p.add_argument("--no-record", action="store_true", help="do not write setup instances to the store")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--workers", type=int, default=0, metavar="N",
                   help="trading days run in parallel on N local processes (default: every core; 1: in this process)")
    p.add_argument("--sweep", type=Path, metavar="PARAMS.toml",
                   help="run every parameter set of this file over the days on Dask (docs/backtest.md) and write "
                        "sweep.html, sweep.png and sweep.json to --out; the first set is the baseline")
    p.add_argument("--cluster", metavar="ADDRESS",
                   help="a running Dask scheduler (tcp://host:8786) to run the days (or the sweep) on; default: "
                        "this machine's cores")
    p.set_defaults(func=cmd_backtest)


def cmd_backtest(args) -> int:
    from services.backtest import run as bt
    from services.backtest.stats import Criteria

    if args.parity:
        if args.start is not None:
            return fail("--parity RUN_ID takes its window from the run: give no FROM TO")
    elif args.start is None or args.end is None:
        return fail("give FROM and TO (or --parity RUN_ID)")
    elif args.end < args.start:
        return fail(f"TO ({args.end}) is before FROM ({args.start})")
    if not (0 <= args.parity_tolerance_ms <= 3_600_000):
        return fail("--parity-tolerance-ms must be within [0, 3600000]")
    baseline = None
    if args.baseline:
        try:
            baseline = json.loads(args.baseline.read_text())
        except (OSError, ValueError) as exc:
            return fail(f"cannot read baseline {args.baseline}: {exc}")
        if not isinstance(baseline, dict) or not isinstance(baseline.get("trades"), list):
            return fail(f"{args.baseline} is not a backtest result (no 'trades' list)")
    # without dates: today's session; --parity replaces the window with the recorded run's (_parity)
    today = dt.datetime.now(ET).date()  # the New York trading day, not the machine's (UTC) date
    opts = bt.Options(start=args.start or today, end=args.end or today,
                      resolution=args.resolution,
                      symbols=[s for s in args.symbols.split(",") if s],
                      families=[f for f in args.families.split(",") if f] if args.families else None,
                      criteria=Criteria(min_trades=args.min_trades,
                                        min_throughput_share=args.min_throughput_share), baseline=baseline, record=not args.no_record)
    if not (args.fee_per_contract >= 0 and args.fee_per_contract < 1000):
        return fail(f"--fee-per-contract must be a number of dollars in [0, 1000), not {args.fee_per_contract}")
    try:
        opts.selector, opts.broker = trade_settings()
    except ConfigError as exc:
        return fail(str(exc))
    opts.fee_per_contract = args.fee_per_contract
    if args.slippage is not None:
        try:
            opts.broker["paper_slippage"] = slippage_per_share(args.slippage)
        except ValueError as exc:
            return fail(str(exc))
    if args.journal:
        if args.journal == "auto":
            from spx_common.config import RuntimeConfig

            opts.journal = load(RuntimeConfig).path("journal")
        else:
            opts.journal = Path(args.journal)
        if not opts.journal.is_dir():
            return fail(f"no tick journal directory at {opts.journal}")
    try:
        store = open_store()
    except SQLAlchemyError as exc:
        return fail(f"database unavailable: {exc}")
    try:
        try:
            cfg = load(DetectorConfig)
        except ConfigError as exc:
            return fail(str(exc))
        progress = None if args.quiet else Progress()
        workers = args.workers or bt.default_workers()
        if args.parity:
            return _parity(args, store, opts, cfg, workers, progress)
        if args.sweep:
            if progress is not None:
                progress.unit = "jobs"  # a sweep counts (set, day) jobs, not days
            return _sweep(args, store, opts, cfg, workers, progress)
        if args.cluster:
            from distributed import Client

            client = Client(args.cluster)
            try:
                result = bt.run(store, opts, cfg, progress=progress, executor=client.get_executor())
            finally:
                client.close()
        else:
            result = bt.run(store, opts, cfg, progress=progress, workers=workers)
        if args.apply_profile:
            last = max((t["exit_ns"] or 0 for t in result["trades"]), default=0)
            used = sorted({d["source"] for d in result["evidence"]["data"]})
            window = (f"backtest {args.start}..{args.end} (data: {', '.join(used)}; "
                      f"config {result['evidence']['config_hash']})")
            changes = store.requarantine(last, 0, window=window, stats=bt.family_stats(result))
            result["profile_changes"] = changes
    finally:
        store.close()
    paths = bt.write(result, args.out)
    if args.save_baseline:
        args.save_baseline.write_text(json.dumps(result, sort_keys=True, indent=1) + "\n")
    o, pr = result["overall"], result["promotion"]
    sample = result["evidence"]["sample"]
    for d in result["evidence"]["data"]:
        prov = ", ".join(d.get("provenance", []))
        print(f"{d['day']}: {d['rows']:,} rows, {d['source']}{f' ({prov})' if prov else ''}, resolution {d['resolution']}")
    print(f"{sample['bars']:,} bars, {sample['ticks']:,} ticks, {sample['setups']} setups")
    print(f"{o['trades']} resolved trades: T1 {o['t1_rate']:.1%}  T2 {o['t2_rate']:.1%}  "
          f"expectancy {o['expectancy_r']:+.3f} R  max drawdown {o['max_drawdown_r']:.2f} R")
    opt = result.get("options") or {}
    if opt.get("trades"):
        print(f"{opt['trades']} option trades: P&L ${opt['pnl_usd']:,.2f} (fees ${opt['fees_usd']:,.2f}), slippage "
              f"against the mid ${opt['slippage_usd']:,.2f}; expectancy net of slippage "
              f"{o.get('expectancy_net_r', o['expectancy_r']):+.3f} R")
    print("PROMOTE" if pr["promote"] else "REFUSED: " + "; ".join(pr["refusals"]))
    for k, v in result.get("profile_changes", {}).items():
        print(f"quarantined {k}: {v}")
    print(f"report: {paths['md']}  {paths['png']}  {paths['json']}", file=sys.stderr)
    data = result["evidence"]["data"]
    missing = sorted({d["day"] for d in data if d["source"] == "missing"})
    if missing:
        what = "trades/quotes" if args.resolution == "tick" else "1s or 60s bars"
        print(f"spx: no stored data for {_plural(len(missing), 'day')} of {_plural(len({d['day'] for d in data}), 'day')}"
              f" ({', '.join(missing)}): no {what} of {args.symbols} in the store; import them with 'spx backfill "
              "FROM TO' or 'spx backfill --flat-file PATH', or run the mesh on that day (the recorder stores "
              "the 1s bars of [store] record_bar_symbols)", file=sys.stderr)
        if len(missing) == len({d["day"] for d in data}):
            return 1  # nothing was tested: a report of zero trades must not read as a result
    return 0


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def _sweep(args, store, opts, cfg, workers: int, progress) -> int:
    from services.backtest import sweep as sw

    try:
        sets = sw.load_sweep(args.sweep)
        doc = sw.run_sweep(store, opts, cfg, sets, cluster=args.cluster, workers=workers, progress=progress)
    except sw.SweepError as exc:
        return fail(str(exc))
    paths = sw.write(doc, args.out)
    width = max(len(s["name"]) for s in doc["sets"])
    n_sets, n_days = len(doc["sets"]), doc["range"]["trading_days"]
    print(f"{doc['jobs']} jobs ({_plural(n_sets, 'set')} x {_plural(n_days, 'day')}) on {doc['engine']}")
    print(f"{'set':<{width}}  {'trades':>6}  {'T1':>6}  {'T2':>6}  {'exp R':>7}  decision vs first")
    for s in doc["sets"]:
        o, v = s["result"]["overall"], s["versus_first"]
        decision = "baseline" if v is None else ("PROMOTE" if v["promote"] else "refused: " + "; ".join(v["refusals"]))
        print(f"{s['name']:<{width}}  {o['trades']:>6}  {o['t1_rate']:>6.1%}  {o['t2_rate']:>6.1%}  "
              f"{o['expectancy_r']:>+7.3f}  {decision}")
    print(f"report: {paths['html']}  {paths['png']}  {paths['json']}", file=sys.stderr)
    return 0

