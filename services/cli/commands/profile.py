"""``spx profile show|history|revert|set``: the optimizer profile (per-family enable/quarantine, floors)."""

from __future__ import annotations

import msgspec
from sqlalchemy.exc import SQLAlchemyError

from services.cli.common import fail, print_json
from spx_common.store import open_store
from spx_common.store.profile import Profile


def register(sub) -> None:
    p = sub.add_parser("profile", help="optimizer profile: show, history, revert, enable/disable/floors",
                       description="Each change saves a new version; revert copies an old version forward.")
    sp = p.add_subparsers(dest="profile_cmd", metavar="ACTION", required=True)
    s = sp.add_parser("show", help="the active profile")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_show)
    h = sp.add_parser("history", help="saved versions, newest first")
    h.add_argument("--limit", type=int, default=20)
    h.set_defaults(func=cmd_history)
    r = sp.add_parser("revert", help="make VERSION active again (saved as a new version)")
    r.add_argument("version", type=int)
    r.set_defaults(func=cmd_revert)
    f = sp.add_parser("set", help="change one family (enable, disable, quarantine, release) or floors")
    f.add_argument("family", help="setup family, or 'defaults' for the default floors")
    f.add_argument("--enable", dest="enabled", action="store_const", const=True)
    f.add_argument("--disable", dest="enabled", action="store_const", const=False)
    f.add_argument("--quarantine", dest="quarantined", action="store_const", const=True)
    f.add_argument("--release", dest="quarantined", action="store_const", const=False)
    f.add_argument("--min-t1-hit-rate", type=float)
    f.add_argument("--min-expectancy-r", type=float)
    f.add_argument("--min-trades", type=int)
    f.add_argument("--reason", default="manual change")
    f.set_defaults(func=cmd_set)


def _describe(p: Profile) -> str:
    d = p.defaults
    lines = [f"profile version {p.version} by {p.author}: {p.reason}",
             f"  defaults: min T1 hit rate {d.min_t1_hit_rate:.2f}, min expectancy {d.min_expectancy_r:+.2f} R, "
             f"min trades {d.min_trades}; unnamed families {'enabled' if p.default_enabled else 'disabled'}"]
    for fam, pol in sorted(p.families.items()):
        state = "QUARANTINED" if pol.quarantined else ("enabled" if pol.enabled else "disabled")
        fl = f" floors {msgspec.to_builtins(pol.floors)}" if pol.floors else ""
        lines.append(f"  {fam:<20} {state}{fl}{'  (' + pol.reason + ')' if pol.reason else ''}")
    return "\n".join(lines)


def _open():
    return open_store()


def cmd_show(args) -> int:
    try:
        store = _open()
        p = store.get_active_profile()
        store.close()
    except SQLAlchemyError as exc:
        return fail(f"database unavailable: {type(exc).__name__}")
    if args.json:
        print_json(msgspec.to_builtins(p))
    else:
        print(_describe(p))
    return 0


def cmd_history(args) -> int:
    try:
        store = _open()
        hist = store.profile_history(args.limit)
        store.close()
    except SQLAlchemyError as exc:
        return fail(f"database unavailable: {type(exc).__name__}")
    if not hist:
        print("no saved profile (the built-in default is active)")
    for p in hist:
        q = sorted(f for f, pol in p.families.items() if pol.quarantined)
        print(f"v{p.version:<4} {p.author:<8} {p.reason}" + (f"  quarantined: {', '.join(q)}" if q else ""))
    return 0


def cmd_revert(args) -> int:
    try:
        store = _open()
        try:
            p = store.revert_profile(args.version)
        finally:
            store.close()
    except KeyError as exc:
        return fail(str(exc.args[0]), 2)
    except SQLAlchemyError as exc:
        return fail(f"database unavailable: {type(exc).__name__}")
    print(f"reverted: version {p.version} is a copy of version {args.version}")
    return 0


def cmd_set(args) -> int:
    floors_kw = {k: v for k, v in (("min_t1_hit_rate", args.min_t1_hit_rate),
                                   ("min_expectancy_r", args.min_expectancy_r),
                                   ("min_trades", args.min_trades)) if v is not None}
    try:
        store = _open()
        try:
            p = store.get_active_profile()
            if args.family == "defaults":
                new = msgspec.structs.replace(p, defaults=msgspec.structs.replace(p.defaults, **floors_kw))
            else:
                pol = p.policy(args.family)
                if floors_kw:
                    pol = msgspec.structs.replace(pol, floors=msgspec.structs.replace(pol.floors or p.defaults,
                                                                                     **floors_kw))
                if args.enabled is not None:
                    pol = msgspec.structs.replace(pol, enabled=args.enabled)
                if args.quarantined is not None:
                    pol = msgspec.structs.replace(pol, quarantined=args.quarantined,
                                                  reason=args.reason if args.quarantined else "")
                new = msgspec.structs.replace(p, families={**p.families, args.family: pol})
            saved = store.save_profile(new, author="cli", reason=f"{args.family}: {args.reason}")
        finally:
            store.close()
    except SQLAlchemyError as exc:
        return fail(f"database unavailable: {type(exc).__name__}")
    print(_describe(saved))
    return 0

