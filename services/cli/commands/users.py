"""``spx users add|list|show|set|disable`` and ``spx users credentials set|test|remove|status USER``.

Users live in the store (``users`` table). With no users there, the broker keeps trading for its
config lists (``[broker] users``/``paper_users``) exactly as before. Tokens are read from stdin (or a
prompt, or ``--token-env NAME``), sealed with the credentials key ring, and never printed.
"""

from __future__ import annotations

import json
import os
import sys
import time

from services.cli.common import configs, fail, print_json
from spx_common.crypto import CryptoError, KeyRing
from spx_common.store.users import UserError

SETTINGS = {
    "display_name": ("--name", str, "display name"),
    "max_risk_per_trade": ("--max-risk", str, "dollars lost per trade if its stop is hit (the budget entries are sized from)"),
    "max_contracts": ("--max-contracts", str, "max contracts per order"),
    "daily_loss_limit": ("--daily-loss", str, "daily realized loss limit, dollars (no new entries past it)"),
    "day_trading_policy": ("--day-trading", str, "alert (PDT / day-trade buying power alerts), block (also refuse 0DTE entries when not PDT-qualified) or off"),
    "auto_execution": ("--auto-execution", str, "on/off: opt in to automatic orders (default off)"),
    "broker": ("--broker", str, "paper or tradier"),
    "environment": ("--environment", str, "sandbox or production (tradier)"),
    "coach": ("--coach", str, 'coach preferences as JSON: {"channels":[...],"kinds":[...],'
              '"min_severity":"info|warning|critical","quiet":false}'),
}


def _settings_args(p) -> None:
    for key, (flag, typ, help_) in SETTINGS.items():
        p.add_argument(flag, dest=key, type=typ, default=None, help=help_)


def register(sub) -> None:
    p = sub.add_parser("users", help="traders: risk settings, auto-execution opt-in, broker credentials",
                       description="User records in the store; the broker reads enabled users at start.")
    sp = p.add_subparsers(dest="users_cmd", metavar="ACTION", required=True)
    a = sp.add_parser("add", help="create a user (auto-execution off unless --auto-execution on)")
    a.add_argument("user")
    _settings_args(a)
    a.set_defaults(func=cmd_add)
    ls = sp.add_parser("list", help="all users")
    ls.add_argument("--json", action="store_true")
    ls.set_defaults(func=cmd_list)
    sh = sp.add_parser("show", help="one user's settings and credential status")
    sh.add_argument("user")
    sh.add_argument("--json", action="store_true")
    sh.set_defaults(func=cmd_show)
    s = sp.add_parser("set", help="change settings of a user")
    s.add_argument("user")
    _settings_args(s)
    s.add_argument("--enable", dest="enabled", action="store_const", const=True, default=None)
    s.set_defaults(func=cmd_set)
    d = sp.add_parser("disable", help="stop trading for a user (the record and credentials are kept)")
    d.add_argument("user")
    d.set_defaults(func=cmd_disable)
    c = sp.add_parser("credentials", help="the user's Tradier token: set, test, remove, status")
    csp = c.add_subparsers(dest="cred_cmd", metavar="ACTION", required=True)
    cs = csp.add_parser("set", help="token from stdin, a prompt or --token-env; sealed into the store")
    cs.add_argument("user")
    cs.add_argument("--account", required=True, help="Tradier account id")
    cs.add_argument("--token-env", help="read the token from this environment variable")
    cs.set_defaults(func=cmd_cred_set)
    ct = csp.add_parser("test", help="fetch balances with the stored token; account type and buying power")
    ct.add_argument("user")
    ct.set_defaults(func=cmd_cred_test)
    cr = csp.add_parser("remove", help="delete the stored token")
    cr.add_argument("user")
    cr.set_defaults(func=cmd_cred_remove)
    cst = csp.add_parser("status", help="environment, last successful call, whether execution is allowed")
    cst.add_argument("user")
    cst.add_argument("--json", action="store_true")
    cst.set_defaults(func=cmd_cred_status)


def _store():
    from services.broker import credentials

    runtime, _ = configs()
    return credentials.open_for_cli(runtime)


def _fields(args) -> dict:
    out = {k: getattr(args, k) for k in SETTINGS if getattr(args, k, None) is not None}
    if getattr(args, "enabled", None) is not None:
        out["enabled"] = args.enabled
    if "coach" in out:
        try:
            out["coach"] = json.loads(out["coach"])
        except json.JSONDecodeError as exc:
            raise UserError(f"coach: not JSON ({exc.msg})") from None
    return out


def _ts(ns) -> str:
    return "never" if not ns else time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(ns / 1e9))


def _line(u: dict) -> str:
    return (f"{u['user']:<14} {'enabled ' if u['enabled'] else 'DISABLED'} {u['broker']:<7} {u['environment']:<10} "
            f"auto-exec {'ON ' if u['auto_execution'] else 'off'}  max risk ${u['max_risk_per_trade']:,.0f}/trade  "
            f"max {u['max_contracts']} contracts  daily loss ${u['daily_loss_limit']:,.0f}  "
            f"day-trading {u['day_trading_policy']}")


def cmd_add(args) -> int:
    store = _store()
    try:
        u = store.add_user(args.user, **_fields(args))
    except UserError as exc:
        return fail(str(exc), 2)
    finally:
        store.close()
    print("added " + _line(u))
    return 0


def cmd_list(args) -> int:
    store = _store()
    try:
        rows = store.users()
    finally:
        store.close()
    if args.json:
        print_json(rows)
    elif not rows:
        print("no users in the store: the broker trades for its config lists ([broker] users / paper_users)")
    for u in rows if not args.json else []:
        print(_line(u))
    return 0


def cmd_show(args) -> int:
    store = _store()
    try:
        u = store.user(args.user)
        cred = store.credentials(args.user, "tradier") if u else None
    finally:
        store.close()
    if u is None:
        return fail(f"no user {args.user!r} (add it with 'spx users add')", 2)
    u = {**u, "credentials_stored": cred is not None, "account_id": cred.get("account_id") if cred else None}
    if args.json:
        print_json(u)
        return 0
    print(_line(u))
    print(f"{'':<14} name {u['display_name']!r}  coach {json.dumps(u['coach'], sort_keys=True)}")
    print(f"{'':<14} credentials {'stored (account ' + str(u['account_id']) + ')' if cred else 'none'}  "
          f"last ok {_ts(u['last_ok_ns'])}" + (f"  last error {u['last_error']}" if u["last_error"] else ""))
    return 0


def cmd_set(args) -> int:
    store = _store()
    try:
        fields = _fields(args)
        if not fields:
            return fail("nothing to change: give at least one setting (see 'spx users set -h')", 2)
        u = store.update_user(args.user, **fields)
    except UserError as exc:
        return fail(str(exc), 2)
    finally:
        store.close()
    print("changed " + _line(u) + "\n(restart the broker to apply)")
    return 0


def cmd_disable(args) -> int:
    store = _store()
    try:
        store.update_user(args.user, enabled=False)
    except UserError as exc:
        return fail(str(exc), 2)
    finally:
        store.close()
    print(f"{args.user}: disabled (no new orders after the broker restarts; record and credentials kept)")
    return 0


# --------------------------------------------------------------------------- credentials


def _read_token(args) -> str:
    if args.token_env:
        return os.environ.get(args.token_env, "").strip()
    if sys.stdin.isatty():
        import getpass

        return getpass.getpass("Tradier access token: ").strip()
    return sys.stdin.readline().strip()


def _need_user(store, user: str) -> dict:
    u = store.user(user)
    if u is None:
        raise UserError(f"no user {user!r} (add it with 'spx users add')")
    return u


def cmd_cred_set(args) -> int:
    from services.broker import credentials

    token = _read_token(args)
    if not token:
        return fail("empty token" + (f" (is ${args.token_env} set?)" if args.token_env else ""), 2)
    store = _store()
    try:
        _need_user(store, args.user)
        ring = KeyRing.from_env()
        credentials.save(store, ring, args.user, token, args.account)
    except (UserError, CryptoError) as exc:
        return fail(str(exc), 2)
    finally:
        store.close()
    print(f"sealed the Tradier token of {args.user} (account {args.account}, key {ring.primary}); "
          "test it with 'spx users credentials test " + args.user + "'")
    return 0


def cmd_cred_test(args) -> int:
    from services.broker import credentials
    from services.broker.config import BrokerConfig
    from spx_common.config import load

    store = _store()
    try:
        _need_user(store, args.user)
        res = credentials.test(store, KeyRing.from_env(), args.user, load(BrokerConfig))
    except (UserError, CryptoError) as exc:
        return fail(str(exc), 2)
    finally:
        store.close()
    if not res["ok"]:
        return fail(f"{args.user}: {res['environment']} test failed: {res['error']}", 1)
    bp = res.get("option_buying_power")
    print(f"{args.user}: {res['environment']} OK  account {res['account_id']}  type {res.get('account_type')}  "
          f"option buying power {'-' if bp is None else f'${bp:,.2f}'}")
    return 0


def cmd_cred_remove(args) -> int:
    from services.broker import credentials

    store = _store()
    try:
        _need_user(store, args.user)
        gone = store.delete_credentials(args.user, credentials.BROKER)
    except UserError as exc:
        return fail(str(exc), 2)
    finally:
        store.close()
    print(f"{args.user}: " + ("token removed" if gone else "no token was stored"))
    return 0


def cmd_cred_status(args) -> int:
    from services.broker import credentials
    from services.broker.config import BrokerConfig
    from spx_common.config import load

    store = _store()
    try:
        u = _need_user(store, args.user)
        st = credentials.status(store, u, load(BrokerConfig))
    except UserError as exc:
        return fail(str(exc), 2)
    finally:
        store.close()
    if args.json:
        print_json(st)
        return 0
    print(f"{args.user}: {st['environment']}  token {'stored' if st['token_stored'] else 'none'}  "
          f"last ok {_ts(st['last_ok_ns'])}" + (f"  last error {st['last_error']}" if st["last_error"] else ""))
    print(f"{'':<{len(args.user) + 1}} execution " + ("ALLOWED" if st["execution_allowed"] else
                                                     f"refused: {st['reason']}"))
    return 0
