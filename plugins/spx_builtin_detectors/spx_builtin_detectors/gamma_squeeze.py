"""Gamma squeeze: price crosses the zero-gamma flip with intraday flow pushing the same way while
dealers are short gamma — their hedging chases the move toward the next GEX wall.

Two inputs, blended and each labelled with its source in the evidence:

* **flow** — ``ctx.state["flow"]["pressure"]`` in [-1, 1] over the last ``[detector] flow_bars``
  bars of the flow proxy (SPY by default): aggressor delta volume / aggressor volume when the
  bars carry microstructure (``flow_source = "intraday aggressor delta volume"``), else volume
  signed by bar direction (``"bar-direction volume proxy (no microstructure)"``);
* **open-interest baseline** — ``ctx.state["gex"]`` from the option chain (GEX per strike from
  gamma x open interest): ``oi_score`` = 1 when total GEX < 0 (dealers short gamma, moves
  amplify) else ``long_gamma_score`` (0.3: long gamma damps moves).

``pressure = w_flow * flow * sign + w_oi * oi_score`` (sign +1 long, -1 short; weights 0.6 /
0.4). Long when the previous close is at or below the flip and this close is above it, flow
pressure >= ``min_flow`` and the blend >= ``threshold``; short mirrored. Entry zone: the flip
to the close; stop: below the lowest low of the last ``stop_bars`` bars (and the flip) by
``tol_bps``; targets: halfway to the call wall (put wall for shorts) and the wall itself when the
wall lies beyond the zone, else 1R/2R. Runs on ``symbols`` (default ``["I:SPX"]``: GEX strikes are
index points). Config: ``symbols``, ``min_flow`` (0.2), ``threshold`` (0.5), ``w_flow`` (0.6),
``w_oi`` (0.4), ``long_gamma_score`` (0.3), ``stop_bars`` (5), ``tol_bps`` (3), ``confidence``
(0.55). Without microstructure flow the candidate has lower confidence (``microstructure`` false).
"""

from __future__ import annotations

from services.detector.hookspecs import API_VERSION, hookimpl
from spx_builtin_detectors._common import candidate

NAME = "gamma_squeeze"
MICRO_SOURCE = "intraday aggressor delta volume"


@hookimpl
def spx_detector_describe():
    return {"name": NAME, "family": "gamma", "version": "1.0", "api_version": API_VERSION,
            "inputs": ["bar.1s", "gex", "flow"]}


@hookimpl
def spx_detector_on_bar(ctx, bar):
    cfg = ctx.config.get(NAME, {})
    if ctx.sym not in cfg.get("symbols", ("I:SPX",)):
        return None
    g, flow = ctx.state.get("gex"), ctx.state.get("flow")
    if not g or g.get("zero_gamma") is None or not flow or flow.get("pressure") is None:
        return None
    n = int(cfg.get("stop_bars", 5))
    if len(ctx.bars) < n + 1:
        return None
    flip = float(g["zero_gamma"])
    prev = ctx.bars[-2].close
    if prev <= flip < bar.close:
        direction, sign, wall = "long", 1.0, g.get("call_wall")
    elif prev >= flip > bar.close:
        direction, sign, wall = "short", -1.0, g.get("put_wall")
    else:
        return None
    fp = float(flow["pressure"])
    oi_score = 1.0 if g.get("total", 0.0) < 0 else cfg.get("long_gamma_score", 0.3)
    blend = cfg.get("w_flow", 0.6) * fp * sign + cfg.get("w_oi", 0.4) * oi_score
    if fp * sign < cfg.get("min_flow", 0.2) or blend < cfg.get("threshold", 0.5):
        return None
    tol = flip * cfg.get("tol_bps", 3.0) / 1e4
    recent = ctx.bars[-n:]
    if direction == "long":
        stop = min(min(b.low for b in recent), flip) - tol
        beyond = wall is not None and wall > bar.close
    else:
        stop = max(max(b.high for b in recent), flip) + tol
        beyond = wall is not None and wall < bar.close
    targets = [(bar.close + wall) / 2, float(wall)] if beyond else None
    if targets is not None and abs(targets[0] - bar.close) < 1e-9:
        targets = None
    present = flow.get("source") == MICRO_SOURCE
    ev = {"zero_gamma": flip, "wall": wall, "total_gex": g.get("total"), "flow_pressure": fp,
          "oi_score": oi_score, "blend": blend, "flow_source": f"flow: {flow.get('source')} ({flow.get('sym')})",
          "oi_source": f"oi: {g.get('source', 'chain open interest')} as of {g.get('as_of_ns')}",
          "microstructure": present}
    return candidate(direction, (flip, bar.close), stop, cfg.get("confidence", 0.55), present, ev, targets)
