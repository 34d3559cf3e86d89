"""``spx select``: ask the running selector for a contract recommendation and print it readably."""

from __future__ import annotations

import argparse

from services.cli.common import RpcError, call, fail, print_json


def register(sub) -> None:
    p = sub.add_parser(
        "select", help="ask the running selector which contract to buy and how many",
        description="Ad-hoc recommendation (bypasses the 10 s cache) from the running selector, or its chain "
                    "health with --chain. Example: spx select long --entry 5900 --stop 5892 --risk 500 --dtbp 20000")
    p.add_argument("direction", nargs="?", choices=["long", "short"], help="setup direction")
    p.add_argument("--entry", type=float, help="underlying entry price")
    p.add_argument("--stop", type=float, help="underlying stop price")
    p.add_argument("--target", type=float, action="append", default=[], help="underlying target (repeatable)")
    p.add_argument("--risk", type=float, default=500.0, help="maxRiskDollars (default 500)")
    p.add_argument("--dtbp", type=float, default=None, help="dayTradeBuyingPower")
    p.add_argument("--obp", type=float, default=None, help="optionBuyingPower")
    p.add_argument("--equity", type=float, default=None, help="account equity")
    p.add_argument("--pdt-qualified", choices=["yes", "no"], default=None, help="pdtQualified, when the broker says")
    p.add_argument("--regime", default=None, help="regime override (trending, ranging, compression, volatile)")
    p.add_argument("--chain", action="store_true", help="print chain health and the contracts near the money")
    p.add_argument("--json", action="store_true", help="raw JSON answer")
    p.add_argument("--timeout", type=float, default=2.0, help="seconds to wait for the selector (default 2)")
    p.set_defaults(func=cmd_select)


def _num(x, spec: str) -> str:
    """``x`` formatted with ``spec``; '-' for a missing value (a contract without a quote or greeks)."""
    if x is None or isinstance(x, bool):
        return "-"
    try:
        return format(int(x) if spec.endswith("d") else float(x), spec)
    except (TypeError, ValueError):
        return str(x)


def _fmt_reco(r: dict) -> str:
    lines = [("OK  " if r.get("ok") else "NO  ") + str(r.get("reason", ""))]
    if r.get("occ_symbol"):
        lines += [f"contract   {r['option_type']} {r['strike']:g} exp {r['expiration']}  delta {r['delta']:+.3f}",
                  f"symbols    OCC '{r['occ_symbol']}'  Tradier {r['tradier_symbol']}  Massive {r['massive_symbol']}",
                  f"quote      bid {r['bid']:.2f}  ask {r['ask']:.2f}  mid {r['mid']:.2f}",
                  f"suggested  {r.get('suggestedContracts', 0)} contracts"]
    s = r.get("sizing")
    if s:
        if s.get("perContractLoss") is not None:
            lines.append(f"loss       value {s['valueAtEntry']:.2f} at entry {s['entry']:g} - {s['valueAtStop']:.2f} at stop "
                         f"{s['stop']:g} + spread {s['spread']:.2f} = ${s['perContractLoss']:,.2f}/contract "
                         f"({s['pricing']}; floor ${s['minRiskPerContract']:,.2f})")
        by_premium = s.get("contractsByPremium")
        lines.append(f"sizing     max risk ${s['maxRiskDollars']:,.0f}  by risk {s['contractsByRisk']}  "
                     f"by buying power {s['contractsByBuyingPower']}"
                     + (f"  by premium cap ${s['maxPremiumDollars']:,.0f} {by_premium}" if by_premium is not None else "")
                     + f"  debit ${s['perContractDebit']:,.2f}/contract"
                     + (f"  ({s['bound']}-bound)" if s.get("bound") else "")
                     + ("  MARGIN LIMIT" if s.get("margin_limit_blocked") else ""))
    return "\n".join(lines)


def cmd_select(args: argparse.Namespace) -> int:
    try:
        if args.chain:
            v = call("selector", "chain", {}, timeout_s=args.timeout)
            if args.json:
                print_json(v)
                return 0
            print(f"chain {'OK' if v['ok'] else 'NOT OK'}: {v['contracts']} contracts, {v['quoted']} quoted, "
                  f"underlying {v['underlying']}, age {v['age_s']}s, regime {v['regime']}")
            for issue in v["issues"]:
                print(f"  issue: {issue}")
            for c in v["near"]:
                print(f"  {c['symbol']:<22} bid {_num(c['bid'], '.2f'):>7} ask {_num(c['ask'], '.2f'):>7} "
                      f"delta {_num(c['delta'], '+.3f'):>6} iv {_num(c['iv'], '.1%'):>6} "
                      f"oi {_num(c['open_interest'], ',d'):>7} ({c['greeks']})")
            return 0 if v["ok"] else 1
        if not args.direction or args.entry is None or args.stop is None:
            return fail("give a direction, --entry and --stop (or --chain)", 2)
        risk = {"maxRiskDollars": args.risk}
        for key, val in (("dayTradeBuyingPower", args.dtbp), ("optionBuyingPower", args.obp), ("equity", args.equity)):
            if val is not None:
                risk[key] = val
        if args.pdt_qualified is not None:
            risk["pdtQualified"] = args.pdt_qualified == "yes"
        params = {"setup": {"direction": args.direction, "entry": args.entry, "stop": args.stop,
                            "targets": args.target}, "risk": risk, "adhoc": True}
        if args.regime:
            params["regime"] = args.regime
        r = call("selector", "select", params, timeout_s=args.timeout)
    except RpcError as exc:
        if exc.code == "timeout":
            return fail("the selector is not answering (is it running? `spx mesh status`)")
        return fail(f"selector refused the request ({exc.code}): {exc.message}", 2)
    if args.json:
        print_json(r)
    else:
        print(_fmt_reco(r))
    return 0 if r.get("ok") else 1
