"""The backtest report a person reads (Markdown + PNG) from the result document."""

from __future__ import annotations

from pathlib import Path


def _pct(x: float) -> str:
    return f"{x * 100:.1f}%"


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
    if "t1_delta_pp" in p:
        lines += ["| vs baseline | delta | 95% interval | significant |", "| --- | --- | --- | --- |",
                  f"| T1 hit rate | {p['t1_delta_pp']:+.2f} pp | [{p['t1_delta_ci_pp'][0]:+.2f}, "
                  f"{p['t1_delta_ci_pp'][1]:+.2f}] pp | {'yes' if p['significant']['t1'] else 'no'} |",
                  f"| expectancy | {p['expectancy_delta_r']:+.3f} R | {_ci(p['expectancy_delta_ci_r'], False)} R | "
                  f"{'yes' if p['significant']['expectancy'] else 'no'} |",
                  "", f"Baseline: {p['baseline_trades']} resolved trades. Criteria: T1 ≥ +"
                  f"{r['criteria']['min_t1_delta_pp']} pp, expectancy ≥ +{r['criteria']['min_expectancy_delta_r']} R, "
                  f"≥ {r['criteria']['min_trades']} trades, no minute-bar fallback.", ""]
    lines += ["## Results", "", "| family | trades | T1 rate (95% CI) | T2 rate (95% CI) | expectancy R (95% CI) | "
              "max drawdown R |", "| --- | --- | --- | --- | --- | --- |"]
    for name, s in list(r["families"].items()) + [("**overall**", o)]:
        lines.append(f"| {name} | {s['trades']} | {_pct(s['t1_rate'])} {_ci(s['t1_ci'])} | {_pct(s['t2_rate'])} "
                     f"{_ci(s['t2_ci'])} | {s['expectancy_r']:+.3f} {_ci(s['expectancy_ci'], False)} | "
                     f"{s['max_drawdown_r']:.2f} |")
    lines += ["", "## Data used", "", "| day | resolution | source | rows |", "| --- | --- | --- | --- |"]
    for d in ev["data"]:
        lines.append(f"| {d['day']} | {d['resolution']} | {d['source']} | {d['rows']:,} |")
    lines += ["", "## Evidence", "",
              "Plugins: " + ", ".join(f"`{x['name']}` {x['version']} ({x['family']})" for x in ev["plugins"]) + ".", "",
              f"Selector: {ev['selector']}.", "",
              "Blocked candidates: " + (", ".join(f"{k} {v}" for k, v in r["blocks"].items()) or "none") + ".", "",
              "![equity curve and hit rates](report.png)", ""]
    return "\n".join(lines)


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
