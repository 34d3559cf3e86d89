"""``spx feed status|journal``: the feed's health and the tick journal's contents."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

from spx_common.calendar import ET
from services.cli.common import RpcError, call, configs, fail, print_json



def register(sub) -> None:
    p = sub.add_parser("feed", help="feed health (mode, streams, drops) and tick journal contents")
    fs = p.add_subparsers(dest="feed_cmd", metavar="SUBCOMMAND")
    s = fs.add_parser("status", help="mode, connection, per-market streams, drops, journal (asks the running feed)")
    s.add_argument("--json", action="store_true", help="print the raw status document")
    s.set_defaults(func=cmd_status)
    j = fs.add_parser("journal", help="list journal files with event counts and time ranges")
    j.add_argument("path", nargs="?", help="journal file or directory (default <run_dir>/journal)")
    j.set_defaults(func=cmd_journal)
    p.set_defaults(func=lambda args: (p.print_help(), 0)[1])


def cmd_status(args) -> int:
    try:
        st = call("feed", "feed.status", timeout_s=2.0)
    except RpcError as exc:
        return fail(f"feed not answering: {exc}")
    if args.json:
        print_json(st)
        return 0
    print(f"mode {st['mode']}  source {st['source']}  connected {st['connected']}  reconnects {st['reconnects']}")
    print(f"published {st['published']:,} events  drops {st['drops'] or 'none'}")
    if st.get("event_ns"):
        print("event time", dt.datetime.fromtimestamp(st["event_ns"] // 10**9, ET).strftime("%Y-%m-%d %H:%M:%S ET"))
    live = st.get("live")
    if live:
        if live.get("fatal"):
            print("FATAL:", live["fatal"])
        for market, s in live["streams"].items():
            print(f"  {market:<8} connected={s['connected']} topics={s['topics']} acked={s['acked']} "
                  f"reconnects={s['reconnects']} evictions={s['evictions']} {s['last_status'] or s['last_error']}")
    av = st.get("availability")
    if av and av.get("pct") is not None:
        print(f"availability {av['day']}: {av['pct']:.2f}% of {av['elapsed_s']:,} session seconds so far"
              f"{_gap(av)}  (SLO > 99.5%)")
    for day in reversed(st.get("availability_days") or []):
        print(f"  {day['day']}: {day['pct']:.2f}% of {day['session_s']:,} s{_gap(day)}")
    if st.get("journal"):
        j = st["journal"]
        print(f"journal {j['dir']}: written {j['written']:,}, pending {j['pending']}, dropped {j['dropped']}, "
              f"errors {j['errors']}")
    return 0


def _gap(day: dict) -> str:
    if not day.get("longest_gap_s"):
        return ", no gap"
    at = dt.datetime.fromtimestamp(day["longest_gap_start_ns"] // 10**9, ET).strftime("%H:%M:%S ET")
    return f", longest gap {day['longest_gap_s']:,} s from {at}"


def cmd_journal(args) -> int:
    from spx_common import journal

    runtime, _ = configs()
    path = Path(args.path) if args.path else runtime.path("journal")
    try:
        files = journal.journal_files(path)
    except FileNotFoundError as exc:
        return fail(str(exc))
    if not files:
        print(f"no journal files in {path}")
        return 0
    for f in files:
        stats = journal.ReadStats()
        first = last = None
        syms: set[str] = set()
        for batch in journal.iter_batches(f, stats):
            first = first if first is not None else batch[0].ts
            last = batch[-1].ts
            syms.update(e.sym for e in batch)

        def fmt(ns):
            return "-" if ns is None else dt.datetime.fromtimestamp(ns // 10**9, ET).strftime("%H:%M:%S")

        extra = f"  (skipped torn {stats.torn}, corrupt {stats.corrupt})" if stats.torn or stats.corrupt else ""
        print(f"{f.name:<24} {stats.events:>12,} events  {fmt(first)}-{fmt(last)} ET  {len(syms)} symbols{extra}")
    return 0
