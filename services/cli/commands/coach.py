"""``spx coach stats``: how users answer the coach's alerts (the rollout plan's relevance gate)."""

from __future__ import annotations

import datetime as dt

from sqlalchemy.exc import SQLAlchemyError

from services.cli.common import RpcError, call, fail, print_json
from spx_common.calendar import ET
from spx_common.store import open_store


def register(sub) -> None:
    p = sub.add_parser("coach", help="coach alert answers: acknowledgment and dismiss rates per kind and day",
                       description="Alerts users acknowledged (useful) or dismissed (noise) on the dashboard or "
                       "with op: ack / op: dismiss, per alert kind: per New York day from the store (the "
                       "recorder keeps every alert and its first answer), and the coach's rolling rates now "
                       "(coach_alert_ack_rate / coach_alert_dismiss_rate). Cooldown tuning can read them "
                       "([coach] cooldown_s; docs/gateway.md).")
    sp = p.add_subparsers(dest="coach_cmd", metavar="ACTION", required=True)
    s = sp.add_parser("stats", help="answers per kind and day, and the live rolling rates")
    s.add_argument("--days", type=int, default=7, help="the last N days (default 7)")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_stats)


def cmd_stats(args) -> int:
    today = dt.datetime.now(ET).date()  # stats are kept per New York trading day, not the machine's date
    start = (today - dt.timedelta(days=max(1, args.days) - 1)).isoformat()
    try:
        store = open_store()
        try:
            rows = store.coach_stats(start, today.isoformat())
        finally:
            store.close()
    except SQLAlchemyError as exc:
        return fail(f"database unavailable: {exc}")
    live = None
    try:
        live = call("coach", "status", timeout_s=1.5).get("coach", {}).get("feedback")
    except RpcError:
        pass
    if args.json:
        print_json({"days": rows, "live": live})
        return 0
    if not rows:
        print(f"no coach alerts stored since {start}")
    else:
        width = max(len(r["kind"]) for r in rows)
        print(f"{'day':<10}  {'kind':<{width}}  {'alerts':>6}  {'acked':>5}  {'dismissed':>9}  {'ack rate':>8}  "
              f"{'dismiss rate':>12}")
        for r in rows:
            print(f"{r['day']:<10}  {r['kind']:<{width}}  {r['alerts']:>6}  {r['acked']:>5}  {r['dismissed']:>9}  "
                  f"{r['ack_rate']:>8.0%}  {r['dismiss_rate']:>12.0%}")
    if live and live.get("by_kind"):
        print(f"\nlive, alerts of the last {live['window_s'] / 3600:g} h (coach service):")
        for kind, r in sorted(live["by_kind"].items()):
            print(f"  {kind}: {r['sent']} sent, ack {r['ack_rate']:.0%}, dismiss {r['dismiss_rate']:.0%}")
    elif live is None:
        print("\n(coach service not answering: no live rates)")
    return 0
