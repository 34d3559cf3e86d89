"""``[detector]`` configuration."""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field

from spx_common.config import Section


class DetectorConfig(Section):
    """The detector host: plugins, market state, gating and the setup lifecycle (docs/plugins.md)."""

    section: ClassVar[str] = "detector"

    symbols: list[str] = Field(["SPY", "I:SPX"], description="Symbols detectors run on (a shard's symbols).")
    interval: str = Field("1s", description="Closed bars of this interval drive the detectors.")
    plugins: list[str] = Field([], description="Extra plugin modules to load by dotted name (besides entry points).")
    entry_points: bool = Field(True, description="Load plugins from the 'spx.detectors' entry-point group.")
    entry_points_enabled: list[str] = Field(
        ["builtin"], description="Entry points of the 'spx.detectors' group that run (by entry-point name; '*': "
        "every installed one). Others installed are listed by 'spx plugins' as available, not run: only the "
        "built-in detectors run by default; e.g. [\"builtin\", \"inside_bar\"] adds the example plugin.")
    plugin_config: dict[str, dict] = Field({}, description="Per-plugin config maps, by plugin name.")
    isolation: Literal["process", "inline"] = Field(
        "process", description="Where plugins run: 'process' = one supervised worker process per plugin package "
        "(preemptive budgets, crash and hang recovery; docs/plugins.md), 'inline' = in the detector process.")
    max_failures: int = Field(3, ge=1, description="A plugin that raises this many times (since it was last "
                              "enabled) is disabled.")
    budget_ms: float = Field(20.0, gt=0, description="Per-call CPU-time budget of a plugin (ms of CPU, not wall "
                             "time); a call over it is an overrun.")
    max_slow: int = Field(5, ge=1, description="CPU-budget overruns (since it was last enabled) before a plugin is "
                          "disabled.")
    stop_ms: float = Field(250.0, gt=0, description="Isolated: a call is interrupted after this many ms of CPU "
                           "(an overrun and an error).")
    hang_ms: float = Field(2000.0, gt=0, description="Isolated: wall ms a call may take before the plugin's worker "
                           "is killed (the plugin is disabled; the other plugins wait at most this long once).")
    mem_mb: int = Field(512, ge=64, description="Isolated: data-segment limit of each plugin package's worker, MiB "
                        "(the worker is restarted when its resident size passes 90% of it).")
    retry_s: float = Field(30.0, gt=0, description="A disabled plugin is probed with one call after this many "
                           "seconds; each failed probe doubles it.")
    retry_max_s: float = Field(1800.0, gt=0, description="The longest back-off between probes of a disabled plugin.")
    plugin_limits: dict[str, dict[str, float]] = Field(
        {}, description="Per-plugin budgets by plugin name (keys cpu_ms, stop_ms, hang_ms), and per package "
        "worker by entry-point or module name (key mem_mb), overriding the defaults above.")
    bars_kept: int = Field(600, ge=10, description="Recent closed bars per symbol in the plugin context.")
    baseline_bars: int = Field(60, ge=5, le=10_000, description="Bars in the rolling volume/range baseline "
                               "(ctx.state['baseline']).")
    flow_bars: int = Field(300, ge=5, le=100_000, description="Bars in the rolling flow-pressure window "
                           "(ctx.state['flow']).")
    flow_proxy: str = Field("SPY", description="Symbol whose order flow is the intraday flow proxy for every "
                            "symbol (the index has no volume).")
    opening_range_min: float = Field(15.0, gt=0, description="Opening range length in minutes (event time).")
    extended_hours: list[str] = Field(
        [], description="Plugins (by name; \"*\" for all) that may form setups on bars outside the regular "
        "session (09:30-16:00 New York, 13:00 on early closes, none on holidays: spx_common/calendar.py). By "
        "default none: pre- and post-market bars only update the market state's 'extended' values.")
    confirm_ticks: int = Field(3, ge=1, description="Trigger debounce: consecutive ticks beyond the trigger.")
    confirm_ms: int = Field(500, ge=0, description="Trigger debounce: event-time ms beyond the trigger.")
    ttl_min: float = Field(30.0, gt=0, description="A setup not triggered within this many minutes expires.")
    max_active: int = Field(200, ge=1, description="Active setups held at most (bounded memory).")
    family_cap: int = Field(2, ge=1, description="Diversification: active setups per family at most.")
    macro_block_below: float = Field(-0.5, ge=-1, le=1, description="Macro-alignment kill switch: candidates "
                                     "scoring below this are blocked.")
    restore_setups: bool = Field(True, description="At start, restore unresolved setups of the newest session from "
                                 "the store so their lifecycle continues after a restart.")
    warmup: bool = Field(True, description="At start, re-read recent closed bars from the aggregator (bars_since) "
                         "to rebuild market state before handling live bars.")
    state_every_s: float = Field(2.0, gt=0, description="Market-state snapshot cadence (wall seconds).")
