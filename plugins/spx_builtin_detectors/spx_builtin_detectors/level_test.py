"""Level test: price comes to a known level, tests it, and holds (a bounce) — long at support,
short at resistance.

Levels, from the market state: prior-day high/low/close, floor pivots (P, R1, S1, R2, S2), the
opening range once it is complete, the VWAP 1σ/2σ bands, and for the index the GEX call wall,
put wall and zero-gamma flip. For each level ``L`` with tolerance ``tol = L * tol_bps / 10^4``:

* support test (long): the bar ``lookback`` bars ago closed above ``L + tol`` (price came from
  above); within the last ``lookback`` bars some low reached ``L + tol`` or below; no close in
  that window fell below ``L - tol`` (the level held); this bar closes at or above
  ``L + 2 tol`` and the previous bar did not (the edge: fires once per bounce);
* resistance test (short): mirrored.

Entry zone ``[L, close]``, stop beyond the extreme of the test minus ``tol``, targets 1R and 2R.
Microstructure confirmation: see ``_common.confirm`` (skew / imbalance / coverage / spread);
without it the candidate still fires with lower confidence. Only the nearest level that tests
fires. Config (``[detector.plugin_config.level_test]``): ``lookback`` (10), ``tol_bps`` (2.0),
``min_skew`` (0.0), ``min_imbalance`` (-0.2), ``min_coverage_pct`` (50), ``max_spread_bps`` (25),
``confidence`` (0.55).
"""

from __future__ import annotations

from services.detector.hookspecs import API_VERSION, hookimpl
from spx_builtin_detectors._common import candidate, confirm

NAME = "level_test"


@hookimpl
def spx_detector_describe():
    return {"name": NAME, "family": "level", "version": "1.0", "api_version": API_VERSION,
            "inputs": ["bar.1s", "prior_day", "pivots", "opening_range", "vwap_bands", "gex"]}


def levels(ctx) -> list[tuple[str, float]]:
    st = ctx.state
    out: list[tuple[str, float]] = []
    prior = st.get("prior_day")
    if prior:
        out += [("prior_high", prior["high"]), ("prior_low", prior["low"]), ("prior_close", prior["close"])]
    for k, v in (st.get("pivots") or {}).items():
        out.append((f"pivot_{k}", v))
    orng = st.get("opening_range") or {}
    if orng.get("complete"):
        out += [("or_high", orng["high"]), ("or_low", orng["low"])]
    for k, v in (st.get("vwap_bands") or {}).items():
        out.append((f"vwap_{k}", v))
    g = st.get("gex")
    if g and ctx.sym.startswith("I:SPX"):
        for k in ("call_wall", "put_wall", "zero_gamma"):
            if g.get(k) is not None:
                out.append((f"gex_{k}", float(g[k])))
    return [(n, float(v)) for n, v in out if isinstance(v, (int, float)) and v > 0]


@hookimpl
def spx_detector_on_bar(ctx, bar):
    cfg = ctx.config.get(NAME, {})
    k = int(cfg.get("lookback", 10))
    bars = ctx.bars
    if len(bars) < k + 2:
        return None
    window = bars[-k:]          # includes this bar
    before = bars[-k - 1]       # where price came from
    prev = bars[-2]
    tol_bps = cfg.get("tol_bps", 2.0)
    best = None
    for name, lvl in levels(ctx):
        tol = lvl * tol_bps / 1e4
        if before.close > lvl + tol and bar.close >= lvl + 2 * tol > prev.close:
            low = min(b.low for b in window)
            if low <= lvl + tol and all(b.close >= lvl - tol for b in window):
                d = abs(bar.close - lvl)
                if best is None or d < best[0]:
                    best = (d, "long", name, lvl, tol, low)
        elif before.close < lvl - tol and bar.close <= lvl - 2 * tol < prev.close:
            high = max(b.high for b in window)
            if high >= lvl - tol and all(b.close <= lvl + tol for b in window):
                d = abs(bar.close - lvl)
                if best is None or d < best[0]:
                    best = (d, "short", name, lvl, tol, high)
    if best is None:
        return None
    _, direction, name, lvl, tol, extreme = best
    ok, present, ev = confirm(bar, direction, cfg)
    if not ok:
        return None
    ev.update({"level": name, "level_price": lvl, "test_extreme": extreme, "lookback_bars": k})
    stop = extreme - tol if direction == "long" else extreme + tol
    return candidate(direction, (lvl, bar.close), stop, cfg.get("confidence", 0.55), present, ev)
