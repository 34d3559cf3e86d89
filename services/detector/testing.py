"""Testing harness for plugin authors: feed recorded bars to a plugin, get its candidates back.

    from services.detector.testing import run_plugin
    result = run_plugin(my_detector_module, bars)
    assert result.candidates and not result.refused

Uses the real host (same validation, budgets and context building as the mesh) without any
socket, store or clock: bars carry their own event time. ``isolate=True`` runs the plugin module in
a worker process exactly as the detector service does by default (``[detector] isolation =
"process"``: budgets enforced, crashes and hangs contained); the default runs it in this process,
which is faster for many small tests and gives the same candidates.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from types import ModuleType
from typing import Any
from collections.abc import Iterable

from services.detector.config import DetectorConfig
from services.detector.core import DetectorEngine
from services.detector.host import PluginHost
from services.detector.isolation import IsolatedHost
from spx_common.models import MicroBar, SetupCandidate, SetupTransition


@dataclass
class PluginRun:
    candidates: list[SetupCandidate] = field(default_factory=list)
    transitions: list[SetupTransition] = field(default_factory=list)
    refused: list[tuple[str, str]] = field(default_factory=list)
    status: dict[str, Any] = field(default_factory=dict)


def run_plugin(plugin: Any, bars: Iterable[MicroBar], *, config: dict | None = None,
               opening_range_min: float = 15.0, chain: dict | None = None, isolate: bool = False,
               **settings: Any) -> PluginRun:
    """Run ``plugin`` (module or object with hook implementations) over ``bars`` in order.

    ``chain`` is an option-chain document as published on ``chain.SPXW`` (``underlying`` and
    ``contracts`` with ``strike``, ``type``, ``gamma``, ``open_interest``): it feeds the GEX part of
    the market state. ``isolate``: run the plugin (a module importable by name) in a worker process as
    the detector does. Other keyword arguments are ``[detector]`` settings (e.g. ``flow_bars``).
    """
    bars = list(bars)
    host: Any
    if isolate:
        if not isinstance(plugin, ModuleType):
            raise TypeError("isolate=True runs a plugin module (imported by name in the worker), not an object")
        host = IsolatedHost(plugin_config=config or {}, bars_kept=settings.get("bars_kept", 600))
        host.load_module(plugin.__name__)
        if host.load_errors:
            host.close()
            raise RuntimeError(f"plugin not loaded: {host.load_errors}")
    else:
        host = PluginHost()
        host.register(plugin, source="testing harness")
    symbols = sorted({b.sym for b in bars}) or ["SPY"]
    interval = bars[0].interval if bars else "1s"
    cfg = DetectorConfig(symbols=symbols, interval=interval, plugin_config=config or {},
                         opening_range_min=opening_range_min, family_cap=1000, macro_block_below=-1.0, **settings)
    engine = DetectorEngine(cfg, host)
    if chain is not None:
        engine.on_chain(chain)
    run = PluginRun()
    try:
        for bar in bars:
            trs = engine.on_bar(bar)
            run.transitions.extend(trs)
            run.candidates.extend(engine.candidates[t.setup_id] for t in trs if t.to_state == "forming")
            run.refused.extend(engine.drain_blocks())
        run.status = {p["name"]: p for p in host.describe()}
    finally:
        if isolate:
            host.close()
    return run
