"""The backtest report a person reads (Markdown + PNG) from the result document."""

from __future__ import annotations

from pathlib import Path


def _pct(x: float) -> str:
    return f"{x * 100:.1f}%"


def _num(x) -> str:
    return f"{x:+.3f}" if isinstance(x, float) else str(x)


def _ci(c: list[float], pct: bool = True) -> str:
    return f"[{c[0] * 100:.1f}, {c[1] * 100:.1f}]" if pct else f"[{c[0]:+.3f}, {c[1]:+.3f}]"


def markdown(r: dict) -> str:
    ev, o, p = r["evidence"], r["overall"], r["promotion"]
    lines = [f"# Backtest {r['range']['from']} → {r['range']['to']}", "",
             f"Resolution requested: **{ev['requested_resolution']}**; config `{ev['config_hash']}`; "
             f"optimizer profile v{ev['profile_version']}; {ev['sample']['bars']:,} bars, "
             f"{ev['sample']['ticks']:,} ticks, {ev['sample']['setups']:,} setups, "
             f"**{ev['sample']['resolved_trades']:,} resolved trades**.", "",
             "## Promotion", "",
             f"**{'PROMOTE' if p['promote'] else 'REFUSED'}**" + ("" if p["promote"] else ": " + "; ".join(p["refusals"])),
             ""]
    if "criteria" in p:
        lines += ["Promotion needs every criterion at once; a delta counts by the lower bound of its 95% "
                  "interval, so an interval that straddles its threshold is not a promotion.", "",
                  "| criterion | value | 95% interval | rule | pass |", "| --- | --- | --- | --- | --- |"]
        for c in p["criteria"]:
            iv = c["interval"]
            lines.append(f"| {c['criterion']} | {_num(c['value'])} | "
                         f"{'' if iv is None else f'[{_num(iv[0])}, {_num(iv[1])}]'} | {c['rule']} | "
                         f"{'yes' if c['pass'] else '**no**'} |")
        lines += ["", f"Baseline: {p['baseline_trades']} resolved trades."]
        if p.get("expectancy_delta_usd") is None:
            lines.append("Dollar expectancy: not measured (these trades carry no option P&L).")
        t = p["targets"]
        lines += ["", f"Targets (the rollout seeds' absolute floors, shown, not gating): T1 rate "
                  f"{_pct(t['t1_rate']['value'])} vs {_pct(t['t1_rate']['target'])} "
                  f"({'meets' if t['t1_rate']['meets'] else 'below'}); expectancy {t['expectancy_r']['value']:+.3f} R "
                  f"net of slippage ({t['expectancy_r'].get('gross', t['expectancy_r']['value']):+.3f} R gross, "
                  f"slippage {t['expectancy_r'].get('slippage_r', 0.0):.3f} R per trade) vs the EV floor "
                  f"{t['expectancy_r']['target']:+.2f} R ({'meets' if t['expectancy_r']['meets'] else 'below'}).",
                  ""]
    lines += ["## Results", "", "| family | trades | T1 rate (95% CI) | T2 rate (95% CI) | expectancy R (95% CI) | "
              "max drawdown R |", "| --- | --- | --- | --- | --- | --- |"]
    for name, s in list(r["families"].items()) + [("**overall**", o)]:
        lines.append(f"| {name} | {s['trades']} | {_pct(s['t1_rate'])} {_ci(s['t1_ci'])} | {_pct(s['t2_rate'])} "
                     f"{_ci(s['t2_ci'])} | {s['expectancy_r']:+.3f} {_ci(s['expectancy_ci'], False)} | "
                     f"{s['max_drawdown_r']:.2f} |")
    lines += ["", "## Data used", "", "| day | resolution | source | provenance | rows |",
              "| --- | --- | --- | --- | --- |"]
    for d in ev["data"]:
        lines.append(f"| {d['day']} | {d['resolution']} | {d['source']} | {', '.join(d.get('provenance', [])) or '-'} "
                     f"| {d['rows']:,} |")
    lines += ["", "## Evidence", "",
              "Plugins: " + ", ".join(f"`{x['name']}` {x['version']} ({x['family']})" for x in ev["plugins"]) + ".", "",
              f"Trade model: {ev['trade_model']}.", "",
              _options_line(r.get("options") or {}), "",
              "Selector and broker refusals: " + (", ".join(f"{k} {v}" for k, v in (r.get("trade_blocks") or {}).items())
                                                  or "none") + ".", "",
              "Blocked candidates: " + (", ".join(f"{k} {v}" for k, v in r["blocks"].items()) or "none") + ".", "",
              "![equity curve and hit rates](report.png)", ""]
    return "\n".join(lines)


def _options_line(o: dict) -> str:
    if not o.get("trades"):
        return "Option trades: none (no option chain and quotes replayed, or every entry refused or unfilled)."
    return (f"Option trades: {o['trades']}, P&L ${o['pnl_usd']:,.2f} (expectancy ${o['expectancy_usd']:,.2f} per trade, "
            f"fees ${o['fees_usd']:,.2f}), slippage against the mid ${o['slippage_usd']:,.2f} "
            f"(${o['slippage_per_contract']:.4f} per contract per fill; by time of day: "
            + ", ".join(f"{k} ${v['per_contract']:.4f} ({v['fills']} fills)" for k, v in
                        (o.get("slippage_by_time") or {}).items())
            + "; by moneyness: " + ", ".join(f"{k} ${v['per_contract']:.4f} ({v['fills']} fills)" for k, v in
                                             (o.get("slippage_by_moneyness") or {}).items()) + ").")


def picture(r: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 4), dpi=100)
    cum, xs = 0.0, [0]
    ys = [0.0]
    for i, t in enumerate(r["trades"], 1):
        cum += t["r"]
        xs.append(i)
        ys.append(cum)
    a1.plot(xs, ys, color="#1f77b4")
    a1.axhline(0, color="#888", lw=0.8)
    a1.set_title("Equity curve (cumulative R, trades in exit order)")
    a1.set_xlabel("trade")
    a1.set_ylabel("R")
    fams = [f for f, s in r["families"].items() if s["trades"]]
    x = range(len(fams))
    a2.bar([i - 0.2 for i in x], [r["families"][f]["t1_rate"] * 100 for f in fams], 0.4, label="T1")
    a2.bar([i + 0.2 for i in x], [r["families"][f]["t2_rate"] * 100 for f in fams], 0.4, label="T2")
    a2.set_xticks(list(x), fams, rotation=20)
    a2.set_ylim(0, 100)
    a2.set_title("Hit rates by family (%)")
    a2.legend()
    fig.tight_layout()
    fig.savefig(path, metadata={"Software": None})
    plt.close(fig)


def sweep_picture(doc: dict, path: Path) -> None:
    """A sweep at a glance: each set's equity curve, its T1/T2 hit rates, and the decision vs the first."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sets = doc["sets"]
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(12, 4.5), dpi=100)
    for s in sets:
        cum, ys = 0.0, [0.0]
        for t in s["result"]["trades"]:
            cum += t["r"]
            ys.append(cum)
        a1.plot(range(len(ys)), ys, label=s["name"][:40], lw=2 if s is sets[0] else 1.2)
    a1.axhline(0, color="#888", lw=0.8)
    a1.set_title("Equity curve per parameter set (cumulative R)")
    a1.set_xlabel("trade (exit order)")
    a1.set_ylabel("R")
    a1.legend(fontsize=7, loc="best")
    x = range(len(sets))
    a2.bar([i - 0.2 for i in x], [s["result"]["overall"]["t1_rate"] * 100 for s in sets], 0.4, label="T1")
    a2.bar([i + 0.2 for i in x], [s["result"]["overall"]["t2_rate"] * 100 for s in sets], 0.4, label="T2")
    labels = []
    for s in sets:
        v = s["versus_first"]
        labels.append(f"{s['name'][:18]}\n{'baseline' if v is None else 'PROMOTE' if v['promote'] else 'refused'}")
    a2.set_xticks(list(x), labels, fontsize=7)
    a2.set_ylim(0, 100)
    a2.set_title("Hit rates per set (%) and decision vs the first set")
    a2.legend()
    fig.tight_layout()
    fig.savefig(path, metadata={"Software": None})
    plt.close(fig)
