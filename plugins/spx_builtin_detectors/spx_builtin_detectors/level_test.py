"""Level test: price comes to a known level, tests it, and the level holds — a bounce off support
(long, pattern ``hold``) or a rejection at resistance (short, pattern ``rejection``).

Levels, from the market state: prior-day high/low/close, floor pivots (P, R1, S1, R2, S2), the
opening range once it is complete, the VWAP 1σ/2σ bands, and for the index the GEX call wall,
put wall and zero-gamma flip. For each level ``L`` with tolerance ``tol = L * tol_bps / 10^4``:

* support (long): the bar ``lookback`` bars ago closed above ``L + tol`` (price came from
  above); within the last ``lookback`` bars some low reached ``L + tol`` or below (the touch);
  no close in that window fell below ``L - tol`` (the level held); this bar closes at or above
  ``L + 2 tol`` and the previous bar did not (the edge: fires once per bounce);
* resistance (short): mirrored — came from below, a high reached ``L - tol``, no close above
  ``L + tol``, this bar closes at or below ``L - 2 tol`` and the previous one did not.

A bar that closes up can only complete a support test and one that closes down only a
resistance test, and the edge bounds the levels that can fire to a narrow price band: the
session levels are memoised per session/chain, each level costs one comparison per bar, and
the test window is scanned only for a level inside the band. Only the nearest level that tests fires. Entry
zone ``[L, close]``, stop beyond the extreme of the test by ``tol``, targets 1R and 2R.
Microstructure confirmation on the bounce bar (``_common.confirm``); without it the candidate
still fires with lower confidence. Config (``[detector.plugin_config.level_test]``):
``lookback`` (10), ``tol_bps`` (2.0), ``confidence`` (0.55) and the confirm keys ``min_skew``
(0.0), ``min_imbalance`` (-0.2), ``min_coverage_pct`` (50), ``max_spread_bps`` (25).
"""

from __future__ import annotations

from services.detector.hookspecs import API_VERSION, hookimpl
from spx_builtin_detectors._common import CONFIRM_DEFAULTS, MICRO_EVIDENCE, candidate, confirm, settings

NAME = "level_test"
DEFAULTS = {"lookback": 10, "tol_bps": 2.0, "confidence": 0.55, **CONFIRM_DEFAULTS}
EVIDENCE = ("level", "level_price", "pattern", "test_extreme", "lookback_bars") + MICRO_EVIDENCE
GEX_LEVELS = ("call_wall", "put_wall", "zero_gamma")
BAND_NAMES = {k: f"vwap_{k}" for k in ("upper1", "lower1", "upper2", "lower2")}
INF = float("inf")


@hookimpl
def spx_detector_describe():
    return {"name": NAME, "family": "level", "version": "1.1", "api_version": API_VERSION,
            "inputs": ["bar.1s", "prior_day", "pivots", "opening_range", "vwap_bands", "gex", "microstructure"]}


def _valid(pairs) -> tuple[tuple[str, float], ...]:
    return tuple((n, float(v)) for n, v in pairs
                 if isinstance(v, (int, float)) and not isinstance(v, bool) and 0 < v < INF)


_STATIC: dict[str, tuple] = {}  # sym -> (prior_day, pivots, gex, levels): identity memo, bounded by symbols


def static_levels(ctx) -> tuple[tuple[str, float], ...]:
    """Prior-day, pivot and (index) GEX levels. Their maps change once per session or chain update,
    so the list is memoised on their identity: a bar costs three identity checks, not a rebuild."""
    st = ctx.state
    prior, pivots = st.get("prior_day"), st.get("pivots")
    g = st.get("gex") if ctx.sym.startswith("I:SPX") else None
    hit = _STATIC.get(ctx.sym)
    if hit is not None and hit[0] is prior and hit[1] is pivots and hit[2] is g:
        return hit[3]
    pairs: list = []
    if prior:
        pairs += [("prior_high", prior.get("high")), ("prior_low", prior.get("low")),
                  ("prior_close", prior.get("close"))]
    if pivots:
        pairs += [(f"pivot_{k}", v) for k, v in pivots.items()]
    if g:
        pairs += [(f"gex_{k}", g.get(k)) for k in GEX_LEVELS]
    out = _valid(pairs)
    _STATIC[ctx.sym] = (prior, pivots, g, out)
    return out


@hookimpl
def spx_detector_on_bar(ctx, bar):
    cfg = settings(ctx, NAME, DEFAULTS)
    k = cfg["lookback"]
    bars = ctx.bars
    if len(bars) < k + 2:
        return None
    prev, close = bars[-2].close, bar.close
    if close == prev:
        return None
    up = close > prev
    tb = cfg["tol_bps"] / 1e4
    # the edge (close at or beyond L +- 2 tol, the previous close not) bounds the levels that can fire:
    # a prefilter on plain floats, slightly widened, before the exact test below
    f = 1 + 2 * tb if up else 1 - 2 * tb
    if f > 0:
        lo_e, hi_e = (prev / f, close / f) if up else (close / f, prev / f)
        lo_e, hi_e = lo_e * (1 - 1e-12), hi_e * (1 + 1e-12)
    else:  # a tolerance of 50 % or more: no useful bound
        lo_e, hi_e = -INF, INF
    hits = [(n, v) for n, v in static_levels(ctx) if lo_e <= v <= hi_e]
    st = ctx.state
    orng = st.get("opening_range")
    if orng and orng.get("complete"):
        for key, name in (("high", "or_high"), ("low", "or_low")):
            v = orng.get(key)
            if v is not None and lo_e <= v <= hi_e:
                hits.append((name, v))
    bands = st.get("vwap_bands")
    if bands:
        for key, v in bands.items():
            if v is not None and lo_e <= v <= hi_e:
                hits.append((BAND_NAMES.get(key) or f"vwap_{key}", v))
    if not hits:
        return None
    before = bars[-k - 1].close  # where price came from
    window = bars[-k:]           # the test, this bar included
    best = None
    for name, lvl in hits:
        if not 0 < lvl < INF:
            continue
        tol = lvl * tb
        if up:
            if not (close >= lvl + 2 * tol > prev and before > lvl + tol):
                continue
            extreme = min(b.low for b in window)
            if extreme > lvl + tol or any(b.close < lvl - tol for b in window):
                continue
        else:
            if not (close <= lvl - 2 * tol < prev and before < lvl - tol):
                continue
            extreme = max(b.high for b in window)
            if extreme < lvl - tol or any(b.close > lvl + tol for b in window):
                continue
        d = abs(close - lvl)
        if best is None or d < best[0]:
            best = (d, name, lvl, tol, extreme)
    if best is None:
        return None
    _, name, lvl, tol, extreme = best
    direction = "long" if up else "short"
    ok, penalty, ev = confirm(bar, direction, cfg)
    if not ok:
        return None
    ev.update({"level": name, "level_price": lvl, "pattern": "hold" if up else "rejection",
               "test_extreme": extreme, "lookback_bars": k})
    stop = extreme - tol if up else extreme + tol
    return candidate(direction, (lvl, close), stop, cfg["confidence"], penalty, ev)
