"""Gamma squeeze: price crosses the zero-gamma flip with intraday flow pushing the same way while
dealers are short gamma — their hedging chases the move toward the next GEX wall.

Two inputs, blended, each labelled with its source in the evidence:

* **flow** (``flow_source``, e.g. ``"flow: intraday aggressor delta volume (SPY)"``) —
  ``ctx.state["flow"]["pressure"]`` in [-1, 1] over the last ``[detector] flow_bars`` bars of the
  flow proxy (SPY by default): aggressor delta volume / aggressor volume when the bars carry
  microstructure, else volume signed by bar direction (``"bar-direction volume proxy (no
  microstructure)"``, lower confidence);
* **open-interest baseline** (``oi_source``, e.g. ``"oi: chain open interest as of
  2026-11-20T14:30:00Z"``) — ``ctx.state["gex"]`` from the option chain (GEX per strike from
  gamma x open interest): ``oi_score`` = 1 when total GEX < 0 (dealers short gamma, moves
  amplify) else ``long_gamma_score`` (0.3: long gamma damps moves).

``blend = w_flow * pressure * sign + w_oi * oi_score`` (sign +1 long, -1 short). Long when the
previous close is at or below the flip and this close is above it, the signed flow pressure >=
``min_flow`` and the blend >= ``threshold``; short mirrored. A chain older than
``max_chain_age_min`` minutes of event time, or of unknown age, is stale: no squeeze (fail
closed). Entry zone: the
flip to the close; stop: beyond the extreme of the last ``stop_bars`` bars (and the flip) by
``tol_bps``; targets: halfway to the call wall (put wall for shorts) and the wall itself when the
wall lies beyond the zone, else 1R/2R. When the bar itself carries microstructure (e.g. the
detector is configured on SPY) it must confirm too (``_common.confirm``); index bars have none and
are judged by the flow proxy alone. Runs on ``symbols`` (default ``["I:SPX"]``: GEX strikes are
index points). Config (``[detector.plugin_config.gamma_squeeze]``): ``symbols``, ``min_flow``
(0.2), ``threshold`` (0.5), ``w_flow`` (0.6), ``w_oi`` (0.4), ``long_gamma_score`` (0.3),
``stop_bars`` (5), ``tol_bps`` (3.0), ``max_chain_age_min`` (30), ``confidence`` (0.55) and the
confirm keys. Without aggressor flow the confidence is lowered by ``_common.NO_MICRO_PENALTY``.
"""

from __future__ import annotations

import datetime as dt

from services.detector.hookspecs import API_VERSION, hookimpl
from spx_builtin_detectors._common import CONFIRM_DEFAULTS, NO_MICRO_PENALTY, candidate, confirm, num, settings

NAME = "gamma_squeeze"
MICRO_SOURCE = "intraday aggressor delta volume"
DEFAULTS = {"symbols": ("I:SPX",), "min_flow": 0.2, "threshold": 0.5, "w_flow": 0.6, "w_oi": 0.4,
            "long_gamma_score": 0.3, "stop_bars": 5, "tol_bps": 3.0, "max_chain_age_min": 30.0,
            "confidence": 0.55, **CONFIRM_DEFAULTS}
EVIDENCE = ("zero_gamma", "wall", "total_gex", "flow_pressure", "oi_score", "blend", "flow_source",
            "oi_source", "chain_age_s", "microstructure", "microstructure_note")


@hookimpl
def spx_detector_describe():
    return {"name": NAME, "family": "gamma", "version": "1.1", "api_version": API_VERSION,
            "inputs": ["bar.1s", "gex", "flow"]}


def _ns(x) -> int | None:
    """An event time in ns from the chain document, or None when it is missing or not a time."""
    if isinstance(x, bool) or not isinstance(x, (int, float)) or not 0 < x < 4e18:
        return None
    return int(x)


def _iso(ns: int) -> str:
    return dt.datetime.fromtimestamp(ns / 1e9, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@hookimpl
def spx_detector_on_bar(ctx, bar):
    cfg = settings(ctx, NAME, DEFAULTS)
    if ctx.sym not in cfg["symbols"]:
        return None
    g, flow = ctx.state.get("gex"), ctx.state.get("flow")
    if not g or not flow:
        return None
    flip, fp = num(g.get("zero_gamma")), num(flow.get("pressure"))
    n = cfg["stop_bars"]
    if flip is None or fp is None or len(ctx.bars) < n + 1:
        return None
    prev, close = ctx.bars[-2].close, bar.close
    if prev <= flip < close:
        direction, sign, wall = "long", 1.0, g.get("call_wall")
    elif prev >= flip > close:
        direction, sign, wall = "short", -1.0, g.get("put_wall")
    else:
        return None
    as_of = _ns(g.get("as_of_ns"))
    if as_of is None:  # a chain of unknown age is treated as stale (fail closed)
        return None
    age_s = (ctx.now_ns - as_of) / 1e9
    if age_s > cfg["max_chain_age_min"] * 60:
        return None
    total = num(g.get("total"))
    oi_score = 1.0 if total is not None and total < 0 else cfg["long_gamma_score"]
    blend = cfg["w_flow"] * fp * sign + cfg["w_oi"] * oi_score
    if fp * sign < cfg["min_flow"] or blend < cfg["threshold"]:
        return None
    ok, _, _ = confirm(bar, direction, cfg)  # the bar's own microstructure, when it has any
    if not ok:
        return None
    tol = flip * cfg["tol_bps"] / 1e4
    recent = ctx.bars[-n:]
    wall = num(wall)
    if direction == "long":
        stop = min(min(b.low for b in recent), flip) - tol
        beyond = wall is not None and wall > close
    else:
        stop = max(max(b.high for b in recent), flip) + tol
        beyond = wall is not None and wall < close
    targets = [(close + wall) / 2, wall] if beyond and abs(wall - close) > 2 * tol else None
    aggressor = flow.get("source") == MICRO_SOURCE
    penalty = 0.0 if aggressor else NO_MICRO_PENALTY
    ev = {"zero_gamma": flip, "wall": wall, "total_gex": total, "flow_pressure": fp, "oi_score": oi_score,
          "blend": blend, "flow_source": f"flow: {flow.get('source')} ({flow.get('sym')})",
          "oi_source": f"oi: {g.get('source') or 'chain open interest'} as of {_iso(as_of)}",
          "chain_age_s": age_s, "microstructure": aggressor,
          "microstructure_note": "aggressor flow" if aggressor else
          f"no aggressor flow on {flow.get('sym')}: bar-direction proxy — confidence -{penalty:.3f}"}
    return candidate(direction, (flip, close), stop, cfg["confidence"], penalty, ev, targets)
