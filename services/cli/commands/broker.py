"""``spx broker status|flatten``: balances, positions and open orders; flatten open positions."""

from __future__ import annotations

import sys

from services.cli.common import RpcError, call, configs, fail, print_json
from spx_common.crypto import CryptoError, KeyRing


def register(sub) -> None:
    p = sub.add_parser("broker", help="broker balances, positions, open orders; flatten",
                       description="Talks to the running broker process (python -m services.broker).")
    sp = p.add_subparsers(dest="broker_cmd", metavar="ACTION", required=True)
    s = sp.add_parser("status", help="mode, safety gates, balances, positions and open orders")
    s.add_argument("--json", action="store_true", help="print the raw status document")
    s.set_defaults(func=cmd_status)
    f = sp.add_parser("flatten", help="close every open position the broker holds for a user (or everyone)")
    f.add_argument("--user", help="only this user")
    f.add_argument("--reason", default="operator flatten (spx broker flatten)",
                   help="why, kept with the exit orders (default: operator flatten)")
    f.add_argument("--direct", action="store_true",
                   help="straight against Tradier (same client and router guard), for when the broker process "
                        "is not answering: cancel working entries/exits, sell every long option at market")
    f.add_argument("--rounds", type=int, default=3, help="--direct: attempts on errors (default 3)")
    f.add_argument("--json", action="store_true", help="print the raw answer")
    f.set_defaults(func=cmd_flatten)
    c = sp.add_parser("credentials", help="store the Tradier token sealed at rest (AES-GCM, key from "
                                         "SPX_CREDENTIALS_KEYS or SPX_CREDENTIALS_KEY_FILE)")
    csp = c.add_subparsers(dest="cred_cmd", metavar="ACTION", required=True)
    cs = csp.add_parser("set", help="read the access token from stdin (or a prompt), seal it into the store")
    cs.add_argument("--account", required=True, help="Tradier account id")
    cs.set_defaults(func=cmd_cred_set)
    csp.add_parser("show", help="what is stored (account and key id, never the token)").set_defaults(
        func=cmd_cred_show)
    csp.add_parser("rotate", help="re-seal the stored token with the first (primary) key").set_defaults(
        func=cmd_cred_rotate)
    for p_ in csp.choices.values():
        p_.add_argument("--user", default="default", help="whose credentials (the broker reads its first user's)")


def _money(v) -> str:
    return "-" if v is None else f"{'-' if v < 0 else ''}${abs(v):,.2f}"


def cmd_status(args) -> int:
    try:
        st = call("broker", "status", timeout_s=2.0)
    except RpcError as exc:
        return fail(f"broker not answering ({exc.code}): is it running? ('spx status')")
    b = st.get("broker") or {}
    if args.json:
        print_json(b)
        return 0
    print(f"mode        {b.get('mode')}   stream {b.get('stream')}   kill switch "
          f"{'ON' if (b.get('engine') or {}).get('kill_switch') else 'off'}")
    for user, ok in (b.get("send_allowed") or {}).items():
        why = (b.get("refusal_reason") or {}).get(user, "")
        print(f"user        {user:<12} {'orders allowed' if ok else 'orders refused: ' + why}")
    accounts = b.get("accounts") or {}
    if b.get("mode") == "users":  # one isolated account per stored user
        for name, a in accounts.items():
            bal = a.get("balances") or {}
            print(f"account     {name:<12} {a.get('kind')} {a.get('environment') or ''}  queue {a.get('queue')}  "
                  f"stream {a.get('stream')}  equity {_money(bal.get('total_equity'))}  "
                  f"option BP {_money(bal.get('option_buying_power'))}"
                  + (f"  credentials: {a['credential_error']}" if a.get("credential_error") else ""))
    else:
        bal = b.get("balances") or {}
        print(f"balances    equity {_money(bal.get('total_equity'))}  cash {_money(bal.get('total_cash'))}  "
              f"option BP {_money(bal.get('option_buying_power'))}  "
              f"day-trade BP {_money(bal.get('day_trade_buying_power'))}")
    ledger = b.get("ledger") or {}
    print("positions")
    rows = 0
    for user, doc in ledger.items():
        for p in doc.get("positions", []):
            rows += 1
            print(f"  {user:<12} {p['option_symbol']:<22} qty {p['quantity']:>5g}  avg {p['avg_price']:.2f}  "
                  f"realized {_money(p.get('realized_pnl'))}  unrealized {_money(p.get('unrealized_pnl'))}")
    if not rows:
        print("  (none)")
    print("open orders")
    rows = 0
    for user, doc in ledger.items():
        for o in doc.get("working_orders", []):
            rows += 1
            px = o.get("price") if o.get("price") is not None else o.get("stop")
            print(f"  {user:<12} {o['order_id']:<36} {o['side']:<14} {o['quantity']:>3} {o['option_symbol']} "
                  f"{o['type']} {px if px is not None else ''} [{o['status']}]")
    if not rows:
        print("  (none)")
    if b.get("drift"):
        print(f"drift       {b['drift']}")
    slip = b.get("slippage") or {}
    if slip.get("count"):
        print(f"slippage    n={slip['count']} mean {slip['mean']:+.3f} p90 {slip['p90']:+.3f} per contract")
    return 0


def cmd_flatten(args) -> int:
    """Ask the broker process to flatten (it reconciles with the broker's positions first), or with
    ``--direct`` do it straight against Tradier. Exit 1 when anything was refused or failed."""
    if args.direct:
        return _flatten_direct(args)
    params = {"reason": args.reason}
    if args.user:
        params["user"] = args.user
    try:
        res = call("broker", "flatten", params, timeout_s=20.0)
    except RpcError as exc:
        hint = "; the broker is not answering: 'spx broker flatten --direct' works without it" \
            if exc.code == "timeout" else ""
        return fail(f"flatten failed ({exc.code}): {exc.message}{hint}")
    if args.json:
        print_json(res)
    else:
        found = {f"{acct}:{sym}": d for acct, doc in (res.get("reconciled") or {}).items() for sym, d in doc.items()}
        print(f"flatten: closing {len(res.get('closing', []))} position(s): {len(res.get('orders', []))} exit order(s) "
              f"queued, {len(res.get('cancels', []))} cancel(s) first (their exits follow each confirmed cancel)"
              + (f"; reconciled with the broker {found}" if found else "")
              + (f"; positions not read: {res['reconcile_errors']}" if res.get("reconcile_errors") else "")
              + (f"; refused: {', '.join(res['blocked'])}" if res.get("blocked") else ""))
    return 1 if res.get("blocked") or res.get("reconcile_errors") else 0


def _direct_targets(args):
    """``[(name, make_client, refusal)]``: the stored Tradier users (or ``--user``), else the config's account."""
    from services.broker import accounts, credentials as creds
    from services.broker.config import BrokerConfig
    from services.broker.tradier import TradierClient
    from spx_common.config import load
    from spx_common.store.config import StoreConfig

    runtime, _ = configs()
    cfg = load(BrokerConfig)
    try:
        rows = accounts.stored_users(load(StoreConfig).resolved_url(runtime))
    except Exception as exc:  # noqa: BLE001 - the store is optional: the config's account
        print(f"spx: users not read from the store ({type(exc).__name__}); using the configured account",
              file=sys.stderr)
        rows = None
    out = []
    if rows:
        for row in rows:
            if args.user and row["user"] != args.user:
                continue
            if row["broker"] != "tradier":
                out.append((row["user"], None, "paper: positions live in the broker process (nothing at a broker)"))
                continue
            ok, why = creds.user_send_allowed(cfg, row, token_stored=row.get("token") is not None)
            if row.get("credential_error"):
                ok, why = False, row["credential_error"]
            make = (lambda row=row: creds.client_for(cfg, row, row["token"], row.get("account_id"))) if ok else None
            out.append((row["user"], make, why))
        if args.user and not out:
            raise ValueError(f"unknown user {args.user!r}")
        return out
    cfg = creds.with_stored_credentials(cfg, runtime)
    ok, why = cfg.tradier_send_allowed()
    make = (lambda: TradierClient(cfg.base_url, cfg.access_token, cfg.account_id, timeout_s=cfg.request_timeout_s,
                                  place_timeout_s=cfg.place_timeout_s, max_retries=cfg.max_retries,
                                  max_rate_wait_s=cfg.max_rate_wait_s)) if ok else None
    return [(args.user or "account", make, why)]


def _flatten_direct(args) -> int:
    import asyncio

    from services.broker import direct

    try:
        targets = _direct_targets(args)
    except ValueError as exc:
        return fail(str(exc), 2)
    rc = 0
    results = {}
    for name, make, why in targets:
        if make is None:
            results[name] = {"ok": False, "refused": why}
            if not why.startswith("paper"):
                rc = 1
            continue
        rep = asyncio.run(direct.flatten(make, rounds=max(args.rounds, 1)))
        results[name] = rep
        if not rep["ok"]:
            rc = 1
    if args.json:
        print_json(results)
        return rc
    for name, rep in results.items():
        if "refused" in rep:
            print(f"{name:<12} not flattened: {rep['refused']}")
            continue
        print(f"{name:<12} {'done' if rep['ok'] else 'FAILED'}: sold {rep['sold'] or 'nothing'}"
              f"; canceled {len(rep['canceled'])} working order(s)"
              + (f"; already covered {rep['covered']}" if rep["covered"] else "")
              + (f"; untouched (not long options) {rep['untouched']}" if rep["untouched"] else "")
              + (f"; errors {rep['errors']}" if rep["errors"] else ""))
    return rc


def _ring_and_store():
    from services.broker import credentials

    runtime, _ = configs()
    return credentials, KeyRing.from_env(), credentials.open_for_cli(runtime)


def cmd_cred_set(args) -> int:
    if sys.stdin.isatty():
        import getpass

        token = getpass.getpass("Tradier access token: ")
    else:
        token = sys.stdin.readline().strip()
    if not token:
        return fail("empty token", 2)
    try:
        creds, ring, store = _ring_and_store()
    except CryptoError as exc:
        return fail(str(exc), 2)
    try:
        creds.save(store, ring, args.user, token, args.account)
    finally:
        store.close()
    print(f"sealed the Tradier token of {args.user} (key {ring.primary}) in the store; restart the broker to use it")
    return 0


def cmd_cred_show(args) -> int:
    try:
        creds, ring, store = _ring_and_store()
    except CryptoError as exc:
        return fail(str(exc), 2)
    try:
        row = store.credentials(args.user, creds.BROKER)
    finally:
        store.close()
    if row is None:
        print(f"{args.user}: nothing stored")
        return 0
    print(f"{args.user}: account {row['account_id']}, sealed with key {row['key_id']}"
          + (" (rotation pending: primary is " + ring.primary + ")" if row["key_id"] != ring.primary else ""))
    return 0


def cmd_cred_rotate(args) -> int:
    try:
        creds, ring, store = _ring_and_store()
    except CryptoError as exc:
        return fail(str(exc), 2)
    try:
        changed = creds.rotate(store, ring, args.user)
    except CryptoError as exc:
        return fail(str(exc), 2)
    finally:
        store.close()
    print(f"{args.user}: " + (f"re-sealed with key {ring.primary}" if changed else "nothing to rotate"))
    return 0
